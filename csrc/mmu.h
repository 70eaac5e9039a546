/* mmu.h — KVM's mmu/mmu.c role: the page-fault entry, the MMU-wide zaps, the
 * flushes the callers of the TDP MMU's zaps owe (each written once here), and the
 * stepped long operations with what their caller does once the walk is over. */
#ifndef TDPFAST_MMU_H
#define TDPFAST_MMU_H
#include "tdp_mmu.h"

struct tdp_vm;
struct memslot;

/* A stepped long operation (enum tdp_op_kind) and its arguments. */
/* A page fault between its halves (TDP_OP_PAGE_FAULT): what the first half saw. */
struct fault_half {
	u32 root;      /* the vCPU's root when it faulted */
	u64 mmu_seq;   /* mmu_invalidate_seq before the pfn lookup */
	u64 pfn;       /* the host page then (NO_PFN: none) */
	int result;    /* the first half's RET_PF_* when it ended the fault, else -1 */
};

struct vm_op {
	u32 id;
	int kind;             /* enum tdp_op_kind */
	u64 a, b, c;
	struct tdp_op op;
	struct fault_half fault;
};

/* kvm_tdp_page_fault(): an EPT violation / #NPF on gfn; RET_PF_*. */
int kvm_tdp_page_fault(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int access);
/* kvm_tdp_map_page(): map gfn at exactly `level` (the public map); 0 or TDP_E*. */
int kvm_tdp_map_page(struct tdp_vm *vm, struct tdp_root *root, u64 gfn, int level, bool *flushed);
int kvm_tdp_map_range(struct tdp_vm *vm, struct tdp_root *root, u64 start, u64 end, int level, u64 *mapped);

/* kvm_mmu_zap_all_fast(): performs no flush (vCPUs flush loading their next root). */
void kvm_mmu_zap_all_fast(struct tdp_vm *vm);
/* kvm_arch_flush_shadow_memslot(): zaps the slot and performs the flush it owes. */
void kvm_arch_flush_shadow_memslot(struct tdp_vm *vm, struct memslot *s);
/* The flush kvm_zap_gfn_range() owes after its zap reported "flush needed". */
void kvm_zap_gfn_range_flush(struct tdp_vm *vm, u64 start, u64 end, bool flush_needed);
/* The flush owed after recovering huge pages ([start, end): what they cover). */
void kvm_recover_huge_pages_flush(struct tdp_vm *vm, u64 start, u64 end, bool flush_needed);

/* Stepped operations in flight. */
struct vm_op *vm_find_op(struct tdp_vm *vm, u32 id, int *idx);

#endif
