/* api.c — the public entry points that are thin wrappers: every argument is
 * checked before anything changes (so a rejected call leaves the model as it was),
 * then the call goes to the file that models it: the TDP MMU (tdp_mmu*.c), the
 * fault entry and the zaps' callers (mmu.c), vCPUs and pCPUs (cpu.c), and the
 * queries of roots, tables and SPTEs. Each call that changes the model is one
 * top-level operation: VM_OP_BEGIN() (which fails if records were lost since the
 * last call), the work, one event (event.c), vm_op_end(). */
#include <string.h>
#include "vm.h"

/* ------------------------------------------------------------------ TDP MMU API */

static int resolve_root(tdp_vm *vm, u32 id, struct tdp_root **out)
{
	if (id == 0) {
		if ((*out = tdp_mmu_newest_valid_root(vm)))
			return 0;
		return vm_err(vm, TDP_ESTATE, "no valid root: call vm.mmu.alloc_root() first (or pass root=)");
	}
	*out = tdp_mmu_find_root(vm, id);
	if (!*out)
		return vm_err(vm, TDP_ENOENT, "root %u does not exist (it was freed, or never allocated)", id);
	return 0;
}

uint32_t tdp_mmu_newest_root(tdp_vm *vm)
{
	struct tdp_root *r = tdp_mmu_newest_valid_root(vm);
	return r ? r->id : 0;
}

int tdp_mmu_alloc_root(tdp_vm *vm, int as_id, int guest_mode, uint32_t *root_id)
{
	int r;
	VM_OP_BEGIN(vm);
	if (as_id < 0 || as_id > 1)
		return vm_err(vm, TDP_EINVAL, "as_id must be 0 or 1 (SMM), got %d", as_id);
	if (guest_mode < 0 || guest_mode > 1)
		return vm_err(vm, TDP_EINVAL, "guest_mode must be 0 or 1, got %d", guest_mode);
	if ((r = tdp_mmu_get_vcpu_root(vm, as_id, guest_mode, root_id)))
		return vm_err(vm, r, "frame pool exhausted: no frame for a new root (frame_limit=%u)", vm->mem.limit);
	tdp_mmu_find_root(vm, *root_id)->user_refs++;
	vm_log(vm, EV_ALLOC_ROOT, (u64)as_id, (u64)guest_mode, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_put_root(tdp_vm *vm, uint32_t root_id)
{
	struct tdp_root *r;
	int rc;

	VM_OP_BEGIN(vm);
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
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_invalidate_all_roots(tdp_vm *vm)
{
	VM_OP_BEGIN(vm);
	tdp_mmu_invalidate_roots(vm);
	vm_log(vm, EV_INVALIDATE_ALL, 0, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_zap_invalidated_roots(tdp_vm *vm)
{
	VM_OP_BEGIN(vm);
	tdp_mmu_zap_invalidated(vm, true);
	vm_log(vm, EV_ZAP_INVALIDATED, 0, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_zap_all_fast(tdp_vm *vm)
{
	VM_OP_BEGIN(vm);
	kvm_mmu_zap_all_fast(vm);
	vm_log(vm, EV_ZAP_ALL_FAST, 0, 0, 0, 0, 0);
	vm_op_end(vm);
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
		/* Every gfn can be mapped at 4K: only a huge level asks the memslot. */
		int maxl = level == 1 ? 1 : s ? vm_max_mapping_level(vm, s, g) : 1;
		if (level > maxl)
			return vm_err(vm, TDP_EINVAL, "level %d is not possible at gfn 0x%llx: %s allows at most level %d there",
				      level, (unsigned long long)g, s ? "its memslot" : "a gfn without a memslot (MMIO)", maxl);
		if (g + span < g)
			break;
	}
	u64 need = tdp_mmu_tables_needed(vm, root, start, end, level) + memslot_unbacked_in(vm, start, end);
	if (need > hostmem_available(&vm->mem))
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: mapping needs up to %llu more frames, %llu available (frame_limit=%u)",
			      (unsigned long long)need, (unsigned long long)hostmem_available(&vm->mem), vm->mem.limit);
	return 0;
}

int tdp_mmu_map(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush)
{
	struct tdp_root *root;
	int r;
	bool flushed = false;

	VM_OP_BEGIN(vm);
	if ((r = vm_check_gfn(vm, "gfn", gfn)) || (r = check_level(vm, level)) || (r = resolve_root(vm, root_id, &root)) ||
	    (r = map_checks(vm, root, gfn, gfn + pages_per_level(level), level)))
		return r;
	if ((r = kvm_tdp_map_page(vm, root, gfn, level, &flushed)))
		return r;
	*flush = flushed;
	vm_log(vm, EV_MAP, root_id, gfn, (u64)level, 0, 0); /* 0: the newest valid root */
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_map_range(tdp_vm *vm, uint32_t root_id, uint64_t start, uint64_t end, int level, uint64_t *mapped)
{
	struct tdp_root *root;
	int r;
	u64 n = 0;

	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)) || (r = check_level(vm, level)) || (r = resolve_root(vm, root_id, &root)) ||
	    (r = map_checks(vm, root, start, end, level)))
		return r;
	if ((r = kvm_tdp_map_range(vm, root, start, end, level, &n)))
		return r;
	*mapped = n;
	vm_log(vm, EV_MAP_RANGE, root_id, start, end, (u64)level, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_zap_gfn_range(tdp_vm *vm, uint64_t start, uint64_t end, int shared, int *flush)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)))
		return r;
	/* kvm_tdp_mmu_zap_leafs() over the valid roots; the caller flushes. */
	*flush = tdp_mmu_zap_leafs_all(vm, start, end, ROOTS_VALID, shared != 0, false);
	vm_log(vm, EV_ZAP_RANGE, start, end, (u64)shared, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_zap_root(tdp_vm *vm, uint32_t root_id, int shared)
{
	struct tdp_root *root;
	int r;
	VM_OP_BEGIN(vm);
	if (root_id == 0)
		return vm_err(vm, TDP_ENOENT, "root 0 does not exist");
	if ((r = resolve_root(vm, root_id, &root)))
		return r;
	tdp_mmu_get_root(root);
	tdp_mmu_zap_whole_root(vm, root, shared != 0);
	tdp_mmu_put_root_internal(vm, root_id, shared != 0);
	vm_log(vm, EV_ZAP_ROOT, root_id, (u64)shared, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_zap_sp(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush)
{
	struct tdp_root *root;
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_gfn(vm, "gfn", gfn)) || (r = resolve_root(vm, root_id, &root)))
		return r;
	if (level < 1 || level >= root->level)
		return vm_err(vm, TDP_EINVAL, "level must name a non-root table: 1..%d, got %d", root->level - 1, level);
	u32 f = tdp_mmu_find_sp(vm, root, gfn, level);
	if (f == NO_FRAME)
		return vm_err(vm, TDP_ENOENT, "no level-%d table maps gfn 0x%llx in root %u", level,
			      (unsigned long long)gfn, root->id);
	*flush = tdp_mmu_zap_sp_frame(vm, f);
	vm_log(vm, EV_ZAP_SP, root->id, gfn, (u64)level, 0, 0);
	vm_op_end(vm);
	return 0;
}

/* The range walkers that only report what they found: check, run, log. */
static int range_walk(tdp_vm *vm, uint64_t start, uint64_t end, int *out, u32 ev,
		      bool (*walk)(struct tdp_vm *, u64, u64))
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)))
		return r;
	*out = walk(vm, start, end);
	vm_log(vm, ev, start, end, 0, 0, 0);
	vm_op_end(vm);
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
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)))
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
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_recover_huge_pages(tdp_vm *vm, uint64_t start, uint64_t end, int *flush)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, start, end)))
		return r;
	*flush = tdp_mmu_recover_huge(vm, start, end); /* it flushes each root that changed */
	vm_log(vm, EV_RECOVER, start, end, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_mmu_recover_nx_huge_pages(tdp_vm *vm, int count, int *zapped)
{
	VM_OP_BEGIN(vm);
	if (count < 0)
		return vm_err(vm, TDP_EINVAL, "count must be >= 0 (0: nx_recovery_ratio decides), got %d", count);
	tdp_mmu_recover_nx(vm, count, zapped);
	vm_log(vm, EV_NX_RECOVER, (u64)count, 0, 0, 0, 0);
	vm_op_end(vm);
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
	const u64 *t = hostmem_table_read(&vm->mem, f);
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
	int r;
	if ((r = vm_check_gfn(vm, "gfn", gfn)) || (r = resolve_root(vm, root_id, &root)))
		return r;
	if (level < 1 || level > root->level)
		return vm_err(vm, TDP_EINVAL, "level must be 1..%d, got %d", root->level, level);
	u64 *p = NULL;
	u32 f = root->frame;
	for (int l = root->level; l >= level; l--) {
		p = hostmem_table_read(&vm->mem, f) + spte_index(gfn, l);
		if (l == level)
			break;
		f = spte_to_child_frame(&vm->mem, *p, l);
		if (f == NO_FRAME)
			return vm_err(vm, TDP_ENOENT, "no level-%d table on the path to gfn 0x%llx (the walk ends at level %d)",
				      level, (unsigned long long)gfn, l);
	}
	*spte = *p;
	return 0;
}

/* ------------------------------------------------------------------ vCPUs and TLBs */

int tdp_vcpu_run(tdp_vm *vm, int vcpu, int pcpu)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_vcpu(vm, vcpu)) || (r = vm_check_pcpu(vm, pcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (!v->root_id || (tdp_mmu_find_root(vm, v->root_id) && tdp_mmu_find_root(vm, v->root_id)->invalid))
		if (hostmem_available(&vm->mem) < 1)
			return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: no frame for vcpu %d's root", vcpu);
	if ((r = cpu_vcpu_run(vm, vcpu, pcpu)))
		return r;
	vm_log(vm, EV_VCPU_RUN, (u64)vcpu, (u64)pcpu, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_vcpu_exit(tdp_vm *vm, int vcpu)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	cpu_vcpu_exit(vm, &vm->vcpus[vcpu]);
	vm_log(vm, EV_VCPU_EXIT, (u64)vcpu, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_vcpu_request(tdp_vm *vm, int vcpu, uint32_t requests)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	if (requests & ~(u32)TDP_REQ_ALL)
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
	vm_op_end(vm);
	return 0;
}

int tdp_vcpu_info(tdp_vm *vm, int vcpu, struct tdp_vcpu_info *out)
{
	int r;
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	*out = (struct tdp_vcpu_info){v->mode, v->pcpu, v->vmcs_cpu, v->root_id, v->requests, v->asid,
				      v->asid_generation, v->vpid, v->tlb_control, v->in_l2, v->other.root_id,
				      v->g.levels, v->g.cr3};
	return 0;
}

int tdp_pcpu_info(tdp_vm *vm, int pcpu, struct tdp_pcpu_info *out)
{
	int r;
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	struct pcpu *p = &vm->pcpus[pcpu];
	*out = (struct tdp_pcpu_info){p->vcpu, p->asid_generation, p->next_asid, p->min_asid, p->max_asid,
				      tlb_live_entries(&p->tlb, 0), tlb_live_entries(&p->tlb, 1)};
	return 0;
}

static int check_access_args(tdp_vm *vm, int vcpu, int access)
{
	int r;
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	if (access < 0 || access > 3)
		return vm_err(vm, TDP_EINVAL, "access must be 'r', 'w', 'x' or 'xu'");
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	if (hostmem_available(&vm->mem) < (u64)tdp_fault_frames(vm->cfg.levels))
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: a fault could need %d frames, %llu available",
			      tdp_fault_frames(vm->cfg.levels), (unsigned long long)hostmem_available(&vm->mem));
	return 0;
}

int tdp_access(tdp_vm *vm, int vcpu, uint64_t gpa, int access, struct tdp_access_result *out)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = check_access_args(vm, vcpu, access)))
		return r;
	if (gpa >> vm->cfg.maxphyaddr)
		return vm_err(vm, TDP_EINVAL, "gpa 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d)",
			      (unsigned long long)gpa, vm->cfg.maxphyaddr);
	if ((r = cpu_access(vm, &vm->vcpus[vcpu], gpa, access, out, 0)))
		return r;
	vm_log(vm, EV_ACCESS, (u64)vcpu, gpa, (u64)access, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_access_batch(tdp_vm *vm, int vcpu, const uint64_t *gpas, const uint8_t *accesses, int default_access,
		     size_t n, struct tdp_access_result *per, uint64_t *counts, size_t *done)
{
	int r;
	*done = 0;
	VM_OP_BEGIN(vm);
	if ((r = check_access_args(vm, vcpu, default_access)))
		return r;
	for (size_t i = 0; i < n; i++) {
		if (gpas[i] >> vm->cfg.maxphyaddr)
			return vm_err(vm, TDP_EINVAL, "gpas[%zu] = 0x%llx is beyond the guest physical address width (MAXPHYADDR=%d)",
				      i, (unsigned long long)gpas[i], vm->cfg.maxphyaddr);
		if (accesses && accesses[i] > 3)
			return vm_err(vm, TDP_EINVAL, "accesses[%zu] = %u: access kinds are 0 r, 1 w, 2 x, 3 xu", i, accesses[i]);
	}
	if (vm->cfg.record && vm_log_reserve_batch(vm, n * 9))
		return vm_err(vm, TDP_ENOMEM, "out of host memory for the event log");
	memset(counts, 0, 9 * sizeof(u64));
	size_t i;
	r = cpu_access_batch(vm, &vm->vcpus[vcpu], gpas, accesses, default_access, n, per, counts, &i);
	*done = i;
	if (i)
		vm_log_access_batch(vm, vcpu, gpas, accesses, default_access, i);
	vm_op_end(vm);
	return r;
}

int tdp_flush_remote_tlbs(tdp_vm *vm)
{
	VM_OP_BEGIN(vm);
	kvm_flush_remote_tlbs(vm); /* not a KVM flush site: a caller's own flush, through the API */
	vm_log(vm, EV_FLUSH_REMOTE, 0, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_flush_remote_tlbs_range(tdp_vm *vm, uint64_t gfn, uint64_t npages)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_range(vm, gfn, gfn + npages)))
		return r;
	kvm_flush_remote_tlbs_range(vm, gfn, npages); /* not a KVM flush site: a caller's own flush */
	vm_log(vm, EV_FLUSH_RANGE, gfn, npages, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_invept(tdp_vm *vm, int pcpu, int type, uint64_t eptp)
{
	int r;
	VM_OP_BEGIN(vm);
	if (vm->cfg.arch != TDP_VMX)
		return vm_err(vm, TDP_ESTATE, "INVEPT exists on VMX only (this VM is svm)");
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	if (type != TDP_INVEPT_SINGLE_CONTEXT && type != TDP_INVEPT_GLOBAL)
		return vm_err(vm, TDP_EINVAL, "INVEPT type must be 1 (single-context) or 2 (global), got %d (VMfailValid: error 28)", type);
	struct pcpu *p = &vm->pcpus[pcpu];
	if (type == TDP_INVEPT_SINGLE_CONTEXT) {
		char buf[200];
		u64 table;
		int ad;
		if (walk_decode_root_pointer(&vm->hw, eptp, &table, &ad, buf, sizeof(buf)))
			return vm_err(vm, TDP_EINVAL, "INVEPT single-context: eptp fails the VM-entry checks: %s", buf);
		int c = tlb_ctx_find(&p->tlb, tlb_ctx_key_ept(table >> 12));
		if (c >= 0)
			tlb_flush_ctx(&p->tlb, c);
		ctlb_flush_spaces(&p->ctlb, CTLB_EP4TA, table >> 12, true);
		vm->stats[ST_invept_single]++;
	} else {
		tlb_flush_all(&p->tlb);
		ctlb_flush_spaces(&p->ctlb, CTLB_ALL, 0, true);
		vm->stats[ST_invept_global]++;
	}
	vm_log(vm, EV_INVEPT, (u64)pcpu, (u64)type, eptp, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_invvpid(tdp_vm *vm, int pcpu, int type, uint32_t vpid, uint64_t gla)
{
	int r;
	VM_OP_BEGIN(vm);
	if (vm->cfg.arch != TDP_VMX)
		return vm_err(vm, TDP_ESTATE, "INVVPID exists on VMX only (this VM is svm)");
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	if (type < TDP_INVVPID_INDIVIDUAL_ADDRESS || type > TDP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS)
		return vm_err(vm, TDP_EINVAL, "INVVPID type must be 0..3, got %d (VMfailValid: error 28)", type);
	if (vpid > 0xffff)
		return vm_err(vm, TDP_EINVAL, "vpid must fit in 16 bits, got %u", vpid);
	if (vpid == 0 && type != TDP_INVVPID_ALL_CONTEXT)
		return vm_err(vm, TDP_EINVAL, "INVVPID type %d with vpid 0 fails (VMfailValid)", type);
	if (type == TDP_INVVPID_INDIVIDUAL_ADDRESS) {
		/* canonical check for 48-bit linear addresses */
		int64_t s = (int64_t)(gla << 16) >> 16;
		if ((u64)s != gla)
			return vm_err(vm, TDP_EINVAL, "INVVPID individual-address: gla 0x%llx is not canonical", (unsigned long long)gla);
	}
	/* INVVPID drops combined (and linear) mappings only, for every PCID and
	 * EP4TA; guest-physical mappings survive (Intel SDM Vol. 3C "Operations that
	 * Invalidate Cached Mappings", 28.3.3.1 in the 2016 edition). */
	struct ctlb *ct = &vm->pcpus[pcpu].ctlb;
	switch (type) {
	case TDP_INVVPID_INDIVIDUAL_ADDRESS: ctlb_flush_addr(ct, CTLB_ID, vpid, -1, true, gla >> 12); break;
	case TDP_INVVPID_SINGLE_CONTEXT: ctlb_flush_spaces(ct, CTLB_ID, vpid, true); break;
	case TDP_INVVPID_ALL_CONTEXT: ctlb_flush_spaces(ct, CTLB_ALL_BUT_ID0, 0, true); break;
	default: ctlb_flush_spaces(ct, CTLB_ID, vpid, false); break; /* single-context retaining globals */
	}
	vm->stats[ST_invvpid]++;
	vm_log(vm, EV_INVVPID, (u64)pcpu, (u64)type, vpid, gla, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_svm_set_tlb_control(tdp_vm *vm, int vcpu, int value)
{
	int r;
	VM_OP_BEGIN(vm);
	if (vm->cfg.arch != TDP_SVM)
		return vm_err(vm, TDP_ESTATE, "TLB_CONTROL exists on SVM only (this VM is vmx)");
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	if (value != 0 && value != 1 && value != 3 && value != 7)
		return vm_err(vm, TDP_EINVAL, "TLB_CONTROL must be 0, 1, 3 or 7 (others are reserved), got %d", value);
	vm->vcpus[vcpu].tlb_control = value;
	vm_log(vm, EV_TLB_CONTROL, (u64)vcpu, (u64)value, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_tlb_dump(tdp_vm *vm, int pcpu, struct tdp_tlb_entry *out, size_t max, size_t *n)
{
	int r;
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	*n = tlb_dump(&vm->pcpus[pcpu].tlb, out, max, vm->cfg.arch == TDP_SVM);
	return 0;
}

int tdp_tlb_fill_junk(tdp_vm *vm, int pcpu, uint32_t count, uint64_t max_gfn)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	if (max_gfn == 0 || max_gfn > vm_max_gfn(vm))
		return vm_err(vm, TDP_EINVAL, "max_gfn must be 1..0x%llx", (unsigned long long)vm_max_gfn(vm));
	if ((r = cpu_fill_tlb_junk(vm, pcpu, count, max_gfn)))
		return vm_err(vm, r, "out of host memory");
	vm_log(vm, EV_TLB_JUNK, (u64)pcpu, count, max_gfn, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_synchronize_rcu(tdp_vm *vm)
{
	VM_OP_BEGIN(vm);
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

