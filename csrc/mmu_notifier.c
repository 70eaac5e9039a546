/* mmu_notifier.c — the host taking guest pages away, as KVM's MMU notifier sees it
 * (virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start/_end,
 * kvm_mmu_notifier_clear_flush_young): munmap/THP split (host_unmap), page
 * migration (host_migrate) and reclaim's aging (host_age). An invalidation is
 * bracketed by kvm_mmu_invalidate_begin()/_end(); the sequence number _end() bumps
 * (mmu_invalidate_seq) makes faults that raced with it retry. */
#include "vm.h"

/* The MMU notifier: invalidate_range_start() zaps every root (valid or not),
 * flushes before returning, then the host frees the pages; _end() bumps the
 * sequence so faults that raced with it retry. */
void kvm_mmu_invalidate_begin(struct tdp_vm *vm, u64 start, u64 end)
{
	/* kvm_mmu_invalidate_begin()/range_add(): concurrent ranges are unioned. */
	if (!vm->mmu_invalidate_in_progress++) {
		vm->mmu_invalidate_start = start;
		vm->mmu_invalidate_end = end;
	} else {
		if (start < vm->mmu_invalidate_start)
			vm->mmu_invalidate_start = start;
		if (end > vm->mmu_invalidate_end)
			vm->mmu_invalidate_end = end;
	}
}

void kvm_mmu_invalidate_end(struct tdp_vm *vm)
{
	vm->mmu_invalidate_seq++;
	vm->mmu_invalidate_in_progress--;
}

int mmu_notifier_roots(struct tdp_vm *vm)
{
	return vm->pol.notifier_zaps_invalid_roots ? ROOTS_ALL : ROOTS_VALID;
}

/* Before an unmap: make sure recording "unbacked" cannot fail later. */
int mmu_notifier_unmap_prepare(struct tdp_vm *vm, u64 start, u64 end)
{
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (!s->used || end <= s->base_gfn || s->base_gfn + s->npages <= start)
			continue;
		u64 a = start > s->base_gfn ? start : s->base_gfn;
		u64 b = end < s->base_gfn + s->npages ? end : s->base_gfn + s->npages;
		for (u64 g = a; g < b; g++)
			if (vm_gfn_to_pfn(vm, s, g) != NO_PFN && memslot_set_backing(vm, s, g, vm_gfn_to_pfn(vm, s, g)))
				return vm_err(vm, TDP_ENOMEM, "out of host memory");
	}
	return 0;
}

/* The end of invalidate_range_start (flush if a valid root changed), the host
 * freeing the pages, and invalidate_range_end. */
void mmu_notifier_unmap_finish(struct tdp_vm *vm, u64 start, u64 end, bool flush)
{
	if (flush && FLUSH_SITE(vm, NOTIFIER_UNMAP))
		kvm_flush_remote_tlbs(vm);
	/* I1: the zap is over and the pages are about to go back to the host. */
	checker_check_range_unmapped(vm, start, end, TDP_V_NOTIFIER_RANGE_MAPPED);
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (!s->used || end <= s->base_gfn || s->base_gfn + s->npages <= start)
			continue;
		u64 a = start > s->base_gfn ? start : s->base_gfn;
		u64 b = end < s->base_gfn + s->npages ? end : s->base_gfn + s->npages;
		for (u64 g = a; g < b; g++) {
			u64 pfn = vm_gfn_to_pfn(vm, s, g);
			if (pfn == NO_PFN)
				continue;
			TDP_WARN_ON(vm, memslot_set_backing(vm, s, g, NO_PFN)); /* prepared: cannot fail */
			memslot_release_pfn(vm, pfn);
		}
	}
	kvm_mmu_invalidate_end(vm);
}

int tdp_host_unmap(tdp_vm *vm, uint64_t start, uint64_t end)
{
	int r;

	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)) || (r = mmu_notifier_unmap_prepare(vm, start, end)))
		return r;
	kvm_mmu_invalidate_begin(vm, start, end);
	bool flush = tdp_mmu_zap_leafs_all(vm, start, end, mmu_notifier_roots(vm), false, false);
	mmu_notifier_unmap_finish(vm, start, end, flush);
	vm_log(vm, EV_HOST_UNMAP, start, end, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_host_migrate(tdp_vm *vm, uint64_t gfn, uint64_t *new_pfn)
{
	int r;
	struct memslot *s;

	VM_OP_BEGIN(vm);
	if ((r = vm_check_gfn(vm, "gfn", gfn)))
		return r;
	s = vm_slot_of(vm, gfn);
	if (!s)
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx is not in any memslot", (unsigned long long)gfn);
	u64 old = vm_gfn_to_pfn(vm, s, gfn);
	if (old == NO_PFN)
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx has no backing page to migrate (the host unmapped it)", (unsigned long long)gfn);
	if (hostmem_available(&vm->mem) < 1)
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: no frame to migrate gfn 0x%llx to", (unsigned long long)gfn);
	if (memslot_set_backing(vm, s, gfn, old))
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	kvm_mmu_invalidate_begin(vm, gfn, gfn + 1);
	if (tdp_mmu_zap_leafs_all(vm, gfn, gfn + 1, mmu_notifier_roots(vm), false, false) &&
	    FLUSH_SITE(vm, HOST_MIGRATE))
		kvm_flush_remote_tlbs(vm);
	checker_check_range_unmapped(vm, gfn, gfn + 1, TDP_V_NOTIFIER_RANGE_MAPPED); /* I1 */
	u32 f = hostmem_alloc(&vm->mem, FRAME_GUEST); /* a frame is available: checked above */
	if (TDP_WARN_ON(vm, f == NO_FRAME))
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted while migrating gfn 0x%llx", (unsigned long long)gfn);
	vm->mem.frames[f].owner_gfn = gfn;
	TDP_WARN_ON(vm, memslot_set_backing(vm, s, gfn, hostmem_pfn(&vm->mem, f))); /* prepared above */
	memslot_release_pfn(vm, old);
	kvm_mmu_invalidate_end(vm);
	*new_pfn = hostmem_pfn(&vm->mem, f);
	vm_log(vm, EV_HOST_MIGRATE, gfn, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_host_age(tdp_vm *vm, uint64_t start, uint64_t end, int *young)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)))
		return r;
	/* clear_flush_young: x86 elides the flush (~v6.13). */
	*young = tdp_mmu_age(vm, start, end);
	vm_log(vm, EV_HOST_AGE, start, end, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}
