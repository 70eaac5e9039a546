/* fuzz.c — the seeded random explorer behind `tdpfast fuzz`: it drives one VM
 * through random interleavings of guest accesses, vCPU scheduling, faults, zaps,
 * stepped operations stopped at yield points, MMU-notifier invalidations, page
 * migration, memslot changes, dirty logging, aging and root churn, and stops at the
 * first violation. Every step goes through the public API, so the VM's event log is
 * a replayable reproducer. */
#include <string.h>
#include "vm.h"

#define FUZZ_GFNS 2048u          /* two memslots of 1024 gfns: 2M regions, one 1G region */
#define FUZZ_SLOT_PAGES 1024u

struct fuzz {
	tdp_vm *vm;
	u64 rng;
	int slot_id[2];
	u32 ops[8];
	int nops;
};

static u64 rnd(struct fuzz *f)
{
	u64 x = f->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return f->rng = x;
}

static u64 below(struct fuzz *f, u64 n) { return n ? rnd(f) % n : 0; }

static u64 pick_gfn(struct fuzz *f)
{
	/* Mostly a small hot set, so that zaps and accesses meet. */
	if (below(f, 4))
		return (below(f, 4) * 512) + below(f, 8);
	return below(f, FUZZ_GFNS);
}

static void pick_range(struct fuzz *f, u64 *s, u64 *e)
{
	u64 a = pick_gfn(f);
	u64 len = below(f, 3) == 0 ? 1 + below(f, 1024) : 1 + below(f, 16);
	*s = a;
	*e = a + len > FUZZ_GFNS ? FUZZ_GFNS : a + len;
}

static void add_slot(struct fuzz *f, int i)
{
	u32 flags = below(f, 8) == 0 ? TDP_SLOT_READONLY : 0;
	int level = 1 + (int)below(f, 3);
	int id;
	if (tdp_memslot_add(f->vm, (u64)i * FUZZ_SLOT_PAGES, FUZZ_SLOT_PAGES, flags, level, &id) == 0)
		f->slot_id[i] = id;
}

static int any_vcpu(struct fuzz *f) { return (int)below(f, (u64)f->vm->cfg.nvcpus); }
static int any_pcpu(struct fuzz *f) { return (int)below(f, (u64)f->vm->cfg.npcpus); }

static void step_ops(struct fuzz *f)
{
	int n;
	u32 ids[16];
	tdp_op_list(f->vm, ids, 16, &n);
	if (n <= 0)
		return;
	u32 id = ids[below(f, (u64)(n < 16 ? n : 16))];
	int done, res;
	tdp_op_step(f->vm, id, &done, &res);
}

static void one_op(struct fuzz *f)
{
	tdp_vm *vm = f->vm;
	u64 s, e, r = below(f, 1000);
	int flag, v;
	u32 id;

	if (r < 320) {
		v = any_vcpu(f);
		struct tdp_access_result out;
		if (vm->vcpus[v].mode == TDP_OUTSIDE_GUEST) {
			tdp_vcpu_run(vm, v, any_pcpu(f));
			return;
		}
		int acc = below(f, 10) < 6 ? TDP_ACC_READ : (below(f, 4) ? TDP_ACC_WRITE : TDP_ACC_EXEC);
		tdp_access(vm, v, pick_gfn(f) << 12 | below(f, 4096), acc, &out);
	} else if (r < 420) {
		tdp_vcpu_run(vm, any_vcpu(f), any_pcpu(f));
	} else if (r < 440) {
		tdp_vcpu_exit(vm, any_vcpu(f));
	} else if (r < 500) {
		pick_range(f, &s, &e);
		tdp_host_unmap(vm, s, e);
	} else if (r < 540) {
		u64 nw;
		tdp_host_migrate(vm, pick_gfn(f), &nw);
	} else if (r < 570) {
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0 && tdp_memslot_delete(vm, f->slot_id[i]) == 0)
			f->slot_id[i] = -1;
		if (f->slot_id[i] < 0)
			add_slot(f, i);
	} else if (r < 610) {
		/* kvm_zap_gfn_range(): zap, then flush before unlocking. */
		pick_range(f, &s, &e);
		if (tdp_mmu_zap_gfn_range(vm, s, e, (int)below(f, 2), &flag) == 0 && flag)
			tdp_flush_remote_tlbs_range(vm, s, e - s);
	} else if (r < 640) {
		u64 g = pick_gfn(f);
		int level = 1 + (int)below(f, 3);
		g &= ~(pages_per_level(level) - 1);
		tdp_mmu_map(vm, 0, g, level, &flag);
	} else if (r < 660) {
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0) {
			struct memslot *sl = NULL;
			for (int k = 0; k < vm->nslots; k++)
				if (vm->slots[k].used && vm->slots[k].id == f->slot_id[i])
					sl = &vm->slots[k];
			tdp_dirty_log_enable(vm, f->slot_id[i], sl && !(sl->flags & TDP_SLOT_DIRTY_LOG));
		}
	} else if (r < 690) {
		u64 bm[FUZZ_SLOT_PAGES / 64], nd;
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0)
			tdp_dirty_log_get(vm, f->slot_id[i], bm, FUZZ_SLOT_PAGES / 64, &nd);
	} else if (r < 720) {
		pick_range(f, &s, &e);
		tdp_host_age(vm, s, e, &flag);
	} else if (r < 740) {
		tdp_write_protect_gfn(vm, pick_gfn(f), (int)below(f, 2));
	} else if (r < 760) {
		/* Root churn: a root of another role (SMM), mapped, later put. */
		if (below(f, 2)) {
			if (tdp_mmu_alloc_root(vm, 1, 0, &id) == 0) {
				pick_range(f, &s, &e);
				u64 m;
				tdp_mmu_map_range(vm, id, s, e, 1, &m);
			}
		} else {
			for (int k = vm->nroots - 1; k >= 0; k--)
				if (vm->roots[k].as_id == 1) {
					u32 rid = vm->roots[k].id;
					/* Roots are torn down the way KVM does it: all of
					 * them, with the request to free obsolete roots. */
					if (!vm->roots[k].invalid)
						tdp_mmu_zap_all_fast(vm);
					tdp_mmu_put_root(vm, rid);
					break;
				}
		}
	} else if (r < 850) {
		if (below(f, 3) == 0 || !vm->nops) {
			int kind = 1 + (int)below(f, 9);
			u64 a = 0, b = 0, c = 0;
			pick_range(f, &a, &b);
			if (kind == TDP_OP_DELETE_MEMSLOT) {
				int i = (int)below(f, 2);
				if (f->slot_id[i] < 0)
					return;
				a = (u64)f->slot_id[i];
			} else if (kind == TDP_OP_SPLIT) {
				c = 1 + below(f, 2);
			} else if (kind == TDP_OP_ZAP_GFN_RANGE) {
				c = below(f, 2);
			} else if (kind == TDP_OP_NX_RECOVER) {
				a = 1 + below(f, 4);
			}
			tdp_op_start(vm, kind, a, b, c, 1 + (int)below(f, 600), &id);
		} else {
			step_ops(f);
		}
	} else if (r < 870) {
		int z;
		tdp_mmu_recover_nx_huge_pages(vm, 1 + (int)below(f, 4), &z);
	} else if (r < 890) {
		pick_range(f, &s, &e);
		tdp_mmu_split_huge_pages(vm, s, e, 1);
	} else if (r < 910) {
		pick_range(f, &s, &e);
		tdp_mmu_recover_huge_pages(vm, s & ~511ull, (e + 511) & ~511ull, &flag);
	} else if (r < 925) {
		/* kvm_mmu_zap_sp() as the NX recovery worker does, with its flush. */
		u32 root = tdp_mmu_newest_root(vm);
		if (root && tdp_mmu_zap_sp(vm, root, pick_gfn(f), 1 + (int)below(f, 2), &flag) == 0 && flag)
			tdp_flush_remote_tlbs(vm);
	} else if (r < 940) {
		tdp_flush_remote_tlbs(vm);
	} else if (r < 950) {
		tdp_synchronize_rcu(vm);
	} else if (r < 975) {
		/* Finish a stepped operation, as every one eventually does. */
		while (vm->nops) {
			int done = 0, res;
			if (tdp_op_step(vm, vm->ops[0]->id, &done, &res))
				break;
		}
	} else {
		struct tdp_access_result out;
		v = any_vcpu(f);
		if (vm->vcpus[v].mode != TDP_OUTSIDE_GUEST)
			tdp_access(vm, v, pick_gfn(f) << 12, TDP_ACC_WRITE, &out);
	}
}

int tdp_fuzz(tdp_vm *vm, uint64_t seed, uint64_t max_ops, uint64_t *ops_done)
{
	struct fuzz f = {.vm = vm, .rng = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull};
	u64 n;

	f.slot_id[0] = f.slot_id[1] = -1;
	if (f.rng == 0)
		f.rng = 1;
	if (vm->cfg.maxphyaddr < 24)
		return vm_err(vm, TDP_EINVAL, "maxphyaddr too small for the explorer");
	add_slot(&f, 0);
	add_slot(&f, 1);
	for (n = 0; n < max_ops && !vm->nviol; n++)
		one_op(&f);
	*ops_done = n;
	return 0;
}
