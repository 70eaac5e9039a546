/* tdp_mmu_root.c — the TDP MMU's roots (mmu/tdp_mmu.c upstream): finding and
 * allocating a vCPU's root, references, invalidation, and the zaps that end a
 * root's life. The deferred flush the seed thread is about lives here: neither
 * the last put nor the zap of invalidated roots flushes (the next root load and
 * every migration do, see cpu.c). */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

struct tdp_root *tdp_mmu_find_root(struct tdp_vm *vm, u32 id)
{
	for (int i = 0; i < vm->nroots; i++)
		if (vm->roots[i].id == id)
			return &vm->roots[i];
	return NULL;
}

struct tdp_root *tdp_mmu_newest_valid_root(struct tdp_vm *vm)
{
	struct tdp_root *r;

	for_each_valid_tdp_mmu_root(vm, r)
		return r;
	return NULL;
}

void tdp_mmu_get_root(struct tdp_root *r) { r->refcount++; }

/* kvm_tdp_mmu_alloc_root(): reuse a valid root of the same role, else allocate
 * one with refcount 2 (the vCPU's and the TDP MMU's own, v6.4+) or 1 (v5.17). */
int tdp_mmu_get_vcpu_root(struct tdp_vm *vm, int as_id, int guest_mode, u32 *root_id)
{
	struct tdp_root *r;

	for_each_valid_tdp_mmu_root(vm, r) {
		if (r->as_id == as_id && r->guest_mode == guest_mode && r->refcount > 0) {
			r->refcount++;
			*root_id = r->id;
			return 0;
		}
	}
	if (vm->nroots == vm->roots_cap) {
		int ncap = vm->roots_cap ? vm->roots_cap * 2 : 8;
		struct tdp_root *n = realloc(vm->roots, (size_t)ncap * sizeof(*n));
		if (!n)
			return TDP_ENOMEM;
		vm->roots = n;
		vm->roots_cap = ncap;
	}
	u32 id = vm->next_root_id;
	u32 f = tdp_mmu_alloc_sp(vm, vm->cfg.levels, 0, id, NO_FRAME);
	if (f == NO_FRAME)
		return TDP_ENOMEM;
	vm->next_root_id++;
	vm->roots[vm->nroots++] = (struct tdp_root){
		.id = id, .frame = f, .level = vm->cfg.levels, .as_id = as_id,
		.guest_mode = guest_mode,
		.refcount = vm->pol.root_lifetime == TDP_ROOT_PRESERVE ? 2 : 1};
	vm->stats[ST_roots_allocated]++;
	vm_trace(vm, TR_ROOT_ALLOC, 0, id, hostmem_pfn(&vm->mem, f), 0);
	*root_id = id;
	return 0;
}

static void zap_root_passes(struct tdp_vm *vm, struct tdp_root *root, bool shared, bool can_yield);

/* kvm_tdp_mmu_put_root(). v6.6+: at zero the (invalid, already zapped) root is
 * unlinked and freed via RCU, with no flush (deferred to the next root load /
 * migration). v5.17: the last put zaps the whole root, ignoring "flush needed". */
void tdp_mmu_put_root_internal(struct tdp_vm *vm, u32 id, bool shared)
{
	struct tdp_root *r = tdp_mmu_find_root(vm, id);
	int idx;

	if (!r || --r->refcount > 0)
		return;
	TDP_WARN_ON(vm, r->refcount < 0);
	vm_trace(vm, TR_ROOT_PUT, 0, id, hostmem_pfn(&vm->mem, r->frame), 0);
	/* Whatever is still mapped goes now (v5.17: the whole root; v6.6+: a
	 * root that was invalidated but not zapped yet), without a flush. */
	zap_root_passes(vm, r, shared, false);
	r = tdp_mmu_find_root(vm, id);
	idx = (int)(r - vm->roots);
	u32 f = r->frame;
	vm->mem.frames[f].sp_unlinked = 1;
	vm->stats[ST_mmu_pages]--;
	memmove(&vm->roots[idx], &vm->roots[idx + 1], (size_t)(vm->nroots - idx - 1) * sizeof(*r));
	vm->nroots--;
	vm->stats[ST_roots_freed]++;
	hostmem_free_rcu(&vm->mem, f);
	vm_trace(vm, TR_ROOT_FREE, 0, id, hostmem_pfn(&vm->mem, f), 0);
	if (vm->pol.flush_on_put_root) /* not a KVM flush site: the eager alternative the seed thread weighs */
		kvm_flush_remote_tlbs(vm);
}

/* kvm_tdp_mmu_invalidate_all_roots(). In the v5.17 lifetime the invalidation
 * takes a reference so the root survives until zap_invalidated_roots. */
void tdp_mmu_invalidate_roots(struct tdp_vm *vm)
{
	for (int i = 0; i < vm->nroots; i++) {
		struct tdp_root *r = &vm->roots[i];
		if (r->invalid)
			continue;
		r->invalid = true;
		r->scheduled = true;
		if (vm->pol.root_lifetime == TDP_ROOT_ZAP_ON_LAST_PUT)
			r->refcount++;
	}
}

/* tdp_mmu_zap_root(): passes of decreasing granularity (4K, 2M, 1G, root level;
 * ~v6.9+) so that each freed subtree is small. Never flushes. */
static void zap_root_passes(struct tdp_vm *vm, struct tdp_root *root, bool shared, bool can_yield)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_ZAP_ROOTS, ROOTS_ONE, 0, vm_max_gfn(vm), shared);
	op.one_root = root->id;
	op.can_yield = can_yield;
	/* the root is being put: walk it even at refcount 0 */
	op.nroots = 1;
	op.root_ids[0] = root->id;
	root->refcount++;
	op.cur = 0;
	tdp_op_run(vm, &op, false);
	root = tdp_mmu_find_root(vm, op.one_root);
	if (root)
		root->refcount--;
}

void tdp_mmu_zap_whole_root(struct tdp_vm *vm, struct tdp_root *root, bool shared)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_ZAP_ROOTS, ROOTS_ONE, 0, vm_max_gfn(vm), shared);
	op.one_root = root->id;
	tdp_op_run(vm, &op, false);
}

/* kvm_tdp_mmu_zap_invalidated_roots(): zap each scheduled root in full, with NO
 * TLB flush (the deferred-flush argument of the seed thread), then drop the TDP
 * MMU's reference. */
void tdp_mmu_zap_invalidated(struct tdp_vm *vm, bool shared)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm_max_gfn(vm), shared);
	tdp_op_run(vm, &op, false);
}
