/* limit_loops.c — see limit_loops.h. Standard C11 only; nothing here touches the model. */
#include <stdlib.h>
#include <string.h>
#include "limit_loops.h"

static const uint64_t PRESENT = 7;   /* R|W|X: any nonzero low bits mean "present" */
static const int TABLE_ENTRIES = 512;

uint64_t tdp_limit_zap(uint64_t *tables, uint64_t ntables, uint64_t nonpresent)
{
	uint64_t zapped = 0;

	for (uint64_t t = 0; t < ntables; t++) {
		uint64_t *pt = tables + t * (uint64_t)TABLE_ENTRIES;
		for (int i = 0; i < TABLE_ENTRIES; i++) {
			if (pt[i] & PRESENT) {
				pt[i] = nonpresent;
				zapped++;
			}
		}
	}
	return zapped;
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

/* ---- set-associative LRU TLB ---- */

struct limit_way {
	uint64_t key;   /* vpn + 1; 0 = empty */
	uint64_t stamp; /* last use */
};

struct limit_array {
	uint32_t sets, ways;
	uint64_t mask;  /* sets - 1 when sets is a power of two, else 0 */
	struct limit_way *w;
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
	a->w = NULL;
	if (!sets || !ways)
		return 0;
	a->w = calloc((size_t)sets * ways, sizeof(*a->w));
	return a->w ? 0 : -1;
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
	free(t->l1.w);
	free(t->l2.w);
	free(t);
}

/* The engine's set index (tlb.c set_of: (vpn ^ vpn >> 17) % sets), so both see the same
 * conflicts; a mask instead of the division when sets is a power of two (same result). */
static inline struct limit_way *set_row(const struct limit_array *a, uint64_t vpn)
{
	uint64_t h = vpn ^ (vpn >> 17);
	uint64_t set = a->mask ? (h & a->mask) : (h % a->sets);
	return &a->w[(size_t)set * a->ways];
}

/* 1 on a hit (stamp refreshed), else 0. */
static inline int probe(struct limit_array *a, uint64_t key, uint64_t now)
{
	if (!a->sets)
		return 0;
	struct limit_way *row = set_row(a, key - 1);
	for (uint32_t i = 0; i < a->ways; i++) {
		if (row[i].key == key) {
			row[i].stamp = now;
			return 1;
		}
	}
	return 0;
}

static inline void fill(struct limit_array *a, uint64_t key, uint64_t now)
{
	if (!a->sets)
		return;
	struct limit_way *row = set_row(a, key - 1);
	uint32_t victim = 0;
	for (uint32_t i = 0; i < a->ways; i++) {
		if (!row[i].key) {
			victim = i;
			break;
		}
		if (row[i].stamp < row[victim].stamp)
			victim = i;
	}
	row[victim].key = key;
	row[victim].stamp = now;
}

void tdp_limit_tlb_run(tdp_limit_tlb *t, const uint64_t *gpas, uint64_t n, uint64_t *counts)
{
	for (uint64_t k = 0; k < n; k++) {
		uint64_t key = (gpas[k] >> 12) + 1;
		uint64_t now = ++t->clock;
		if (probe(&t->l1, key, now)) {
			counts[0]++;
		} else if (probe(&t->l2, key, now)) {
			fill(&t->l1, key, now);
			counts[1]++;
		} else {
			fill(&t->l1, key, now);
			fill(&t->l2, key, now);
			counts[2]++;
		}
	}
}
