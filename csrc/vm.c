/* vm.c — the VM object and the public API: argument checks (before any change,
 * so a failed call leaves the model as it was), memslots and host events (MMU
 * notifier, page migration, memslot deletion, dirty logging, aging), the checker's
 * reports, counters, the event log and the digest. */
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

void vm_trace_rec(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c)
{
	if (vm->ntr == vm->tr_cap) {
		size_t ncap = vm->tr_cap ? vm->tr_cap * 2 : 1024;
		struct tdp_trace_rec *n = realloc(vm->tr, ncap * sizeof(*n));
		if (!n)
			return; /* the trace is best effort; the model is unaffected */
		vm->tr = n;
		vm->tr_cap = ncap;
	}
	vm->tr[vm->ntr++] = (struct tdp_trace_rec){kind, level, a, b, c};
}

static void vm_log(struct tdp_vm *vm, u32 op, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4)
{
	if (!vm->cfg.record)
		return;
	if (vm->nev == vm->ev_cap) {
		size_t ncap = vm->ev_cap ? vm->ev_cap * 2 : 256;
		struct tdp_event *n = realloc(vm->ev, ncap * sizeof(*n));
		if (!n)
			return;
		vm->ev = n;
		vm->ev_cap = ncap;
	}
	vm->ev[vm->nev++] = (struct tdp_event){.op = op, .a = {a0, a1, a2, a3, a4}};
}

/* Every top-level operation starts and ends here. */
static void op_begin(struct tdp_vm *vm)
{
	vm->cur_event = vm->nev;
	vm->err[0] = 0;
}

static void op_end(struct tdp_vm *vm)
{
	if (vm->pol.rcu_gp_at_op_end)
		hostmem_synchronize_rcu(&vm->mem);
	vm->stats[ST_rcu_grace_periods] = vm->mem.grace_periods;
}

void vm_rcu_quiescent(struct tdp_vm *vm, bool at_yield)
{
	if (!at_yield || vm->pol.rcu_gp_at_yield)
		hostmem_synchronize_rcu(&vm->mem);
	vm->stats[ST_rcu_grace_periods] = vm->mem.grace_periods;
}

void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index)
{
	vm->stats[ST_violations]++;
	if (vm->nviol == vm->viol_cap) {
		size_t ncap = vm->viol_cap ? vm->viol_cap * 2 : 64;
		struct tdp_violation *n = realloc(vm->viol, ncap * sizeof(*n));
		if (!n)
			return;
		vm->viol = n;
		vm->viol_cap = ncap;
	}
	vm->viol[vm->nviol++] = (struct tdp_violation){
		.kind = kind, .vcpu = v ? v->id : -1, .pcpu = v ? v->pcpu : -1, .gpa = gpa, .tag = tag,
		.stale_pfn = stale_pfn, .expected_pfn = expected_pfn, .event = vm->cur_event,
		.access = access, .level = level, .frame_state = frame_state, .batch_index = batch_index};
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
	/* KVM v6.6+ as described in kvm-tdp-mmu.md. */
	*p = (struct tdp_policy){
		.flush_on_root_load = 1, .flush_on_migrate = 1, .flush_on_put_root = 0,
		.root_lifetime = TDP_ROOT_PRESERVE, .remote_flush_all_contexts = 1,
		.shared_zap_flush = 1, .flush_before_yield = 1, .precise_range_flush = 0,
		.dirty_log_enable_flush = 0, .notifier_zaps_invalid_roots = 1,
		.per_root_flush_reset = 0, .nx_recovery_flush_assign = 0, .removed_pt_flush = 0,
		.iter_skip_after_yield = 0, .map_huge_over_table_flush = 1, .nx_huge_pages = 0,
		.nx_recovery_ratio = 60, .yield_every = 0, .rcu_gp_at_yield = 1,
		.rcu_gp_at_op_end = 1, .memslot_delete_zap_all = 1, .eager_split = 1,
		.huge_recovery = 0};
}

void tdp_default_costs(struct tdp_costs *c)
{
	/* Cycles. [MODEL CHOICE] anchored on calibration.md §1.2: a one-context
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

static void arr(struct tdp_tlb_array_config *a, int entries, int ways)
{
	a->ways = ways;
	a->sets = entries / ways;
}

int tdp_tlb_preset(const char *name, struct tdp_tlb_config *c)
{
	memset(c, 0, sizeof(*c));
	c->mode = TDP_TLB_SETASSOC;
	c->repl = TDP_REPL_LRU;
	/* [MODEL CHOICE] PSC sizes are not enumerated by any CPU (§6). */
	arr(&c->psc[2], 32, 32);
	arr(&c->psc[3], 4, 4);
	arr(&c->psc[4], 2, 2);
	arr(&c->psc[5], 2, 2);
	if (!strcmp(name, "skylake")) {
		arr(&c->l1[0], 64, 4);
		arr(&c->l1[1], 32, 4);
		arr(&c->l1[2], 4, 4);
		arr(&c->l2, 1536, 12);
		arr(&c->l2_1g, 16, 4);
	} else if (!strcmp(name, "icelake") || !strcmp(name, "goldencove")) {
		arr(&c->l1[0], 64, 4);
		arr(&c->l1[1], 32, 4);
		arr(&c->l1[2], 8, 8);
		arr(&c->l2, 1024, 8);
		arr(&c->l2_1g, 1024, 8);
	} else if (!strcmp(name, "zen2") || !strcmp(name, "zen3")) {
		arr(&c->l1[0], 64, 64);
		arr(&c->l1[1], 64, 64);
		arr(&c->l1[2], 64, 64);
		arr(&c->l2, 2048, 8);
		if (!strcmp(name, "zen3"))
			arr(&c->l2_1g, 64, 64);
	} else if (!strcmp(name, "zen4")) {
		arr(&c->l1[0], 72, 72);
		arr(&c->l1[1], 72, 72);
		arr(&c->l1[2], 72, 72);
		arr(&c->l2, 3072, 12);
		arr(&c->l2_1g, 64, 64);
	} else if (!strcmp(name, "adversarial")) {
		c->mode = TDP_TLB_ADVERSARIAL;
	} else {
		return TDP_EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------------ create / destroy */

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

static void free_slot(struct tdp_vm *vm, struct memslot *s);

void tdp_vm_destroy(tdp_vm *vm)
{
	if (!vm)
		return;
	for (int i = 0; i < vm->nslots; i++)
		free_slot(vm, &vm->slots[i]);
	free(vm->slots);
	if (vm->pcpus)
		for (int p = 0; p < vm->cfg.npcpus; p++)
			tlb_destroy(&vm->pcpus[p].tlb);
	free(vm->pcpus);
	free(vm->vcpus);
	free(vm->roots);
	free(vm->nx_list);
	free(vm->viol);
	free(vm->ev);
	free(vm->blob);
	free(vm->tr);
	for (int i = 0; i < vm->nops; i++)
		free(vm->ops[i]);
	free(vm->ops);
	hostmem_destroy(&vm->mem);
	free(vm);
}

static int fill_junk(struct tdp_vm *vm, int p, u32 count, u64 max_gfn);

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
	if (cfg->frame_limit > POOL_MAX_FRAMES) {
		snprintf(err, errlen, "frame_limit must be at most %u", POOL_MAX_FRAMES);
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
	spte_masks_init(&vm->masks, cfg->arch == TDP_VMX ? FMT_EPT : FMT_NPT, cfg->ad != 0);
	vm->hw = (struct tdp_hw_params){
		.fmt = cfg->arch == TDP_VMX ? FMT_EPT : FMT_NPT, .levels = cfg->levels,
		.ad = cfg->arch == TDP_SVM ? 1 : cfg->ad, .maxphyaddr = cfg->maxphyaddr, .exec_only = 1,
		.mbec = cfg->mbec, .paging_structure = 0};
	hostmem_init(&vm->mem, cfg->hpa_base >> 12, cfg->frame_limit ? cfg->frame_limit : POOL_MAX_FRAMES);
	vm->next_root_id = 1;
	vm->host_next_region_pfn = (cfg->hpa_base + HOST_SLOT_REGION_OFFSET) >> 12;
	vm->vcpus = calloc((size_t)cfg->nvcpus, sizeof(*vm->vcpus));
	vm->pcpus = calloc((size_t)cfg->npcpus, sizeof(*vm->pcpus));
	if (!vm->vcpus || !vm->pcpus)
		goto nomem;
	for (int i = 0; i < cfg->nvcpus; i++)
		vm->vcpus[i] = (struct vcpu){.id = i, .mode = TDP_OUTSIDE_GUEST, .pcpu = -1, .vmcs_cpu = -1,
					     .vpid = (u32)i + 1};
	for (int p = 0; p < cfg->npcpus; p++) {
		struct pcpu *pc = &vm->pcpus[p];
		if (tlb_init(&pc->tlb, tlb, cfg->seed * 0x100000001b3ull + (u64)p + 1)) {
			for (int q = 0; q <= p; q++)
				tlb_destroy(&vm->pcpus[q].tlb);
			free(vm->pcpus);
			vm->pcpus = NULL;
			goto nomem;
		}
		pc->vcpu = -1;
		/* svm_cpu_init(): generation 1, next_asid past the end, so the first
		 * VMRUN on each pCPU bumps the generation and flushes all ASIDs. */
		pc->asid_generation = 1;
		pc->max_asid = cfg->max_asid;
		pc->min_asid = cfg->min_asid;
		pc->next_asid = cfg->max_asid + 1;
	}
	for (int p = 0; p < cfg->npcpus && tlb->junk; p++)
		if (fill_junk(vm, p, tlb->junk, 1ull << 20))
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

/* ------------------------------------------------------------------ memslots (the truth) */

u64 vm_max_gfn(struct tdp_vm *vm)
{
	/* tdp_mmu_max_gfn_exclusive(): everything a TDP table of this depth maps
	 * below MAXPHYADDR. */
	return 1ull << (vm->cfg.maxphyaddr - 12);
}

struct memslot *vm_slot_of(struct tdp_vm *vm, u64 gfn)
{
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (s->used && gfn - s->base_gfn < s->npages)
			return s;
	}
	return NULL;
}

static inline u64 chunk_of(const struct memslot *s, u64 gfn) { return (gfn >> 9) - (s->base_gfn >> 9); }

u64 vm_gfn_to_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	(void)vm;
	if (s->dev) {
		u64 *c = s->dev[chunk_of(s, gfn)];
		if (c)
			return c[gfn & 511];
	}
	return s->host_base_pfn + (gfn - s->base_gfn);
}

static int set_backing(struct tdp_vm *vm, struct memslot *s, u64 gfn, u64 pfn)
{
	u64 nchunks = chunk_of(s, s->base_gfn + s->npages - 1) + 1;
	u64 ci = chunk_of(s, gfn);

	(void)vm;
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

static void release_pfn(struct tdp_vm *vm, u64 pfn)
{
	/* The host frees the page. Pool frames return to the LIFO pool at once
	 * (page-cache pages do not wait for KVM's grace periods). */
	u32 f = hostmem_frame_of(&vm->mem, pfn);
	if (f != NO_FRAME && vm->mem.frames[f].state == FRAME_GUEST)
		hostmem_free_now(&vm->mem, f);
}

u64 vm_fault_in_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn)
{
	u64 pfn = vm_gfn_to_pfn(vm, s, gfn);
	if (pfn != NO_PFN)
		return pfn;
	/* hva_to_pfn(): the host allocates a fresh page for a gfn it unmapped. */
	u32 f = hostmem_alloc(&vm->mem, FRAME_GUEST);
	if (f == NO_FRAME)
		return NO_PFN;
	vm->mem.frames[f].owner_gfn = gfn;
	pfn = hostmem_pfn(&vm->mem, f);
	if (set_backing(vm, s, gfn, pfn)) {
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
			if (lvl == 2 && s->dev[chunk_of(s, base)])
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

static void free_slot(struct tdp_vm *vm, struct memslot *s)
{
	if (s->dev) {
		u64 nchunks = chunk_of(s, s->base_gfn + s->npages - 1) + 1;
		for (u64 i = 0; i < nchunks; i++) {
			if (!s->dev[i])
				continue;
			for (int k = 0; k < 512; k++)
				if (s->dev[i][k] != NO_PFN)
					release_pfn(vm, s->dev[i][k]);
			free(s->dev[i]);
		}
	}
	free(s->dev);
	free(s->dev_count_1g);
	free(s->dirty);
	free(s->wrtrack);
	memset(s, 0, sizeof(*s));
}

static struct memslot *slot_by_id(struct tdp_vm *vm, int id)
{
	for (int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].used && vm->slots[i].id == id)
			return &vm->slots[i];
	return NULL;
}

static int check_gfn(struct tdp_vm *vm, const char *what, u64 gfn)
{
	if (gfn >= vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "%s 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d: gfns below 0x%llx)",
			      what, (unsigned long long)gfn, vm->cfg.maxphyaddr, (unsigned long long)vm_max_gfn(vm));
	return 0;
}

static int check_range(struct tdp_vm *vm, u64 start, u64 end)
{
	int r;
	if ((r = check_gfn(vm, "start_gfn", start)))
		return r;
	if (end > vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "end_gfn 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d: end at most 0x%llx)",
			      (unsigned long long)end, vm->cfg.maxphyaddr, (unsigned long long)vm_max_gfn(vm));
	if (end <= start)
		return vm_err(vm, TDP_EINVAL, "end_gfn 0x%llx must be greater than start_gfn 0x%llx",
			      (unsigned long long)end, (unsigned long long)start);
	return 0;
}

int tdp_memslot_add(tdp_vm *vm, uint64_t base_gfn, uint64_t npages, uint32_t flags, int max_level, int *slot_id)
{
	int r;

	op_begin(vm);
	if (npages == 0)
		return vm_err(vm, TDP_EINVAL, "npages must be positive");
	if ((r = check_range(vm, base_gfn, base_gfn + npages)) || base_gfn + npages < base_gfn)
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
	*slot_id = id;
	vm_log(vm, EV_MEMSLOT_ADD, base_gfn, npages, flags, (u64)max_level, 0);
	op_end(vm);
	return 0;
}

int tdp_memslot_info(tdp_vm *vm, int slot_id, struct tdp_memslot_info *out)
{
	struct memslot *s = slot_by_id(vm, slot_id);
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

	op_begin(vm);
	s = slot_by_id(vm, slot_id);
	if (!s)
		return vm_err(vm, TDP_ENOENT, "memslot %d does not exist (deleted or never added)", slot_id);
	if (s->deleting)
		return vm_err(vm, TDP_ESTATE, "memslot %d is already being deleted by a stepped operation", slot_id);
	u64 start = s->base_gfn, end = s->base_gfn + s->npages;
	/* kvm_arch_flush_shadow_memslot(): the fast zap of everything (upstream),
	 * or only the slot's gfns with a flush (the reverted precise zap, B18). */
	if (vm->pol.memslot_delete_zap_all) {
		kvm_mmu_zap_all_fast(vm);
	} else {
		if (tdp_mmu_zap_leafs_all(vm, start, end, ROOTS_ALL, false, false))
			kvm_flush_remote_tlbs_range(vm, start, end - start);
	}
	free_slot(vm, s);
	vm->memslots_gen++;
	vm_log(vm, EV_MEMSLOT_DELETE, (u64)slot_id, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

/* The MMU notifier: invalidate_range_start() zaps every root (valid or not),
 * flushes before returning, then the host frees the pages; _end() bumps the
 * sequence so faults that raced with it retry. */
static void notifier_begin(struct tdp_vm *vm, u64 start, u64 end)
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

static void notifier_end(struct tdp_vm *vm)
{
	vm->mmu_invalidate_seq++;
	vm->mmu_invalidate_in_progress--;
}

static int which_notifier_roots(struct tdp_vm *vm)
{
	return vm->pol.notifier_zaps_invalid_roots ? ROOTS_ALL : ROOTS_VALID;
}

/* Before an unmap: make sure recording "unbacked" cannot fail later. */
static int unmap_prepare(struct tdp_vm *vm, u64 start, u64 end)
{
	for (int i = 0; i < vm->nslots; i++) {
		struct memslot *s = &vm->slots[i];
		if (!s->used || end <= s->base_gfn || s->base_gfn + s->npages <= start)
			continue;
		u64 a = start > s->base_gfn ? start : s->base_gfn;
		u64 b = end < s->base_gfn + s->npages ? end : s->base_gfn + s->npages;
		for (u64 g = a; g < b; g++)
			if (vm_gfn_to_pfn(vm, s, g) != NO_PFN && set_backing(vm, s, g, vm_gfn_to_pfn(vm, s, g)))
				return vm_err(vm, TDP_ENOMEM, "out of host memory");
	}
	return 0;
}

/* The end of invalidate_range_start (flush if a valid root changed), the host
 * freeing the pages, and invalidate_range_end. */
static void unmap_finish(struct tdp_vm *vm, u64 start, u64 end, bool flush)
{
	if (flush)
		kvm_flush_remote_tlbs(vm);
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
			set_backing(vm, s, g, NO_PFN);
			release_pfn(vm, pfn);
		}
	}
	notifier_end(vm);
}

int tdp_host_unmap(tdp_vm *vm, uint64_t start, uint64_t end)
{
	int r;

	op_begin(vm);
	if ((r = check_range(vm, start, end)) || (r = unmap_prepare(vm, start, end)))
		return r;
	notifier_begin(vm, start, end);
	bool flush = tdp_mmu_zap_leafs_all(vm, start, end, which_notifier_roots(vm), false, false);
	unmap_finish(vm, start, end, flush);
	vm_log(vm, EV_HOST_UNMAP, start, end, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_host_migrate(tdp_vm *vm, uint64_t gfn, uint64_t *new_pfn)
{
	int r;
	struct memslot *s;

	op_begin(vm);
	if ((r = check_gfn(vm, "gfn", gfn)))
		return r;
	s = vm_slot_of(vm, gfn);
	if (!s)
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx is not in any memslot", (unsigned long long)gfn);
	u64 old = vm_gfn_to_pfn(vm, s, gfn);
	if (old == NO_PFN)
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx has no backing page to migrate (the host unmapped it)", (unsigned long long)gfn);
	if (hostmem_available(&vm->mem) < 1)
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: no frame to migrate gfn 0x%llx to", (unsigned long long)gfn);
	if (set_backing(vm, s, gfn, old))
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	notifier_begin(vm, gfn, gfn + 1);
	if (tdp_mmu_zap_leafs_all(vm, gfn, gfn + 1, which_notifier_roots(vm), false, false))
		kvm_flush_remote_tlbs(vm);
	u32 f = hostmem_alloc(&vm->mem, FRAME_GUEST);
	vm->mem.frames[f].owner_gfn = gfn;
	set_backing(vm, s, gfn, hostmem_pfn(&vm->mem, f));
	release_pfn(vm, old);
	notifier_end(vm);
	*new_pfn = hostmem_pfn(&vm->mem, f);
	vm_log(vm, EV_HOST_MIGRATE, gfn, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_host_age(tdp_vm *vm, uint64_t start, uint64_t end, int *young)
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, start, end)))
		return r;
	/* clear_flush_young: x86 elides the flush (~v6.13). */
	*young = tdp_mmu_age(vm, start, end);
	vm_log(vm, EV_HOST_AGE, start, end, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_dirty_log_enable(tdp_vm *vm, int slot_id, int enable)
{
	struct memslot *s;

	op_begin(vm);
	s = slot_by_id(vm, slot_id);
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
		/* kvm_mmu_slot_apply_flags(): eager split (no flush), write-protect,
		 * then the memslot flush — always since b64d740ea7dd (B14). */
		if (vm->pol.eager_split)
			tdp_mmu_split(vm, start, end, 1);
		bool changed = tdp_mmu_wrprot(vm, start, end, 1);
		if (vm->pol.dirty_log_enable_flush == 0 || changed)
			kvm_flush_remote_tlbs_range(vm, start, end - start);
	} else if (!enable && (s->flags & TDP_SLOT_DIRTY_LOG)) {
		s->flags &= ~TDP_SLOT_DIRTY_LOG;
		free(s->dirty);
		s->dirty = NULL;
		/* Recover huge pages in place; flush the memslot if any changed. */
		u64 fs, fe;
		if (tdp_mmu_recover_huge(vm, start, end, &fs, &fe))
			kvm_flush_remote_tlbs_range(vm, fs < start ? fs : start, (fe > end ? fe : end) - (fs < start ? fs : start));
	}
	vm_log(vm, EV_DIRTY_LOG_ENABLE, (u64)slot_id, (u64)enable, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_dirty_log_get(tdp_vm *vm, int slot_id, uint64_t *bitmap, size_t nwords, uint64_t *ndirty)
{
	struct memslot *s;

	op_begin(vm);
	s = slot_by_id(vm, slot_id);
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
	if (any)
		kvm_flush_remote_tlbs_range(vm, s->base_gfn, s->npages);
	*ndirty = n;
	vm_log(vm, EV_DIRTY_LOG_GET, (u64)slot_id, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_write_protect_gfn(tdp_vm *vm, uint64_t gfn, int enable)
{
	struct memslot *s;
	int r;

	op_begin(vm);
	if ((r = check_gfn(vm, "gfn", gfn)))
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
	if (enable) {
		if (!(s->wrtrack[i >> 6] & (1ull << (i & 63))))
			s->nwrtrack++;
		s->wrtrack[i >> 6] |= 1ull << (i & 63);
		/* kvm_write_track_add_gfn(): write-protect, flush if changed. */
		if (tdp_mmu_write_protect_gfn(vm, gfn))
			kvm_flush_remote_tlbs(vm);
	} else {
		if (s->wrtrack[i >> 6] & (1ull << (i & 63)))
			s->nwrtrack--;
		s->wrtrack[i >> 6] &= ~(1ull << (i & 63));
	}
	vm_log(vm, EV_WRITE_PROTECT_GFN, gfn, (u64)enable, 0, 0, 0);
	op_end(vm);
	return 0;
}

/* ------------------------------------------------------------------ TDP MMU API */

static int resolve_root(tdp_vm *vm, u32 id, struct tdp_root **out)
{
	if (id == 0) {
		for (int i = vm->nroots - 1; i >= 0; i--)
			if (!vm->roots[i].invalid) {
				*out = &vm->roots[i];
				return 0;
			}
		return vm_err(vm, TDP_ESTATE, "no valid root: call vm.mmu.alloc_root() first (or pass root=)");
	}
	*out = tdp_mmu_find_root(vm, id);
	if (!*out)
		return vm_err(vm, TDP_ENOENT, "root %u does not exist (it was freed, or never allocated)", id);
	return 0;
}

uint32_t tdp_mmu_newest_root(tdp_vm *vm)
{
	for (int i = vm->nroots - 1; i >= 0; i--)
		if (!vm->roots[i].invalid)
			return vm->roots[i].id;
	return 0;
}

int tdp_mmu_alloc_root(tdp_vm *vm, int as_id, int guest_mode, uint32_t *root_id)
{
	int r;
	op_begin(vm);
	if (as_id < 0 || as_id > 1)
		return vm_err(vm, TDP_EINVAL, "as_id must be 0 or 1 (SMM), got %d", as_id);
	if (guest_mode < 0 || guest_mode > 1)
		return vm_err(vm, TDP_EINVAL, "guest_mode must be 0 or 1, got %d", guest_mode);
	if ((r = tdp_mmu_get_vcpu_root(vm, as_id, guest_mode, root_id)))
		return vm_err(vm, r, "frame pool exhausted: no frame for a new root (frame_limit=%u)", vm->mem.limit);
	tdp_mmu_find_root(vm, *root_id)->user_refs++;
	vm_log(vm, EV_ALLOC_ROOT, (u64)as_id, (u64)guest_mode, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_put_root(tdp_vm *vm, uint32_t root_id)
{
	struct tdp_root *r;
	int rc;

	op_begin(vm);
	if (root_id == 0)
		return vm_err(vm, TDP_ENOENT, "root 0 does not exist");
	if ((rc = resolve_root(vm, root_id, &r)))
		return rc;
	if (r->user_refs <= 0)
		return vm_err(vm, TDP_ESTATE, "root %u: double put: every reference taken with alloc_root() was already put", root_id);
	if (r->refcount == 1 && !r->invalid && vm->pol.root_lifetime == TDP_ROOT_PRESERVE)
		return vm_err(vm, TDP_ESTATE, "putting root %u would drop the TDP MMU's own reference of a valid root (KVM_BUG_ON): invalidate it first", root_id);
	r->user_refs--;
	tdp_mmu_put_root_internal(vm, root_id, true);
	vm_log(vm, EV_PUT_ROOT, root_id, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_invalidate_all_roots(tdp_vm *vm)
{
	op_begin(vm);
	tdp_mmu_invalidate_roots(vm);
	vm_log(vm, EV_INVALIDATE_ALL, 0, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_zap_invalidated_roots(tdp_vm *vm)
{
	op_begin(vm);
	tdp_mmu_zap_invalidated(vm, true);
	vm_log(vm, EV_ZAP_INVALIDATED, 0, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_zap_all_fast(tdp_vm *vm)
{
	op_begin(vm);
	kvm_mmu_zap_all_fast(vm);
	vm_log(vm, EV_ZAP_ALL_FAST, 0, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_roots(tdp_vm *vm, struct tdp_root_info *out, int max, int *n)
{
	int k = 0;
	for (int i = vm->nroots - 1; i >= 0; i--, k++) {
		struct tdp_root *r = &vm->roots[i];
		if (k < max)
			out[k] = (struct tdp_root_info){r->id, hostmem_pfn(&vm->mem, r->frame) << 12, r->level,
							!r->invalid, r->refcount, r->as_id, r->guest_mode, r->scheduled};
	}
	*n = k;
	return 0;
}

static int check_level(tdp_vm *vm, int level)
{
	if (level < 1 || level > 3)
		return vm_err(vm, TDP_EINVAL, "level must be 1 (4K), 2 (2M) or 3 (1G), got %d", level);
	return 0;
}

static u64 unbacked_in(struct tdp_vm *vm, u64 start, u64 end)
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

static int map_checks(tdp_vm *vm, struct tdp_root *root, u64 start, u64 end, int level)
{
	u64 span = pages_per_level(level);
	if (start & (span - 1))
		return vm_err(vm, TDP_EINVAL, "gfn 0x%llx is not aligned to a level-%d (%s) page",
			      (unsigned long long)start, level, level == 2 ? "2M" : "1G");
	if (end & (span - 1))
		return vm_err(vm, TDP_EINVAL, "end_gfn 0x%llx is not aligned to a level-%d (%s) page",
			      (unsigned long long)end, level, level == 2 ? "2M" : "1G");
	if (root->invalid)
		return vm_err(vm, TDP_ESTATE, "root %u is invalid: faults never map into an invalid root", root->id);
	for (u64 g = start; g < end; g += span) {
		struct memslot *s = vm_slot_of(vm, g);
		if (s && s->deleting)
			return vm_err(vm, TDP_ESTATE, "gfn 0x%llx belongs to memslot %d, which is being deleted (faults on it wait)",
				      (unsigned long long)g, s->id);
		if (vm->mmu_invalidate_in_progress && g < vm->mmu_invalidate_end && vm->mmu_invalidate_start < g + span)
			return vm_err(vm, TDP_ESTATE, "an MMU-notifier invalidation of gfns 0x%llx..0x%llx is in progress: faults there retry",
				      (unsigned long long)vm->mmu_invalidate_start, (unsigned long long)vm->mmu_invalidate_end);
		int maxl = s ? vm_max_mapping_level(vm, s, g) : 1;
		if (level > maxl)
			return vm_err(vm, TDP_EINVAL, "level %d is not possible at gfn 0x%llx: %s allows at most level %d there",
				      level, (unsigned long long)g, s ? "its memslot" : "a gfn without a memslot (MMIO)", maxl);
		if (g + span < g)
			break;
	}
	u64 need = tdp_mmu_tables_needed(vm, root, start, end, level) + unbacked_in(vm, start, end);
	if (need > hostmem_available(&vm->mem))
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: mapping needs up to %llu more frames, %llu available (frame_limit=%u)",
			      (unsigned long long)need, (unsigned long long)hostmem_available(&vm->mem), vm->mem.limit);
	return 0;
}

static int map_one(tdp_vm *vm, struct tdp_root *root, u64 gfn, int level, bool *flushed)
{
	for (int tries = 0; tries < 4; tries++) {
		struct memslot *s = vm_slot_of(vm, gfn);
		if (s && vm_fault_in_pfn(vm, s, gfn) == NO_PFN)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted");
		int r = tdp_mmu_map_gfn(vm, root, gfn, level, level, false, false, false, false, flushed);
		if (r == RET_PF_NOMEM)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted");
		if (r != RET_PF_RETRY) {
			if (r == RET_PF_FIXED)
				vm->stats[ST_pf_fixed]++;
			return 0;
		}
	}
	return vm_err(vm, TDP_ELIVELOCK, "mapping gfn 0x%llx kept retrying", (unsigned long long)gfn);
}

int tdp_mmu_map(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush)
{
	struct tdp_root *root;
	int r;
	bool flushed = false;

	op_begin(vm);
	if ((r = check_gfn(vm, "gfn", gfn)) || (r = check_level(vm, level)) || (r = resolve_root(vm, root_id, &root)) ||
	    (r = map_checks(vm, root, gfn, gfn + pages_per_level(level), level)))
		return r;
	if ((r = map_one(vm, root, gfn, level, &flushed)))
		return r;
	*flush = flushed;
	vm_log(vm, EV_MAP, root_id, gfn, (u64)level, 0, 0); /* 0: the newest valid root */
	op_end(vm);
	return 0;
}

int tdp_mmu_map_range(tdp_vm *vm, uint32_t root_id, uint64_t start, uint64_t end, int level, uint64_t *mapped)
{
	struct tdp_root *root;
	int r;
	u64 n = 0;

	op_begin(vm);
	if ((r = check_range(vm, start, end)) || (r = check_level(vm, level)) || (r = resolve_root(vm, root_id, &root)) ||
	    (r = map_checks(vm, root, start, end, level)))
		return r;
	u64 span = pages_per_level(level);
	for (u64 g = start; g < end; g += span) {
		bool flushed;
		if ((r = map_one(vm, root, g, level, &flushed)))
			return r;
		n++;
	}
	*mapped = n;
	vm_log(vm, EV_MAP_RANGE, root_id, start, end, (u64)level, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_zap_gfn_range(tdp_vm *vm, uint64_t start, uint64_t end, int shared, int *flush)
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, start, end)))
		return r;
	/* kvm_tdp_mmu_zap_leafs() over the valid roots; the caller flushes. */
	*flush = tdp_mmu_zap_leafs_all(vm, start, end, ROOTS_VALID, shared != 0, false);
	vm_log(vm, EV_ZAP_RANGE, start, end, (u64)shared, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_zap_root(tdp_vm *vm, uint32_t root_id, int shared)
{
	struct tdp_root *root;
	int r;
	op_begin(vm);
	if (root_id == 0)
		return vm_err(vm, TDP_ENOENT, "root 0 does not exist");
	if ((r = resolve_root(vm, root_id, &root)))
		return r;
	tdp_mmu_get_root(root);
	tdp_mmu_zap_whole_root(vm, root, shared != 0);
	tdp_mmu_put_root_internal(vm, root_id, shared != 0);
	vm_log(vm, EV_ZAP_ROOT, root_id, (u64)shared, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_zap_sp(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush)
{
	struct tdp_root *root;
	int r;
	op_begin(vm);
	if ((r = check_gfn(vm, "gfn", gfn)) || (r = resolve_root(vm, root_id, &root)))
		return r;
	if (level < 1 || level >= root->level)
		return vm_err(vm, TDP_EINVAL, "level must name a non-root table: 1..%d, got %d", root->level - 1, level);
	/* Find the table holding level-`level` entries for gfn. */
	u32 f = root->frame;
	for (int l = root->level; l > level; l--) {
		u64 s = hostmem_table(&vm->mem, f)[spte_index(gfn, l)];
		f = spte_to_child_frame(&vm->mem, s, l);
		if (f == NO_FRAME)
			return vm_err(vm, TDP_ENOENT, "no level-%d table maps gfn 0x%llx in root %u", level,
				      (unsigned long long)gfn, root->id);
	}
	*flush = tdp_mmu_zap_sp_frame(vm, f);
	vm_log(vm, EV_ZAP_SP, root->id, gfn, (u64)level, 0, 0);
	op_end(vm);
	return 0;
}

/* The range walkers that only report what they found: check, run, log. */
static int range_walk(tdp_vm *vm, uint64_t start, uint64_t end, int *out, u32 ev,
		      bool (*walk)(struct tdp_vm *, u64, u64))
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, start, end)))
		return r;
	*out = walk(vm, start, end);
	vm_log(vm, ev, start, end, 0, 0, 0);
	op_end(vm);
	return 0;
}

static bool wrprot_4k_up(struct tdp_vm *vm, u64 start, u64 end) { return tdp_mmu_wrprot(vm, start, end, 1); }

int tdp_mmu_wrprot_range(tdp_vm *vm, uint64_t start, uint64_t end, int *flush)
{
	return range_walk(vm, start, end, flush, EV_WRPROT, wrprot_4k_up);
}

int tdp_mmu_clear_dirty_range(tdp_vm *vm, uint64_t start, uint64_t end, int *flush)
{
	return range_walk(vm, start, end, flush, EV_CLEAR_DIRTY, tdp_mmu_clear_dirty);
}

int tdp_mmu_age_range(tdp_vm *vm, uint64_t start, uint64_t end, int *young)
{
	return range_walk(vm, start, end, young, EV_AGE, tdp_mmu_age);
}

int tdp_mmu_split_huge_pages(tdp_vm *vm, uint64_t start, uint64_t end, int target_level)
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, start, end)))
		return r;
	if (target_level < 1 || target_level > 2)
		return vm_err(vm, TDP_EINVAL, "target_level must be 1 (4K) or 2 (2M), got %d", target_level);
	u64 need = vm->stats[ST_pages_2m] * (target_level == 1) + vm->stats[ST_pages_1g] * (target_level == 1 ? 513 : 1);
	if (need > hostmem_available(&vm->mem))
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: splitting may need %llu frames, %llu available",
			      (unsigned long long)need, (unsigned long long)hostmem_available(&vm->mem));
	if ((r = tdp_mmu_split(vm, start, end, target_level)))
		return vm_err(vm, r, "frame pool exhausted while splitting");
	vm_log(vm, EV_SPLIT, start, end, (u64)target_level, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_recover_huge_pages(tdp_vm *vm, uint64_t start, uint64_t end, int *flush)
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, start, end)))
		return r;
	u64 fs, fe;
	bool f = tdp_mmu_recover_huge(vm, start, end, &fs, &fe);
	if (f)
		kvm_flush_remote_tlbs_range(vm, fs, fe - fs);
	*flush = f;
	vm_log(vm, EV_RECOVER, start, end, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_mmu_recover_nx_huge_pages(tdp_vm *vm, int count, int *zapped)
{
	op_begin(vm);
	if (count < 0)
		return vm_err(vm, TDP_EINVAL, "count must be >= 0 (0: nx_recovery_ratio decides), got %d", count);
	tdp_mmu_recover_nx(vm, count, zapped);
	vm_log(vm, EV_NX_RECOVER, (u64)count, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

static int engine_image_read(void *ctx, u64 hpa, u64 *val)
{
	struct tdp_vm *vm = ctx;
	u32 f = hostmem_frame_of(&vm->mem, hpa >> 12);
	if (f == NO_FRAME || (vm->mem.frames[f].state != FRAME_TABLE && vm->mem.frames[f].state != FRAME_RCU)) {
		*val = 0;
		return 0;
	}
	*val = hostmem_table(&vm->mem, f)[(hpa & 0xfff) >> 3];
	return 0;
}

int tdp_mmu_walk(tdp_vm *vm, uint32_t root_id, uint64_t gpa, int access, struct tdp_walk_result *out)
{
	struct tdp_root *root;
	int r;
	if (gpa >> vm->cfg.maxphyaddr)
		return vm_err(vm, TDP_EINVAL, "gpa 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d)",
			      (unsigned long long)gpa, vm->cfg.maxphyaddr);
	if (access < 0 || access > 3)
		return vm_err(vm, TDP_EINVAL, "access must be 'r', 'w', 'x' or 'xu'");
	if ((r = resolve_root(vm, root_id, &root)))
		return r;
	struct walk_mem mem = {engine_image_read, vm};
	walk_gpa(&vm->hw, &mem, hostmem_pfn(&vm->mem, root->frame) << 12, root->level, 15, gpa, access, out);
	return 0;
}

int tdp_mmu_root_pointer(tdp_vm *vm, uint32_t root_id, uint64_t *value)
{
	struct tdp_root *root;
	int r;
	if ((r = resolve_root(vm, root_id, &root)))
		return r;
	if (vm->cfg.arch == TDP_VMX)
		*value = cpu_eptp(vm, root->frame);
	else
		*value = hostmem_pfn(&vm->mem, root->frame) << 12; /* nCR3 */
	return 0;
}

static void collect_tables(tdp_vm *vm, u32 f, int level, uint64_t *addrs, uint8_t *data, size_t max, size_t *n)
{
	u64 *t = hostmem_table(&vm->mem, f);
	if (*n < max) {
		addrs[*n] = hostmem_pfn(&vm->mem, f) << 12;
		if (data)
			memcpy(data + *n * 4096, t, 4096);
	}
	(*n)++;
	if (level == 1)
		return;
	for (int i = 0; i < 512; i++) {
		u32 c = spte_to_child_frame(&vm->mem, t[i], level);
		if (c != NO_FRAME)
			collect_tables(vm, c, level - 1, addrs, data, max, n);
	}
}

int tdp_mmu_tables(tdp_vm *vm, uint32_t root_id, uint64_t *addrs, uint8_t *data, size_t max, size_t *n)
{
	struct tdp_root *root;
	int r;
	if ((r = resolve_root(vm, root_id, &root)))
		return r;
	*n = 0;
	collect_tables(vm, root->frame, root->level, addrs, data, max, n);
	return 0;
}

int tdp_mmu_read_spte(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, uint64_t *spte)
{
	struct tdp_root *root;
	int r, got;
	if ((r = check_gfn(vm, "gfn", gfn)) || (r = resolve_root(vm, root_id, &root)))
		return r;
	if (level < 1 || level > root->level)
		return vm_err(vm, TDP_EINVAL, "level must be 1..%d, got %d", root->level, level);
	u64 *p = NULL;
	u32 f = root->frame;
	for (int l = root->level; l >= level; l--) {
		p = hostmem_table(&vm->mem, f) + spte_index(gfn, l);
		if (l == level)
			break;
		f = spte_to_child_frame(&vm->mem, *p, l);
		if (f == NO_FRAME)
			return vm_err(vm, TDP_ENOENT, "no level-%d table on the path to gfn 0x%llx (the walk ends at level %d)",
				      level, (unsigned long long)gfn, l);
	}
	(void)got;
	*spte = *p;
	return 0;
}

/* ------------------------------------------------------------------ hardware walker on images */

struct image {
	const uint64_t *addrs;
	const uint8_t *pages;
	size_t n;
};

static int image_read(void *ctx, u64 hpa, u64 *val)
{
	struct image *im = ctx;
	u64 page = hpa & ~0xfffull;
	size_t lo = 0, hi = im->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (im->addrs[mid] < page)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == im->n || im->addrs[lo] != page) {
		*val = page;
		return TDP_EMISSING;
	}
	memcpy(val, im->pages + lo * 4096 + (hpa & 0xfff), 8);
	return 0;
}

int tdp_hw_walk(const uint64_t *page_addrs, const uint8_t *pages, size_t npages, uint64_t root_pointer,
		uint64_t gpa, int access, const struct tdp_hw_params *p, struct tdp_walk_result *out,
		char *err, size_t errlen)
{
	struct image im = {page_addrs, pages, npages};
	struct tdp_hw_params hp = *p;
	u64 table;
	int ad, r;

	if (p->fmt != FMT_EPT && p->fmt != FMT_NPT) {
		snprintf(err, errlen, "fmt must be 'ept' or 'npt'");
		return TDP_EINVAL;
	}
	if (p->levels != 4 && p->levels != 5) {
		snprintf(err, errlen, "levels must be 4 or 5, got %d", p->levels);
		return TDP_EINVAL;
	}
	if (p->maxphyaddr < 36 || p->maxphyaddr > 52) {
		snprintf(err, errlen, "maxphyaddr must be between 36 and 52, got %d", p->maxphyaddr);
		return TDP_EINVAL;
	}
	if (access < 0 || access > 3) {
		snprintf(err, errlen, "access must be 'r', 'w', 'x' or 'xu'");
		return TDP_EINVAL;
	}
	if (gpa >> p->maxphyaddr) {
		snprintf(err, errlen, "gpa 0x%llx is beyond MAXPHYADDR=%d", (unsigned long long)gpa, p->maxphyaddr);
		return TDP_EINVAL;
	}
	for (size_t i = 0; i < npages; i++) {
		if (page_addrs[i] & 0xfff) {
			snprintf(err, errlen, "memory image: address 0x%llx is not 4 KiB aligned", (unsigned long long)page_addrs[i]);
			return TDP_EIMAGE;
		}
		if (i && page_addrs[i] <= page_addrs[i - 1]) {
			snprintf(err, errlen, "memory image: addresses must be unique and sorted (0x%llx)", (unsigned long long)page_addrs[i]);
			return TDP_EIMAGE;
		}
	}
	if ((r = walk_decode_root_pointer(p, root_pointer, &table, &ad, err, errlen)))
		return r;
	hp.ad = p->ad && ad;
	struct walk_mem mem = {image_read, &im};
	r = walk_gpa(&hp, &mem, table, p->levels, 15, gpa, access, out);
	if (r == TDP_EMISSING)
		snprintf(err, errlen, "memory image has no page for a table the walk reads (after %d references)", out->refs);
	return r;
}

/* ------------------------------------------------------------------ vCPUs and TLBs */

static int check_vcpu(tdp_vm *vm, int vcpu)
{
	if (vcpu < 0 || vcpu >= vm->cfg.nvcpus)
		return vm_err(vm, TDP_EINVAL, "vcpu must be between 0 and %d, got %d", vm->cfg.nvcpus - 1, vcpu);
	return 0;
}

static int check_pcpu(tdp_vm *vm, int pcpu)
{
	if (pcpu < 0 || pcpu >= vm->cfg.npcpus)
		return vm_err(vm, TDP_EINVAL, "pcpu must be between 0 and %d, got %d", vm->cfg.npcpus - 1, pcpu);
	return 0;
}

int tdp_vcpu_run(tdp_vm *vm, int vcpu, int pcpu)
{
	int r;
	op_begin(vm);
	if ((r = check_vcpu(vm, vcpu)) || (r = check_pcpu(vm, pcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (!v->root_id || (tdp_mmu_find_root(vm, v->root_id) && tdp_mmu_find_root(vm, v->root_id)->invalid))
		if (hostmem_available(&vm->mem) < 1)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: no frame for vcpu %d's root", vcpu);
	if ((r = cpu_vcpu_run(vm, vcpu, pcpu)))
		return r;
	vm_log(vm, EV_VCPU_RUN, (u64)vcpu, (u64)pcpu, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_vcpu_exit(tdp_vm *vm, int vcpu)
{
	int r;
	op_begin(vm);
	if ((r = check_vcpu(vm, vcpu)))
		return r;
	cpu_vcpu_exit(vm, &vm->vcpus[vcpu]);
	vm_log(vm, EV_VCPU_EXIT, (u64)vcpu, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_vcpu_request(tdp_vm *vm, int vcpu, uint32_t requests)
{
	int r;
	op_begin(vm);
	if ((r = check_vcpu(vm, vcpu)))
		return r;
	if (requests & ~31u)
		return vm_err(vm, TDP_EINVAL, "unknown request bits 0x%x", requests);
	struct vcpu *v = &vm->vcpus[vcpu];
	v->requests |= requests;
	if (v->mode == TDP_IN_GUEST) {
		/* kvm_make_request() + kvm_vcpu_kick(): an IPI forces the exit. */
		v->mode = TDP_EXITING_GUEST;
		vm->stats[ST_ipis]++;
		vm->stats[ST_vm_exits]++;
		vm_cost(vm, vm->costs.ipi + vm->costs.vm_exit);
	}
	vm_log(vm, EV_VCPU_REQUEST, (u64)vcpu, requests, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_vcpu_info(tdp_vm *vm, int vcpu, struct tdp_vcpu_info *out)
{
	int r;
	if ((r = check_vcpu(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	*out = (struct tdp_vcpu_info){v->mode, v->pcpu, v->vmcs_cpu, v->root_id, v->requests, v->asid,
				      v->asid_generation, v->vpid, v->tlb_control};
	return 0;
}

int tdp_pcpu_info(tdp_vm *vm, int pcpu, struct tdp_pcpu_info *out)
{
	int r;
	if ((r = check_pcpu(vm, pcpu)))
		return r;
	struct pcpu *p = &vm->pcpus[pcpu];
	*out = (struct tdp_pcpu_info){p->vcpu, p->asid_generation, p->next_asid, p->min_asid, p->max_asid,
				      tlb_live_entries(&p->tlb, 0), tlb_live_entries(&p->tlb, 1)};
	return 0;
}

static int check_access_args(tdp_vm *vm, int vcpu, int access)
{
	int r;
	if ((r = check_vcpu(vm, vcpu)))
		return r;
	if (access < 0 || access > 3)
		return vm_err(vm, TDP_EINVAL, "access must be 'r', 'w', 'x' or 'xu'");
	if (vm->vcpus[vcpu].mode == TDP_OUTSIDE_GUEST)
		return vm_err(vm, TDP_ESTATE, "vcpu %d is not in guest mode: call vcpu_run(%d, pcpu) first", vcpu, vcpu);
	if (hostmem_available(&vm->mem) < (u64)vm->cfg.levels + 1)
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: a fault could need %d frames, %llu available",
			      vm->cfg.levels + 1, (unsigned long long)hostmem_available(&vm->mem));
	return 0;
}

int tdp_access(tdp_vm *vm, int vcpu, uint64_t gpa, int access, struct tdp_access_result *out)
{
	int r;
	op_begin(vm);
	if ((r = check_access_args(vm, vcpu, access)))
		return r;
	if (gpa >> vm->cfg.maxphyaddr)
		return vm_err(vm, TDP_EINVAL, "gpa 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d)",
			      (unsigned long long)gpa, vm->cfg.maxphyaddr);
	if ((r = cpu_access(vm, &vm->vcpus[vcpu], gpa, access, out, 0)))
		return r;
	vm_log(vm, EV_ACCESS, (u64)vcpu, gpa, (u64)access, 0, 0);
	op_end(vm);
	return 0;
}

static int blob_reserve(tdp_vm *vm, size_t n)
{
	if (vm->nblob + n <= vm->blob_cap)
		return 0;
	size_t ncap = vm->blob_cap ? vm->blob_cap : 4096;
	while (ncap < vm->nblob + n)
		ncap *= 2;
	u8 *b = realloc(vm->blob, ncap);
	if (!b)
		return -1;
	vm->blob = b;
	vm->blob_cap = ncap;
	return 0;
}

int tdp_access_batch(tdp_vm *vm, int vcpu, const uint64_t *gpas, const uint8_t *accesses, int default_access,
		     size_t n, struct tdp_access_result *per, uint64_t *counts, size_t *done)
{
	int r;
	struct tdp_access_result tmp;
	op_begin(vm);
	*done = 0;
	if ((r = check_access_args(vm, vcpu, default_access)))
		return r;
	for (size_t i = 0; i < n; i++) {
		if (gpas[i] >> vm->cfg.maxphyaddr)
			return vm_err(vm, TDP_EINVAL, "gpas[%zu] = 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d)",
				      i, (unsigned long long)gpas[i], vm->cfg.maxphyaddr);
		if (accesses && accesses[i] > 3)
			return vm_err(vm, TDP_EINVAL, "accesses[%zu] = %u: access kinds are 0 r, 1 w, 2 x, 3 xu", i, accesses[i]);
	}
	if (vm->cfg.record && blob_reserve(vm, n * 9))
		return vm_err(vm, TDP_ENOMEM, "out of host memory for the event log");
	memset(counts, 0, 9 * sizeof(u64));
	struct vcpu *v = &vm->vcpus[vcpu];
	size_t blob_at = vm->nblob;
	size_t i;
	for (i = 0; i < n; i++) {
		struct tdp_access_result *o = per ? &per[i] : &tmp;
		int acc = accesses ? accesses[i] : default_access;
		if (hostmem_available(&vm->mem) < (u64)vm->cfg.levels + 1) {
			/* Not an error: the batch stops before an access that might need
			 * more frames than are left, and says how far it got. */
			vm_err(vm, 0, "frame pool exhausted: the batch stopped after %zu of %zu accesses", i, n);
			break;
		}
		if ((r = cpu_access(vm, v, gpas[i], acc, o, i)))
			break;
		counts[o->outcome]++;     /* 0 ok, 1 mmio, 2 livelock, 3 blocked */
		counts[4 + o->tlb_hit]++; /* 4 walked, 5 L1 hit, 6 L2 hit */
		counts[7] += (u64)o->faults;
		counts[8] += o->violation != 0;
	}
	*done = i;
	if (vm->cfg.record && i) {
		/* One event for the batch; its accesses are in the blob. */
		for (size_t k = 0; k < i; k++) {
			memcpy(vm->blob + blob_at + k * 9, &gpas[k], 8);
			vm->blob[blob_at + k * 9 + 8] = (u8)(accesses ? accesses[k] : default_access);
		}
		vm->nblob = blob_at + i * 9;
		vm_log(vm, EV_ACCESS_BATCH, (u64)vcpu, blob_at, i, 0, 0);
	}
	op_end(vm);
	return r;
}

int tdp_event_batch(tdp_vm *vm, size_t event, uint64_t *gpas, uint8_t *accesses, size_t max)
{
	if (event >= vm->nev || vm->ev[event].op != EV_ACCESS_BATCH)
		return vm_err(vm, TDP_EINVAL, "event %zu is not an access batch", event);
	size_t at = vm->ev[event].a[1], n = vm->ev[event].a[2];
	for (size_t k = 0; k < n && k < max; k++) {
		memcpy(&gpas[k], vm->blob + at + k * 9, 8);
		accesses[k] = vm->blob[at + k * 9 + 8];
	}
	return 0;
}

int tdp_flush_remote_tlbs(tdp_vm *vm)
{
	op_begin(vm);
	kvm_flush_remote_tlbs(vm);
	vm_log(vm, EV_FLUSH_REMOTE, 0, 0, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_flush_remote_tlbs_range(tdp_vm *vm, uint64_t gfn, uint64_t npages)
{
	int r;
	op_begin(vm);
	if ((r = check_range(vm, gfn, gfn + npages)))
		return r;
	kvm_flush_remote_tlbs_range(vm, gfn, npages);
	vm_log(vm, EV_FLUSH_RANGE, gfn, npages, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_invept(tdp_vm *vm, int pcpu, int type, uint64_t eptp)
{
	int r;
	op_begin(vm);
	if (vm->cfg.arch != TDP_VMX)
		return vm_err(vm, TDP_ESTATE, "INVEPT exists on VMX only (this VM is svm)");
	if ((r = check_pcpu(vm, pcpu)))
		return r;
	if (type != 1 && type != 2)
		return vm_err(vm, TDP_EINVAL, "INVEPT type must be 1 (single-context) or 2 (global), got %d (VMfailValid: error 28)", type);
	struct pcpu *p = &vm->pcpus[pcpu];
	if (type == 1) {
		char buf[200];
		u64 table;
		int ad;
		if (walk_decode_root_pointer(&vm->hw, eptp, &table, &ad, buf, sizeof(buf)))
			return vm_err(vm, TDP_EINVAL, "INVEPT single-context: eptp fails the VM-entry checks: %s", buf);
		int c = tlb_ctx_find(&p->tlb, tlb_ctx_key_ept(table >> 12));
		if (c >= 0)
			tlb_flush_ctx(&p->tlb, c);
		vm->stats[ST_invept_single]++;
	} else {
		tlb_flush_all(&p->tlb);
		vm->stats[ST_invept_global]++;
	}
	vm_log(vm, EV_INVEPT, (u64)pcpu, (u64)type, eptp, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_invvpid(tdp_vm *vm, int pcpu, int type, uint32_t vpid, uint64_t gla)
{
	int r;
	op_begin(vm);
	if (vm->cfg.arch != TDP_VMX)
		return vm_err(vm, TDP_ESTATE, "INVVPID exists on VMX only (this VM is svm)");
	if ((r = check_pcpu(vm, pcpu)))
		return r;
	if (type < 0 || type > 3)
		return vm_err(vm, TDP_EINVAL, "INVVPID type must be 0..3, got %d (VMfailValid: error 28)", type);
	if (vpid > 0xffff)
		return vm_err(vm, TDP_EINVAL, "vpid must fit in 16 bits, got %u", vpid);
	if (vpid == 0 && type != 2)
		return vm_err(vm, TDP_EINVAL, "INVVPID type %d with vpid 0 fails (VMfailValid)", type);
	if (type == 0) {
		/* canonical check for 48-bit linear addresses */
		int64_t s = (int64_t)(gla << 16) >> 16;
		if ((u64)s != gla)
			return vm_err(vm, TDP_EINVAL, "INVVPID individual-address: gla 0x%llx is not canonical", (unsigned long long)gla);
	}
	/* INVVPID drops linear and combined mappings only; guest-physical
	 * mappings (everything this model caches for TDP) survive (§3.2). */
	vm->stats[ST_invvpid]++;
	vm_log(vm, EV_INVVPID, (u64)pcpu, (u64)type, vpid, gla, 0);
	op_end(vm);
	return 0;
}

int tdp_svm_set_tlb_control(tdp_vm *vm, int vcpu, int value)
{
	int r;
	op_begin(vm);
	if (vm->cfg.arch != TDP_SVM)
		return vm_err(vm, TDP_ESTATE, "TLB_CONTROL exists on SVM only (this VM is vmx)");
	if ((r = check_vcpu(vm, vcpu)))
		return r;
	if (value != 0 && value != 1 && value != 3 && value != 7)
		return vm_err(vm, TDP_EINVAL, "TLB_CONTROL must be 0, 1, 3 or 7 (others are reserved), got %d", value);
	vm->vcpus[vcpu].tlb_control = value;
	vm_log(vm, EV_TLB_CONTROL, (u64)vcpu, (u64)value, 0, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_tlb_dump(tdp_vm *vm, int pcpu, struct tdp_tlb_entry *out, size_t max, size_t *n)
{
	int r;
	if ((r = check_pcpu(vm, pcpu)))
		return r;
	*n = tlb_dump(&vm->pcpus[pcpu].tlb, out, max, vm->cfg.arch == TDP_SVM);
	return 0;
}

static int fill_junk(struct tdp_vm *vm, int p, u32 count, u64 max_gfn)
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
		if (tlb_fill(t, c, (r2 >> 8) % max_gfn, 1, (r2 >> 20) & 0xffffff, 7, 1))
			return TDP_ENOMEM;
	}
	return 0;
}

int tdp_tlb_fill_junk(tdp_vm *vm, int pcpu, uint32_t count, uint64_t max_gfn)
{
	int r;
	op_begin(vm);
	if ((r = check_pcpu(vm, pcpu)))
		return r;
	if (max_gfn == 0 || max_gfn > vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "max_gfn must be 1..0x%llx", (unsigned long long)vm_max_gfn(vm));
	if ((r = fill_junk(vm, pcpu, count, max_gfn)))
		return vm_err(vm, r, "out of host memory");
	vm_log(vm, EV_TLB_JUNK, (u64)pcpu, count, max_gfn, 0, 0);
	op_end(vm);
	return 0;
}

int tdp_synchronize_rcu(tdp_vm *vm)
{
	op_begin(vm);
	hostmem_synchronize_rcu(&vm->mem);
	vm->stats[ST_rcu_grace_periods] = vm->mem.grace_periods;
	vm_log(vm, EV_SYNC_RCU, 0, 0, 0, 0, 0);
	return 0;
}

void tdp_hostmem_info(tdp_vm *vm, uint64_t *out4)
{
	out4[0] = vm->mem.in_use - vm->mem.nrcu;
	out4[1] = vm->mem.nfree;
	out4[2] = vm->mem.nrcu;
	out4[3] = vm->mem.limit;
}

uint32_t tdp_frame_state(tdp_vm *vm, uint64_t pfn, uint32_t *gen)
{
	u32 f = hostmem_frame_of(&vm->mem, pfn);
	if (f == NO_FRAME) {
		*gen = 0;
		return 0;
	}
	*gen = vm->mem.frames[f].gen;
	return vm->mem.frames[f].state;
}

size_t tdp_violation_count(tdp_vm *vm) { return vm->nviol; }

size_t tdp_violations(tdp_vm *vm, struct tdp_violation *out, size_t max)
{
	size_t n = vm->nviol < max ? vm->nviol : max;
	if (n)
		memcpy(out, vm->viol, n * sizeof(*out));
	return n;
}

size_t tdp_event_count(tdp_vm *vm) { return vm->nev; }

size_t tdp_events(tdp_vm *vm, struct tdp_event *out, size_t start, size_t max)
{
	if (start >= vm->nev)
		return 0;
	size_t n = vm->nev - start < max ? vm->nev - start : max;
	memcpy(out, vm->ev + start, n * sizeof(*out));
	return n;
}

size_t tdp_trace_count(tdp_vm *vm) { return vm->ntr; }

size_t tdp_trace(tdp_vm *vm, struct tdp_trace_rec *out, size_t start, size_t max)
{
	if (start >= vm->ntr)
		return 0;
	size_t n = vm->ntr - start < max ? vm->ntr - start : max;
	memcpy(out, vm->tr + start, n * sizeof(*out));
	return n;
}

/* ------------------------------------------------------------------ stepped operations */

struct vm_op *vm_find_op(tdp_vm *vm, u32 id, int *idx)
{
	for (int i = 0; i < vm->nops; i++)
		if (vm->ops[i]->id == id) {
			if (idx)
				*idx = i;
			return vm->ops[i];
		}
	return NULL;
}

int tdp_op_start(tdp_vm *vm, int kind, uint64_t a, uint64_t b, uint64_t c, int yield_every, uint32_t *op_id)
{
	int r = 0;
	struct memslot *slot = NULL;

	op_begin(vm);
	if (yield_every < 1 || yield_every > (1 << 24))
		return vm_err(vm, TDP_EINVAL, "yield_every must be 1..16777216, got %d", yield_every);
	switch (kind) {
	case TDP_OP_ZAP_GFN_RANGE: case TDP_OP_HOST_UNMAP: case TDP_OP_WRPROT: case TDP_OP_CLEAR_DIRTY:
	case TDP_OP_RECOVER_HUGE:
		r = check_range(vm, a, b);
		if (!r && kind == TDP_OP_HOST_UNMAP)
			r = unmap_prepare(vm, a, b);
		break;
	case TDP_OP_SPLIT:
		if (!(r = check_range(vm, a, b)) && (c < 1 || c > 2))
			r = vm_err(vm, TDP_EINVAL, "target_level must be 1 (4K) or 2 (2M), got %llu", (unsigned long long)c);
		break;
	case TDP_OP_ZAP_INVALIDATED_ROOTS:
		break;
	case TDP_OP_DELETE_MEMSLOT:
		slot = a > 0x7fffffff ? NULL : slot_by_id(vm, (int)a);
		if (!slot)
			r = vm_err(vm, TDP_ENOENT, "memslot %llu does not exist (deleted or never added)", (unsigned long long)a);
		else if (slot->deleting)
			r = vm_err(vm, TDP_ESTATE, "memslot %llu is already being deleted", (unsigned long long)a);
		break;
	case TDP_OP_NX_RECOVER:
		if (a > (1u << 30))
			r = vm_err(vm, TDP_EINVAL, "count must be 0..%u", 1u << 30);
		break;
	default:
		r = vm_err(vm, TDP_EINVAL, "unknown operation kind %d", kind);
	}
	if (r)
		return r;
	struct vm_op *o = calloc(1, sizeof(*o));
	struct vm_op **n = o ? realloc(vm->ops, (size_t)(vm->nops + 1) * sizeof(*n)) : NULL;
	if (!n) {
		free(o);
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	}
	vm->ops = n;
	o->id = ++vm->next_op_id;
	o->kind = kind;
	o->a = a;
	o->b = b;
	o->c = c;
	struct tdp_op *op = &o->op;
	switch (kind) {
	case TDP_OP_ZAP_GFN_RANGE:
		tdp_op_init(vm, op, OP_ZAP_LEAFS, ROOTS_VALID, a, b, c != 0);
		break;
	case TDP_OP_HOST_UNMAP:
		notifier_begin(vm, a, b);
		tdp_op_init(vm, op, OP_ZAP_LEAFS, which_notifier_roots(vm), a, b, false);
		break;
	case TDP_OP_ZAP_INVALIDATED_ROOTS:
		tdp_op_init(vm, op, OP_ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm_max_gfn(vm), true);
		break;
	case TDP_OP_DELETE_MEMSLOT:
		/* The slot becomes KVM_MEMSLOT_INVALID (faults on it wait), then the
		 * roots go as in kvm_mmu_zap_all_fast(), or only the slot (B18). */
		slot->deleting = true;
		vm->memslots_gen++;
		if (vm->pol.memslot_delete_zap_all) {
			tdp_mmu_invalidate_roots(vm);
			kvm_make_all_cpus_request(vm, TDP_REQ_MMU_FREE_OBSOLETE_ROOTS);
			tdp_op_init(vm, op, OP_ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm_max_gfn(vm), true);
		} else {
			tdp_op_init(vm, op, OP_ZAP_LEAFS, ROOTS_ALL, slot->base_gfn, slot->base_gfn + slot->npages, false);
		}
		break;
	case TDP_OP_WRPROT:
		tdp_op_init(vm, op, OP_WRPROT, ROOTS_VALID, a, b, true);
		break;
	case TDP_OP_CLEAR_DIRTY:
		tdp_op_init(vm, op, OP_CLEAR_DIRTY, ROOTS_VALID, a, b, true);
		break;
	case TDP_OP_SPLIT:
		tdp_op_init(vm, op, OP_SPLIT, ROOTS_VALID, a, b, true);
		op->target_level = (int)c;
		break;
	case TDP_OP_RECOVER_HUGE:
		tdp_op_init(vm, op, OP_RECOVER_HUGE, ROOTS_VALID, a, b, true);
		break;
	case TDP_OP_NX_RECOVER:
		tdp_op_init(vm, op, OP_NX_RECOVER, ROOTS_ALL, 0, 0, false);
		op->nx_left = a ? (int)a : (vm->pol.nx_recovery_ratio > 0 ? (int)((vm->nnx + (u32)vm->pol.nx_recovery_ratio - 1) / (u32)vm->pol.nx_recovery_ratio) : 0);
		break;
	}
	op->yield_every = yield_every;
	vm->ops[vm->nops++] = o;
	*op_id = o->id;
	/* a[4]: yield_every, and the id the operation got (for replays). */
	vm_log(vm, EV_OP_START, (u64)kind, a, b, c, (u64)(u32)yield_every | ((u64)o->id << 32));
	op_end(vm);
	return 0;
}

/* What the caller of each operation does once the walk is over. */
static int op_finish(tdp_vm *vm, struct vm_op *o)
{
	struct tdp_op *op = &o->op;
	bool flush = op->flush || op->result_flush;

	switch (o->kind) {
	case TDP_OP_ZAP_GFN_RANGE:
		/* kvm_zap_gfn_range(): the caller flushes the range before unlocking. */
		if (flush)
			kvm_flush_remote_tlbs_range(vm, o->a, o->b - o->a);
		return flush;
	case TDP_OP_HOST_UNMAP:
		unmap_finish(vm, o->a, o->b, flush);
		return flush;
	case TDP_OP_DELETE_MEMSLOT: {
		int idx;
		struct memslot *s = NULL;
		for (idx = 0; idx < vm->nslots; idx++)
			if (vm->slots[idx].used && vm->slots[idx].id == (int)o->a)
				s = &vm->slots[idx];
		if (!vm->pol.memslot_delete_zap_all && flush && s)
			kvm_flush_remote_tlbs_range(vm, s->base_gfn, s->npages);
		if (s)
			free_slot(vm, s);
		vm->memslots_gen++;
		return 0;
	}
	case TDP_OP_WRPROT: case TDP_OP_CLEAR_DIRTY:
		/* As their callers do: flush the range if an SPTE lost W or D. */
		if (op->result)
			kvm_flush_remote_tlbs_range(vm, o->a, o->b - o->a);
		return op->result;
	case TDP_OP_RECOVER_HUGE:
		if (flush)
			kvm_flush_remote_tlbs_range(vm, op->chg_hi ? op->chg_lo : o->a,
						    (op->chg_hi ? op->chg_hi : o->b) - (op->chg_hi ? op->chg_lo : o->a));
		return flush;
	case TDP_OP_NX_RECOVER:
		return op->nx_done;
	default:
		return 0;
	}
}

int tdp_op_step(tdp_vm *vm, uint32_t op_id, int *done, int *result)
{
	int idx;
	struct vm_op *o;

	op_begin(vm);
	o = vm_find_op(vm, op_id, &idx);
	if (!o)
		return vm_err(vm, TDP_ENOENT, "operation %u does not exist (finished, or never started)", op_id);
	int r = tdp_op_run(vm, &o->op, true);
	*done = 0;
	*result = 0;
	if (r != 0) {
		/* Finished (or failed: the walk stopped where it was, as KVM's
		 * would on -ENOMEM; what it changed stays changed). */
		*result = op_finish(vm, o);
		*done = 1;
		memmove(&vm->ops[idx], &vm->ops[idx + 1], (size_t)(vm->nops - idx - 1) * sizeof(*vm->ops));
		vm->nops--;
		free(o);
	}
	vm_log(vm, EV_OP_STEP, op_id, 0, 0, 0, 0);
	op_end(vm);
	if (r < 0)
		return vm_err(vm, r, "operation %u ran out of frames and stopped", op_id);
	return 0;
}

int tdp_op_list(tdp_vm *vm, uint32_t *ids, int max, int *n)
{
	for (int i = 0; i < vm->nops && i < max; i++)
		ids[i] = vm->ops[i]->id;
	*n = vm->nops;
	return 0;
}

/* ------------------------------------------------------------------ replay */

/* Apply one logged event; ids of stepped operations are translated through map. */
static int replay_one(tdp_vm *vm, const struct tdp_event *e, u32 *map, u32 nmap)
{
	const u64 *a = e->a;
	int flag, id;
	u32 rid;
	u64 u, bm[1];
	struct tdp_access_result out;

	switch (e->op) {
	case EV_MEMSLOT_ADD: return tdp_memslot_add(vm, a[0], a[1], (u32)a[2], (int)a[3], &id);
	case EV_MEMSLOT_DELETE: return tdp_memslot_delete(vm, (int)a[0]);
	case EV_HOST_UNMAP: return tdp_host_unmap(vm, a[0], a[1]);
	case EV_HOST_MIGRATE: return tdp_host_migrate(vm, a[0], &u);
	case EV_HOST_AGE: return tdp_host_age(vm, a[0], a[1], &flag);
	case EV_DIRTY_LOG_ENABLE: return tdp_dirty_log_enable(vm, (int)a[0], (int)a[1]);
	case EV_DIRTY_LOG_GET: {
		int r = TDP_ENOENT;
		for (int i = 0; i < vm->nslots; i++)
			if (vm->slots[i].used && vm->slots[i].id == (int)a[0]) {
				size_t words = (vm->slots[i].npages + 63) / 64;
				u64 *b = calloc(words, sizeof(u64));
				if (!b)
					return TDP_ENOMEM;
				r = tdp_dirty_log_get(vm, (int)a[0], b, words, &u);
				free(b);
			}
		(void)bm;
		return r;
	}
	case EV_WRITE_PROTECT_GFN: return tdp_write_protect_gfn(vm, a[0], (int)a[1]);
	case EV_ALLOC_ROOT: return tdp_mmu_alloc_root(vm, (int)a[0], (int)a[1], &rid);
	case EV_PUT_ROOT: return tdp_mmu_put_root(vm, (u32)a[0]);
	case EV_INVALIDATE_ALL: return tdp_mmu_invalidate_all_roots(vm);
	case EV_ZAP_INVALIDATED: return tdp_mmu_zap_invalidated_roots(vm);
	case EV_ZAP_ALL_FAST: return tdp_mmu_zap_all_fast(vm);
	case EV_MAP: return tdp_mmu_map(vm, (u32)a[0], a[1], (int)a[2], &flag);
	case EV_MAP_RANGE: return tdp_mmu_map_range(vm, (u32)a[0], a[1], a[2], (int)a[3], &u);
	case EV_ZAP_RANGE: return tdp_mmu_zap_gfn_range(vm, a[0], a[1], (int)a[2], &flag);
	case EV_ZAP_ROOT: return tdp_mmu_zap_root(vm, (u32)a[0], (int)a[1]);
	case EV_ZAP_SP: return tdp_mmu_zap_sp(vm, (u32)a[0], a[1], (int)a[2], &flag);
	case EV_WRPROT: return tdp_mmu_wrprot_range(vm, a[0], a[1], &flag);
	case EV_CLEAR_DIRTY: return tdp_mmu_clear_dirty_range(vm, a[0], a[1], &flag);
	case EV_AGE: return tdp_mmu_age_range(vm, a[0], a[1], &flag);
	case EV_SPLIT: return tdp_mmu_split_huge_pages(vm, a[0], a[1], (int)a[2]);
	case EV_RECOVER: return tdp_mmu_recover_huge_pages(vm, a[0], a[1], &flag);
	case EV_NX_RECOVER: return tdp_mmu_recover_nx_huge_pages(vm, (int)a[0], &flag);
	case EV_VCPU_RUN: return tdp_vcpu_run(vm, (int)a[0], (int)a[1]);
	case EV_VCPU_EXIT: return tdp_vcpu_exit(vm, (int)a[0]);
	case EV_VCPU_REQUEST: return tdp_vcpu_request(vm, (int)a[0], (u32)a[1]);
	case EV_ACCESS: return tdp_access(vm, (int)a[0], a[1], (int)a[2], &out);
	case EV_FLUSH_REMOTE: return tdp_flush_remote_tlbs(vm);
	case EV_FLUSH_RANGE: return tdp_flush_remote_tlbs_range(vm, a[0], a[1]);
	case EV_INVEPT: return tdp_invept(vm, (int)a[0], (int)a[1], a[2]);
	case EV_INVVPID: return tdp_invvpid(vm, (int)a[0], (int)a[1], (u32)a[2], a[3]);
	case EV_TLB_CONTROL: return tdp_svm_set_tlb_control(vm, (int)a[0], (int)a[1]);
	case EV_SYNC_RCU: return tdp_synchronize_rcu(vm);
	case EV_TLB_JUNK: return tdp_tlb_fill_junk(vm, (int)a[0], (u32)a[1], a[2]);
	case EV_OP_START: {
		u32 orig = (u32)(a[4] >> 32), nid;
		int r = tdp_op_start(vm, (int)a[0], a[1], a[2], a[3], (int)(u32)a[4], &nid);
		if (!r && orig < nmap)
			map[orig] = nid;
		return r;
	}
	case EV_OP_STEP: {
		u32 orig = (u32)a[0];
		int done, res;
		if (orig >= nmap || !map[orig])
			return TDP_ENOENT;
		return tdp_op_step(vm, map[orig], &done, &res);
	}
	default:
		return vm_err(vm, TDP_EINVAL, "event %u cannot be replayed here", e->op);
	}
}

int tdp_replay(tdp_vm *vm, const struct tdp_event *ev, size_t n, int stop_at_violation, size_t *applied)
{
	u32 nmap = 1;
	for (size_t i = 0; i < n; i++)
		if (ev[i].op == EV_OP_START && (u32)(ev[i].a[4] >> 32) + 1 > nmap)
			nmap = (u32)(ev[i].a[4] >> 32) + 1;
	u32 *map = calloc(nmap, sizeof(u32));
	if (!map)
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	size_t ok = 0;
	for (size_t i = 0; i < n; i++) {
		if (replay_one(vm, &ev[i], map, nmap) == 0)
			ok++;
		if (stop_at_violation && vm->nviol)
			break;
	}
	free(map);
	*applied = ok;
	return 0;
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
			u64 *t = hostmem_table(m, f);
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
			u64 nchunks = chunk_of(s, s->base_gfn + s->npages - 1) + 1;
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
	}
	for (int i = 0; i < ST_COUNT; i++)
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
