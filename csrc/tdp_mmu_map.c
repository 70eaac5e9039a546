/* tdp_mmu_map.c — the TDP MMU's fault path: kvm_tdp_mmu_map() walking a root to the
 * faulting gfn (allocating and linking tables, splitting a huge leaf that is in the
 * way, zapping a table a huge leaf replaces) and tdp_mmu_map_handle_target_level()
 * making the leaf; plus the read-only lookups around it (the table a gfn's walk
 * reaches, the tables a range still needs).
 *
 * Why its own file: upstream keeps these in mmu/tdp_mmu.c; here they sit apart from the
 * roots, SPTE writers, zap family and stepped-operation driver of tdp_mmu.c so each file
 * stays one concern a KVM reader can read whole. */
#include "vm.h"

static inline u64 *table_of(struct tdp_vm *vm, u32 f) { return hostmem_table(&vm->mem, f); }

u32 tdp_mmu_find_sp(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int level)
{
	u32 f = root->frame;

	for (int l = root->level; l > level && f != NO_FRAME; l--)
		f = spte_to_child_frame(&vm->mem, hostmem_table_read(&vm->mem, f)[spte_index(gfn, l)], l);
	return f;
}

u64 tdp_mmu_lookup(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int *level, u64 **sptep)
{
	u32 f = root->frame;
	u64 spte = SHADOW_NONPRESENT_VALUE;

	for (int l = root->level; l >= 1; l--) {
		u64 *p = hostmem_table_read(&vm->mem, f) + spte_index(gfn, l);
		spte = *p;
		*level = l;
		if (sptep)
			*sptep = p;
		if (!is_shadow_present_pte(spte) || is_last_spte(spte, l))
			return spte;
		f = spte_to_child_frame(&vm->mem, spte, l);
		if (f == NO_FRAME)
			return spte;
	}
	return spte;
}

u64 tdp_mmu_tables_needed(struct tdp_vm *vm, struct tdp_root *root, u64 start, u64 end, int level)
{
	/* Upper bound of the tables a map_range allocates: every missing table on
	 * the paths, plus one per huge leaf above `level` that must be split. */
	u64 need = 0;

	for (int l = root->level; l > level; l--) {
		u64 span = pages_per_level(l);
		for (u64 g = start & ~(span - 1); g < end; g += span) {
			int got;
			u64 s = tdp_mmu_lookup(vm, root, g, &got, NULL);
			if (got > l)
				need++; /* the path already ends above: this table is missing */
			else if (got == l && (!is_shadow_present_pte(s) || is_last_spte(s, l)))
				need++;
			if (g + span < g)
				break;
		}
	}
	return need;
}

static int map_handle_target_level(struct tdp_vm *vm, struct kvm_page_fault *fault, struct tdp_iter *iter,
				   bool *flushed);

/* kvm_tdp_mmu_map() + tdp_mmu_map_handle_target_level(). */
int tdp_mmu_map_gfn(struct tdp_vm *vm, struct tdp_root *root, struct kvm_page_fault *fault, bool *flushed)
{
	/* req_level: the level the memslot allowed before the NX mitigation
	 * lowered goal_level. */
	u64 gfn = fault->gfn;
	struct tdp_iter it;
	bool nx_workaround = vm->pol.nx_huge_pages != 0;

	*flushed = false;
	if (root->invalid)
		return RET_PF_RETRY;
	for_each_tdp_pte_min_level(vm, it, root, 1, gfn, gfn + 1) {
		/* disallowed_hugepage_adjust(): a table that exists because of the NX
		 * mitigation forces the fault one level down. */
		if (nx_workaround && it.level > 1 && it.level == fault->goal_level &&
		    is_shadow_present_pte(it.old_spte) && !is_large_pte(it.old_spte)) {
			u32 c = spte_to_child_frame(&vm->mem, it.old_spte, it.level);
			if (c != NO_FRAME && vm->mem.frames[c].sp_nx)
				fault->goal_level--;
		}
		if (is_frozen_spte(it.old_spte))
			return RET_PF_RETRY;
		if (it.level == fault->goal_level)
			goto map_target_level;
		if (is_shadow_present_pte(it.old_spte) && !is_large_pte(it.old_spte))
			continue;
		/* Non-present, or a huge leaf above the goal: split it in place (v6.2+). */
		if (is_shadow_present_pte(it.old_spte)) {
			int rc = tdp_mmu_split_huge_page(vm, &it, root, true, fault->huge_page_disallowed && fault->req_level >= it.level);
			if (rc == TDP_ENOMEM)
				return RET_PF_NOMEM;
			if (rc)
				return RET_PF_RETRY;
		} else {
			u32 f = tdp_mmu_alloc_sp(vm, it.level - 1, it.gfn, root->id, tdp_iter_frame(&it));
			if (f == NO_FRAME)
				return RET_PF_NOMEM;
			if (tdp_mmu_set_spte_atomic(vm, &it, make_nonleaf_spte(&vm->masks, hostmem_pfn(&vm->mem, f)))) {
				vm->mem.frames[f].sp_unlinked = 1;
				vm->stats[ST_mmu_pages]--;
				hostmem_free_now(&vm->mem, f);
				return RET_PF_RETRY;
			}
			if (fault->huge_page_disallowed && fault->req_level >= it.level)
				track_possible_nx_huge_page(vm, f);
		}
	}
	return RET_PF_RETRY;

map_target_level:
	return map_handle_target_level(vm, fault, &it, flushed);
}

/* The last-level table a 4K fault on gfn would walk to in root: every SPTE on
 * the path present and not a leaf (so the walk in tdp_mmu_map_gfn() neither
 * stops, splits, allocates nor lowers the goal on the way), else NULL.
 * *parent_sptep: the level-2 SPTE pointing at it. */
u64 *tdp_mmu_last_level_table(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, u64 **parent_sptep)
{
	u32 f = root->frame;

	for (int l = root->level; l > 1; l--) {
		u64 *p = hostmem_table_read(&vm->mem, f) + spte_index(gfn, l);
		if (!is_shadow_present_pte(*p) || is_last_spte(*p, l))
			return NULL;
		f = spte_to_child_frame(&vm->mem, *p, l);
		if (f == NO_FRAME)
			return NULL;
		*parent_sptep = p;
	}
	return table_of(vm, f);
}

/* tdp_mmu_map_gfn() for a 4K fault whose walk ends in `table` (from
 * tdp_mmu_last_level_table(), still linked): the target-level step alone, which
 * is everything the walk would do (the levels above only descend). */
int tdp_mmu_map_gfn_in_table(struct tdp_vm *vm, struct tdp_root *root, struct kvm_page_fault *fault, u64 *table,
			     bool *flushed)
{
	struct tdp_iter it;

	*flushed = false;
	if (root->invalid || fault->goal_level != 1)
		return RET_PF_RETRY;
	vm->cov.root_invalid = false; /* as tdp_mmu_iter_start() notes it for a walk */
	it.h = &vm->mem;
	it.level = 1;
	it.pt_path[1] = NO_FRAME; /* the table was noted as written when it was looked up */
	it.gfn = fault->gfn;
	it.sptep = table + spte_index(fault->gfn, 1);
	it.old_spte = *it.sptep;
	if (is_frozen_spte(it.old_spte))
		return RET_PF_RETRY;
	return map_handle_target_level(vm, fault, &it, flushed);
}

/* tdp_mmu_map_handle_target_level(): make the leaf (or MMIO) SPTE and install it. */
static int map_handle_target_level(struct tdp_vm *vm, struct kvm_page_fault *fault, struct tdp_iter *it,
				   bool *flushed)
{
	struct memslot *slot = fault->slot;
	u64 gfn = fault->gfn;
	bool nx_workaround = vm->pol.nx_huge_pages != 0;

	/* A present leaf that already allows the access: another vCPU fixed the
	 * fault first, or this is a split huge page's child. Not rewritten (386d69f9f29b
	 * "KVM: x86/mmu: Treat TDP MMU faults as spurious if access is already
	 * allowed", v6.13); before, the SPTE was rebuilt and spurious only if equal. */
	if (vm->pol.fault_spurious_if_allowed && is_shadow_present_pte(it->old_spte) &&
	    is_last_spte(it->old_spte, it->level) && is_access_allowed(&vm->masks, it->old_spte, fault->write, fault->exec))
		return RET_PF_SPURIOUS;
	u64 new_spte;
	bool wrprot = false;
	int ret = RET_PF_FIXED;
	if (!slot) {
		new_spte = make_mmio_spte(&vm->masks, it->gfn, vm->memslots_gen);
	} else {
		unsigned acc = ACC_ALL;
		bool host_writable = !(slot->flags & TDP_SLOT_READONLY);
		if (fault->goal_level > 1 && nx_workaround)
			acc &= ~ACC_EXEC; /* huge SPTEs are NX under the mitigation */
		if (!vm_gfn_writable(vm, slot, gfn) && host_writable) {
			/* gfn write-tracked: make_spte write-protects it-> */
			acc &= ~ACC_WRITE;
			wrprot = true;
		}
		/* the first half's pfn is gfn's; a huge leaf starts at it->gfn */
		u64 pfn = fault->has_pfn ? fault->pfn - (fault->gfn - it->gfn) : vm_gfn_to_pfn(vm, slot, it->gfn);
		new_spte = make_leaf_spte(&vm->masks, pfn, fault->goal_level, acc, host_writable, fault->write, fault->prefetch);
		if (wrprot) /* host-writable stays, MMU-writable does not */
			new_spte &= ~(SPTE_W | vm->masks.mmu_writable);
	}
	if (new_spte == it->old_spte) {
		ret = RET_PF_SPURIOUS;
	} else if (tdp_mmu_set_spte_atomic(vm, it, new_spte)) {
		return RET_PF_RETRY;
	} else if (is_shadow_present_pte(it->old_spte) && !is_last_spte(it->old_spte, it->level)) {
		/* A huge leaf replaced a table: flush (gfn, level) before leaving RCU. */
		if (vm->pol.map_huge_over_table_flush && FLUSH_SITE(vm, MAP_HUGE_OVER_TABLE))
			kvm_flush_remote_tlbs_range(vm, it->gfn, pages_per_level(it->level));
		*flushed = true;
	}
	if (slot && (new_spte & SPTE_W) && (slot->flags & TDP_SLOT_DIRTY_LOG))
		vm_mark_dirty(vm, slot, it->gfn);
	if (wrprot && fault->write)
		ret = RET_PF_EMULATE;
	if (!slot) {
		vm->stats[ST_pf_mmio_spte_created]++;
		ret = RET_PF_EMULATE;
	}
	return ret;
}
