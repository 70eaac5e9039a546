/* cpu.c — vCPUs on pCPUs: loading, requests serviced in KVM's order on entry,
 * remote flushes with IPIs, vendor flush primitives (VMX INVEPT/INVVPID, SVM
 * TLB_CONTROL / ASIDs), and guest accesses through TLB, paging-structure caches
 * and the hardware walker; every translation an access uses goes to the checker
 * (checker.c). */
#include <string.h>
#include "vm.h"

static inline struct pcpu *pc_of(struct tdp_vm *vm, struct vcpu *v) { return &vm->pcpus[v->pcpu]; }

u64 cpu_eptp(struct tdp_vm *vm, u32 root_frame)
{
	/* construct_eptp() (vmx/vmx.c): WB, page-walk length, A/D enable, root HPA. */
	return (MT_WB) | ((u64)(vm->cfg.levels - 1) << 3) | ((u64)(vm->cfg.ad ? 1 : 0) << 6) |
	       (hostmem_pfn(&vm->mem, root_frame) << 12);
}

static u64 vcpu_ctx_key(struct tdp_vm *vm, struct vcpu *v)
{
	if (vm->cfg.arch == TDP_SVM)
		return tlb_ctx_key_asid(v->asid);
	struct tdp_root *r = tdp_mmu_find_root(vm, v->root_id);
	return tlb_ctx_key_ept(r ? hostmem_pfn(&vm->mem, r->frame) : 0);
}

int cpu_context_of(struct tdp_vm *vm, struct vcpu *v)
{
	return tlb_ctx(&pc_of(vm, v)->tlb, vcpu_ctx_key(vm, v));
}

/* ---------------------------------------------------------------- requests, remote flush */

void kvm_make_all_cpus_request(struct tdp_vm *vm, u32 req)
{
	/* Set the request everywhere; vCPUs in guest mode go IN_GUEST -> EXITING
	 * and get an IPI (the request has KVM_REQUEST_WAIT semantics, virt/kvm/kvm_main.c). */
	for (int i = 0; i < vm->cfg.nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		v->requests |= req;
		if (v->mode == TDP_IN_GUEST) {
			v->mode = TDP_EXITING_GUEST;
			vm->stats[ST_ipis]++;
			vm->stats[ST_vm_exits]++;
			vm_cost(vm, vm->costs.ipi + vm->costs.vm_exit);
			vm_trace(vm, TR_IPI, req, (u64)i, (u64)v->pcpu, 0);
		}
	}
}

void kvm_flush_remote_tlbs(struct tdp_vm *vm)
{
	vm->stats[ST_remote_tlb_flush_requests]++;
	vm_cost(vm, vm->costs.remote_flush);
	kvm_make_all_cpus_request(vm, TDP_REQ_TLB_FLUSH);
	vm->cov.tlb_warm = false;
	vm->stats[ST_remote_tlb_flush]++;
	vm_trace(vm, TR_REMOTE_FLUSH, 0, 0, 0, 0);
}

void kvm_flush_remote_tlbs_range(struct tdp_vm *vm, u64 gfn, u64 npages)
{
	if (!vm->pol.precise_range_flush) {
		/* Bare metal: a ranged flush is a full remote flush (only the Hyper-V
		 * hook, hyperv_flush_guest_mapping_range(), honours the range). */
		kvm_flush_remote_tlbs(vm); /* not a KVM flush site: how a ranged flush is done */
		return;
	}
	/* Hyper-V style: the hypervisor below flushes the GPA range on every
	 * pCPU, without requests or IPIs. [MODEL CHOICE] every context. */
	vm->stats[ST_remote_tlb_flush_requests]++;
	vm->stats[ST_range_flushes]++;
	for (int p = 0; p < vm->cfg.npcpus; p++) {
		tlb_flush_range(&vm->pcpus[p].tlb, gfn, npages);
		/* [MODEL CHOICE] combined entries do not keep the range's shape: all go. */
		ctlb_flush_spaces(&vm->pcpus[p].ctlb, CTLB_ALL, 0, true);
	}
	vm_cost(vm, vm->costs.flush_range_page * (npages > 4096 ? 4096 : npages)); /* [MODEL CHOICE] cost saturates */
	vm_trace(vm, TR_RANGE_FLUSH, 0, gfn, npages, 0);
}

/* ---------------------------------------------------------------- vendor primitives */

static void invept_single(struct tdp_vm *vm, int p, u64 eptp)
{
	struct tlb *t = &vm->pcpus[p].tlb;
	int c = tlb_ctx_find(t, tlb_ctx_key_ept((eptp & SPTE_PFN_MASK) >> 12));

	if (c >= 0)
		tlb_flush_ctx(t, c);
	/* INVEPT single-context: guest-physical and combined mappings of the EP4TA. */
	ctlb_flush_spaces(&vm->pcpus[p].ctlb, CTLB_EP4TA, (eptp & SPTE_PFN_MASK) >> 12, true);
	vm->stats[ST_invept_single]++;
	vm_cost(vm, vm->costs.flush_current);
	vm_trace(vm, TR_VENDOR_FLUSH, 1, (u64)p, (eptp & SPTE_PFN_MASK) >> 12, 0);
}

static void invept_global(struct tdp_vm *vm, int p)
{
	tlb_flush_all(&vm->pcpus[p].tlb);
	ctlb_flush_spaces(&vm->pcpus[p].ctlb, CTLB_ALL, 0, true);
	vm->stats[ST_invept_global]++;
	vm_cost(vm, vm->costs.flush_all);
	vm_trace(vm, TR_VENDOR_FLUSH, 2, (u64)p, 0, 0);
}

static void svm_flush_tlb_asid(struct tdp_vm *vm, struct vcpu *v)
{
	/* svm_flush_tlb_asid(): TLB_CONTROL_FLUSH_ASID with FlushByAsid, otherwise
	 * a new ASID at the next VMRUN. */
	if (vm->cfg.flush_by_asid) {
		if (v->tlb_control != 1 && FLUSH_SITE(vm, SVM_FLUSH_ASID))
			v->tlb_control = 3;
	} else if (FLUSH_SITE(vm, SVM_FLUSH_ASID)) {
		v->asid_generation--;
	}
}

void vendor_flush_tlb_current(struct tdp_vm *vm, struct vcpu *v)
{
	vm->stats[ST_flush_current]++;
	if (vm->cfg.arch == TDP_SVM) {
		svm_flush_tlb_asid(vm, v);
		return;
	}
	struct tdp_root *r = tdp_mmu_find_root(vm, v->root_id);
	if (!r || v->pcpu < 0)
		return; /* no valid root: nothing to flush */
	invept_single(vm, v->pcpu, cpu_eptp(vm, r->frame));
}

void vendor_flush_tlb_all(struct tdp_vm *vm, struct vcpu *v)
{
	vm->stats[ST_flush_all]++;
	if (vm->cfg.arch == TDP_SVM) {
		svm_flush_tlb_asid(vm, v);
		return;
	}
	if (v->pcpu >= 0)
		invept_global(vm, v->pcpu);
}

void vendor_flush_tlb_guest(struct tdp_vm *vm, struct vcpu *v)
{
	vm->stats[ST_flush_guest]++;
	if (vm->cfg.arch == TDP_SVM) {
		svm_flush_tlb_asid(vm, v);
		return;
	}
	/* INVVPID single-context: the VPID's combined mappings (every PCID and
	 * EP4TA); guest-physical mappings are untouched (Intel SDM Vol. 3C "Operations
	 * that Invalidate Cached Mappings", 28.3.3.1 in the 2016 edition). */
	if (v->pcpu >= 0)
		ctlb_flush_spaces(&pc_of(vm, v)->ctlb, CTLB_ID, v->vpid, true);
	vm->stats[ST_invvpid]++;
	vm_cost(vm, vm->costs.flush_current);
}

/* pre_svm_run() / new_asid(): hand out ASIDs per pCPU within a generation;
 * running out bumps the generation and flushes every ASID (svm/svm.c; AMD APM
 * Vol. 2 15.16 "TLB Control"). */
static void svm_new_asid(struct tdp_vm *vm, struct pcpu *pc, struct vcpu *v)
{
	if (pc->next_asid > pc->max_asid) {
		pc->asid_generation++;
		pc->next_asid = pc->min_asid;
		if (FLUSH_SITE(vm, ASID_ROLLOVER))
			v->tlb_control = 1; /* TLB_CONTROL_FLUSH_ALL_ASID */
		vm->stats[ST_asid_generation_bumps]++;
	}
	v->asid = pc->next_asid++;
	v->asid_generation = pc->asid_generation;
	vm->stats[ST_asid_new]++;
	vm_trace(vm, TR_NEW_ASID, 0, (u64)v->id, v->asid, pc->asid_generation);
}

static void svm_pre_run(struct tdp_vm *vm, struct vcpu *v)
{
	struct pcpu *pc = pc_of(vm, v);

	if (v->vmcs_cpu != v->pcpu) {
		/* A VMCB that last ran elsewhere gets a fresh ASID here. */
		if (vm->pol.flush_on_migrate && FLUSH_SITE(vm, MIGRATE_SVM))
			v->asid_generation = 0;
		if (v->vmcs_cpu >= 0)
			vm->stats[ST_vcpu_migrations]++;
		v->vmcs_cpu = v->pcpu;
	}
	if (v->asid_generation != pc->asid_generation)
		svm_new_asid(vm, pc, v);
	checker_check_asid_alias(vm, v);
	/* TLB_CONTROL acts at VMRUN, then goes back to DO_NOTHING. */
	struct tlb *t = &pc->tlb;
	if (v->tlb_control == 1) {
		tlb_flush_all(t);
		ctlb_flush_spaces(&pc->ctlb, CTLB_ALL, 0, true);
		vm->stats[ST_tlb_control_flush_all]++;
		vm_cost(vm, vm->costs.flush_all);
		vm_trace(vm, TR_VENDOR_FLUSH, 3, (u64)v->pcpu, 0, 0);
	} else if (v->tlb_control == 3 || v->tlb_control == 7) {
		int c = tlb_ctx_find(t, tlb_ctx_key_asid(v->asid));
		if (c >= 0)
			tlb_flush_ctx(t, c);
		/* 3: every entry of the ASID; 7: its non-global entries (APM Vol. 2
		 * Table 15-9). Guest-physical entries are never global. */
		ctlb_flush_spaces(&pc->ctlb, CTLB_ID, v->asid, v->tlb_control == 3);
		vm->stats[ST_tlb_control_flush_asid]++;
		vm_cost(vm, vm->costs.flush_current);
		vm_trace(vm, TR_VENDOR_FLUSH, 4, (u64)v->pcpu, v->asid, 0);
	}
	v->tlb_control = 0;
}

/* vcpu_enter_guest() (x86.c): service requests in KVM's order, reload the MMU
 * (loading a root always flushes the current context), then enter. */
static int vcpu_enter(struct tdp_vm *vm, struct vcpu *v)
{
	struct pcpu *pc = pc_of(vm, v);

	if (v->requests & TDP_REQ_MMU_FREE_OBSOLETE_ROOTS) {
		v->requests &= ~TDP_REQ_MMU_FREE_OBSOLETE_ROOTS;
		struct tdp_root *r = tdp_mmu_find_root(vm, v->root_id);
		if (v->root_id && (!r || r->invalid)) {
			tdp_mmu_put_root_internal(vm, v->root_id, true);
			v->root_id = 0;
		}
		/* kvm_mmu_free_obsolete_roots(): the other level's MMU too (root_mmu,
		 * guest_mmu). */
		r = tdp_mmu_find_root(vm, v->other.root_id);
		if (v->other.root_id && (!r || r->invalid)) {
			tdp_mmu_put_root_internal(vm, v->other.root_id, true);
			v->other.root_id = 0;
		}
	}
	v->requests &= ~TDP_REQ_LOAD_MMU_PGD;
	if (v->requests & TDP_REQ_TLB_FLUSH) {
		/* kvm_vcpu_flush_tlb_all(): also covers a pending FLUSH_CURRENT. */
		v->requests &= ~(TDP_REQ_TLB_FLUSH | TDP_REQ_TLB_FLUSH_CURRENT);
		vm->stats[ST_tlb_flush]++;
		if (FLUSH_SITE(vm, REQ_TLB_FLUSH)) {
			if (vm->pol.remote_flush_all_contexts)
				vendor_flush_tlb_all(vm, v);
			else
				vendor_flush_tlb_current(vm, v); /* B16 */
		}
	}
	if (v->requests & TDP_REQ_TLB_FLUSH_CURRENT) {
		v->requests &= ~TDP_REQ_TLB_FLUSH_CURRENT;
		if (FLUSH_SITE(vm, REQ_TLB_FLUSH_CURRENT))
			vendor_flush_tlb_current(vm, v);
	}
	if (v->requests & TDP_REQ_TLB_FLUSH_GUEST) {
		v->requests &= ~TDP_REQ_TLB_FLUSH_GUEST;
		if (FLUSH_SITE(vm, REQ_TLB_FLUSH_GUEST))
			vendor_flush_tlb_guest(vm, v);
	}
	if (!v->root_id) {
		/* kvm_mmu_reload() -> kvm_mmu_load(): alloc or reuse, load, flush. */
		u32 id;
		int r = tdp_mmu_get_vcpu_root(vm, 0, v->in_l2, &id); /* role.guest_mode for L2 */
		if (r)
			return vm_err(vm, r, "no frame left for vcpu %d's root (frame_limit reached)", v->id);
		v->root_id = id;
		if (vm->pol.flush_on_root_load && FLUSH_SITE(vm, ROOT_LOAD))
			vendor_flush_tlb_current(vm, v);
	}
	if (vm->cfg.arch == TDP_SVM)
		svm_pre_run(vm, v);
	int c = cpu_context_of(vm, v);
	if (c < 0)
		return vm_err(vm, TDP_ENOMEM, "out of host memory for a TLB context");
	pc->cur_ctx = c;
	pc->vcpu = v->id;
	/* The guest's paravirtual flushes asked for so far are done when the vCPU runs
	 * again, as far as the guest can tell (on SVM the TLB_CONTROL acted at this VMRUN). */
	v->g.flush_done = v->g.flush_req;
	v->mode = TDP_IN_GUEST;
	vm->stats[ST_vm_entries]++;
	vm_cost(vm, vm->costs.vm_entry);
	return 0;
}

void cpu_vcpu_exit(struct tdp_vm *vm, struct vcpu *v)
{
	if (v->mode == TDP_IN_GUEST) {
		vm->stats[ST_vm_exits]++;
		vm_cost(vm, vm->costs.vm_exit);
	}
	if (v->mode != TDP_OUTSIDE_GUEST && v->pcpu >= 0 && vm->pcpus[v->pcpu].vcpu == v->id)
		vm->pcpus[v->pcpu].vcpu = -1;
	v->mode = TDP_OUTSIDE_GUEST;
}

int cpu_enter(struct tdp_vm *vm, struct vcpu *v) { return vcpu_enter(vm, v); }

int cpu_enter_if_kicked(struct tdp_vm *vm, struct vcpu *v)
{
	/* Kicked by a request: re-enter on the same pCPU, servicing it. */
	return v->mode == TDP_EXITING_GUEST ? vcpu_enter(vm, v) : 0;
}

void cpu_vmx_load_vmcs(struct tdp_vm *vm, struct vcpu *v)
{
	if (vm->cfg.arch == TDP_VMX && v->vmcs_cpu != v->pcpu) {
		/* vmx_vcpu_load_vmcs(): a VMCS not loaded here flushes every
		 * EPTP/VPID context (the pCPU may hold stale entries). */
		if (vm->pol.flush_on_migrate && FLUSH_SITE(vm, MIGRATE_VMX))
			v->requests |= TDP_REQ_TLB_FLUSH;
		if (v->vmcs_cpu >= 0)
			vm->stats[ST_vcpu_migrations]++;
		v->vmcs_cpu = v->pcpu;
	}
}

int cpu_vcpu_run(struct tdp_vm *vm, int vcpu, int pcpu)
{
	struct vcpu *v = &vm->vcpus[vcpu];
	struct pcpu *pc = &vm->pcpus[pcpu];

	if (v->mode == TDP_EXITING_GUEST) {
		/* A kicked vCPU re-enters where it is, servicing its requests,
		 * before anything else happens to it. */
		int r = vcpu_enter(vm, v);
		if (r)
			return r;
	}
	cpu_vcpu_exit(vm, v);
	if (pc->vcpu >= 0 && pc->vcpu != vcpu)
		cpu_vcpu_exit(vm, &vm->vcpus[pc->vcpu]); /* preempted by the scheduler */
	v->pcpu = pcpu;
	cpu_vmx_load_vmcs(vm, v);
	return vcpu_enter(vm, v);
}

/* Junk TLB entries (tlb.junk): translations a previous user of the pCPU left,
 * tagged like this VM's contexts could be. */
int cpu_fill_tlb_junk(struct tdp_vm *vm, int p, u32 count, u64 max_gfn)
{
	struct tlb *t = &vm->pcpus[p].tlb;
	u64 rng = vm->cfg.seed * 0x2545f4914f6cdd1dull + (u64)p * 0x9e3779b97f4a7c15ull + 1;
	for (u32 i = 0; i < count; i++) {
		rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
		/* Tags a later root or ASID of this VM may carry: the first pool frames
		 * (LIFO makes them likely roots) and low ASIDs. */
		u64 key = vm->cfg.arch == TDP_VMX ? tlb_ctx_key_ept(vm->mem.base_pfn + (rng % 64))
						  : tlb_ctx_key_asid(vm->cfg.min_asid + (u32)(rng % 64));
		int c = tlb_ctx(t, key);
		if (c < 0)
			return TDP_ENOMEM;
		u64 r2 = rng * 0x9e3779b97f4a7c15ull;
		if (tlb_fill(t, c, (r2 >> 8) % max_gfn, 1, (r2 >> 20) & 0xffffff, 7, 1, false, NULL))
			return TDP_ENOMEM;
	}
	return 0;
}

/* ---------------------------------------------------------------- guest accesses */

static void engine_write(struct tdp_vm *vm, u64 hpa, u64 old, u64 nw)
{
	u32 f = hostmem_frame_of(&vm->mem, hpa >> 12);

	if (f == NO_FRAME || (vm->mem.frames[f].state != FRAME_TABLE && vm->mem.frames[f].state != FRAME_RCU))
		return;
	u64 *p = hostmem_table(&vm->mem, f) + ((hpa & 0xfff) >> 3);
	if (*p == old) /* a locked read-modify-write */
		*p = nw;
}

static unsigned need_perm(struct tdp_vm *vm, int access)
{
	switch (access) {
	case TDP_ACC_READ: return PERM_R;
	case TDP_ACC_WRITE: return PERM_W;
	case TDP_ACC_EXEC: return PERM_X;
	default: return vm->cfg.mbec ? PERM_XU : PERM_X;
	}
}

#define MAX_FAULT_RETRIES 8

/* The checker's verdict kept in a TLB entry: a 4K translation that passed
 * checker_check_translation() for `access` passes it again, with no effect, until
 * the truth changes (vm->truth_gen, memslot_truth_changed()); so a TLB hit's check
 * is a generation compare. A check that fails reports and is not kept: it fails
 * again next time. A huge page's entry serves many gfns: it is checked every time. */
static inline unsigned verdict_for(int access)
{
	return access == TDP_ACC_WRITE ? TLB_CHK_MAP | TLB_CHK_WRITE : TLB_CHK_MAP;
}

static inline void keep_verdict(const struct tdp_vm *vm, struct tlb_ent *e, unsigned chk)
{
	if (!e || e->level != 1)
		return;
	if (e->chk_gen != vm->truth_gen) {
		e->chk_gen = vm->truth_gen;
		e->chk = 0;
	}
	e->chk |= (u8)chk;
}

/* The checker on a TLB hit on e (src: the L2 entry an L2 hit refilled e from). */
static inline void check_tlb_hit(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, struct tlb_ent *e,
				 struct tlb_ent *src, u64 pfn, u64 tag, u64 batch_index)
{
	unsigned chk = verdict_for(access);

	if (e->chk_gen == vm->truth_gen && (e->chk & chk) == chk)
		return;
	if (checker_check_translation(vm, v, gpa, access, pfn, e->level, tag, batch_index))
		return;
	keep_verdict(vm, e, chk);
	keep_verdict(vm, src, chk);
}

/* An EPT violation / #NPF reaches KVM's fault handler: 1 when the access ends here
 * (emulated, or waiting for an invalidation), 0 to retry it, <0 on error. */
static int take_fault(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, struct tdp_access_result *out)
{
	out->faults++;
	switch (kvm_tdp_page_fault(vm, tdp_mmu_find_root(vm, v->root_id), gpa >> 12, access)) {
	case RET_PF_EMULATE:
		out->outcome = TDP_OUT_MMIO;
		return 1;
	case RET_PF_BLOCKED:
		out->outcome = TDP_OUT_BLOCKED;
		return 1;
	case RET_PF_NOMEM:
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted while handling a fault on gpa 0x%llx",
			      (unsigned long long)gpa);
	default:
		return 0;
	}
}

/* l1_missed: the caller has just probed the 4K L1 array of the vCPU's current context
 * for gfn and missed (kept_hit_run()), with the vCPU in guest mode: the first lookup
 * starts after it. */
static inline __attribute__((always_inline)) int access_one(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access,
							     struct tdp_access_result *out, u64 batch_index,
							     bool l1_missed)
{
	struct pcpu *pc;
	u64 gfn = gpa >> 12;
	unsigned need = need_perm(vm, access);
	bool is_write = access == TDP_ACC_WRITE;
	bool ad = vm->cfg.arch == TDP_SVM || vm->cfg.ad;
	size_t nviol_before = vm->nviol;

	memset(out, 0, sizeof(*out));
	if (v->mode == TDP_EXITING_GUEST) {
		/* Kicked by a request: re-enter on the same pCPU, servicing it. */
		int r = vcpu_enter(vm, v);
		if (r)
			return r;
	}
	pc = pc_of(vm, v);
	vm->stats[ST_accesses]++;
	for (int tries = 0; tries < MAX_FAULT_RETRIES; tries++) {
		int ctx = pc->cur_ctx;
		struct tlb_ent *e, *src;
		u64 tag = pc->tlb.ctx[ctx].key & ((1ull << 62) - 1);
		int hit = tlb_lookup(&pc->tlb, ctx, gfn, &e, &src, l1_missed && tries == 0);
		if (hit) {
			bool permitted = (e->perms & need) != 0;
			if (permitted && !(is_write && ad && !e->dirty)) {
				u64 off = gfn & (pages_per_level(e->level) - 1);
				vm->stats[hit == 1 ? ST_tlb_hits_l1 : ST_tlb_hits_l2]++;
				vm_cost(vm, vm->costs.tlb_hit);
				out->tlb_hit = hit;
				out->hpa = ((e->pfn + off) << 12) | (gpa & 0xfff);
				check_tlb_hit(vm, v, gpa, access, e, src, e->pfn + off, tag, batch_index);
				if (vm->hazard_probe && !vm->hazard)
					checker_probe_hazard(vm, v, gfn, e->pfn + off, e->level);
				goto done;
			}
			if (!permitted) {
				/* The cached entry denies the access: an EPT violation /
				 * #NPF from the TLB, which drops the entry (Intel SDM Vol. 3C
				 * 28.3.3.1: an EPT violation invalidates the mappings that would
				 * translate the faulting GPA). */
				vm->stats[hit == 1 ? ST_tlb_hits_l1 : ST_tlb_hits_l2]++;
				tlb_flush_gfn_ctx(&pc->tlb, ctx, gfn);
				int r = take_fault(vm, v, gpa, access, out);
				if (r < 0)
					return r;
				if (r)
					goto done;
				continue;
			}
			/* A write through an entry that has not recorded D re-walks to set it. */
		}
		vm->stats[ST_tlb_misses]++;
		vm_cost(vm, vm->costs.tlb_miss);
		struct tdp_root *root = tdp_mmu_find_root(vm, v->root_id);
		if (TDP_WARN_ON(vm, !root)) /* a vCPU in guest mode holds a reference to its root */
			return vm_err(vm, TDP_ESTATE, "vcpu %d runs without a root", v->id);
		u64 table = hostmem_pfn(&vm->mem, root->frame) << 12;
		int level = root->level;
		unsigned perms = PERM_ALL;
		struct tlb_ent *psc = tlb_psc_lookup(&pc->tlb, ctx, gfn, root->level);
		bool stale_reported = false;
		if (psc) {
			vm->stats[ST_psc_hits_l2 + psc->level - 2]++;
			stale_reported = checker_check_psc(vm, v, gpa, access, psc->pfn, psc->gen, psc->level, tag,
							   batch_index);
			table = psc->pfn << 12;
			level = psc->level - 1;
			perms = psc->perms;
		}
		struct tdp_walk_result w;
		walk_gpa_hostmem(&vm->hw, &vm->mem, table, level, perms, gpa, access, &w);
		vm->stats[ST_walks]++;
		vm->stats[ST_walk_refs] += (u64)w.refs;
		vm_cost(vm, vm->costs.walk_ref * (u64)w.refs);
		out->walk_refs += w.refs;
		if (w.status == TDP_WALK_OK) {
			for (int k = 0; k < w.nad; k++)
				engine_write(vm, w.ad_addr[k], w.ad_old[k], w.ad_new[k]);
			vm->stats[ST_ad_updates] += (u64)w.nad;
			/* Fill the paging-structure caches with every non-leaf entry used. */
			unsigned acc = perms;
			for (int i = 0; i < w.nentries - 1; i++) {
				int lv = level - i;
				u64 ent = w.entries[i];
				acc &= spte_hw_perms(&vm->masks, ent);
				if (tlb_psc_caches(&pc->tlb, lv)) {
					u64 child = (ent & SPTE_PFN_MASK) >> 12;
					u32 cf = hostmem_frame_of(&vm->mem, child);
					if (tlb_psc_fill(&pc->tlb, ctx, gfn, lv, child, acc,
							 cf == NO_FRAME ? 0 : vm->mem.frames[cf].gen))
						return vm_err(vm, TDP_ENOMEM, "out of host memory for the paging-structure cache");
				}
				vm->stats[ST_psc_fills]++; /* counted where no cache keeps it, as before */
			}
			u64 leafpfn = ((w.hpa >> 12) & ~(pages_per_level(w.level) - 1));
			int dirty = !ad || is_write || (w.entries[w.nentries - 1] & vm->masks.dirty);
			struct tlb_ent *filled[2] = {NULL, NULL};
			/* After a miss the arrays hold no live entry for gfn (a hit that had
			 * to re-walk for D is replaced in place). */
			if (tlb_fill(&pc->tlb, ctx, gfn, w.level, leafpfn, w.perms, dirty, hit == 0, filled))
				return vm_err(vm, TDP_ENOMEM, "out of host memory for the TLB");
			vm->stats[ST_tlb_fills]++;
			vm->cov.tlb_warm = true;
			out->hpa = w.hpa;
			if (!stale_reported &&
			    !checker_check_translation(vm, v, gpa, access, w.hpa >> 12, w.level, tag, batch_index)) {
				keep_verdict(vm, filled[0], verdict_for(access));
				keep_verdict(vm, filled[1], verdict_for(access));
			}
			goto done;
		}
		/* EPT violation / misconfiguration, #NPF. */
		u64 last = w.nentries ? w.entries[w.nentries - 1] : 0;
		tlb_flush_gfn_ctx(&pc->tlb, ctx, gfn);
		if (w.status == TDP_WALK_MISCONFIG || (w.status == TDP_WALK_NPF && (w.error_code & 8))) {
			/* KVM's MMIO SPTE: emulate without a full fault, if its memslot
			 * generation is current (check_mmio_spte(), mmu/mmu.c); a stale one is
			 * handled as an ordinary fault and rebuilt. */
			if (is_mmio_spte(&vm->masks, last) &&
			    mmio_spte_gen(last) == (vm->memslots_gen & ((1u << 19) - 1))) {
				out->outcome = TDP_OUT_MMIO;
				goto done;
			}
		}
		int r = take_fault(vm, v, gpa, access, out);
		if (r < 0)
			return r;
		if (r)
			goto done;
	}
	/* Liveness: the fault kept retrying (e.g. a root invalidated without the
	 * FREE_OBSOLETE_ROOTS request, or B19's permanent retry). */
	out->outcome = TDP_OUT_LIVELOCK;
	checker_report_livelock(vm, v, gpa, access, batch_index);
done:
	if (vm->nviol > nviol_before)
		out->violation = (int)vm->nviol;
	return 0;
}

int cpu_access(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, struct tdp_access_result *out,
	       u64 batch_index)
{
	return access_one(vm, v, gpa, access, out, batch_index, false);
}

/* Whether a 4K TLB entry serves `acc` with the checker's verdict kept for it
 * (check_tlb_hit() would return at once): permitted, the verdict current, and for a
 * write with A/D on, D already recorded (else the access re-walks to set it). */
static inline bool kept_for(const struct tlb_ent *e, int acc, unsigned need, u32 gen, bool ad)
{
	if (!(e->perms & need) || e->chk_gen != gen)
		return false;
	if (acc == TDP_ACC_WRITE)
		return !(ad && !e->dirty) && (e->chk & TLB_CHK_WRITE);
	return e->chk & TLB_CHK_MAP;
}

/* The run of accesses from index i that hit a 4K TLB entry whose checker verdict is
 * kept, with no hazard probe to run: in the L1 array, or after every L1 array
 * missed, in the L2 array (then refilling L1). For each, the same effects as
 * access_one() - the entries' use (LRU stamps, PLRU bits, the refill), the result -
 * for the probes and a generation compare. What such hits cannot change is read once:
 * the vCPU's context and its epoch, the arrays, the truth generation. Returns the
 * index of the first access that is not such a hit (n at the end); *missed then says
 * whether its 4K L1 probe missed (the probes have no effect, so access_one() starts
 * from scratch, or after that probe). hits[0] and hits[1] count the L1 and L2 hits. */
static size_t kept_hit_run(struct tdp_vm *vm, struct vcpu *v, const u64 *gpas, const u8 *accesses,
			   int default_access, size_t i, size_t n, struct tdp_access_result *per, bool ad,
			   bool *missed, u64 hits[2])
{
	*missed = false;
	if (v->mode != TDP_IN_GUEST || (vm->hazard_probe && !vm->hazard))
		return i;
	struct tlb *t = &pc_of(vm, v)->tlb;
	if (t->mode == TDP_TLB_ADVERSARIAL)
		return i;
	struct tlb_array *a = &t->l1[0];
	const int ctx = pc_of(vm, v)->cur_ctx;
	const u32 epoch = t->ctx[ctx].epoch, gen = vm->truth_gen, ways = a->ways;
	if (!epoch) { /* nothing is alive in this context (tlb_alive()) */
		*missed = true;
		return i;
	}
	const unsigned need[4] = {PERM_R, PERM_W, PERM_X, need_perm(vm, TDP_ACC_EXEC_USER)};
	const bool plru = t->repl == TDP_REPL_PLRU && ways > 1 && ways <= 64;
	u32 stamp = t->stamp; /* t->stamp, kept in a register between the L2 refills */
	while (i < n) {
		/* L1 hits: tlb_array_find() inline, in a loop of their own. */
		for (; i < n; i++) {
			int acc = accesses ? accesses[i] : default_access; /* 0..3, checked by the caller */
			u64 gpa = gpas[i], gfn = gpa >> 12, key = tlb_ent_key(gfn, 1);
			u32 set = tlb_set_of(a, gfn), w;
			const size_t base = (size_t)set * ways;
			const u64 *keys = &a->key[base];
			struct tlb_ent *e = NULL;
			for (w = 0; w < ways && a->fills; w++) {
				if (keys[w] != key)
					continue; /* the key match implies vpn, level 1, and level != 0 */
				struct tlb_ent *c = &a->e[base + w];
				if (c->ctx == (u32)ctx && c->epoch == epoch) {
					e = c;
					break;
				}
			}
			if (!e)
				break;
			if (!kept_for(e, acc, need[acc], gen, ad))
				goto out;
			a->stamp[base + w] = ++stamp; /* tlb_touch() */
			if (plru)
				tlb_plru_touch(a, set, w);
			hits[0]++;
			if (per)
				per[i] = (struct tdp_access_result){.outcome = TDP_OUT_OK, .tlb_hit = TDP_TLB_HIT_L1,
								    .hpa = (e->pfn << 12) | (gpa & 0xfff)};
		}
		if (i == n)
			break;
		/* The 4K L1 probe missed: tlb_lookup() goes on with the L1 huge-page
		 * arrays, then L2. */
		*missed = true;
		int acc = accesses ? accesses[i] : default_access;
		u64 gpa = gpas[i], gfn = gpa >> 12;
		u32 set, w;
		if (tlb_array_find(t, &t->l1[1], ctx, gfn >> 9, 2, &set, &w) ||
		    tlb_array_find(t, &t->l1[2], ctx, gfn >> 18, 3, &set, &w))
			break;
		struct tlb_ent *l2 = tlb_array_find(t, &t->l2, ctx, gfn, 1, &set, &w);
		if (!l2 || !kept_for(l2, acc, need[acc], gen, ad))
			break;
		*missed = false;
		t->stamp = stamp;
		struct tlb_ent *e = tlb_l2_use(t, ctx, gfn, 1, l2, set, w);
		stamp = t->stamp;
		hits[1]++;
		if (per)
			per[i] = (struct tdp_access_result){.outcome = TDP_OUT_OK, .tlb_hit = TDP_TLB_HIT_L2,
							    .hpa = (e->pfn << 12) | (gpa & 0xfff)};
		i++;
	}
out:
	t->stamp = stamp;
	return i;
}

/* The counters and costs of kept TLB hits (hits[0] in L1, hits[1] in L2), added at
 * once; zeroes them. */
static void add_kept_hits(struct tdp_vm *vm, u64 *counts, u64 hits[2])
{
	u64 all = hits[0] + hits[1];
	vm->stats[ST_accesses] += all;
	vm->stats[ST_tlb_hits_l1] += hits[0];
	vm->stats[ST_tlb_hits_l2] += hits[1];
	vm_cost(vm, vm->costs.tlb_hit * all);
	counts[TDP_BATCH_OK] += all;
	counts[TDP_BATCH_L1_HITS] += hits[0];
	counts[TDP_BATCH_L2_HITS] += hits[1];
	hits[0] = hits[1] = 0;
}

int cpu_access_batch(struct tdp_vm *vm, struct vcpu *v, const u64 *gpas, const u8 *accesses, int default_access,
		     size_t n, struct tdp_access_result *per, u64 *counts, size_t *done)
{
	struct tdp_access_result tmp;
	const u64 fault_frames = (u64)tdp_fault_frames(vm->cfg.levels);
	const bool ad = vm->cfg.arch == TDP_SVM || vm->cfg.ad;
	u64 kept[2] = {0, 0}; /* hits taken by kept_hit_run(), counted at the next slow access */
	int r = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (hostmem_available(&vm->mem) < fault_frames) {
			/* Not an error: the batch stops before an access that might need
			 * more frames than are left, and says how far it got. */
			vm_err(vm, 0, "frame pool exhausted: the batch stopped after %zu of %zu accesses", i, n);
			break;
		}
		/* Kept hits take no frame, so the check above holds for the whole run. */
		bool missed;
		if ((i = kept_hit_run(vm, v, gpas, accesses, default_access, i, n, per, ad, &missed, kept)) == n)
			break;
		add_kept_hits(vm, counts, kept);
		int acc = accesses ? accesses[i] : default_access;
		struct tdp_access_result *o = per ? &per[i] : &tmp;
		if ((r = access_one(vm, v, gpas[i], acc, o, i, missed)))
			break;
		counts[TDP_BATCH_OK + o->outcome]++;
		counts[TDP_BATCH_WALKED + o->tlb_hit]++;
		counts[TDP_BATCH_FAULTS] += (u64)o->faults;
		counts[TDP_BATCH_VIOLATIONS] += o->violation != 0;
	}
	add_kept_hits(vm, counts, kept);
	*done = i;
	return r;
}
