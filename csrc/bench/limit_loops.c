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

/* ---- set-associative LRU TLB ----
 * The least work a TLB hit needs: a set-index hash and a tag compare over the set's
 * ways, in an array of bare 8-byte tags (the set of a 12-way array is 96 bytes), plus
 * the one store LRU replacement needs to remember the use (stamps are a separate
 * array, written only on a hit and read only when choosing a victim). A miss also
 * pays the victim choice (the first empty way, else the oldest stamp) and the fill. */

struct limit_array {
	uint32_t sets, ways;
	uint64_t mask;    /* sets - 1 when sets is a power of two, else 0 */
	uint64_t *key;    /* per way: vpn + 1; 0 = empty */
	uint64_t *stamp;  /* per way: last use */
};

struct tdp_limit_tlb {
	struct limit_array l1, l2;
	uint64_t clock;
};

static int array_new(struct limit_array *a, uint32_t sets, uint32_t ways)
{
	a->sets = sets;
	a->ways = ways;
	a->mask = (sets && !(sets & (sets - 1))) ? sets - 1 : 0;
	a->key = NULL;
	a->stamp = NULL;
	if (!sets || !ways)
		return 0;
	a->key = calloc((size_t)sets * ways, sizeof(*a->key));
	a->stamp = calloc((size_t)sets * ways, sizeof(*a->stamp));
	return (a->key && a->stamp) ? 0 : -1;
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
	free(t->l1.stamp);
	free(t->l2.key);
	free(t->l2.stamp);
	free(t);
}

/* The engine's set index (tlb.c set_of: (vpn ^ vpn >> 17) % sets), so both see the same
 * conflicts; a mask instead of the division when sets is a power of two (same result). */
static inline size_t set_base(const struct limit_array *a, uint64_t vpn)
{
	uint64_t h = vpn ^ (vpn >> 17);
	uint64_t set = a->mask ? (h & a->mask) : (h % a->sets);
	return (size_t)set * a->ways;
}

/* 1 on a hit (its stamp refreshed), else 0. */
static inline int probe(struct limit_array *a, uint64_t key, uint64_t now)
{
	if (!a->sets)
		return 0;
	size_t b = set_base(a, key - 1);
	const uint64_t *k = &a->key[b];
	for (uint32_t i = 0; i < a->ways; i++) {
		if (k[i] == key) {
			a->stamp[b + i] = now;
			return 1;
		}
	}
	return 0;
}

static inline void fill(struct limit_array *a, uint64_t key, uint64_t now)
{
	if (!a->sets)
		return;
	size_t b = set_base(a, key - 1);
	uint64_t *k = &a->key[b], *st = &a->stamp[b];
	uint32_t victim = 0;
	for (uint32_t i = 0; i < a->ways; i++) {
		if (!k[i]) {
			victim = i;
			break;
		}
		if (st[i] < st[victim])
			victim = i;
	}
	k[victim] = key;
	st[victim] = now;
}

void tdp_limit_tlb_run(tdp_limit_tlb *t, const uint64_t *gpas, uint64_t n, uint64_t *counts)
{
	uint64_t now = t->clock, c0 = 0, c1 = 0, c2 = 0;

	for (uint64_t k = 0; k < n; k++) {
		uint64_t key = (gpas[k] >> 12) + 1;
		now++;
		if (probe(&t->l1, key, now)) {
			c0++;
		} else if (probe(&t->l2, key, now)) {
			fill(&t->l1, key, now);
			c1++;
		} else {
			fill(&t->l1, key, now);
			fill(&t->l2, key, now);
			c2++;
		}
	}
	t->clock = now;
	counts[0] += c0;
	counts[1] += c1;
	counts[2] += c2;
}
