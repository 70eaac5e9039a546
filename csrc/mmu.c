/* mmu.c — KVM's mmu/mmu.c role over the TDP MMU: the page-fault entry
 * (kvm_tdp_page_fault(), fast_page_fault() then the slow path), mapping a gfn on
 * request (kvm_tdp_map_page()), the MMU-wide fast zap (kvm_mmu_zap_all_fast()), and
 * the callers of the TDP MMU's zaps with the flush each owes:
 * kvm_zap_gfn_range(), kvm_arch_flush_shadow_memslot(). The TDP MMU's zaps return
 * "flush needed"; the functions here perform it, once, for every path that calls
 * them (synchronous API, stepped operations, the explorer).
 *
 * Stepped operations: a long operation started by tdp_op_start() runs to its next
 * yield point on every tdp_op_step() (KVM drops mmu_lock there); a handler per
 * kind checks its arguments, starts it, and finishes it as its caller does once
 * the walk is over. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

/* kvm_mmu_zap_all_fast(): invalidate every root and ask every vCPU to drop its
 * obsolete root in the same critical section, then zap the invalid roots before
 * returning. No flush: vCPUs flush when they load their next root. */
void kvm_mmu_zap_all_fast(struct tdp_vm *vm)
{
	vm->memslots_gen++;
	tdp_mmu_invalidate_roots(vm);
	kvm_make_all_cpus_request(vm, TDP_REQ_MMU_FREE_OBSOLETE_ROOTS);
	tdp_mmu_zap_invalidated(vm, true);
}

static bool spte_allows(const struct spte_masks *m, u64 s, int access)
{
	unsigned p = spte_hw_perms(m, s);
	switch (access) {
	case TDP_ACC_READ: return (p & 1) != 0;
	case TDP_ACC_WRITE: return (p & 2) != 0;
	default: return (p & 4) != 0;
	}
}

/* fast_page_fault(): a present leaf that only lacks A (access tracking) or W
 * (MMU-writable, not dirty-logged at a huge level) is fixed in place, locklessly;
 * one that already allows the access is spurious. -1: the slow path must run. */
static int fast_page_fault(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int access, struct memslot *slot)
{
	int lvl;
	u64 *sptep;
	u64 spte = tdp_mmu_lookup(vm, root, gfn, &lvl, &sptep);

	if (!is_shadow_present_pte(spte) || !is_last_spte(spte, lvl))
		return -1;
	u64 nw = spte;
	if (is_access_tracked_spte(&vm->masks, spte)) /* and A, where A is a software bit (v6.13) */
		nw = restore_acc_track_spte(&vm->masks, spte) | vm->masks.accessed;
	if (access == TDP_ACC_WRITE && !(nw & SPTE_W) && is_mmu_writable_spte(&vm->masks, nw) &&
	    !(lvl > 1 && slot && (slot->flags & TDP_SLOT_DIRTY_LOG)))
		nw |= SPTE_W;
	if (!spte_allows(&vm->masks, nw, access))
		return -1;
	if (nw == spte) {
		vm->stats[ST_pf_spurious]++;
		return RET_PF_SPURIOUS;
	}
	vm->cov.root_invalid = root->invalid;
	cov_note_spte(&vm->cov, spte, nw, lvl);
	*sptep = nw;
	hostmem_note_ptr(&vm->mem, sptep);
	vm->stats[ST_pf_fast]++;
	vm->stats[ST_spte_writes]++;
	vm_cost(vm, vm->costs.spte_write);
	vm_trace(vm, TR_SPTE_CHANGED, (u32)lvl, gfn, spte, nw);
	if ((nw & SPTE_W) && !(spte & SPTE_W) && slot && (slot->flags & TDP_SLOT_DIRTY_LOG))
		vm_mark_dirty(vm, slot, gfn);
	return RET_PF_FIXED;
}

/* The end of a fault's map step, synchronous or the second half of a two-half
 * fault: the outcome counted as kvm_mmu_do_page_fault() counts it (pf_fixed,
 * pf_emulate, pf_spurious; retries here too), and I5 on a fresh install. */
static int fault_mapped(struct tdp_vm *vm, struct tdp_root *root, const struct kvm_page_fault *fault, int r)
{
	switch (r) {
	case RET_PF_FIXED:
		vm->stats[ST_pf_fixed]++;
		if (vm->cfg.invariants)
			checker_check_fault_install(vm, root, fault->gfn, fault->goal_level); /* I5 */
		break;
	case RET_PF_SPURIOUS: vm->stats[ST_pf_spurious]++; break;
	case RET_PF_EMULATE: vm->stats[ST_pf_emulate]++; break;
	case RET_PF_RETRY: vm->stats[ST_pf_retry]++; break;
	default: break;
	}
	return r;
}

/* kvm_tdp_page_fault(): fast_page_fault() first (lockless; only ever adds
 * permissions, so never a flush), then the slow path: faultin the pfn, pick the
 * goal level (kvm_mmu_hugepage_adjust), retry if stale, and map. */
int kvm_tdp_page_fault(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int access)
{
	struct kvm_page_fault fault = {
		.gfn = gfn, .slot = vm_slot_of(vm, gfn), .write = access == TDP_ACC_WRITE,
		.exec = access == TDP_ACC_EXEC || access == TDP_ACC_EXEC_USER, .prefetch = false};
	struct memslot *slot = fault.slot;
	bool write = fault.write;

	vm->stats[ST_pf_taken]++;
	vm_cost(vm, vm->costs.fault);
	vm_trace(vm, TR_FAULT, (u32)access, gfn, root ? root->id : 0, 0);
	if (!root || root->invalid) {
		vm->stats[ST_pf_retry]++;
		return RET_PF_RETRY;
	}
	int fast = fast_page_fault(vm, root, gfn, access, slot);
	if (fast >= 0)
		return fast;
	if (slot && write && (slot->flags & TDP_SLOT_READONLY)) {
		vm->stats[ST_pf_emulate]++;
		return RET_PF_EMULATE;
	}
	/* kvm_mmu_hugepage_adjust(), and the NX mitigation's exec fault at 4K. */
	fault.req_level = fault.goal_level = slot ? vm_max_mapping_level(vm, slot, gfn) : 1;
	if (fault.exec && vm->pol.nx_huge_pages && fault.goal_level > 1) {
		fault.huge_page_disallowed = true;
		fault.goal_level = 1;
	}
	/* is_page_fault_stale() / the memslot being deleted: the fault retries
	 * until the invalidation ends; the vCPU is blocked, not livelocked. */
	if ((vm->mmu_invalidate_in_progress && gfn >= vm->mmu_invalidate_start && gfn < vm->mmu_invalidate_end) ||
	    (slot && slot->deleting)) {
		vm->stats[ST_pf_retry]++;
		return RET_PF_BLOCKED;
	}
	if (slot && vm_fault_in_pfn(vm, slot, gfn) == NO_PFN)
		return RET_PF_NOMEM;
	bool flushed;
	/* The walk follows the faulting gfn; the target level aligns it (so a goal
	 * lowered on the way down still maps this gfn). */
	return fault_mapped(vm, root, &fault, tdp_mmu_map_gfn(vm, root, &fault, &flushed));
}

/* ------------------------------------------------------------------ a fault in two halves */

/* mmu_invalidate_retry_gfn(): an invalidation covering gfn is in progress, or one
 * ended since mmu_seq was read. */
static bool mmu_invalidate_retry_gfn(struct tdp_vm *vm, u64 mmu_seq, u64 gfn)
{
	if (vm->mmu_invalidate_in_progress && gfn >= vm->mmu_invalidate_start && gfn < vm->mmu_invalidate_end)
		return true;
	return vm->mmu_invalidate_seq != mmu_seq;
}

/* kvm_tdp_page_fault() split where KVM itself lets other CPUs in: the first half
 * (fast_page_fault(), then kvm_faultin_pfn() outside mmu_lock, after reading
 * mmu_invalidate_seq) runs when the operation starts; the second half, under
 * mmu_lock, at its first step: is_page_fault_stale() -- the root invalid or gone,
 * or mmu_invalidate_retry_gfn() -- makes the fault retry; otherwise the pfn of the
 * first half is mapped. Host invalidations, memslot deletion and root invalidation
 * can run in between. */
static int page_fault_check(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	int r;
	if (a >= (u64)vm->cfg.nvcpus)
		return vm_err(vm, TDP_EINVAL, "vcpu %llu out of range (the VM has %d)", (unsigned long long)a,
			      vm->cfg.nvcpus);
	if ((r = vm_check_gfn(vm, "gfn", b)))
		return r;
	if (c > TDP_ACC_EXEC_USER)
		return vm_err(vm, TDP_EINVAL, "access must be 0..%d (r, w, x, xu), got %llu", TDP_ACC_EXEC_USER,
			      (unsigned long long)c);
	struct tdp_root *root = tdp_mmu_find_root(vm, vm->vcpus[a].root_id);
	if (!root)
		return vm_err(vm, TDP_ESTATE, "vcpu %llu has no root loaded (vcpu_run it first)", (unsigned long long)a);
	return 0;
}

static void page_fault_start(struct tdp_vm *vm, struct vm_op *o)
{
	struct fault_half *fh = &o->fault;
	struct tdp_root *root = tdp_mmu_find_root(vm, vm->vcpus[o->a].root_id);
	u64 gfn = o->b;
	int access = (int)o->c;
	struct memslot *slot = vm_slot_of(vm, gfn);

	fh->root = root->id;
	fh->pfn = NO_PFN;
	fh->result = -1;
	vm->stats[ST_pf_taken]++;
	vm_cost(vm, vm->costs.fault);
	vm_trace(vm, TR_FAULT, (u32)access, gfn, root->id, 0);
	if (root->invalid) {
		fh->result = RET_PF_RETRY;
		return;
	}
	int fast = fast_page_fault(vm, root, gfn, access, slot);
	if (fast >= 0) {
		fh->result = fast;
		return;
	}
	if (slot && access == TDP_ACC_WRITE && (slot->flags & TDP_SLOT_READONLY)) {
		vm->stats[ST_pf_emulate]++;
		fh->result = RET_PF_EMULATE;
		return;
	}
	fh->mmu_seq = vm->mmu_invalidate_seq;
	/* kvm_faultin_pfn(): the host page now (the host allocates one for a gfn it
	 * unmapped). A fault racing an invalidation in progress gives up at once. */
	if ((vm->mmu_invalidate_in_progress && gfn >= vm->mmu_invalidate_start && gfn < vm->mmu_invalidate_end) ||
	    (slot && slot->deleting)) {
		vm->stats[ST_pf_retry]++;
		fh->result = RET_PF_BLOCKED;
		return;
	}
	if (slot) {
		fh->pfn = vm_fault_in_pfn(vm, slot, gfn);
		if (fh->pfn == NO_PFN)
			fh->result = RET_PF_NOMEM;
	}
}

static int page_fault_run(struct tdp_vm *vm, struct vm_op *o)
{
	struct fault_half *fh = &o->fault;
	u64 gfn = o->b;
	int access = (int)o->c;

	if (fh->result >= 0)
		return 1; /* the first half ended the fault */
	struct tdp_root *root = tdp_mmu_find_root(vm, fh->root);
	struct memslot *slot = vm_slot_of(vm, gfn);
	/* is_page_fault_stale(). A memslot deleted or added over gfn since the first half
	 * went with a fast zap (every root invalid) or not at all; with B18's precise
	 * zap the root stays valid, and the fault retries as well (model choice: the
	 * first half's memslot is gone). */
	bool stale = !vm->cfg.stale_fault && (!root || root->invalid || mmu_invalidate_retry_gfn(vm, fh->mmu_seq, gfn));
	if (!root || stale || (slot == NULL) != (fh->pfn == NO_PFN) || (slot && slot->deleting)) {
		vm->stats[ST_pf_retry]++;
		fh->result = RET_PF_RETRY;
		return 1;
	}
	struct kvm_page_fault fault = {
		.gfn = gfn, .slot = slot, .write = access == TDP_ACC_WRITE,
		.exec = access == TDP_ACC_EXEC || access == TDP_ACC_EXEC_USER, .prefetch = false,
		.has_pfn = slot != NULL, .pfn = fh->pfn};
	/* kvm_mmu_hugepage_adjust() runs under mmu_lock; the mapping level is the host's
	 * now. Only a pfn that no longer backs gfn (the host changed the page and the
	 * stale check above was not made) maps at 4K. */
	fault.req_level = fault.goal_level = slot ? vm_max_mapping_level(vm, slot, gfn) : 1;
	if (slot && vm_gfn_to_pfn(vm, slot, gfn) != fh->pfn)
		fault.req_level = fault.goal_level = 1;
	if (fault.exec && vm->pol.nx_huge_pages && fault.goal_level > 1) {
		fault.huge_page_disallowed = true;
		fault.goal_level = 1;
	}
	bool flushed;
	fh->result = fault_mapped(vm, root, &fault, tdp_mmu_map_gfn(vm, root, &fault, &flushed));
	return 1;
}

static int page_fault_finish(struct tdp_vm *vm, struct vm_op *o)
{
	(void)vm;
	return o->fault.result;
}

/* ------------------------------------------------------------------ map on request */

/* table: the last-level table the first try's walk is known to end in
 * (tdp_mmu_last_level_table()), or NULL to walk. */
static int map_page(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int level, bool *flushed, u64 *table)
{
	for (int tries = 0; tries < 4; tries++) {
		struct kvm_page_fault fault = {.gfn = gfn, .slot = vm_slot_of(vm, gfn), .req_level = level,
					       .goal_level = level};
		if (fault.slot && vm_fault_in_pfn(vm, fault.slot, gfn) == NO_PFN)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted");
		int r = tries == 0 && table ? tdp_mmu_map_gfn_in_table(vm, root, &fault, table, flushed)
					    : tdp_mmu_map_gfn(vm, root, &fault, flushed);
		if (r == RET_PF_NOMEM)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted");
		if (r != RET_PF_RETRY) {
			if (r == RET_PF_FIXED)
				vm->stats[ST_pf_fixed]++;
			return 0;
		}
	}
	return vm_err(vm, TDP_ELIVELOCK, "mapping gfn 0x%llx kept retrying", (unsigned long long)gfn);
}

int kvm_tdp_map_page(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int level, bool *flushed)
{
	return map_page(vm, root, gfn, level, flushed, NULL);
}

/* kvm_tdp_map_page() for every level-sized page of [start, end), in order. At 4K
 * the walk to a last-level table is done once for the run of gfns it maps: each
 * later gfn's fault goes straight to its target-level step, while the level-2
 * SPTE that links the table is unchanged (the map of a 4K gfn never changes it;
 * cfg.no_bulk walks every time). */
int kvm_tdp_map_range(struct tdp_vm *vm, struct tdp_root *root, u64 start, u64 end, int level, u64 *mapped)
{
	u64 span = pages_per_level(level), n = 0;
	u64 *table = NULL, *link = NULL, linkv = 0;
	int r;

	for (u64 g = start; g < end; g += span) {
		bool flushed;
		if (level == 1 && !vm->cfg.no_bulk) {
			if (table && (spte_index(g, 1) == 0 || *link != linkv))
				table = NULL;
			if (!table && (table = tdp_mmu_last_level_table(vm, root, g, &link)))
				linkv = *link;
		}
		if ((r = map_page(vm, root, g, level, &flushed, table)))
			return r;
		n++;
	}
	*mapped = n;
	return 0;
}

/* ------------------------------------------------------------------ callers of the zaps */

/* kvm_arch_flush_shadow_memslot(): the fast zap of everything (upstream), or
 * only the slot's gfns with a flush (the reverted precise zap, B18). */
void kvm_arch_flush_shadow_memslot(struct tdp_vm *vm, struct memslot *s)
{
	u64 start = s->base_gfn, end = s->base_gfn + s->npages;

	if (vm->pol.memslot_delete_zap_all) {
		kvm_mmu_zap_all_fast(vm);
	} else {
		/* not a KVM flush site: B18's precise zap (policy memslot_delete_zap_all off) */
		if (tdp_mmu_zap_leafs_all(vm, start, end, ROOTS_ALL, false, false))
			kvm_flush_remote_tlbs_range(vm, start, end - start);
	}
}

/* kvm_zap_gfn_range(): the zap reports "flush needed"; the caller flushes the
 * range before dropping mmu_lock. */
void kvm_zap_gfn_range_flush(struct tdp_vm *vm, u64 start, u64 end, bool flush_needed)
{
	if (flush_needed && FLUSH_SITE(vm, ZAP_GFN_RANGE))
		kvm_flush_remote_tlbs_range(vm, start, end - start);
}

/* After one root's recover_huge_pages_range(): flush the range it covered,
 * [start, end). */
void kvm_recover_huge_pages_flush(struct tdp_vm *vm, u64 start, u64 end, bool flush_needed)
{
	if (flush_needed && FLUSH_SITE(vm, RECOVER_HUGE))
		kvm_flush_remote_tlbs_range(vm, start, end - start);
}

int tdp_kvm_zap_gfn_range(tdp_vm *vm, uint64_t start, uint64_t end, int shared, int *flushed)
{
	/* Logged as the two public steps it is made of, tdp_mmu_zap_gfn_range() and
	 * (if it reported "flush needed") tdp_flush_remote_tlbs_range(), so an event
	 * log replays it with the vocabulary it always had. */
	int flush, r = tdp_mmu_zap_gfn_range(vm, start, end, shared, &flush);
	if (r)
		return r;
	*flushed = flush;
	if (!flush || !FLUSH_SITE(vm, ZAP_GFN_RANGE))
		return 0; /* (the mutant without this flush neither does nor logs it) */
	vm_op_start(vm); /* the flush the zap owes happens whatever else is pending */
	kvm_zap_gfn_range_flush(vm, start, end, true);
	vm_log(vm, EV_FLUSH_RANGE, start, end - start, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

/* ------------------------------------------------------------------ stepped operations */

struct vm_op *vm_find_op(tdp_vm *vm, u32 id, int *idx)
{
	for (int i = 0; i < vm->nops; i++)
		if (vm->ops[i]->id == id) {
			if (idx)
				*idx = i;
			return vm->ops[i];
		}
	return NULL;
}

/* Per stepped-operation kind: its argument checks (before anything changes), what
 * its caller does before the walk and how the walk is set up, and what the caller
 * does once the walk is over (the flush it owes), returning the operation's result. */
struct stepped_op_handler {
	int (*check)(struct tdp_vm *vm, u64 a, u64 b, u64 c);
	void (*start)(struct tdp_vm *vm, struct vm_op *o);
	int (*finish)(struct tdp_vm *vm, struct vm_op *o);
	/* one step, when it is not a walk to the next yield point (tdp_op_run()):
	 * 0 to go on, 1 finished, <0 TDP_E* */
	int (*run)(struct tdp_vm *vm, struct vm_op *o);
};

static bool op_flush_needed(const struct vm_op *o) { return o->op.flush || o->op.result_flush; }

static int check_range_args(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	(void)c;
	return vm_check_range(vm, a, b);
}

static int check_no_args(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	(void)vm, (void)a, (void)b, (void)c;
	return 0;
}

/* kvm_zap_gfn_range(): a start, b end, c shared. */
static void zap_gfn_range_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_ZAP_LEAFS, ROOTS_VALID, o->a, o->b, o->c != 0);
}

static int zap_gfn_range_finish(struct tdp_vm *vm, struct vm_op *o)
{
	bool flush = op_flush_needed(o);
	kvm_zap_gfn_range_flush(vm, o->a, o->b, flush);
	return flush;
}

/* The MMU notifier's invalidation of [a, b). */
static int host_unmap_check(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	int r = check_range_args(vm, a, b, c);
	return r ? r : mmu_notifier_unmap_prepare(vm, a, b);
}

static void host_unmap_start(struct tdp_vm *vm, struct vm_op *o)
{
	kvm_mmu_invalidate_begin(vm, o->a, o->b);
	tdp_op_init(vm, &o->op, OP_ZAP_LEAFS, mmu_notifier_roots(vm), o->a, o->b, false);
}

static int host_unmap_finish(struct tdp_vm *vm, struct vm_op *o)
{
	bool flush = op_flush_needed(o);
	mmu_notifier_unmap_finish(vm, o->a, o->b, flush);
	return flush;
}

/* kvm_tdp_mmu_zap_invalidated_roots(): never a flush. */
static void zap_invalidated_roots_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm_max_gfn(vm), true);
}

static int no_flush_finish(struct tdp_vm *vm, struct vm_op *o)
{
	(void)vm, (void)o;
	return 0;
}

/* A memslot deletion: a is the slot id. */
static int delete_memslot_check(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	struct memslot *slot = a > 0x7fffffff ? NULL : memslot_by_id(vm, (int)a);
	(void)b, (void)c;
	if (!slot)
		return vm_err(vm, TDP_ENOENT, "memslot %llu does not exist (deleted or never added)", (unsigned long long)a);
	if (slot->deleting)
		return vm_err(vm, TDP_ESTATE, "memslot %llu is already being deleted", (unsigned long long)a);
	return 0;
}

static void delete_memslot_start(struct tdp_vm *vm, struct vm_op *o)
{
	struct memslot *slot = memslot_by_id(vm, (int)o->a);

	/* The slot becomes KVM_MEMSLOT_INVALID (faults on it wait), then the roots
	 * go as in kvm_mmu_zap_all_fast(), or only the slot (B18). */
	slot->deleting = true;
	vm->memslots_gen++;
	if (vm->pol.memslot_delete_zap_all) {
		tdp_mmu_invalidate_roots(vm);
		kvm_make_all_cpus_request(vm, TDP_REQ_MMU_FREE_OBSOLETE_ROOTS);
		tdp_op_init(vm, &o->op, OP_ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm_max_gfn(vm), true);
	} else {
		tdp_op_init(vm, &o->op, OP_ZAP_LEAFS, ROOTS_ALL, slot->base_gfn, slot->base_gfn + slot->npages, false);
	}
}

static int delete_memslot_finish(struct tdp_vm *vm, struct vm_op *o)
{
	struct memslot *s = memslot_by_id(vm, (int)o->a);
	if (!vm->pol.memslot_delete_zap_all && op_flush_needed(o) && s) /* not a KVM flush site: B18 */
		kvm_flush_remote_tlbs_range(vm, s->base_gfn, s->npages);
	if (s) {
		checker_check_range_unmapped(vm, s->base_gfn, s->base_gfn + s->npages, TDP_V_DELETED_SLOT_MAPPED); /* I5 */
		memslot_free(vm, s);
	}
	vm->memslots_gen++;
	return 0;
}

/* Write-protect or clear dirty bits over [a, b): the caller flushes the range if
 * an SPTE lost W or D. */
static void wrprot_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_WRPROT, ROOTS_VALID, o->a, o->b, true);
}

static void clear_dirty_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_CLEAR_DIRTY, ROOTS_VALID, o->a, o->b, true);
}

static int wrprot_finish(struct tdp_vm *vm, struct vm_op *o)
{
	if (o->op.result && FLUSH_SITE(vm, WRPROT))
		kvm_flush_remote_tlbs_range(vm, o->a, o->b - o->a);
	return o->op.result;
}

/* Split huge pages in [a, b) down to level c: never a flush. */
static int split_check(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	int r = vm_check_range(vm, a, b);
	if (!r && (c < 1 || c > 2))
		r = vm_err(vm, TDP_EINVAL, "target_level must be 1 (4K) or 2 (2M), got %llu", (unsigned long long)c);
	return r;
}

static void split_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_SPLIT, ROOTS_VALID, o->a, o->b, true);
	o->op.target_level = (int)o->c;
}

/* Recover huge pages in [a, b): each root that changed flushes at its end
 * (tdp_mmu_recover_huge_root_done()); the result says whether one did. */
static void recover_huge_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_RECOVER_HUGE, ROOTS_VALID, o->a, o->b, true);
}

static int recover_huge_finish(struct tdp_vm *vm, struct vm_op *o)
{
	(void)vm;
	return o->op.result;
}

/* kvm_recover_nx_huge_pages(): a count (0: by nx_recovery_ratio); it flushes itself. */
static int nx_recover_check(struct tdp_vm *vm, u64 a, u64 b, u64 c)
{
	(void)b, (void)c;
	if (a > (1u << 30))
		return vm_err(vm, TDP_EINVAL, "count must be 0..%u", 1u << 30);
	return 0;
}

static void nx_recover_start(struct tdp_vm *vm, struct vm_op *o)
{
	tdp_op_init(vm, &o->op, OP_NX_RECOVER, ROOTS_ALL, 0, 0, false);
	o->op.nx_left = o->a ? (int)o->a : (vm->pol.nx_recovery_ratio > 0 ? (int)((vm->nnx + (u32)vm->pol.nx_recovery_ratio - 1) / (u32)vm->pol.nx_recovery_ratio) : 0);
}

static int nx_recover_finish(struct tdp_vm *vm, struct vm_op *o)
{
	(void)vm;
	return o->op.nx_done;
}

static const struct stepped_op_handler stepped_ops[] = {
	[TDP_OP_ZAP_GFN_RANGE] = {check_range_args, zap_gfn_range_start, zap_gfn_range_finish},
	[TDP_OP_HOST_UNMAP] = {host_unmap_check, host_unmap_start, host_unmap_finish},
	[TDP_OP_ZAP_INVALIDATED_ROOTS] = {check_no_args, zap_invalidated_roots_start, no_flush_finish},
	[TDP_OP_DELETE_MEMSLOT] = {delete_memslot_check, delete_memslot_start, delete_memslot_finish},
	[TDP_OP_WRPROT] = {check_range_args, wrprot_start, wrprot_finish},
	[TDP_OP_CLEAR_DIRTY] = {check_range_args, clear_dirty_start, wrprot_finish},
	[TDP_OP_SPLIT] = {split_check, split_start, no_flush_finish},
	[TDP_OP_RECOVER_HUGE] = {check_range_args, recover_huge_start, recover_huge_finish},
	[TDP_OP_NX_RECOVER] = {nx_recover_check, nx_recover_start, nx_recover_finish},
	[TDP_OP_PAGE_FAULT] = {page_fault_check, page_fault_start, page_fault_finish, page_fault_run},
};
_Static_assert(sizeof(stepped_ops) / sizeof(stepped_ops[0]) == TDP_OP_LAST + 1,
	       "a handler for every enum tdp_op_kind");

int tdp_op_start(tdp_vm *vm, int kind, uint64_t a, uint64_t b, uint64_t c, int yield_every, uint32_t *op_id)
{
	int r;

	VM_OP_BEGIN(vm);
	if (yield_every < 1 || yield_every > (1 << 24))
		return vm_err(vm, TDP_EINVAL, "yield_every must be 1..16777216, got %d", yield_every);
	if (kind < TDP_OP_ZAP_GFN_RANGE || kind > TDP_OP_LAST)
		return vm_err(vm, TDP_EINVAL, "unknown operation kind %d", kind);
	const struct stepped_op_handler *h = &stepped_ops[kind];
	if ((r = h->check(vm, a, b, c)))
		return r;
	struct vm_op *o = calloc(1, sizeof(*o));
	struct vm_op **n = o ? realloc(vm->ops, (size_t)(vm->nops + 1) * sizeof(*n)) : NULL;
	if (!n) {
		free(o);
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	}
	vm->ops = n;
	o->id = ++vm->next_op_id;
	o->kind = kind;
	o->a = a;
	o->b = b;
	o->c = c;
	h->start(vm, o);
	o->op.yield_every = yield_every;
	vm->ops[vm->nops++] = o;
	*op_id = o->id;
	/* a[4]: yield_every, and the id the operation got (for replays). */
	vm_log(vm, EV_OP_START, (u64)kind, a, b, c, (u64)(u32)yield_every | ((u64)o->id << 32));
	vm_op_end(vm);
	return 0;
}

int tdp_op_step(tdp_vm *vm, uint32_t op_id, int *done, int *result)
{
	int idx;
	struct vm_op *o;

	VM_OP_BEGIN(vm);
	o = vm_find_op(vm, op_id, &idx);
	if (!o)
		return vm_err(vm, TDP_ENOENT, "operation %u does not exist (finished, or never started)", op_id);
	int r = stepped_ops[o->kind].run ? stepped_ops[o->kind].run(vm, o) : tdp_op_run(vm, &o->op, true);
	*done = 0;
	*result = 0;
	if (r != 0) {
		/* Finished (or failed: the walk stopped where it was, as KVM's
		 * would on -ENOMEM; what it changed stays changed). */
		*result = stepped_ops[o->kind].finish(vm, o);
		*done = 1;
		memmove(&vm->ops[idx], &vm->ops[idx + 1], (size_t)(vm->nops - idx - 1) * sizeof(*vm->ops));
		vm->nops--;
		free(o);
	}
	vm_log(vm, EV_OP_STEP, op_id, 0, 0, 0, 0);
	vm_op_end(vm);
	if (r < 0)
		return vm_err(vm, r, "operation %u ran out of frames and stopped", op_id);
	return 0;
}

int tdp_op_list(tdp_vm *vm, uint32_t *ids, int max, int *n)
{
	for (int i = 0; i < vm->nops && i < max; i++)
		ids[i] = vm->ops[i]->id;
	*n = vm->nops;
	return 0;
}

