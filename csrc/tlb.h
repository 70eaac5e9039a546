/* tlb.h — one pCPU's TLBs and paging-structure caches for guest-physical
 * mappings, tagged by context (VMX: EP4TA with VPID/PCID kept; SVM: ASID).
 *
 * Invalidation is by epoch: every context has an epoch and every entry records the
 * epoch it was filled in, so flushing a context (or all of them) is O(1) per
 * context, never a scan of the arrays. What is cached and what invalidates it:
 * Intel SDM Vol. 3C "Caching Translation Information" (28.3 in the 2016 edition);
 * AMD APM Vol. 2 15.16 "TLB Control". */
#ifndef TDPFAST_TLB_H
#define TDPFAST_TLB_H
#include "spte.h"
#include "tdpfast.h"

struct tlb_ent {
	u64 vpn;   /* TLB: gfn >> 9*(level-1); PSC: gfn prefix of the cached entry */
	u64 pfn;   /* TLB: base pfn of the page; PSC: pfn of the next table */
	u32 ctx;
	u32 epoch;
	union {
		u32 gen;     /* PSC: generation of the next table's frame at fill */
		u32 chk_gen; /* TLB: the checker's truth generation its verdict is for (chk) */
	};
	u8 level;  /* 0: empty */
	u8 perms;
	u8 dirty;
	u8 chk;    /* TLB: the checks this translation passed at chk_gen (checker.h) */
};
/* chk: checker_check_translation() passed for reads (the page is the one the
 * memslot gives) and for writes (also writable, and dirty-logged if it must be). */
enum { TLB_CHK_MAP = 1, TLB_CHK_WRITE = 2 };
/* Two entries per 64-byte line: a hit reads one line of entries. */
_Static_assert(sizeof(struct tlb_ent) == 32, "struct tlb_ent is half a cache line");

struct tlb_array {
	u32 sets, ways;
	u64 fills;  /* an array never filled is not probed (e.g. 1G arrays in a 4K workload) */
	struct tlb_ent *e;
	u64 *key;   /* per entry, beside e: tlb_ent_key(vpn, level), 0 when empty. A lookup
	             * compares these 8-byte tags over the set's ways (a 12-way set is 96
	             * bytes instead of 384) and reads the entry only on a match. */
	u32 *stamp; /* per entry: LRU stamp of its last use (read only to choose a victim) */
	u32 *full;  /* per set: tlb.kills when all its ways were last seen alive (victim()) */
	u64 *plru;  /* per-set PLRU bits */
};

/* The (vpn, level) part of an entry's tag as one word: vpn < 2^61 (gfns < 2^52). */
static inline u64 tlb_ent_key(u64 vpn, int level) { return (vpn << 3) | (u64)level; }

struct tlb_store_ref {
	u64 key; /* 0: empty */
	u32 ctx, slot;
};

/* Open-addressing store for the adversarial mode: never evicts. */
struct tlb_store {
	struct tlb_ent *e;
	u64 *key;  /* per slot, beside e: tlb_ent_key(vpn, level), 0 when empty. A probe
	            * chain (often long: the levels share home slots) is walked over these
	            * 8-byte tags, and an entry is read only on a match. */
	u64 cap, used;
	/* The index: (tag, ctx) -> the slot last filled for them (see store_find()). */
	struct tlb_store_ref *ix;
	u64 ix_cap, ix_used;
	bool ix_off; /* no memory for it: lookups walk the probe chain */
};

struct tlb_ctx {
	u64 key;   /* kind<<62 | value: see tlb_ctx_key_* */
	u32 epoch;
	u16 vpid, pcid;
};

struct tlb {
	int mode, repl;
	struct tlb_array l1[3], l2, l2_1g, psc[6];
	struct tlb_store store, pstore;
	struct tlb_ctx *ctx;
	u32 nctx, ctx_cap;
	u32 stamp;
	u32 kills;  /* bumped whenever entries may have died (a flush, a precise invalidation) */
	bool epoch_wrapped; /* a context's epoch went round: dead entries may live again */
	u64 rng;
};

static inline u64 tlb_ctx_key_ept(u64 ep4ta_pfn) { return (1ull << 62) | ep4ta_pfn; }
static inline u64 tlb_ctx_key_asid(u32 asid) { return (2ull << 62) | asid; }

int tlb_init(struct tlb *t, const struct tdp_tlb_config *c, u64 seed);
void tlb_destroy(struct tlb *t);
/* Index of the context with this key, created on first use (-1 on ENOMEM). */
int tlb_ctx(struct tlb *t, u64 key);
/* Index of an existing context or -1. */
int tlb_ctx_find(const struct tlb *t, u64 key);
void tlb_flush_ctx(struct tlb *t, int ctx);
void tlb_flush_all(struct tlb *t);
/* Precise invalidation of [gfn, gfn+npages) in every context (TLB and PSC). */
void tlb_flush_range(struct tlb *t, u64 gfn, u64 npages);
/* Drop what translates gfn in ctx (EPT violation / #NPF side effect). */
void tlb_flush_gfn_ctx(struct tlb *t, int ctx, u64 gfn);

/* Lookup: returns 1 (L1 hit), 2 (L2 hit) or 0; *e points into the structure (on an
 * L2 hit, the L1 entry it refilled; *src then is the L2 entry, else NULL). The L1
 * probe is inline (below); the L2 probe, its refill of L1 and the adversarial store
 * are not. */
static inline int tlb_lookup(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **e, struct tlb_ent **src,
			     bool l1_4k_missed);
int tlb_lookup_l2(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **e, struct tlb_ent **src);
/* The use of e, the live entry for (ctx, vpn, level) at (set, way) of an L2 array,
 * after the L1 arrays missed: its LRU stamp and the refill of L1 from it. Returns
 * the L1 entry filled (NULL-free: e itself where L1 keeps nothing at that level). */
struct tlb_ent *tlb_l2_use(struct tlb *t, int ctx, u64 vpn, int level, struct tlb_ent *e, u32 set, u32 way);
int tlb_lookup_store(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **e);
/* absent: tlb_lookup() for gfn in ctx has just missed, so no live entry of the
 * set-associative arrays is replaced in place (the probe a fill starts with is
 * skipped). filled (NULL, or room for 2): the entries written (L1 and L2; NULL
 * where absent). */
int tlb_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 pfn, unsigned perms, int dirty, bool absent,
	     struct tlb_ent **filled);
/* Deepest PSC entry for gfn at a level >= min_level (the level of the cached entry). */
struct tlb_ent *tlb_psc_lookup(struct tlb *t, int ctx, u64 gfn, int top_level);
int tlb_psc_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 table_pfn, unsigned perms, u32 gen);
/* Whether tlb_psc_fill() at this level keeps anything (a configuration without a
 * cache for the level fills nothing). */
static inline bool tlb_psc_caches(const struct tlb *t, int level)
{
	return t->mode == TDP_TLB_ADVERSARIAL || t->psc[level].sets;
}

/* Drop every checker verdict the TLB entries keep (chk). */
void tlb_forget_checks(struct tlb *t);
u64 tlb_live_entries(const struct tlb *t, int psc);
size_t tlb_dump(const struct tlb *t, struct tdp_tlb_entry *out, size_t max, int svm);
u64 tlb_digest(const struct tlb *t, u64 h);

/* ---- the hit path, inline in the guest access (cpu.c) ---- */

static inline bool tlb_alive(const struct tlb *t, const struct tlb_ent *e)
{
	return e->level && e->epoch && e->epoch == t->ctx[e->ctx].epoch;
}

static inline u32 tlb_set_of(const struct tlb_array *a, u64 vpn)
{
	u64 h = vpn ^ (vpn >> 17);
	if ((a->sets & (a->sets - 1)) == 0)
		return (u32)(h & (a->sets - 1)); /* no division for power-of-two set counts */
	return (u32)(h % a->sets);
}

void tlb_plru_touch(struct tlb_array *a, u32 set, u32 way);

/* A use of entry `way` of `set`: its LRU stamp, and the set's PLRU bits. */
static inline void tlb_touch(struct tlb *t, struct tlb_array *a, u32 set, u32 way)
{
	a->stamp[(size_t)set * a->ways + way] = ++t->stamp;
	if (t->repl == TDP_REPL_PLRU && a->ways > 1 && a->ways <= 64)
		tlb_plru_touch(a, set, way);
}

/* The live entry for (ctx, vpn, level) in a set-associative array, or NULL: a
 * set-index hash, a compare of the ways' 8-byte tags, and the context and epoch
 * of the entry whose tag matched. */
static inline struct tlb_ent *tlb_array_find(const struct tlb *t, const struct tlb_array *a, int ctx, u64 vpn,
					     int level, u32 *set_out, u32 *way_out)
{
	if (!a->fills)
		return NULL;
	u32 set = tlb_set_of(a, vpn);
	size_t base = (size_t)set * a->ways;
	const u64 *keys = &a->key[base], k = tlb_ent_key(vpn, level);
	for (u32 w = 0; w < a->ways; w++) {
		if (keys[w] != k)
			continue; /* the same test as e->vpn == vpn && e->level == level */
		struct tlb_ent *e = &a->e[base + w];
		if (e->ctx == (u32)ctx && tlb_alive(t, e)) {
			*set_out = set;
			*way_out = w;
			return e;
		}
	}
	return NULL;
}

static inline __attribute__((always_inline)) int tlb_lookup(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **out,
							     struct tlb_ent **src, bool l1_4k_missed)
{
	u32 set, way;

	*src = NULL;
	if (t->mode == TDP_TLB_ADVERSARIAL)
		return tlb_lookup_store(t, ctx, gfn, out);
	/* l1_4k_missed: the caller has just probed the 4K array for (ctx, gfn) and missed. */
	for (int l = l1_4k_missed ? 2 : 1; l <= 3; l++) {
		struct tlb_ent *e = tlb_array_find(t, &t->l1[l - 1], ctx, gfn >> (9 * (l - 1)), l, &set, &way);
		if (e) {
			tlb_touch(t, &t->l1[l - 1], set, way);
			*out = e;
			return 1;
		}
	}
	return tlb_lookup_l2(t, ctx, gfn, out, src);
}

#endif
