/* nested.c — a vCPU running L2 (vmx/nested.c, svm/nested.c), for an L1 that runs
 * L2 without nested EPT/NPT: L2 shares L1's guest-physical space, and KVM gives it
 * its own TDP root (kvm_mmu_page_role.guest_mode = 1, so a separate root of the
 * same TDP MMU that MMU-notifier zaps reach like any other) and its own TLB tag:
 * on VMX the root's EPTP and VPID02 (vmcs02), on SVM vmcb02 with its own ASID.
 * [MODEL CHOICE] Nested EPT/NPT (L1's EPT12 shadowed by KVM's shadow MMU) is not
 * modelled; L1's vmcs12 uses one VPID.
 *
 * Each transition swaps the vCPU's current context (root, VPID or the VMCB's ASID
 * state, the guest's paging registers) with the saved one, applies KVM's nested
 * TLB-flush rule and enters the new level:
 * - VMX, nested_vmx_transition_tlb_flush(): vmcs12 uses a VPID, so VM-entry
 *   requests KVM_REQ_TLB_FLUSH_GUEST only when vpid12 changed (the first entry),
 *   and nothing else: L2 has its own tag (EPT on). VM-exit flushes nothing. A VMCS
 *   last loaded on another pCPU requests KVM_REQ_TLB_FLUSH (vmx_vcpu_load_vmcs()).
 * - SVM, nested_svm_transition_tlb_flush(): KVM_REQ_TLB_FLUSH_CURRENT on every
 *   VMRUN and #VMEXIT. Each VMCB keeps its ASID generation and last pCPU
 *   (svm->current_vmcb->asid_generation / ->cpu, "KVM: SVM: Track the ASID
 *   generation of the vmcb vmrun through the vmcb"); Policy(per_vmcb_asid=False)
 *   keeps them per vCPU, as before that change (B22). */
#include "vm.h"

#define SWAP(a, b)                      \
	do {                            \
		__typeof__(a) swap_t_ = (a); \
		(a) = (b);              \
		(b) = swap_t_;          \
	} while (0)

static void swap_level(struct tdp_vm *vm, struct vcpu *v)
{
	struct nested_ctx *o = &v->other;
	SWAP(v->root_id, o->root_id);
	SWAP(v->g, o->g);
	if (vm->cfg.arch == TDP_VMX) {
		SWAP(v->vpid, o->vpid);
		SWAP(v->vmcs_cpu, o->vmcs_cpu); /* loaded_vmcs->cpu is per VMCS */
		return;
	}
	SWAP(v->asid, o->asid);               /* vmcb->control.asid */
	SWAP(v->tlb_control, o->tlb_control); /* vmcb->control.tlb_ctl */
	if (vm->pol.per_vmcb_asid) {
		SWAP(v->asid_generation, o->asid_generation);
		SWAP(v->vmcs_cpu, o->vmcs_cpu);
	}
}

static int transition(struct tdp_vm *vm, struct vcpu *v, bool enter)
{
	int r = cpu_enter_if_kicked(vm, v);
	if (r)
		return r;
	swap_level(vm, v);
	v->in_l2 = enter;
	v->nested_used = 1;
	vm->stats[enter ? ST_nested_entries : ST_nested_exits]++;
	if (vm->cfg.arch == TDP_VMX) {
		cpu_vmx_load_vmcs(vm, v);
		if (enter && v->last_vpid12 != 1) {
			v->last_vpid12 = 1;
			if (FLUSH_SITE(vm, NESTED_VMX_VPID))
				v->requests |= TDP_REQ_TLB_FLUSH_GUEST;
		}
	} else if (FLUSH_SITE(vm, NESTED_SVM)) {
		v->requests |= TDP_REQ_TLB_FLUSH_CURRENT;
	}
	vm_cost(vm, vm->costs.vm_exit + vm->costs.vm_entry); /* the exit to L0 and the entry */
	return cpu_enter(vm, v);
}

/* The public nested VM-entry (enter) and VM-exit: the vCPU runs guest code at the
 * other level; the level it lands on may need a root (a frame). */
static int nested_entry_point(tdp_vm *vm, int vcpu, bool enter)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (v->in_l2 == enter)
		return vm_err(vm, TDP_ESTATE, enter ? "vcpu %d already runs L2" : "vcpu %d does not run L2", vcpu);
	if (hostmem_available(&vm->mem) < 1)
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: the %s root may need a frame", enter ? "L2" : "L1");
	if ((r = transition(vm, v, enter)))
		return r;
	vm_log(vm, enter ? EV_NESTED_ENTER : EV_NESTED_EXIT, (u64)vcpu, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_nested_enter(tdp_vm *vm, int vcpu) { return nested_entry_point(vm, vcpu, true); }
int tdp_nested_exit(tdp_vm *vm, int vcpu) { return nested_entry_point(vm, vcpu, false); }

/* L1's INVVPID, which exits to KVM (handle_invvpid(), vmx/nested.c): whatever vpid12
 * names, KVM flushes the effective VPID02 on this pCPU, by address for the
 * individual-address type and the whole context otherwise. [MODEL CHOICE] vmcs12 uses
 * one VPID, so every nonzero vpid12 is L2's. The operand checks are KVM's
 * (VMfailValid, error 28). A context-wide flush L1 asked for (single-context,
 * all-context) is the guest's flush of L2's translations, for the checker. */
int tdp_nested_invvpid(tdp_vm *vm, int vcpu, int type, uint32_t vpid12, uint64_t gla)
{
	int r;
	VM_OP_BEGIN(vm);
	if (vm->cfg.arch != TDP_VMX)
		return vm_err(vm, TDP_ESTATE, "INVVPID exists on VMX only (this VM is svm)");
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (v->in_l2)
		return vm_err(vm, TDP_ESTATE, "vcpu %d does not run L1 (INVVPID is L1's instruction)", vcpu);
	if (type < TDP_INVVPID_INDIVIDUAL_ADDRESS || type > TDP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS)
		return vm_err(vm, TDP_EINVAL, "INVVPID type must be 0..3, got %d (VMfailValid: error 28)", type);
	if (vpid12 >> 16)
		return vm_err(vm, TDP_EINVAL, "INVVPID: vpid 0x%x does not fit in 16 bits (VMfailValid: error 28)", vpid12);
	if (!vpid12 && type != TDP_INVVPID_ALL_CONTEXT)
		return vm_err(vm, TDP_EINVAL, "INVVPID type %d with vpid 0 (VMfailValid: error 28)", type);
	if (type == TDP_INVVPID_INDIVIDUAL_ADDRESS && !guest_canonical(gla, 5))
		return vm_err(vm, TDP_EINVAL, "INVVPID individual-address: gla 0x%llx is not canonical (VMfailValid)",
			      (unsigned long long)gla);
	if ((r = cpu_enter_if_kicked(vm, v)))
		return r;
	u32 vpid02 = v->other.vpid; /* in L1, the saved level is L2's */
	struct ctlb *ct = &vm->pcpus[v->pcpu].ctlb;
	if (FLUSH_SITE(vm, NESTED_INVVPID)) {
		if (type == TDP_INVVPID_INDIVIDUAL_ADDRESS)
			ctlb_flush_addr(ct, CTLB_ID, vpid02, -1, true, gla >> 12);
		else
			ctlb_flush_spaces(ct, CTLB_ID, vpid02, true); /* vpid_sync_context(vpid02) */
	}
	if (type == TDP_INVVPID_SINGLE_CONTEXT || type == TDP_INVVPID_ALL_CONTEXT)
		v->other.g.flush_done = ++v->other.g.flush_req;
	vm->stats[ST_invvpid]++;
	vm_cost(vm, vm->costs.vm_exit + vm->costs.flush_current + vm->costs.vm_entry);
	vm_log(vm, EV_NESTED_INVVPID, (u64)vcpu, (u64)type, vpid12, gla, 0);
	vm_op_end(vm);
	return 0;
}
