/* cpu.h — physical CPUs (their TLBs, SVM ASID allocator) and vCPUs (mode, requests,
 * current root, VMCS/VMCB placement), KVM's flush requests and vendor flush
 * primitives (virt/kvm/kvm_main.c, x86.c, vmx/vmx.c, svm/svm.c; Intel SDM Vol. 3C
 * "Caching Translation Information", 28.3 in the 2016 edition; AMD APM Vol. 2 15.16
 * "TLB Control"). */
#ifndef TDPFAST_CPU_H
#define TDPFAST_CPU_H
#include "tlb.h"
#include "tlb_combined.h"
#include "guest_paging.h"

struct tdp_vm;

struct vcpu {
	int id;
	int mode;             /* enum tdp_vcpu_mode */
	int pcpu;             /* where it is loaded (-1: nowhere yet) */
	int vmcs_cpu;         /* loaded_vmcs->cpu / current_vmcb->cpu (-1: never) */
	u32 root_id;          /* mmu->root (0: INVALID_PAGE) */
	u32 requests;
	u32 asid;             /* SVM: vmcb->control.asid */
	u64 asid_generation;  /* SVM: vmcb's asid_generation */
	u32 vpid;             /* VMX */
	int tlb_control;      /* SVM: VMCB TLB_CONTROL for the next VMRUN */
	struct guest_cpu g;   /* the guest's paging state (guest_paging.h) */
	/* Nested (nested.c): while in_l2, the fields above describe L2's context (its
	 * root, VPID02 / vmcb02, L2's paging) and `other` keeps L1's; otherwise the
	 * reverse. */
	u8 in_l2;
	u8 nested_used;       /* ever entered L2 (the digest then covers `other`) */
	u32 last_vpid12;      /* VMX: vmx->nested.last_vpid */
	struct nested_ctx {
		u32 root_id, vpid, asid;
		u64 asid_generation;
		int vmcs_cpu, tlb_control;
		struct guest_cpu g;
	} other;
};

struct pcpu {
	struct tlb tlb;
	struct ctlb ctlb;     /* combined (guest-linear) entries: guest paging on */
	int vcpu;             /* vCPU in guest mode here (-1: none) */
	int cur_ctx;          /* TLB context of that vCPU's current root */
	u64 asid_generation;  /* SVM: sd->asid_generation */
	u32 next_asid, min_asid, max_asid;
};

/* Remote flushes (virt/kvm/kvm_main.c). */
void kvm_flush_remote_tlbs(struct tdp_vm *vm);
void kvm_flush_remote_tlbs_range(struct tdp_vm *vm, u64 gfn, u64 npages);
void kvm_make_all_cpus_request(struct tdp_vm *vm, u32 req);
/* Vendor primitives on the pCPU the vCPU is loaded on. */
void vendor_flush_tlb_current(struct tdp_vm *vm, struct vcpu *v);
void vendor_flush_tlb_all(struct tdp_vm *vm, struct vcpu *v);
void vendor_flush_tlb_guest(struct tdp_vm *vm, struct vcpu *v);

int cpu_vcpu_run(struct tdp_vm *vm, int vcpu, int pcpu);
void cpu_vcpu_exit(struct tdp_vm *vm, struct vcpu *v);
int cpu_access(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, struct tdp_access_result *out,
	       u64 batch_index);
/* tdp_access_batch()'s loop: counts[] as documented there; *done accesses ran. */
int cpu_access_batch(struct tdp_vm *vm, struct vcpu *v, const u64 *gpas, const u8 *accesses, int default_access,
		     size_t n, struct tdp_access_result *per, u64 *counts, size_t *done);
u64 cpu_eptp(struct tdp_vm *vm, u32 root_frame);
int cpu_context_of(struct tdp_vm *vm, struct vcpu *v);
/* VMX: the current VMCS loaded on the vCPU's pCPU (a VMCS last loaded elsewhere
 * requests KVM_REQ_TLB_FLUSH). */
void cpu_vmx_load_vmcs(struct tdp_vm *vm, struct vcpu *v);
/* VM entry of a loaded vCPU: requests serviced, root loaded (0 or error). */
int cpu_enter(struct tdp_vm *vm, struct vcpu *v);
/* A vCPU kicked out of guest mode by a request re-enters, servicing it (0 or error). */
int cpu_enter_if_kicked(struct tdp_vm *vm, struct vcpu *v);
/* Fill pCPU p's TLB with `count` junk entries below max_gfn (tlb.junk). */
int cpu_fill_tlb_junk(struct tdp_vm *vm, int p, u32 count, u64 max_gfn);

#endif
