/* limit_loops.c — see limit_loops.h. Standard C11 only; nothing here touches the model. */
#include <stdlib.h>
#include <string.h>
#include "limit_loops.h"

static const uint64_t PRESENT = 7;   /* R|W|X: any nonzero low bits mean "present" */
static const int TABLE_ENTRIES = 512;

/* The least work a zap needs: one store per entry. Nothing is read: which entries
 * were present (the engine counts them) is not part of the machine's minimum, so
 * the loop is a plain sequential store stream (the compiler may vectorise it). */
uint64_t tdp_limit_zap(uint64_t *tables, uint64_t ntables, uint64_t nonpresent)
{
	uint64_t n = ntables * (uint64_t)TABLE_ENTRIES;

	for (uint64_t i = 0; i < n; i++)
		tables[i] = nonpresent;
	return n;
}

void tdp_limit_fill(uint64_t *tables, uint64_t ntables)
{
	uint64_t n = ntables * (uint64_t)TABLE_ENTRIES;

	for (uint64_t i = 0; i < n; i++)
		tables[i] = (i << 12) | PRESENT;
}

static inline unsigned idx_at(uint64_t gfn, int level)
{
	return (unsigned)((gfn >> (9 * (level - 1))) & 511);
}

/* The least work a populate needs: per gfn, the walk from the root (a load per
 * level, a table allocated where an entry is missing) and one store for the leaf. */
uint64_t tdp_limit_populate(uint64_t *mem, uint64_t max_tables, int levels, uint64_t npages)
{
	uint64_t used = 1;

	if (max_tables == 0 || levels < 1)
		return UINT64_MAX;
	memset(mem, 0, (size_t)TABLE_ENTRIES * sizeof(uint64_t));
	for (uint64_t gfn = 0; gfn < npages; gfn++) {
		uint64_t table = 0;
		for (int l = levels; l > 1; l--) {
			uint64_t *e = &mem[table * TABLE_ENTRIES + idx_at(gfn, l)];
			if (!(*e & PRESENT)) {
				if (used == max_tables)
					return UINT64_MAX;
				memset(&mem[used * TABLE_ENTRIES], 0, (size_t)TABLE_ENTRIES * sizeof(uint64_t));
				*e = (used << 12) | PRESENT;
				used++;
			}
			table = *e >> 12;
		}
		mem[table * TABLE_ENTRIES + idx_at(gfn, 1)] = (gfn << 12) | PRESENT;
	}
	return used;
}

/* The least work a cold walk needs: one dependent load per level (the next
 * table's index comes from the entry just loaded) and a present test. */
uint64_t tdp_limit_walk(const uint64_t *mem, int levels, const uint64_t *gfns, uint64_t n)
{
	uint64_t sum = 0;

	for (uint64_t k = 0; k < n; k++) {
		uint64_t gfn = gfns[k], table = 0, e = 0;
		int l;
		for (l = levels; l >= 1; l--) {
			e = mem[table * TABLE_ENTRIES + idx_at(gfn, l)];
			if (!(e & PRESENT))
				break;
			table = e >> 12;
		}
		if (l == 0)
			sum += e >> 12;
	}
	return sum;
}

/* ---- set-associative TLB: the bare lookup ----
 * The least work a TLB hit needs is exactly a set-index hash and a tag compare over
 * the set's ways, in an array of bare 8-byte tags (the set of a 12-way array is 96
 * bytes): a hit stores nothing and reads nothing else. A miss pays a fill: the first
 * empty way, else the next way in a per-set round-robin order (FIFO: the cheapest
 * replacement, which needs no bookkeeping on a hit; its hit rate on these uniform
 * traces is reported beside the engine's). An L2 hit refills L1. */

struct limit_array {
	uint32_t sets, ways;
	uint64_t mask;    /* sets - 1 when sets is a power of two, else 0 */
	uint64_t *key;    /* per way: vpn + 1; 0 = empty */
	uint32_t *next;   /* per set: the way the next fill replaces once the set is full */
};

struct tdp_limit_tlb {
	struct limit_array l1, l2;
};

static int array_new(struct limit_array *a, uint32_t sets, uint32_t ways)
{
	a->sets = sets;
	a->ways = ways;
	a->mask = (sets && !(sets & (sets - 1))) ? sets - 1 : 0;
	a->key = NULL;
	a->next = NULL;
	if (!sets || !ways)
		return 0;
	a->key = calloc((size_t)sets * ways, sizeof(*a->key));
	a->next = calloc(sets, sizeof(*a->next));
	return (a->key && a->next) ? 0 : -1;
}

tdp_limit_tlb *tdp_limit_tlb_new(uint32_t l1_sets, uint32_t l1_ways, uint32_t l2_sets, uint32_t l2_ways)
{
	tdp_limit_tlb *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	if (array_new(&t->l1, l1_sets, l1_ways) || array_new(&t->l2, l2_sets, l2_ways)) {
		tdp_limit_tlb_free(t);
		return NULL;
	}
	return t;
}

void tdp_limit_tlb_free(tdp_limit_tlb *t)
{
	if (!t)
		return;
	free(t->l1.key);
	free(t->l1.next);
	free(t->l2.key);
	free(t->l2.next);
	free(t);
}

/* The engine's set index (tlb.h tlb_set_of: (vpn ^ vpn >> 17) % sets), so both see the
 * same conflicts; a mask instead of the division when sets is a power of two (same result). */
static inline uint64_t set_of(const struct limit_array *a, uint64_t vpn)
{
	uint64_t h = vpn ^ (vpn >> 17);
	return a->mask ? (h & a->mask) : (h % a->sets);
}

/* The bare lookup: 1 on a hit, else 0. A set-index hash and a tag compare over the
 * ways; nothing else. */
static inline int probe(const struct limit_array *a, uint64_t key)
{
	if (!a->sets)
		return 0;
	const uint64_t *k = &a->key[set_of(a, key - 1) * a->ways];
	for (uint32_t i = 0; i < a->ways; i++)
		if (k[i] == key)
			return 1;
	return 0;
}

static inline void fill(struct limit_array *a, uint64_t key)
{
	if (!a->sets)
		return;
	uint64_t set = set_of(a, key - 1);
	uint64_t *k = &a->key[set * a->ways];
	for (uint32_t i = 0; i < a->ways; i++) {
		if (!k[i]) {
			k[i] = key;
			return;
		}
	}
	uint32_t v = a->next[set];
	k[v] = key;
	a->next[set] = v + 1 == a->ways ? 0 : v + 1;
}

void tdp_limit_tlb_run(tdp_limit_tlb *t, const uint64_t *gpas, uint64_t n, uint64_t *counts)
{
	uint64_t c0 = 0, c1 = 0, c2 = 0;

	for (uint64_t k = 0; k < n; k++) {
		uint64_t key = (gpas[k] >> 12) + 1;
		if (probe(&t->l1, key)) {
			c0++;
		} else if (probe(&t->l2, key)) {
			fill(&t->l1, key);
			c1++;
		} else {
			fill(&t->l1, key);
			fill(&t->l2, key);
			c2++;
		}
	}
	counts[0] += c0;
	counts[1] += c1;
	counts[2] += c2;
}
