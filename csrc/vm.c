/* vm.c — the VM's lifecycle: configuration defaults and validation, create and
 * destroy, the policy switches, counters, the error message of the last call, the
 * start and end of every top-level operation, and the digest of the whole state.
 * What the VM models lives in the files named for it: memslots (memslot.c), the
 * MMU notifier (mmu_notifier.c), the fault entry and the zaps' callers (mmu.c), the
 * TDP MMU (tdp_mmu*.c), CPUs (cpu.c), TLBs (tlb.c), the checker (checker.c), the
 * event log (event.c); the public entry points are in api.c. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "vm.h"

#define HOST_SLOT_REGION_OFFSET (1ull << 38) /* slots start 256 GiB above the pool base */
#define POOL_MAX_FRAMES (1u << 26)            /* the pool stays below the slot regions */

static const char *const stat_names[] = {
#define STAT(name) #name,
#include "stats.def"
#undef STAT
};

int tdp_stat_count(void) { return ST_COUNT; }
const char *tdp_stat_name(int i) { return (i >= 0 && i < ST_COUNT) ? stat_names[i] : NULL; }

int vm_err(struct tdp_vm *vm, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(vm->err, sizeof(vm->err), fmt, ap);
	va_end(ap);
	return code;
}

const char *tdp_errmsg(tdp_vm *vm) { return vm->err; }

/* Every top-level operation starts and ends here. */
void vm_op_start(struct tdp_vm *vm)
{
	vm->cur_event = vm->nlogged;
	vm->err[0] = 0;
}

int vm_op_begin(struct tdp_vm *vm)
{
	vm_op_start(vm);
	if (vm->records_lost) {
		/* Reported once, by the call after the one that lost them; the count
		 * stays (tdp_dropped_records()). */
		vm->records_lost = false;
		return vm_err(vm, TDP_ENOMEM, "out of host memory: %llu record(s) of the event log, the violations "
			      "or the trace could not be kept, so the log is no longer a complete reproducer",
			      (unsigned long long)vm->dropped_records);
	}
	return 0;
}

void vm_drop_record(struct tdp_vm *vm)
{
	vm->dropped_records++;
	vm->records_lost = true;
}

bool vm_warn(struct tdp_vm *vm, const char *cond, const char *file, int line)
{
	if (!vm->warnings++)
		snprintf(vm->warning, sizeof(vm->warning), "WARN_ON(%s) at %s:%d", cond, file, line);
	return true;
}

uint64_t tdp_warn_count(tdp_vm *vm) { return vm->warnings; }
const char *tdp_warn_message(tdp_vm *vm) { return vm->warning; }
uint64_t tdp_dropped_records(tdp_vm *vm) { return vm->dropped_records; }

void vm_op_end(struct tdp_vm *vm)
{
	TDP_WARN_ON(vm, vm->mmu_invalidate_in_progress < 0);
	if (vm->pol.rcu_gp_at_op_end)
		hostmem_synchronize_rcu(&vm->mem);
	vm->stats[ST_rcu_grace_periods] = vm->mem.grace_periods;
	if (vm->cfg.invariants)
		checker_check_invariants(vm);
}

void vm_rcu_quiescent(struct tdp_vm *vm, bool at_yield)
{
	if (!at_yield || vm->pol.rcu_gp_at_yield)
		hostmem_synchronize_rcu(&vm->mem);
	vm->stats[ST_rcu_grace_periods] = vm->mem.grace_periods;
}

/* ------------------------------------------------------------------ argument checks shared by the entry points */

int vm_check_vcpu(struct tdp_vm *vm, int vcpu)
{
	if (vcpu < 0 || vcpu >= vm->cfg.nvcpus)
		return vm_err(vm, TDP_EINVAL, "vcpu must be between 0 and %d, got %d", vm->cfg.nvcpus - 1, vcpu);
	return 0;
}

int vm_check_in_guest(struct tdp_vm *vm, int vcpu)
{
	int r;
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	if (vm->vcpus[vcpu].mode == TDP_OUTSIDE_GUEST)
		return vm_err(vm, TDP_ESTATE, "vcpu %d is not in guest mode: call vcpu_run(%d, pcpu) first", vcpu, vcpu);
	return 0;
}

int vm_check_pcpu(struct tdp_vm *vm, int pcpu)
{
	if (pcpu < 0 || pcpu >= vm->cfg.npcpus)
		return vm_err(vm, TDP_EINVAL, "pcpu must be between 0 and %d, got %d", vm->cfg.npcpus - 1, pcpu);
	return 0;
}

int vm_check_gfn(struct tdp_vm *vm, const char *what, u64 gfn)
{
	if (gfn >= vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "%s 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d: gfns below 0x%llx)",
			      what, (unsigned long long)gfn, vm->cfg.maxphyaddr, (unsigned long long)vm_max_gfn(vm));
	return 0;
}

int vm_check_range(struct tdp_vm *vm, u64 start, u64 end)
{
	int r;
	if ((r = vm_check_gfn(vm, "start_gfn", start)))
		return r;
	if (end > vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "end_gfn 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d: end at most 0x%llx)",
			      (unsigned long long)end, vm->cfg.maxphyaddr, (unsigned long long)vm_max_gfn(vm));
	if (end <= start)
		return vm_err(vm, TDP_EINVAL, "end_gfn 0x%llx must be greater than start_gfn 0x%llx",
			      (unsigned long long)end, (unsigned long long)start);
	return 0;
}

/* ------------------------------------------------------------------ defaults */

void tdp_default_config(struct tdp_config *c)
{
	*c = (struct tdp_config){
		.arch = TDP_VMX, .levels = 4, .seed = 0, .nvcpus = 1, .npcpus = 1, .ad = 1, .mbec = 0,
		.maxphyaddr = 46, .hpa_base = 1ull << 30, .frame_limit = 0, .max_asid = 32767,
		.min_asid = 1, .flush_by_asid = 1, .trace = 0, .record = 1};
}

void tdp_default_policy(struct tdp_policy *p)
{
	/* KVM v6.13 (struct tdp_policy in tdpfast.h gives each switch's history). */
	*p = (struct tdp_policy){
		.flush_on_root_load = 1, .flush_on_migrate = 1, .flush_on_put_root = 0,
		.root_lifetime = TDP_ROOT_PRESERVE, .remote_flush_all_contexts = 1,
		.shared_zap_flush = 1, .flush_before_yield = 1, .precise_range_flush = 0,
		.dirty_log_enable_flush = 0, .notifier_zaps_invalid_roots = 1,
		.per_root_flush_reset = 0, .nx_recovery_flush_assign = 0, .removed_pt_flush = 0,
		.iter_skip_after_yield = 0, .map_huge_over_table_flush = 1, .nx_huge_pages = 0,
		.nx_recovery_ratio = 60, .yield_every = 0, .rcu_gp_at_yield = 1,
		.rcu_gp_at_op_end = 1, .memslot_delete_zap_all = 1, .eager_split = 1,
		.huge_recovery = 0, .ept_soft_ad = 1, .fault_spurious_if_allowed = 1,
		.age_valid_roots_only = 1, .per_vmcb_asid = 1};
}

void tdp_default_costs(struct tdp_costs *c)
{
	/* Cycles. [MODEL CHOICE] anchored on Dave Hansen's flush_tlb_mm_range()
	 * cycle counts (linux-mm, 2014-02-18; a kernel compile on Intel): a one-context
	 * flush ~ a one-page flush_tlb_mm_range (1,276), a global one ~ GLOBAL
	 * (2,283); an IPI round trip "microseconds" (~3 us at 2 GHz). */
	/* remote_flush: the requester's side of kvm_flush_remote_tlbs() (setting the
	 * request on every vCPU and waiting for the acknowledgements), paid per call
	 * even when no vCPU needs an IPI. */
	*c = (struct tdp_costs){.spte_write = 20, .walk_ref = 40, .tlb_hit = 1, .tlb_miss = 10,
				.flush_current = 1276, .flush_all = 2283, .flush_range_page = 150,
				.ipi = 6000, .vm_exit = 1000, .vm_entry = 1000, .fault = 2000,
				.remote_flush = 3000};
}

/* ------------------------------------------------------------------ create / destroy */

/* The frames the access path keeps available before every access (check_access_args()
 * and the batch loop in api.c), so that a fault never fails half-way: levels + 1, a
 * bound over the tables kvm_tdp_mmu_map() may allocate on its way down from the root
 * (tdp_mmu_alloc_sp() for each missing level). [MODEL CHOICE] the bound itself. */
int tdp_fault_frames(int levels) { return levels + 1; }

static int check_tlbcfg(const struct tdp_tlb_config *t, char *err, size_t errlen)
{
	if (t->mode != TDP_TLB_SETASSOC && t->mode != TDP_TLB_ADVERSARIAL) {
		snprintf(err, errlen, "tlb.mode must be 0 (set-associative) or 1 (adversarial), got %d", t->mode);
		return TDP_EINVAL;
	}
	if (t->repl < 0 || t->repl > 2) {
		snprintf(err, errlen, "tlb.replacement must be lru, plru or random");
		return TDP_EINVAL;
	}
	const struct tdp_tlb_array_config *all[] = {&t->l1[0], &t->l1[1], &t->l1[2], &t->l2, &t->l2_1g,
						    &t->psc[2], &t->psc[3], &t->psc[4], &t->psc[5]};
	const char *names[] = {"l1_4k", "l1_2m", "l1_1g", "l2", "l2_1g", "psc_pde", "psc_pdpte", "psc_pml4e", "psc_pml5e"};
	for (int i = 0; i < 9; i++) {
		if (all[i]->sets < 0 || all[i]->ways < 0 || all[i]->sets > (1 << 20) || all[i]->ways > 128 ||
		    (all[i]->sets > 0) != (all[i]->ways > 0)) {
			snprintf(err, errlen, "tlb.%s: sets must be 0..1048576 and ways 1..128 (got %d sets, %d ways)",
				 names[i], all[i]->sets, all[i]->ways);
			return TDP_EINVAL;
		}
	}
	if (t->junk > (1u << 24)) {
		snprintf(err, errlen, "tlb.junk must be at most 16777216, got %u", t->junk);
		return TDP_EINVAL;
	}
	return 0;
}

static int check_policy(const struct tdp_policy *pol, char *err, size_t errlen)
{
	if (pol->root_lifetime != TDP_ROOT_PRESERVE && pol->root_lifetime != TDP_ROOT_ZAP_ON_LAST_PUT) {
		snprintf(err, errlen, "policy.root_lifetime must be 'preserve' or 'zap_on_last_put'");
		return TDP_EINVAL;
	}
	if (pol->huge_recovery < 0 || pol->huge_recovery > 1 || pol->removed_pt_flush < 0 || pol->removed_pt_flush > 2 ||
	    pol->dirty_log_enable_flush < 0 || pol->dirty_log_enable_flush > 1 || pol->yield_every < 0 ||
	    pol->nx_recovery_ratio < 0) {
		snprintf(err, errlen, "policy: a switch is out of range");
		return TDP_EINVAL;
	}
	return 0;
}

void tdp_vm_destroy(tdp_vm *vm)
{
	if (!vm)
		return;
	for (int i = 0; i < vm->nslots; i++)
		memslot_free(vm, &vm->slots[i]);
	free(vm->slots);
	if (vm->pcpus)
		for (int p = 0; p < vm->cfg.npcpus; p++) {
			tlb_destroy(&vm->pcpus[p].tlb);
			ctlb_destroy(&vm->pcpus[p].ctlb);
		}
	free(vm->pcpus);
	guest_mem_free(&vm->gmem);
	free(vm->vcpus);
	free(vm->roots);
	free(vm->nx_list);
	free(vm->viol);
	free(vm->inv.mark);
	free(vm->inv.node);
	free(vm->inv.kids);
	free(vm->ev);
	free(vm->blob);
	free(vm->tr);
	for (int i = 0; i < vm->nops; i++)
		free(vm->ops[i]);
	free(vm->ops);
	hostmem_destroy(&vm->mem);
	free(vm);
}

int tdp_vm_create(const struct tdp_config *cfg, const struct tdp_tlb_config *tlb,
		  const struct tdp_policy *pol, const struct tdp_costs *costs, tdp_vm **out,
		  char *err, size_t errlen)
{
	struct tdp_vm *vm;
	int r;

	*out = NULL;
	if (cfg->arch != TDP_VMX && cfg->arch != TDP_SVM) {
		snprintf(err, errlen, "arch must be 'vmx' or 'svm'");
		return TDP_EINVAL;
	}
	if (cfg->levels != 4 && cfg->levels != 5) {
		snprintf(err, errlen, "levels must be 4 or 5, got %d", cfg->levels);
		return TDP_EINVAL;
	}
	if (cfg->maxphyaddr < 36 || cfg->maxphyaddr > 52) {
		snprintf(err, errlen, "maxphyaddr must be between 36 and 52, got %d", cfg->maxphyaddr);
		return TDP_EINVAL;
	}
	if (cfg->levels == 4 && cfg->maxphyaddr > 48) {
		snprintf(err, errlen, "maxphyaddr=%d needs levels=5 (a 4-level TDP table maps 48 bits)", cfg->maxphyaddr);
		return TDP_EINVAL;
	}
	if (cfg->nvcpus < 1 || cfg->nvcpus > 4096) {
		snprintf(err, errlen, "vcpus must be between 1 and 4096, got %d", cfg->nvcpus);
		return TDP_EINVAL;
	}
	if (cfg->npcpus < 1 || cfg->npcpus > 4096) {
		snprintf(err, errlen, "pcpus must be between 1 and 4096, got %d", cfg->npcpus);
		return TDP_EINVAL;
	}
	if (cfg->hpa_base & 0xfff) {
		snprintf(err, errlen, "hpa_base must be 4 KiB aligned, got 0x%llx", (unsigned long long)cfg->hpa_base);
		return TDP_EINVAL;
	}
	if (cfg->hpa_base + HOST_SLOT_REGION_OFFSET + (1ull << 30) > (1ull << cfg->maxphyaddr)) {
		snprintf(err, errlen, "hpa_base 0x%llx leaves no room below MAXPHYADDR=%d for guest memory",
			 (unsigned long long)cfg->hpa_base, cfg->maxphyaddr);
		return TDP_EINVAL;
	}
	if (cfg->invariants & ~TDP_INV_ALL) {
		snprintf(err, errlen, "invariants must be a mask of enum tdp_invariant bits (0..%d), got %d", TDP_INV_ALL,
			 cfg->invariants);
		return TDP_EINVAL;
	}
	if (cfg->invariant_walk < TDP_INV_WALK_INCREMENTAL || cfg->invariant_walk > TDP_INV_WALK_CROSSCHECK) {
		snprintf(err, errlen, "invariant_walk must be %d (incremental), %d (full) or %d (crosscheck), got %d",
			 TDP_INV_WALK_INCREMENTAL, TDP_INV_WALK_FULL, TDP_INV_WALK_CROSSCHECK, cfg->invariant_walk);
		return TDP_EINVAL;
	}
	if (cfg->mutant < 0 || cfg->mutant >= FS_COUNT) {
		snprintf(err, errlen, "mutant must be a flush site id 1..%d (0: none), got %d", FS_COUNT - 1, cfg->mutant);
		return TDP_EINVAL;
	}
	if (cfg->frame_limit > POOL_MAX_FRAMES) {
		snprintf(err, errlen, "frame_limit must be at most %u", POOL_MAX_FRAMES);
		return TDP_EINVAL;
	}
	if (cfg->frame_limit && cfg->frame_limit < (u32)tdp_fault_frames(cfg->levels) + 1) {
		snprintf(err, errlen, "frame_limit=%u can never fault: an access keeps %d frames free for its fault "
			 "(levels + 1) and the root takes one more, so levels=%d needs frame_limit >= %d",
			 cfg->frame_limit, tdp_fault_frames(cfg->levels), cfg->levels, tdp_fault_frames(cfg->levels) + 1);
		return TDP_EINVAL;
	}
	if (cfg->arch == TDP_SVM && (cfg->min_asid < 1 || cfg->max_asid < cfg->min_asid || cfg->max_asid > 0xffffff)) {
		snprintf(err, errlen, "asids: need 1 <= min_asid <= max_asid (got %u..%u)", cfg->min_asid, cfg->max_asid);
		return TDP_EINVAL;
	}
	if ((r = check_tlbcfg(tlb, err, errlen)))
		return r;
	if ((r = check_policy(pol, err, errlen)))
		return r;
	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		snprintf(err, errlen, "out of host memory");
		return TDP_ENOMEM;
	}
	vm->cfg = *cfg;
	vm->tlbcfg = *tlb;
	vm->pol = *pol;
	vm->costs = *costs;
	spte_masks_init(&vm->masks, cfg->arch == TDP_VMX ? FMT_EPT : FMT_NPT, cfg->ad != 0, pol->ept_soft_ad != 0);
	vm->hw = (struct tdp_hw_params){
		.fmt = cfg->arch == TDP_VMX ? FMT_EPT : FMT_NPT, .levels = cfg->levels,
		.ad = cfg->arch == TDP_SVM ? 1 : cfg->ad, .maxphyaddr = cfg->maxphyaddr, .exec_only = 1,
		.mbec = cfg->mbec, .paging_structure = 0};
	hostmem_init(&vm->mem, cfg->hpa_base >> 12, cfg->frame_limit ? cfg->frame_limit : POOL_MAX_FRAMES);
	/* The incremental walk of the tables reads what was written since it last looked. */
	vm->mem.track = (cfg->invariants & (TDP_INV_TABLES | TDP_INV_ROOTS)) && cfg->invariant_walk != TDP_INV_WALK_FULL;
	vm->next_root_id = 1;
	vm->truth_gen = 1;
	vm->host_next_region_pfn = (cfg->hpa_base + HOST_SLOT_REGION_OFFSET) >> 12;
	vm->vcpus = calloc((size_t)cfg->nvcpus, sizeof(*vm->vcpus));
	vm->pcpus = calloc((size_t)cfg->npcpus, sizeof(*vm->pcpus));
	if (!vm->vcpus || !vm->pcpus)
		goto nomem;
	for (int i = 0; i < cfg->nvcpus; i++)
		vm->vcpus[i] = (struct vcpu){.id = i, .mode = TDP_OUTSIDE_GUEST, .pcpu = -1, .vmcs_cpu = -1,
					     .vpid = (u32)i + 1,
					     /* vmcs02 / vmcb02: VPID02 from the same allocator */
					     .other = {.vpid = (u32)(cfg->nvcpus + i) + 1, .vmcs_cpu = -1}};
	for (int p = 0; p < cfg->npcpus; p++) {
		struct pcpu *pc = &vm->pcpus[p];
		if (tlb_init(&pc->tlb, tlb, cfg->seed * 0x100000001b3ull + (u64)p + 1)) {
			for (int q = 0; q <= p; q++)
				tlb_destroy(&vm->pcpus[q].tlb);
			free(vm->pcpus);
			vm->pcpus = NULL;
			goto nomem;
		}
		/* [MODEL CHOICE] combined entries get an array of the L2 STLB's geometry
		 * (the first-level DTLB's without one; 8,192 entries in adversarial mode). */
		const struct tdp_tlb_array_config *cg = tlb->l2.sets ? &tlb->l2 : &tlb->l1[0];
		if (tlb->mode == TDP_TLB_ADVERSARIAL)
			ctlb_init(&pc->ctlb, 512, 16);
		else
			ctlb_init(&pc->ctlb, (u32)cg->sets, (u32)cg->ways);
		pc->vcpu = -1;
		/* svm_cpu_init(): generation 1, next_asid past the end, so the first
		 * VMRUN on each pCPU bumps the generation and flushes all ASIDs. */
		pc->asid_generation = 1;
		pc->max_asid = cfg->max_asid;
		pc->min_asid = cfg->min_asid;
		pc->next_asid = cfg->max_asid + 1;
	}
	for (int p = 0; p < cfg->npcpus && tlb->junk; p++)
		if (cpu_fill_tlb_junk(vm, p, tlb->junk, 1ull << 20))
			goto nomem;
	*out = vm;
	return 0;
nomem:
	tdp_vm_destroy(vm);
	snprintf(err, errlen, "out of host memory");
	return TDP_ENOMEM;
}

int tdp_set_policy(tdp_vm *vm, const struct tdp_policy *pol)
{
	int r = check_policy(pol, vm->err, sizeof(vm->err));
	if (r)
		return r;
	vm->pol = *pol;
	/* The masks KVM computes at module load follow the release (ept_soft_ad). */
	spte_masks_init(&vm->masks, vm->masks.fmt, vm->cfg.ad != 0, pol->ept_soft_ad != 0);
	return 0;
}

void tdp_get_policy(tdp_vm *vm, struct tdp_policy *pol) { *pol = vm->pol; }

void tdp_stats(tdp_vm *vm, uint64_t *out)
{
	memcpy(out, vm->stats, sizeof(vm->stats));
}

void tdp_reset_stats(tdp_vm *vm)
{
	/* Gauges survive a reset; counters restart from zero. */
	u64 keep[5] = {vm->stats[ST_pages_4k], vm->stats[ST_pages_2m], vm->stats[ST_pages_1g],
		       vm->stats[ST_mmu_pages], vm->stats[ST_nx_lpage_splits]};
	memset(vm->stats, 0, sizeof(vm->stats));
	vm->mem.grace_periods = 0; /* a counter like the others, not a lifetime total */
	vm->stats[ST_pages_4k] = keep[0];
	vm->stats[ST_pages_2m] = keep[1];
	vm->stats[ST_pages_1g] = keep[2];
	vm->stats[ST_mmu_pages] = keep[3];
	vm->stats[ST_nx_lpage_splits] = keep[4];
}

/* ------------------------------------------------------------------ digest */

static u64 mix(u64 h, u64 v)
{
	h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
	return h * 0xff51afd7ed558ccdull;
}

uint64_t tdp_digest(tdp_vm *vm)
{
	u64 h = 0x1234567;
	struct hostmem *m = &vm->mem;

	/* Frames: state, generation, table contents. */
	for (u32 f = 0; f < m->nframes; f++) {
		struct frame *fr = &m->frames[f];
		h = mix(h, ((u64)fr->gen << 8) | fr->state);
		h = mix(h, ((u64)fr->sp_level << 16) | ((u64)fr->sp_unlinked << 8) | fr->sp_nx);
		if (fr->state == FRAME_TABLE || fr->state == FRAME_RCU) {
			const u64 *t = hostmem_table_read(m, f);
			for (int i = 0; i < 512; i++)
				h = mix(h, t[i]);
		}
	}
	for (u32 i = 0; i < m->nfree; i++)
		h = mix(h, m->free_stack[i]);
	for (u32 i = 0; i < m->nrcu; i++)
		h = mix(h, m->rcu[i]);
	for (int i = 0; i < vm->nroots; i++) {
		struct tdp_root *r = &vm->roots[i];
		h = mix(h, r->id);
		h = mix(h, r->frame);
		h = mix(h, ((u64)r->refcount << 8) | ((u64)r->invalid << 1) | r->scheduled);
	}
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (!s->used)
			continue;
		h = mix(mix(mix(h, s->base_gfn), s->npages), s->flags);
		if (s->dev) {
			u64 nchunks = memslot_chunk_of(s, s->base_gfn + s->npages - 1) + 1;
			for (u64 c = 0; c < nchunks; c++)
				if (s->dev[c])
					for (int k = 0; k < 512; k++)
						h = mix(h, s->dev[c][k]);
		}
		for (u64 w = 0; s->dirty && w < (s->npages + 63) / 64; w++)
			h = mix(h, s->dirty[w]);
		for (u64 w = 0; s->wrtrack && w < (s->npages + 63) / 64; w++)
			h = mix(h, s->wrtrack[w]);
	}
	for (u32 i = 0; i < vm->nnx; i++)
		h = mix(h, vm->nx_list[i]);
	for (int i = 0; i < vm->cfg.nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		h = mix(h, ((u64)v->mode << 32) | (u32)v->pcpu);
		h = mix(h, ((u64)v->root_id << 32) | v->requests);
		h = mix(h, ((u64)v->asid << 32) | (u32)v->vmcs_cpu);
		h = mix(h, v->asid_generation);
		h = mix(h, (u64)v->tlb_control);
	}
	for (int p = 0; p < vm->cfg.npcpus; p++) {
		struct pcpu *pc = &vm->pcpus[p];
		h = mix(h, ((u64)(u32)pc->vcpu << 32) | pc->next_asid);
		h = mix(h, pc->asid_generation);
		h = tlb_digest(&pc->tlb, h);
		h = ctlb_digest(&pc->ctlb, h, mix);
	}
	/* Guest paging's state and counters enter the digest only once used, so the
	 * digest of a VM that never used it is what it was before guest paging. */
	h = guest_mem_digest(&vm->gmem, h, mix);
	for (int i = 0; i < vm->cfg.nvcpus; i++)
		if (vm->vcpus[i].g.levels || vm->vcpus[i].g.cr3)
			h = mix(mix(h, vm->vcpus[i].g.cr3), ((u64)vm->vcpus[i].g.levels << 8) | vm->vcpus[i].g.pcide);
	for (int i = 0; i < vm->cfg.nvcpus; i++) {
		const struct vcpu *v = &vm->vcpus[i];
		if (!v->nested_used)
			continue;
		h = mix(mix(h, ((u64)v->in_l2 << 40) | ((u64)v->last_vpid12 << 8) | v->other.root_id), v->other.vpid);
		h = mix(mix(h, ((u64)v->other.asid << 32) | (u32)v->other.vmcs_cpu), v->other.asid_generation);
		h = mix(mix(h, v->other.g.cr3), ((u64)v->other.g.levels << 8) | v->other.g.pcide);
	}
	for (int i = 0; i < ST_COUNT; i++)
		if (i < ST_guest_accesses || vm->stats[i])
			h = mix(h, vm->stats[i]);
	for (int i = 0; i < vm->nops; i++) {
		struct tdp_op *op = &vm->ops[i]->op;
		h = mix(mix(h, vm->ops[i]->id), (u64)vm->ops[i]->kind);
		h = mix(mix(h, op->cur), (u64)op->ri);
		h = mix(mix(h, op->it.gfn), op->it.next_last_level_gfn);
		h = mix(h, ((u64)op->pass << 8) | ((u64)op->flush << 1) | op->result);
	}
	h = mix(h, vm->nviol);
	h = mix(h, vm->nev);
	h = mix(h, vm->mmu_invalidate_seq);
	return h;
}
