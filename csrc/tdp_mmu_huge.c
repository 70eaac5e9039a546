/* tdp_mmu_huge.c — huge pages in the TDP MMU: splitting a huge leaf into a table of
 * smaller ones (tdp_mmu_split_huge_page(), used by the fault path and by eager
 * splitting, tdp_mmu_split_huge_pages_root()), recovering huge mappings when dirty
 * logging ends (recover_huge_pages_range(), and the older
 * zap_collapsible_spte_range()), and the NX huge page mitigation's bookkeeping:
 * the possible-NX list (track_possible_nx_huge_page()) and its recovery worker
 * (kvm_recover_nx_huge_pages(), mmu/mmu.c upstream).
 *
 * Why its own file: upstream keeps these in mmu/tdp_mmu.c and mmu/mmu.c, but they
 * form one concern a KVM reader looks for together (a huge page changing shape)
 * and share the possible-NX list and the split helper; the rest of tdp_mmu.c is
 * roots, the SPTE writers, the zap family and the stepped-operation driver these
 * run on. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

static inline u64 *table_of(struct tdp_vm *vm, u32 f) { return hostmem_table(&vm->mem, f); }

void untrack_possible_nx_huge_page(struct tdp_vm *vm, u32 f)
{
	for (u32 i = 0; i < vm->nnx; i++) {
		if (vm->nx_list[i] == f) {
			memmove(&vm->nx_list[i], &vm->nx_list[i + 1], (vm->nnx - i - 1) * sizeof(u32));
			vm->nnx--;
			break;
		}
	}
	vm->mem.frames[f].sp_nx = 0;
	vm->stats[ST_nx_lpage_splits] = vm->nnx;
}

int track_possible_nx_huge_page(struct tdp_vm *vm, u32 f)
{
	if (vm->nnx == vm->nx_cap) {
		u32 ncap = vm->nx_cap ? vm->nx_cap * 2 : 64;
		u32 *n = realloc(vm->nx_list, ncap * sizeof(u32));
		if (!n) {
			vm_drop_record(vm); /* the page is not recovered later; the caller learns it */
			return -1;
		}
		vm->nx_list = n;
		vm->nx_cap = ncap;
	}
	vm->nx_list[vm->nnx++] = f;
	vm->mem.frames[f].sp_nx = 1;
	vm->stats[ST_nx_lpage_splits] = vm->nnx;
	return 0;
}


static bool subtree_has_leaf(struct tdp_vm *vm, u32 f)
{
	const u64 *t = hostmem_table_read(&vm->mem, f);
	int level = vm->mem.frames[f].sp_level;

	for (int i = 0; i < 512; i++) {
		if (!is_shadow_present_pte(t[i]))
			continue;
		if (is_last_spte(t[i], level))
			return true;
		u32 c = spte_to_child_frame(&vm->mem, t[i], level);
		if (c != NO_FRAME && subtree_has_leaf(vm, c))
			return true;
	}
	return false;
}

/* tdp_mmu_split_huge_page(): fill a child table with make_small_spte() and link
 * it over the huge leaf. No flush: the translations are identical. */
int tdp_mmu_split_huge_page(struct tdp_vm *vm, struct tdp_iter *it, struct tdp_root *root, bool shared,
			   bool nx_disallowed)
{
	u32 f = tdp_mmu_alloc_sp(vm, it->level - 1, it->gfn, root->id, tdp_iter_frame(it));
	u64 *t;

	if (f == NO_FRAME)
		return TDP_ENOMEM;
	t = table_of(vm, f);
	for (int i = 0; i < 512; i++)
		t[i] = make_small_spte(&vm->masks, it->old_spte, it->level, i);
	if (vm->pol.nx_huge_pages && it->level - 1 == 1)
		for (int i = 0; i < 512; i++)
			t[i] = make_spte_executable(&vm->masks, t[i]); /* 4K children are executable again */
	tdp_mmu_account_leaf(vm, it->level - 1, 512);
	u64 nw = make_nonleaf_spte(&vm->masks, hostmem_pfn(&vm->mem, f));
	if (shared) {
		if (tdp_mmu_set_spte_atomic(vm, it, nw)) {
			tdp_mmu_account_leaf(vm, it->level - 1, -512);
			vm->mem.frames[f].sp_unlinked = 1;
			vm->stats[ST_mmu_pages]--;
			hostmem_free_now(&vm->mem, f);
			return -1;
		}
	} else {
		tdp_mmu_iter_set_spte(vm, it, nw);
	}
	if (nx_disallowed)
		track_possible_nx_huge_page(vm, f);
	vm->stats[ST_huge_pages_split]++;
	return 0;
}

/* The first present leaf below a table, depth first in gfn order, as
 * tdp_root_for_each_leaf_pte() finds it (recover_huge_pages_range()'s
 * make_huge_spte() source); 0 if the subtree maps nothing. */
static u64 first_leaf_below(struct tdp_vm *vm, u32 f, int level)
{
	const u64 *t = hostmem_table_read(&vm->mem, f);

	for (int k = 0; k < 512; k++) {
		if (!is_shadow_present_pte(t[k]))
			continue;
		if (is_last_spte(t[k], level))
			return t[k];
		u32 c = spte_to_child_frame(&vm->mem, t[k], level);
		u64 leaf = c == NO_FRAME ? 0 : first_leaf_below(vm, c, level - 1);
		if (leaf)
			return leaf;
	}
	return 0;
}

/* recover_huge_pages_range() (13e2e4f62a4b "KVM: x86/mmu: Recover TDP MMU huge
 * page mappings in-place instead of zapping", v6.13): CMPXCHG a huge SPTE built
 * from a child leaf over a table whose range may now be mapped huge; the pending
 * flush is done before yielding and at the end of each root
 * (tdp_mmu_recover_huge_root_done()). huge_recovery="zap_collapsible" is the older
 * zap_collapsible_spte_range() (<= v6.12): zap the table with the self-flushing
 * atomic zap, one flush per collapsed huge page; the next fault maps it huge. */
int tdp_mmu_recover_huge_spte(struct tdp_vm *vm, struct tdp_op *op)
{
	struct tdp_iter *it = &op->it;

	if (it->level > 3 || !is_shadow_present_pte(it->old_spte) || is_last_spte(it->old_spte, it->level))
		return 0;
	struct memslot *s = vm_slot_of(vm, it->gfn);
	if (!s || vm_max_mapping_level(vm, s, it->gfn) < it->level)
		return 0;
	/* A present leaf anywhere below to build the huge SPTE from. */
	u32 c = spte_to_child_frame(&vm->mem, it->old_spte, it->level);
	u64 leaf = c == NO_FRAME ? 0 : first_leaf_below(vm, c, it->level - 1);
	if (!leaf)
		return 0;
	if (vm->pol.huge_recovery == 1) {
		if (tdp_mmu_zap_spte_atomic(vm, it))
			return 1;
		vm->stats[ST_huge_pages_recovered]++;
		return 0;
	}
	u64 pfn = vm_gfn_to_pfn(vm, s, it->gfn);
	u64 huge = make_huge_spte(&vm->masks, leaf, it->level);
	huge = (huge & ~SPTE_PFN_MASK) | ((pfn << 12) & SPTE_PFN_MASK);
	if (vm->pol.nx_huge_pages)
		huge = (huge & ~vm->masks.x) | vm->masks.nx;
	if (tdp_mmu_set_spte_atomic(vm, it, huge))
		return 1;
	vm->stats[ST_huge_pages_recovered]++;
	if (FLUSH_SITE(vm, RECOVER_HUGE_FLAG))
		op->flush = true;
	/* The flush must cover the whole huge page (KVM flushes the memslot), not
	 * just the window: a 1G leaf unlinks tables outside it. */
	u64 lo = it->gfn, hi = it->gfn + pages_per_level(it->level);
	if (!op->chg_hi || lo < op->chg_lo)
		op->chg_lo = lo;
	if (hi > op->chg_hi)
		op->chg_hi = hi;
	return 0;
}

/* The end of one root's recover_huge_pages_range(): if this root changed, the
 * flush of the memslot (kvm_flush_remote_tlbs_memslot(): here the range asked
 * for, widened to every huge page installed, as a 1G leaf unlinks tables outside
 * it) -- one flush per root that changed, as kvm_tdp_mmu_recover_huge_pages()
 * walks each valid root. op->result says a flush was done. */
void tdp_mmu_recover_huge_root_done(struct tdp_vm *vm, struct tdp_op *op)
{
	if (!op->flush)
		return;
	u64 lo = op->start, hi = op->end;
	if (op->chg_hi) {
		lo = op->chg_lo < lo ? op->chg_lo : lo;
		hi = op->chg_hi > hi ? op->chg_hi : hi;
	}
	kvm_recover_huge_pages_flush(vm, lo, hi, true);
	op->flush = false;
	op->result = true;
	op->chg_lo = op->chg_hi = 0;
}

/* kvm_recover_nx_huge_pages(): zap a batch of possible-NX tables; flush before
 * every yield and at the end (B4: the pending flush was overwritten, not OR-ed;
 * v5.12's zap_sp returned whether the table's range still had leaves). */
int tdp_mmu_nx_recover_run(struct tdp_vm *vm, struct tdp_op *op, bool stop_at_yield)
{
	for (; op->nx_left > 0 && vm->nnx; op->nx_left--) {
		if (op->resume_next) {
			op->resume_next = false;
			continue; /* this SP was handled before the yield */
		}
		u32 f = vm->nx_list[0];
		struct memslot *s = vm_slot_of(vm, vm->mem.frames[f].sp_gfn);
		if (s && (s->flags & TDP_SLOT_DIRTY_LOG)) {
			untrack_possible_nx_huge_page(vm, f);
		} else {
			if (vm->pol.nx_recovery_flush_assign) {
				bool had = subtree_has_leaf(vm, f);
				tdp_mmu_zap_sp_frame(vm, f);
				op->flush = had;
			} else {
				bool zapped = tdp_mmu_zap_sp_frame(vm, f);
				if (FLUSH_SITE(vm, NX_RECOVER_FLAG))
					op->flush |= zapped;
			}
			/* The gfns of the SPs zapped since the last flush (what a racer at the
			 * next yield aims at; the explorer reads it, the engine does not). */
			struct frame *fr = &vm->mem.frames[f];
			u64 lo = fr->sp_gfn, hi = lo + 512 * pages_per_level(fr->sp_level);
			op->chg_lo = op->flush_pending_range ? (lo < op->chg_lo ? lo : op->chg_lo) : lo;
			op->chg_hi = op->flush_pending_range ? (hi > op->chg_hi ? hi : op->chg_hi) : hi;
			op->flush_pending_range = true;
			if (vm->mem.frames[f].sp_nx)
				untrack_possible_nx_huge_page(vm, f);
			op->nx_done++;
		}
		if (tdp_op_need_resched(op)) {
			if (op->flush && FLUSH_SITE(vm, NX_RECOVER_YIELD)) {
				kvm_flush_remote_tlbs(vm);
				op->flush_pending_range = false;
			}
			op->flush = false;
			vm->stats[ST_iter_yields]++;
			vm_rcu_quiescent(vm, true);
			if (stop_at_yield) {
				op->resume_next = true;
				return 0;
			}
		}
	}
	if (op->flush && FLUSH_SITE(vm, NX_RECOVER_END))
		kvm_flush_remote_tlbs(vm);
	op->flush = false;
	return 1;
}

int tdp_mmu_split(struct tdp_vm *vm, u64 start, u64 end, int target_level)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_SPLIT, ROOTS_VALID, start, end, true);
	op.target_level = target_level;
	int r = tdp_op_run(vm, &op, false);
	return r < 0 ? r : 0;
}

bool tdp_mmu_recover_huge(struct tdp_vm *vm, u64 start, u64 end)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_RECOVER_HUGE, ROOTS_VALID, start, end, true);
	tdp_op_run(vm, &op, false);
	return op.result;
}

int tdp_mmu_recover_nx(struct tdp_vm *vm, int count, int *zapped)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_NX_RECOVER, ROOTS_ALL, 0, 0, false);
	if (count <= 0)
		count = vm->pol.nx_recovery_ratio > 0 ? (int)((vm->nnx + (u32)vm->pol.nx_recovery_ratio - 1) / (u32)vm->pol.nx_recovery_ratio) : 0;
	op.nx_left = count;
	tdp_mmu_nx_recover_run(vm, &op, false);
	*zapped = op.nx_done;
	return 0;
}

