/* memslot.h — KVM's memslots (virt/kvm/kvm_main.c, struct kvm_memory_slot): the
 * guest-physical to host-physical truth the checker compares every translation
 * with, the host pages behind each slot, dirty logging (the dirty bitmap) and gfn
 * write tracking (kvm_write_track_add_gfn / kvm_gfn_is_write_tracked). */
#ifndef TDPFAST_MEMSLOT_H
#define TDPFAST_MEMSLOT_H
#include "spte.h"

struct tdp_vm;

#define NO_PFN (~0ull)

/* A memslot's host mapping: gfn -> host pfn. By default the slot is backed by one
 * contiguous, 1 GiB-aligned host region (hugetlbfs-like); pages the host
 * unmapped or migrated are recorded per 512-gfn chunk, so an untouched slot costs
 * no memory per page. [MODEL CHOICE] frames of the slot region are never reused;
 * replacement pages come from the frame pool (LIFO), which also holds page tables. */
struct memslot {
	int id;
	bool used;
	u64 base_gfn, npages;
	u32 flags;
	int max_level;
	u64 host_base_pfn;
	u64 **dev;            /* dev[chunk]: NULL = identity, else 512 pfns (NO_PFN: unbacked) */
	u32 *dev_count_1g;    /* deviating chunks per 1 GiB region */
	u64 *dirty;           /* dirty bitmap (dirty logging) */
	u64 *wrtrack;         /* gfns write-tracked by KVM (write_protect_gfn) */
	u64 nwrtrack;
	bool deleting;        /* KVM_MEMSLOT_INVALID: a stepped deletion is in progress */
};

static inline u64 memslot_chunk_of(const struct memslot *s, u64 gfn) { return (gfn >> 9) - (s->base_gfn >> 9); }

/* Lookups: the truth the checker compares against. */
u64 vm_max_gfn(struct tdp_vm *vm);
/* vm_slot_of(), inline in vm.h: the memslot that holds gfn, or NULL. */
struct memslot *vm_slot_of_slow(struct tdp_vm *vm, u64 gfn);
struct memslot *memslot_by_id(struct tdp_vm *vm, int id);
/* The host page behind gfn (NO_PFN: unbacked). */
static inline u64 vm_gfn_to_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	(void)vm;
	if (s->dev) {
		u64 *c = s->dev[memslot_chunk_of(s, gfn)];
		if (c)
			return c[gfn & 511];
	}
	return s->host_base_pfn + (gfn - s->base_gfn);
}
/* The same, allocating a host page for an unbacked gfn (NO_PFN: the pool is empty). */
u64 vm_fault_in_new_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn);
static inline u64 vm_fault_in_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	u64 pfn = vm_gfn_to_pfn(vm, s, gfn);
	return pfn != NO_PFN ? pfn : vm_fault_in_new_pfn(vm, s, gfn);
}
int vm_max_mapping_level(struct tdp_vm *vm, struct memslot *s, u64 gfn);
bool vm_gfn_writable(struct tdp_vm *vm, struct memslot *s, u64 gfn);
void vm_mark_dirty(struct tdp_vm *vm, struct memslot *s, u64 gfn);
bool vm_gfn_is_dirty(struct memslot *s, u64 gfn);
/* gfns in [start, end) whose host page is gone (a fault there allocates one). */
u64 memslot_unbacked_in(struct tdp_vm *vm, u64 start, u64 end);

/* The host side: what backs a gfn (pfn NO_PFN: unbacked), and the host freeing a page. */
int memslot_set_backing(struct tdp_vm *vm, struct memslot *s, u64 gfn, u64 pfn);
void memslot_release_pfn(struct tdp_vm *vm, u64 pfn);
void memslot_free(struct tdp_vm *vm, struct memslot *s);
/* The truth changed in a way that can fail a translation that passed the checker (a
 * host page replaced or gone, a memslot added or deleted, dirty logging or write
 * tracking turned on, the dirty bitmap harvested): the verdicts that TLB entries
 * keep (struct tlb_ent chk, cpu.c) no longer hold. */
void memslot_truth_changed(struct tdp_vm *vm);

#endif
