/* tdp_mmu.h — KVM's TDP MMU (mmu/tdp_mmu.c; here split into tdp_mmu.c, tdp_mmu_root.c,
 * tdp_mmu_map.c and tdp_mmu_huge.c): roots, the fault path, the zap family and the
 * other SPTE writers. Flush contracts are written next to each function.
 * The zaps and writers here RETURN whether a flush is needed (a bool named for what
 * changed) and leave it to their caller, as upstream; the callers that OWE and
 * perform it are in mmu.c (kvm_zap_gfn_range_flush(), kvm_recover_huge_pages_flush(),
 * kvm_arch_flush_shadow_memslot()), mmu_notifier.c and memslot.c. The only flushes
 * made here are the ones KVM makes inside the TDP MMU (the atomic zap's, the
 * yield's, a huge leaf replacing a table) and the buggy policies'. */
#ifndef TDPFAST_TDP_MMU_H
#define TDPFAST_TDP_MMU_H
#include "tdp_iter.h"

struct tdp_vm;

struct tdp_root {
	u32 id;
	u32 frame;
	int level;
	int as_id;
	int guest_mode;
	int refcount;        /* tdp_mmu_root_count */
	int user_refs;       /* references taken through the public alloc_root() */
	bool invalid;        /* role.invalid */
	bool scheduled;      /* tdp_mmu_scheduled_root_to_zap */
};

/* The roots, newest first, as KVM walks its list of TDP MMU roots (list_add_rcu()
 * adds at the head): r is a struct tdp_root * the caller declares. The body must
 * not free a root. The _valid_ variant skips invalid roots
 * (for_each_valid_tdp_mmu_root() upstream). */
#define for_each_tdp_mmu_root(vm, r) \
	for (int r##_i_ = (vm)->nroots - 1; r##_i_ >= 0 && ((r) = &(vm)->roots[r##_i_], 1); r##_i_--)
#define for_each_valid_tdp_mmu_root(vm, r) \
	for_each_tdp_mmu_root(vm, r) if ((r)->invalid) {} else

/* The SPTEs of root from start to end down to min_level, in the iterator's order
 * (for_each_tdp_pte_min_level() upstream); it is a struct tdp_iter the caller declares. */
void tdp_mmu_iter_start(struct tdp_vm *vm, struct tdp_iter *it, struct tdp_root *root, int min_level, u64 start);
#define for_each_tdp_pte_min_level(vm, it, root, min_level, start, end) \
	for (tdp_mmu_iter_start(vm, &(it), root, min_level, start); (it).valid && (it).gfn < (end); \
	     tdp_iter_next(&(it)))

/* Root lifecycle: kvm_tdp_mmu_alloc_root(), kvm_tdp_mmu_put_root(),
 * kvm_tdp_mmu_invalidate_all_roots(), kvm_tdp_mmu_zap_invalidated_roots(). */
int tdp_mmu_get_vcpu_root(struct tdp_vm *vm, int as_id, int guest_mode, u32 *root_id);
struct tdp_root *tdp_mmu_find_root(struct tdp_vm *vm, u32 id);
struct tdp_root *tdp_mmu_newest_valid_root(struct tdp_vm *vm); /* NULL: none */
void tdp_mmu_get_root(struct tdp_root *r);
void tdp_mmu_put_root_internal(struct tdp_vm *vm, u32 id, bool shared);
void tdp_mmu_invalidate_roots(struct tdp_vm *vm);
void tdp_mmu_zap_invalidated(struct tdp_vm *vm, bool shared);
void tdp_mmu_zap_whole_root(struct tdp_vm *vm, struct tdp_root *root, bool shared);

/* Range operations over roots. `which`: valid roots only, all roots, the invalid
 * roots scheduled for zapping, or one root. */
enum { ROOTS_VALID = 0, ROOTS_ALL = 1, ROOTS_SCHEDULED = 2, ROOTS_ONE = 3 };

#define MAX_ROOTS_WALK 256

/* A long operation that can stop at a yield point and resume (tdp_op_run). */
enum op_kind { OP_ZAP_LEAFS = 1, OP_ZAP_ROOTS, OP_WRPROT, OP_CLEAR_DIRTY, OP_SPLIT, OP_RECOVER_HUGE,
	       OP_NX_RECOVER };

struct tdp_op {
	int kind, which;
	bool shared, can_yield;
	u64 start, end;
	int min_level, target_level;
	u32 one_root;
	u32 root_ids[MAX_ROOTS_WALK]; /* snapshot, newest first */
	int nroots, ri;
	u32 cur;                      /* root being walked (a reference is held), 0 none */
	struct tdp_iter it;
	int pass;                     /* OP_ZAP_ROOTS: 4K, 2M, 1G, root level */
	bool started, resume_next;
	bool flush;                   /* pending flush */
	bool result_flush;            /* B1: flushes OR-ed from earlier roots */
	bool result;                  /* something changed (zapped, protected, ...) */
	bool changed;                 /* an SPTE was written */
	u64 chg_lo, chg_hi;           /* gfns covered by the SPTEs replaced (recover); NX recovery:
	                               * by the SPs zapped since its last flush */
	bool flush_pending_range;     /* NX recovery: chg_lo/chg_hi hold such a range */
	int yield_every;
	u64 since_yield;
	u64 stuck_gfn;                /* next_last_level_gfn at the last yield ... */
	u32 stuck_yields;             /* ... and the yields in a row there (checker.h) */
	int nx_left, nx_done;
	int err;
};

void tdp_op_init(struct tdp_vm *vm, struct tdp_op *op, int kind, int which, u64 start, u64 end, bool shared);
/* 1 done, 0 stopped at a yield point (only with stop_at_yield), <0 error. */
int tdp_op_run(struct tdp_vm *vm, struct tdp_op *op, bool stop_at_yield);
bool tdp_mmu_zap_leafs_all(struct tdp_vm *vm, u64 start, u64 end, int which, bool shared, bool flush);
bool tdp_mmu_wrprot(struct tdp_vm *vm, u64 start, u64 end, int min_level);
bool tdp_mmu_clear_dirty(struct tdp_vm *vm, u64 start, u64 end);
bool tdp_mmu_age(struct tdp_vm *vm, u64 start, u64 end);
int tdp_mmu_split(struct tdp_vm *vm, u64 start, u64 end, int target_level);
/* Returns whether a flush is needed, and the range it must cover. */
/* Recover huge pages in [start, end); each root that changed is flushed at its end.
 * Returns whether a flush was done. */
bool tdp_mmu_recover_huge(struct tdp_vm *vm, u64 start, u64 end);
void tdp_mmu_recover_huge_root_done(struct tdp_vm *vm, struct tdp_op *op);
int tdp_mmu_recover_nx(struct tdp_vm *vm, int count, int *zapped);
bool tdp_mmu_zap_sp_frame(struct tdp_vm *vm, u32 frame);
/* The table (frame) of root holding gfn's level-`level` entries, NO_FRAME if none. */
u32 tdp_mmu_find_sp(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int level);
bool tdp_mmu_write_protect_gfn(struct tdp_vm *vm, u64 gfn);

/* Shared by tdp_mmu.c and tdp_mmu_huge.c (the TDP MMU's own helpers). */
u32 tdp_mmu_alloc_sp(struct tdp_vm *vm, int level, u64 gfn, u32 root_id, u32 parent);
void tdp_mmu_account_leaf(struct tdp_vm *vm, int level, int delta);
void tdp_mmu_iter_set_spte(struct tdp_vm *vm, struct tdp_iter *it, u64 new);
int tdp_mmu_set_spte_atomic(struct tdp_vm *vm, struct tdp_iter *it, u64 new);
int tdp_mmu_zap_spte_atomic(struct tdp_vm *vm, struct tdp_iter *it);
bool tdp_op_need_resched(struct tdp_op *op);
int track_possible_nx_huge_page(struct tdp_vm *vm, u32 f);
void untrack_possible_nx_huge_page(struct tdp_vm *vm, u32 f);
int tdp_mmu_split_huge_page(struct tdp_vm *vm, struct tdp_iter *it, struct tdp_root *root, bool shared,
			    bool nx_disallowed);
int tdp_mmu_recover_huge_spte(struct tdp_vm *vm, struct tdp_op *op);
int tdp_mmu_nx_recover_run(struct tdp_vm *vm, struct tdp_op *op, bool stop_at_yield);

/* The fault path (kvm_tdp_mmu_map). */
enum { RET_PF_FIXED = TDP_PF_FIXED, RET_PF_SPURIOUS = TDP_PF_SPURIOUS, RET_PF_RETRY = TDP_PF_RETRY,
       RET_PF_EMULATE = TDP_PF_EMULATE, RET_PF_NOMEM = TDP_PF_NOMEM, RET_PF_BLOCKED = TDP_PF_BLOCKED };
struct memslot;
/* KVM's struct kvm_page_fault: one fault as the fault path sees it. */
struct kvm_page_fault {
	u64 gfn;
	struct memslot *slot;      /* NULL: no memslot (MMIO) */
	bool write, exec, prefetch;
	int req_level;             /* the largest level the memslot and the host allow */
	int goal_level;            /* the level to map at; lowered on the way down */
	bool huge_page_disallowed; /* the NX mitigation forbids a huge page here */
	bool has_pfn;              /* pfn was looked up in the fault's first half (else: look up now) */
	u64 pfn;
};
int tdp_mmu_map_gfn(struct tdp_vm *vm, struct tdp_root *root, struct kvm_page_fault *fault, bool *flushed);
/* Populating a table in one pass: the last-level table a 4K fault on gfn walks
 * to without stopping (NULL if the walk would stop, split or allocate), and the
 * fault's target-level step into it, which is all the walk would do. */
u64 *tdp_mmu_last_level_table(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, u64 **parent_sptep);
int tdp_mmu_map_gfn_in_table(struct tdp_vm *vm, struct tdp_root *root, struct kvm_page_fault *fault, u64 *table,
			     bool *flushed);
/* Upper bound of frames a single map needs (levels - 1 tables). */
u64 tdp_mmu_tables_needed(struct tdp_vm *vm, struct tdp_root *root, u64 start, u64 end, int level);
/* Read the SPTE mapping gfn at `level` in root, or the deepest one on the path. */
u64 tdp_mmu_lookup(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int *level, u64 **sptep);

#endif
