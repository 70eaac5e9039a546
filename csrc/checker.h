/* checker.h — every violation decision: a guest access used a translation (from a
 * TLB, a paging-structure cache or a walk) that the truth (memslots, frames)
 * no longer gives, or a fault never made progress. Reports go to the VM's
 * violation list; the explorer's hazard probe lives here too, because it asks the
 * same question one step earlier. */
#ifndef TDPFAST_CHECKER_H
#define TDPFAST_CHECKER_H
#include "spte.h"

struct tdp_vm;
struct vcpu;
struct tdp_root;
struct tdp_iter;

/* What the incremental walk of the tables remembers of one table frame from the
 * last walk that found nothing wrong (checker.c). */
struct inv_node {
	u32 parent;    /* the table whose entry linked it (NO_FRAME: a root, or never reached) */
	u32 tables;    /* tables in its subtree, itself included */
	u32 leaves[3]; /* leaves of levels 1..3 in its subtree */
	u32 own;       /* leaves in the table itself */
	u16 index;     /* the entry of `parent` that linked it */
	u8 state;      /* enum inv_node_state (checker.c) */
};

/* The state invariants' bookkeeping, per VM: a mark per frame for the walk from
 * the roots (marked frames carry the current epoch), the state signature at the
 * last full walk (unchanged tables are not walked again), the kinds already
 * reported (each is reported once per VM, at the first operation that broke it),
 * and the incremental walk's memory of each table (node, kids: a bit per entry
 * that links a child table). */
struct checker_state {
	u32 *mark;
	u32 mark_cap;
	u32 epoch;
	u64 sig;       /* the tables' structure at the last walk */
	u64 writes;    /* SPTE writes at the last walk */
	u32 leaf_ops;  /* operations since then that wrote only leaf SPTEs */
	u64 reached;   /* tables the last walk reached */
	u32 reported;
	u64 seen;      /* broken invariants seen, reported or not (the cross-check counts them) */
	u64 full_leaves[4]; /* leaves per level the last full walk counted */
	struct inv_node *node;
	u64 *kids;     /* 8 words per frame */
};

/* A combined-TLB hit the guest's tables no longer give: the guest's flush to owe, or
 * KVM's (reported) if a flush the guest asked for was serviced since the fill. */
int checker_guest_stale(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn, u32 gseq, u64 tag);
/* SVM: the ASID v's VMCB runs with is held by no other VMCB that may run on the pCPU. */
void checker_check_asid_alias(struct tdp_vm *vm, struct vcpu *v);
void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index);
/* A translation to pfn (page size `level`) was used for this access: 1 if it was
 * reported (use after free, stale write, lost dirty bit), else 0. */
int checker_check_translation(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn,
			      int level, u64 tag, u64 batch_index);
/* A paging-structure-cache entry (next table table_pfn, filled at frame generation
 * gen, for entries of `level`) starts the walk: true if it was reported stale. */
bool checker_check_psc(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 table_pfn,
		       u32 gen, int level, u64 tag, u64 batch_index);
/* A TDP MMU walk of root found a table it held freed (and maybe reused) under it:
 * it->stale_frame, at it->level; a use after free of a page-table page. */
void checker_report_stale_walk(struct tdp_vm *vm, const struct tdp_root *root, const struct tdp_iter *it);
/* The access's fault kept retrying. */
void checker_report_livelock(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 batch_index);
/* A root walk yielded TDP_WALK_STUCK_YIELDS times in a row at the same gfn: it would
 * never finish (KVM yields only after forward progress, ed5e484b79e8 "KVM: x86/mmu:
 * Ensure forward progress when yielding in TDP MMU iter"); reported, the walk ends. */
#define TDP_WALK_STUCK_YIELDS 1000
void checker_report_walk_livelock(struct tdp_vm *vm, const struct tdp_root *root, const struct tdp_iter *it);
/* For the explorer: does the vCPU's current root still give this cached translation? */
void checker_probe_hazard(struct tdp_vm *vm, struct vcpu *v, u64 gfn, u64 pfn, int cached_level);

/* State invariants (struct tdp_config.invariants). After every top-level operation
 * (vm_op_end(), so also at every stop of a stepped operation at a yield point):
 * well-formed tables, leaf counters, root refcounts and leaks. */
void checker_check_invariants(struct tdp_vm *vm);
/* I1 (kind TDP_V_NOTIFIER_RANGE_MAPPED) or I5 (TDP_V_DELETED_SLOT_MAPPED): no
 * present leaf SPTE in any root - valid or invalid, SMM or not - maps a gfn of
 * [start, end). Called where it must hold: after the notifier's zap, before the
 * host frees the pages; when memslot deletion returns. */
void checker_check_range_unmapped(struct tdp_vm *vm, u64 start, u64 end, int kind);
/* I6 (kind TDP_V_UNLOGGED_WRITABLE): once enabling dirty logging or harvesting the log
 * (kvm_get_dirty_log_protect()) returns, no writable leaf SPTE in a valid root maps a
 * gfn of the slot whose dirty bit is clear (a write through it would be neither
 * faulted nor logged). Called where it must hold. */
struct memslot;
void checker_check_dirty_log(struct tdp_vm *vm, struct memslot *s);
/* I5: a fault installed gfn into root: the root must still be valid
 * (is_page_fault_stale() makes a fault whose root was invalidated retry). */
void checker_check_fault_install(struct tdp_vm *vm, const struct tdp_root *root, u64 gfn, int level);

#endif
