/* checker.c — the checker: every decision that a guest access used a translation
 * it must no longer have, and the reports that record it. The truth is the
 * memslots (which host page backs a gfn now, whether it may be written, whether
 * dirty logging saw the write) and the frames (a paging-structure-cache entry
 * pointing at a table page that was freed or reused: its generation changed).
 * A hardware TLB may keep any translation until it is flushed (Intel SDM Vol. 3A
 * 4.10.4 "Invalidation of TLBs and Paging-Structure Caches"; AMD APM Vol. 2 5.5
 * "Translation-Lookaside Buffer (TLB)"), so each of these is a missing flush. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index)
{
	TDP_WARN_ON(vm, kind < TDP_V_USE_AFTER_FREE || kind > TDP_V_LIVELOCK);
	vm->stats[ST_violations]++;
	if (vm->nviol == vm->viol_cap) {
		size_t ncap = vm->viol_cap ? vm->viol_cap * 2 : 64;
		struct tdp_violation *n = realloc(vm->viol, ncap * sizeof(*n));
		if (!n) {
			vm_drop_record(vm); /* counted in ST_violations; the next call fails */
			return;
		}
		vm->viol = n;
		vm->viol_cap = ncap;
	}
	vm->viol[vm->nviol++] = (struct tdp_violation){
		.kind = kind, .vcpu = v ? v->id : -1, .pcpu = v ? v->pcpu : -1, .gpa = gpa, .tag = tag,
		.stale_pfn = stale_pfn, .expected_pfn = expected_pfn, .event = vm->cur_event,
		.access = access, .level = level, .frame_state = frame_state, .batch_index = batch_index};
}

/* The checker: compare the translation a guest access used with the truth. */
int checker_check_translation(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn,
			     int level, u64 tag, u64 batch_index)
{
	u64 gfn = gpa >> 12;
	struct memslot *s = vm_slot_of(vm, gfn);
	u64 expected = s ? vm_gfn_to_pfn(vm, s, gfn) : NO_PFN;

	u32 f = hostmem_frame_of(&vm->mem, pfn);
	int st = f == NO_FRAME ? (pfn == expected ? TDP_FRAME_CURRENT : TDP_FRAME_UNUSED) : vm->mem.frames[f].state;

	if (pfn != expected) {
		vm_report(vm, TDP_V_USE_AFTER_FREE, v, gpa, tag, pfn, expected, access, level, st, batch_index);
		return 1;
	}
	if (access == TDP_ACC_WRITE) {
		if (!vm_gfn_writable(vm, s, gfn)) {
			vm_report(vm, TDP_V_STALE_WRITE, v, gpa, tag, pfn, expected, access, level, st, batch_index);
			return 1;
		}
		if ((s->flags & TDP_SLOT_DIRTY_LOG) && !vm_gfn_is_dirty(s, gfn)) {
			vm_report(vm, TDP_V_LOST_DIRTY, v, gpa, tag, pfn, expected, access, level, st, batch_index);
			return 1;
		}
	}
	return 0;
}

/* For the explorer: does the vCPU's current root still give this translation? */
void checker_probe_hazard(struct tdp_vm *vm, struct vcpu *v, u64 gfn, u64 pfn, int cached_level)
{
	struct tdp_root *root = tdp_mmu_find_root(vm, v->root_id);
	int level;
	if (!root)
		return;
	u64 spte = tdp_mmu_lookup(vm, root, gfn, &level, NULL);
	if (is_shadow_present_pte(spte) && is_last_spte(spte, level) &&
	    spte_to_pfn(spte) + (gfn & (pages_per_level(level) - 1)) == pfn) {
		/* The same page, but maybe not the same page size. */
		if (level != cached_level && !vm->hazard_weak) {
			vm->hazard_weak = true;
			vm->hazard_vcpu = v->id;
			vm->hazard_gfn = gfn;
		}
		return;
	}
	vm->hazard = true;
	vm->hazard_vcpu = v->id;
	vm->hazard_gfn = gfn;
}

bool checker_check_psc(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 table_pfn,
		       u32 gen, int level, u64 tag, u64 batch_index)
{
	/* The cached entry names a table page: stale if the frame was freed,
	 * reused (a new generation), or unlinked from its tree. */
	u32 f = hostmem_frame_of(&vm->mem, table_pfn);
	if (f == NO_FRAME || vm->mem.frames[f].gen != gen || vm->mem.frames[f].sp_unlinked ||
	    vm->mem.frames[f].state != FRAME_TABLE) {
		int st = f == NO_FRAME ? TDP_FRAME_UNUSED : vm->mem.frames[f].state;
		vm_report(vm, TDP_V_STALE_PAGE_TABLE, v, gpa, tag, table_pfn, NO_PFN, access, level, st, batch_index);
		return true;
	}
	return false;
}

void checker_report_livelock(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 batch_index)
{
	vm_report(vm, TDP_V_LIVELOCK, v, gpa, 0, NO_PFN, NO_PFN, access, 0, 0, batch_index);
}

size_t tdp_violation_count(tdp_vm *vm) { return vm->nviol; }

size_t tdp_violations(tdp_vm *vm, struct tdp_violation *out, size_t max)
{
	size_t n = vm->nviol < max ? vm->nviol : max;
	if (n)
		memcpy(out, vm->viol, n * sizeof(*out));
	return n;
}
