/* memslot.c — memslots, the truth every translation is checked against: what host
 * page backs each gfn (and the host taking pages away), the largest mapping a gfn
 * allows (host_pfn_mapping_level(), disallow_lpage for dirty logging and write
 * tracking), and the userspace-facing memslot calls: KVM_SET_USER_MEMORY_REGION
 * (add, delete), KVM_GET_DIRTY_LOG with its enable/disable (kvm_mmu_slot_apply_flags)
 * and gfn write tracking (kvm_write_track_add_gfn / _remove_gfn). */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

u64 vm_max_gfn(struct tdp_vm *vm)
{
	/* tdp_mmu_max_gfn_exclusive(): everything a TDP table of this depth maps
	 * below MAXPHYADDR. */
	return 1ull << (vm->cfg.maxphyaddr - 12);
}

struct memslot *vm_slot_of_slow(struct tdp_vm *vm, u64 gfn)
{
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (s->used && gfn - s->base_gfn < s->npages) {
			vm->slot_hint = i;
			return s;
		}
	}
	return NULL;
}


void memslot_truth_changed(struct tdp_vm *vm)
{
	if (++vm->truth_gen == 0) {
		/* Wrapped: no kept verdict may match a reused generation. */
		for (int p = 0; vm->pcpus && p < vm->cfg.npcpus; p++)
			tlb_forget_checks(&vm->pcpus[p].tlb);
		vm->truth_gen = 1;
	}
}

int memslot_set_backing(struct tdp_vm *vm, struct memslot *s, u64 gfn, u64 pfn)
{
	u64 nchunks = memslot_chunk_of(s, s->base_gfn + s->npages - 1) + 1;
	u64 ci = memslot_chunk_of(s, gfn);

	memslot_truth_changed(vm);
	if (!s->dev) {
		s->dev = calloc(nchunks, sizeof(u64 *));
		u64 n1g = ((s->base_gfn + s->npages - 1) >> 18) - (s->base_gfn >> 18) + 1;
		s->dev_count_1g = calloc(n1g, sizeof(u32));
		if (!s->dev || !s->dev_count_1g)
			return TDP_ENOMEM;
	}
	if (!s->dev[ci]) {
		u64 *c = malloc(512 * sizeof(u64));
		if (!c)
			return TDP_ENOMEM;
		u64 first = (gfn & ~511ull);
		for (int i = 0; i < 512; i++) {
			u64 g = first + (u64)i;
			c[i] = (g - s->base_gfn < s->npages) ? s->host_base_pfn + (g - s->base_gfn) : NO_PFN;
		}
		s->dev[ci] = c;
		s->dev_count_1g[(gfn >> 18) - (s->base_gfn >> 18)]++;
	}
	s->dev[ci][gfn & 511] = pfn;
	return 0;
}

void memslot_release_pfn(struct tdp_vm *vm, u64 pfn)
{
	/* The host frees the page. Pool frames return to the LIFO pool at once
	 * (page-cache pages do not wait for KVM's grace periods). */
	u32 f = hostmem_frame_of(&vm->mem, pfn);
	if (f != NO_FRAME && vm->mem.frames[f].state == FRAME_GUEST)
		hostmem_free_now(&vm->mem, f);
}

u64 vm_fault_in_new_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	u64 pfn;
	/* hva_to_pfn(): the host allocates a fresh page for a gfn it unmapped. */
	u32 f = hostmem_alloc(&vm->mem, FRAME_GUEST);
	if (f == NO_FRAME)
		return NO_PFN;
	vm->mem.frames[f].owner_gfn = gfn;
	pfn = hostmem_pfn(&vm->mem, f);
	if (memslot_set_backing(vm, s, gfn, pfn)) {
		hostmem_free_now(&vm->mem, f);
		return NO_PFN;
	}
	return pfn;
}

static bool range_has_wrtrack(struct memslot *s, u64 start, u64 n)
{
	if (!s->wrtrack || !s->nwrtrack)
		return false;
	u64 i = start - s->base_gfn, end = i + n;
	while (i < end) {
		u64 w = s->wrtrack[i >> 6] >> (i & 63);
		u64 left = 64 - (i & 63);
		if (end - i < left)
			w &= (1ull << (end - i)) - 1;
		if (w)
			return true;
		i += left;
	}
	return false;
}

int vm_max_mapping_level(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	int lvl = s->max_level;

	if (s->flags & TDP_SLOT_DIRTY_LOG)
		return 1; /* dirty-logged memslots force 4K */
	for (; lvl > 1; lvl--) {
		u64 span = pages_per_level(lvl), base = gfn & ~(span - 1);
		if (base < s->base_gfn || base + span > s->base_gfn + s->npages)
			continue;
		if (s->dev) {
			if (lvl == 2 && s->dev[memslot_chunk_of(s, base)])
				continue;
			if (lvl == 3 && s->dev_count_1g[(base >> 18) - (s->base_gfn >> 18)])
				continue;
		}
		if (range_has_wrtrack(s, base, span))
			continue;
		/* [MODEL CHOICE] the host splits a huge mapping before invalidating
		 * part of it (a THP split invalidates the whole huge page first), so
		 * while an invalidation is in progress the pages around it are mapped
		 * small by the host and host_pfn_mapping_level() says 4K. */
		if (vm->mmu_invalidate_in_progress && base < vm->mmu_invalidate_end &&
		    vm->mmu_invalidate_start < base + span)
			continue;
		break;
	}
	return lvl;
}

bool vm_gfn_writable(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	(void)vm;
	if (!s || (s->flags & TDP_SLOT_READONLY))
		return false;
	return !range_has_wrtrack(s, gfn, 1);
}

void vm_mark_dirty(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	(void)vm;
	if (s->dirty) {
		u64 i = gfn - s->base_gfn;
		s->dirty[i >> 6] |= 1ull << (i & 63);
	}
}

bool vm_gfn_is_dirty(struct memslot *s, u64 gfn)
{
	if (!s->dirty)
		return false;
	u64 i = gfn - s->base_gfn;
	return (s->dirty[i >> 6] >> (i & 63)) & 1;
}

void memslot_free(struct tdp_vm *vm, struct memslot *s)
{
	memslot_truth_changed(vm);
	if (s->dev) {
		u64 nchunks = memslot_chunk_of(s, s->base_gfn + s->npages - 1) + 1;
		for (u64 i = 0; i < nchunks; i++) {
			if (!s->dev[i])
				continue;
			for (int k = 0; k < 512; k++)
				if (s->dev[i][k] != NO_PFN)
					memslot_release_pfn(vm, s->dev[i][k]);
			free(s->dev[i]);
		}
	}
	free(s->dev);
	free(s->dev_count_1g);
	free(s->dirty);
	free(s->wrtrack);
	memset(s, 0, sizeof(*s));
}

struct memslot *memslot_by_id(struct tdp_vm *vm, int id)
{
	for (int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].used && vm->slots[i].id == id)
			return &vm->slots[i];
	return NULL;
}


u64 memslot_unbacked_in(struct tdp_vm *vm, u64 start, u64 end)
{
	u64 n = 0;
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (!s->used || !s->dev || end <= s->base_gfn || s->base_gfn + s->npages <= start)
			continue;
		u64 a = start > s->base_gfn ? start : s->base_gfn;
		u64 b = end < s->base_gfn + s->npages ? end : s->base_gfn + s->npages;
		for (u64 g = a; g < b; g++)
			n += vm_gfn_to_pfn(vm, s, g) == NO_PFN;
	}
	return n;
}



int tdp_memslot_add(tdp_vm *vm, uint64_t base_gfn, uint64_t npages, uint32_t flags, int max_level, int *slot_id)
{
	int r;

	VM_OP_BEGIN(vm);
	if (npages == 0)
		return vm_err(vm, TDP_EINVAL, "npages must be positive");
	if ((r = vm_check_range(vm, base_gfn, base_gfn + npages)) || base_gfn + npages < base_gfn)
		return r ? r : vm_err(vm, TDP_EINVAL, "npages overflows");
	if (flags & ~(u32)(TDP_SLOT_READONLY | TDP_SLOT_DIRTY_LOG))
		return vm_err(vm, TDP_EINVAL, "flags 0x%x has unknown bits (readonly=1, dirty_log=2)", flags);
	if (max_level < 1 || max_level > 3)
		return vm_err(vm, TDP_EINVAL, "max_level must be 1 (4K), 2 (2M) or 3 (1G), got %d", max_level);
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (s->used && base_gfn < s->base_gfn + s->npages && s->base_gfn < base_gfn + npages)
			return vm_err(vm, TDP_EINVAL, "gfns 0x%llx..0x%llx overlap memslot %d (0x%llx..0x%llx)",
				      (unsigned long long)base_gfn, (unsigned long long)(base_gfn + npages), s->id,
				      (unsigned long long)s->base_gfn, (unsigned long long)(s->base_gfn + s->npages));
	}
	/* 1 GiB-aligned host region with host pfn == gfn modulo 1 GiB, so huge
	 * mappings are possible wherever the gfns are. */
	u64 align = 1ull << 18;
	u64 region = (vm->host_next_region_pfn + align - 1) & ~(align - 1);
	u64 host_base = region + (base_gfn & (align - 1));
	u64 region_end = host_base + npages;
	if (region_end > (1ull << (vm->cfg.maxphyaddr - 12)))
		return vm_err(vm, TDP_ENOMEM, "host physical address space exhausted (MAXPHYADDR=%d) for a %llu-page memslot",
			      vm->cfg.maxphyaddr, (unsigned long long)npages);
	u64 *dirty = NULL;
	if (flags & TDP_SLOT_DIRTY_LOG) {
		dirty = calloc((npages + 63) / 64, sizeof(u64));
		if (!dirty)
			return vm_err(vm, TDP_ENOMEM, "out of host memory for the dirty bitmap");
	}
	int idx = -1;
	for (int i = 0; i < vm->nslots; i++)
		if (!vm->slots[i].used) {
			idx = i;
			break;
		}
	if (idx < 0) {
		struct memslot *n = realloc(vm->slots, (size_t)(vm->nslots + 1) * sizeof(*n));
		if (!n) {
			free(dirty);
			return vm_err(vm, TDP_ENOMEM, "out of host memory");
		}
		vm->slots = n;
		idx = vm->nslots++;
		memset(&vm->slots[idx], 0, sizeof(vm->slots[idx]));
	}
	int id = 0;
	for (int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].used && vm->slots[i].id >= id)
			id = vm->slots[i].id + 1;
	vm->slots[idx] = (struct memslot){.id = id, .used = true, .base_gfn = base_gfn, .npages = npages,
					  .flags = flags, .max_level = max_level, .host_base_pfn = host_base,
					  .dirty = dirty};
	vm->host_next_region_pfn = region_end;
	vm->memslots_gen++;
	memslot_truth_changed(vm);
	*slot_id = id;
	vm_log(vm, EV_MEMSLOT_ADD, base_gfn, npages, flags, (u64)max_level, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_memslot_info(tdp_vm *vm, int slot_id, struct tdp_memslot_info *out)
{
	struct memslot *s = memslot_by_id(vm, slot_id);
	if (!s)
		return vm_err(vm, TDP_ENOENT, "memslot %d does not exist (deleted or never added)", slot_id);
	*out = (struct tdp_memslot_info){s->id, s->base_gfn, s->npages, s->flags, s->max_level, s->host_base_pfn};
	return 0;
}

int tdp_memslot_list(tdp_vm *vm, int *ids, int max, int *n)
{
	int k = 0;
	for (int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].used) {
			if (k < max)
				ids[k] = vm->slots[i].id;
			k++;
		}
	*n = k;
	return 0;
}

int tdp_gfn_backing(tdp_vm *vm, uint64_t gfn, uint64_t *pfn)
{
	struct memslot *s = vm_slot_of(vm, gfn);
	*pfn = s ? vm_gfn_to_pfn(vm, s, gfn) : NO_PFN;
	return 0;
}

int tdp_memslot_delete(tdp_vm *vm, int slot_id)
{
	struct memslot *s;

	VM_OP_BEGIN(vm);
	s = memslot_by_id(vm, slot_id);
	if (!s)
		return vm_err(vm, TDP_ENOENT, "memslot %d does not exist (deleted or never added)", slot_id);
	if (s->deleting)
		return vm_err(vm, TDP_ESTATE, "memslot %d is already being deleted by a stepped operation", slot_id);
	kvm_arch_flush_shadow_memslot(vm, s);
	checker_check_range_unmapped(vm, s->base_gfn, s->base_gfn + s->npages, TDP_V_DELETED_SLOT_MAPPED); /* I5 */
	memslot_free(vm, s);
	vm->memslots_gen++;
	vm_log(vm, EV_MEMSLOT_DELETE, (u64)slot_id, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_dirty_log_enable(tdp_vm *vm, int slot_id, int enable)
{
	struct memslot *s;

	VM_OP_BEGIN(vm);
	s = memslot_by_id(vm, slot_id);
	if (!s)
		return vm_err(vm, TDP_ENOENT, "memslot %d does not exist (deleted or never added)", slot_id);
	if (s->deleting)
		return vm_err(vm, TDP_ESTATE, "memslot %d is being deleted", slot_id);
	u64 start = s->base_gfn, end = s->base_gfn + s->npages;
	if (enable && !(s->flags & TDP_SLOT_DIRTY_LOG)) {
		if (vm->pol.eager_split) {
			/* Worst case: every huge leaf in the slot becomes a table. */
			u64 need = (s->npages + 511) / 512 + 2;
			if (hostmem_available(&vm->mem) < need * (u64)(vm->nroots ? vm->nroots : 1) &&
			    hostmem_available(&vm->mem) < (u64)vm->stats[ST_pages_2m] + 512 * vm->stats[ST_pages_1g] + 1)
				return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: eager splitting needs more frames");
		}
		u64 *bm = calloc((s->npages + 63) / 64, sizeof(u64));
		if (!bm)
			return vm_err(vm, TDP_ENOMEM, "out of host memory for the dirty bitmap");
		s->dirty = bm;
		s->flags |= TDP_SLOT_DIRTY_LOG;
		memslot_truth_changed(vm);
		/* kvm_mmu_slot_apply_flags(): eager split (no flush), write-protect,
		 * then the memslot flush — always since b64d740ea7dd (B14). */
		if (vm->pol.eager_split)
			tdp_mmu_split(vm, start, end, 1);
		bool changed = tdp_mmu_wrprot(vm, start, end, 1);
		if ((vm->pol.dirty_log_enable_flush == 0 || changed) && FLUSH_SITE(vm, DIRTY_LOG_ENABLE))
			kvm_flush_remote_tlbs_range(vm, start, end - start);
		checker_check_dirty_log(vm, s); /* I6 */
	} else if (!enable && (s->flags & TDP_SLOT_DIRTY_LOG)) {
		s->flags &= ~TDP_SLOT_DIRTY_LOG;
		free(s->dirty);
		s->dirty = NULL;
		memslot_truth_changed(vm);
		/* Recover huge pages in place; each root that changed flushes the memslot. */
		tdp_mmu_recover_huge(vm, start, end);
	}
	vm_log(vm, EV_DIRTY_LOG_ENABLE, (u64)slot_id, (u64)enable, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_dirty_log_get(tdp_vm *vm, int slot_id, uint64_t *bitmap, size_t nwords, uint64_t *ndirty)
{
	struct memslot *s;

	VM_OP_BEGIN(vm);
	s = memslot_by_id(vm, slot_id);
	if (!s)
		return vm_err(vm, TDP_ENOENT, "memslot %d does not exist (deleted or never added)", slot_id);
	if (!(s->flags & TDP_SLOT_DIRTY_LOG))
		return vm_err(vm, TDP_ESTATE, "memslot %d does not have dirty logging enabled", slot_id);
	size_t words = (s->npages + 63) / 64;
	if (nwords < words)
		return vm_err(vm, TDP_EINVAL, "bitmap too small: %zu words for %zu", nwords, words);
	/* kvm_get_dirty_log_protect(): fetch-and-zero each word, re-protect those
	 * pages, flush the memslot if any bit was set, then report. */
	bool any = false;
	u64 n = 0;
	memslot_truth_changed(vm);
	for (size_t w = 0; w < words; w++) {
		u64 mask = s->dirty[w];
		s->dirty[w] = 0;
		bitmap[w] = mask;
		if (!mask)
			continue;
		any = true;
		n += (u64)__builtin_popcountll(mask);
		for (int b = 0; b < 64; b++)
			if (mask & (1ull << b)) {
				u64 g = s->base_gfn + w * 64 + (u64)b;
				tdp_mmu_wrprot(vm, g, g + 1, 1);
			}
	}
	if (any && FLUSH_SITE(vm, DIRTY_LOG_GET))
		kvm_flush_remote_tlbs_range(vm, s->base_gfn, s->npages);
	checker_check_dirty_log(vm, s); /* I6 */
	*ndirty = n;
	vm_log(vm, EV_DIRTY_LOG_GET, (u64)slot_id, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_write_protect_gfn(tdp_vm *vm, uint64_t gfn, int enable)
{
	struct memslot *s;
	int r;

	VM_OP_BEGIN(vm);
	if ((r = vm_check_gfn(vm, "gfn", gfn)))
		return r;
	s = vm_slot_of(vm, gfn);
	if (!s)
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx is not in any memslot", (unsigned long long)gfn);
	if (!s->wrtrack) {
		s->wrtrack = calloc((s->npages + 63) / 64, sizeof(u64));
		if (!s->wrtrack)
			return vm_err(vm, TDP_ENOMEM, "out of host memory");
	}
	u64 i = gfn - s->base_gfn;
	memslot_truth_changed(vm);
	if (enable) {
		if (!(s->wrtrack[i >> 6] & (1ull << (i & 63))))
			s->nwrtrack++;
		s->wrtrack[i >> 6] |= 1ull << (i & 63);
		/* kvm_write_track_add_gfn(): write-protect, flush if changed. */
		if (tdp_mmu_write_protect_gfn(vm, gfn) && FLUSH_SITE(vm, WRITE_TRACK))
			kvm_flush_remote_tlbs(vm);
	} else {
		if (s->wrtrack[i >> 6] & (1ull << (i & 63)))
			s->nwrtrack--;
		s->wrtrack[i >> 6] &= ~(1ull << (i & 63));
	}
	vm_log(vm, EV_WRITE_PROTECT_GFN, gfn, (u64)enable, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}
