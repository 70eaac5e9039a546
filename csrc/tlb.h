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
	u32 stamp; /* LRU */
	u32 gen;   /* PSC: generation of the next table's frame at fill */
	u8 level;  /* 0: empty */
	u8 perms;
	u8 dirty;
	u8 pad;
};

struct tlb_array {
	u32 sets, ways;
	u64 fills;  /* an array never filled is not probed (e.g. 1G arrays in a 4K workload) */
	struct tlb_ent *e;
	u64 *key;   /* per entry, beside e: tlb_ent_key(vpn, level), 0 when empty. A lookup
	             * compares these 8-byte tags over the set's ways (a 12-way set is 96
	             * bytes instead of 480) and reads the entry only on a match. */
	u64 *plru;  /* per-set PLRU bits */
};

/* The (vpn, level) part of an entry's tag as one word: vpn < 2^61 (gfns < 2^52). */
static inline u64 tlb_ent_key(u64 vpn, int level) { return (vpn << 3) | (u64)level; }

/* Open-addressing store for the adversarial mode: never evicts. */
struct tlb_store {
	struct tlb_ent *e;
	u64 cap, used;
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

/* Lookup: returns 1 (L1 hit), 2 (L2 hit) or 0; *e points into the structure. */
int tlb_lookup(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **e);
int tlb_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 pfn, unsigned perms, int dirty);
/* Deepest PSC entry for gfn at a level >= min_level (the level of the cached entry). */
struct tlb_ent *tlb_psc_lookup(struct tlb *t, int ctx, u64 gfn, int top_level);
int tlb_psc_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 table_pfn, unsigned perms, u32 gen);

u64 tlb_live_entries(const struct tlb *t, int psc);
size_t tlb_dump(const struct tlb *t, struct tdp_tlb_entry *out, size_t max, int svm);
u64 tlb_digest(const struct tlb *t, u64 h);

#endif
