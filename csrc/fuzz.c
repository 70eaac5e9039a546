/* fuzz.c — the seeded random explorer behind `tdpfast fuzz`: it drives one VM
 * through random interleavings of guest accesses, vCPU scheduling, faults, zaps,
 * stepped operations stopped at yield points, MMU-notifier invalidations, page
 * migration, memslot changes, dirty logging, aging and root churn, and stops at the
 * first violation. Every step goes through the public API, so the VM's event log is
 * a replayable reproducer.
 *
 * Grey-box, without knowing any bug: picks return to gfns the guest touched lately;
 * an operation stopped at a yield point is raced by host events and accesses on its
 * range; and when an access hits a cached translation that the vCPU's tables no
 * longer give (a hazard, probed in checker.c), the host changes that gfn's page and the
 * guest touches it again, so a missing flush shows up at once. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

/* Two memslots: 4 MiB at gfn 0, and 1 GiB at gfn 2^18 (room for 1G pages). */
#define FUZZ_SLOT0_PAGES 1024u
#define FUZZ_SLOT1_BASE (1u << 18)
#define FUZZ_SLOT1_PAGES (1u << 18)
#define FUZZ_GFNS (FUZZ_SLOT1_BASE + FUZZ_SLOT1_PAGES)
#define FUZZ_BITMAP_WORDS (FUZZ_SLOT1_PAGES / 64)

enum fuzz_kind { FZ_ACCESS, FZ_RUN, FZ_EXIT, FZ_UNMAP, FZ_MIGRATE, FZ_MEMSLOT, FZ_ZAP, FZ_MAP, FZ_DIRTY_TOGGLE,
		 FZ_DIRTY_GET, FZ_AGE, FZ_WRTRACK, FZ_ROOTS, FZ_OP, FZ_NX, FZ_SPLIT, FZ_RECOVER, FZ_ZAP_SP,
		 FZ_FLUSH, FZ_RCU, FZ_FINISH, FZ_WRITE, FZ_NKINDS };
/* Base weights (per mille); every VM of the explorer scales them at random so that
 * some runs flush rarely and others churn roots or memslots a lot. */
static const int base_weight[FZ_NKINDS] = {300, 60, 15, 40, 30, 12, 35, 30, 20, 25, 30, 20, 25, 100, 25, 15, 15,
					   12, 12, 10, 25, 25};
/* Long operations started stepwise (by enum tdp_op_kind), scaled per VM the same
 * way: mostly the zaps that walk several roots, and the zaps of invalidated roots
 * that leave emptied tables behind them while they yield. */
static const int base_op_weight[TDP_OP_LAST + 1] = {0, 300, 300, 100, 120, 33, 33, 33, 33, 33, 150};

/* The operation part of a coverage signature (coverage.h): what the explorer is
 * doing when an SPTE changes. One code per kind of step above, then a stepped
 * operation's start and steps (by enum tdp_op_kind), the racers that run while a
 * stepped operation or a two-half fault is stopped, and the hazard chases. */
enum cov_op_code {
	COV_OP_START = FZ_NKINDS,                 /* + enum tdp_op_kind */
	COV_OP_STEP = COV_OP_START + TDP_OP_LAST + 1, /* + enum tdp_op_kind */
	COV_OP_RACE_YIELD = COV_OP_STEP + TDP_OP_LAST + 1,
	COV_OP_RACE_FAULT,
	COV_OP_CHASE,
	COV_OP_CHASE_WEAK,
	COV_OP_NESTED,
	COV_OP_END
};
_Static_assert(COV_OP_END <= COV_OPS, "every explorer operation has its own coverage code");

#define RECENT 64u   /* gfns the guest touched lately */
#define FOCUS_OPS 32 /* picks stay near a hazard for this many operations */

struct fuzz {
	tdp_vm *vm;
	u64 rng;
	int slot_id[2];
	int weight[FZ_NKINDS];
	int total;
	int yield_max;
	u64 recent[RECENT]; /* picks reuse them, and racers at a yield aim at them */
	unsigned nrecent;
	int locality;  /* per VM: how often a pick reuses a recent gfn (of 16) */
	int exec_pct;  /* per VM: instruction fetches among guest accesses (%) */
	u64 focus;     /* a gfn where the TLB and the tables disagree ... */
	int focus_left; /* ... and for how many more operations picks stay near it */
	int op_weight[TDP_OP_LAST + 1]; /* per VM: which long operations are stepped */
	int op_total;
	u64 dirty_bitmap[FUZZ_BITMAP_WORDS]; /* where a harvest of the dirty log goes */
	u64 guest_cr3; /* nested VMs: the guest's top page table (0: none yet) */
};

/* xorshift64: the explorer's random streams. */
static u64 xorshift(u64 *s)
{
	u64 x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static u64 rnd(struct fuzz *f) { return xorshift(&f->rng); }

static u64 below(struct fuzz *f, u64 n) { return n ? rnd(f) % n : 0; }

/* Hot 2M regions: two in slot 0, two in slot 1 (one of them at the 1G boundary). */
static const u64 hot_region[4] = {0, 512, FUZZ_SLOT1_BASE, FUZZ_SLOT1_BASE + 512};

static u64 pick_gfn(struct fuzz *f)
{
	/* Near a disagreement between the TLB and the tables: the gfn itself, or
	 * another in its 2M region. */
	if (f->focus_left > 0 && below(f, 4)) {
		f->focus_left--;
		return below(f, 2) ? f->focus : (f->focus & ~511ull) + below(f, 512);
	}
	/* Mostly a small hot set, so that zaps and accesses meet. */
	if (f->nrecent && (int)below(f, 16) < f->locality)
		return f->recent[below(f, f->nrecent < RECENT ? f->nrecent : RECENT)];
	u64 r = below(f, 8);
	if (r < 5)
		return hot_region[below(f, 4)] + below(f, 8);
	if (r < 7)
		return hot_region[below(f, 4)] + below(f, 512);
	return below(f, 2) ? below(f, FUZZ_SLOT0_PAGES + 512) : FUZZ_SLOT1_BASE + below(f, FUZZ_SLOT1_PAGES);
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
	/* 1G pages are rare: splitting one for dirty logging touches 262,144 SPTEs. */
	int level = below(f, 16) == 0 ? 3 : 1 + (int)below(f, 2);
	int id;
	if (tdp_memslot_add(f->vm, i ? FUZZ_SLOT1_BASE : 0, i ? FUZZ_SLOT1_PAGES : FUZZ_SLOT0_PAGES, flags, level,
			    &id) == 0)
		f->slot_id[i] = id;
}

/* Index of the weight that r (0 <= r < the sum) falls in; `fallback` past the end. */
static int pick_weighted(const int *w, int n, int r, int fallback)
{
	for (int k = 0; k < n; r -= w[k++])
		if (r < w[k])
			return k;
	return fallback;
}

static int pick_kind(struct fuzz *f)
{
	return pick_weighted(f->weight, FZ_NKINDS, (int)below(f, (u64)f->total), FZ_ACCESS);
}

/* Swarm testing: each VM scales a base weight by x0, x1/8, x1/4, x1/2, x1 or x2. */
static int swarm_scale(struct fuzz *f, int base)
{
	static const int mult8[6] = {0, 1, 2, 4, 8, 16};
	return base * mult8[below(f, 6)] / 8;
}

static int any_vcpu(struct fuzz *f) { return (int)below(f, (u64)f->vm->cfg.nvcpus); }
static int any_pcpu(struct fuzz *f) { return (int)below(f, (u64)f->vm->cfg.npcpus); }

/* The first vCPU in guest mode from v on (wrapping), or -1. */
static int in_guest_from(tdp_vm *vm, int v)
{
	for (int i = 0; i < vm->cfg.nvcpus; i++, v = (v + 1) % vm->cfg.nvcpus)
		if (vm->vcpus[v].mode != TDP_OUTSIDE_GUEST)
			return v;
	return -1;
}

/* Between the halves of a fault on gfn (KVM: after kvm_faultin_pfn(), before mmu_lock):
 * what can make it stale -- the host unmapping or migrating the page, the roots
 * invalidated (a fast zap), the fault's memslot deleted -- or nothing. */
static void race_fault(struct fuzz *f, u64 gfn)
{
	u64 nw;
	f->vm->cov.op = COV_OP_RACE_FAULT;
	switch (below(f, 5)) {
	case 0: tdp_host_unmap(f->vm, gfn, gfn + 1); break;
	case 1: tdp_host_migrate(f->vm, gfn, &nw); break;
	case 2: tdp_mmu_zap_all_fast(f->vm); break;
	case 3: {
		struct memslot *s = vm_slot_of(f->vm, gfn);
		for (int i = 0; i < 2 && s && below(f, 4) == 0; i++)
			if (f->slot_id[i] == s->id && tdp_memslot_delete(f->vm, f->slot_id[i]) == 0) {
				f->slot_id[i] = -1; /* added again by a later memslot operation */
				break;
			}
		break;
	}
	default: break;
	}
}

static void step_ops(struct fuzz *f)
{
	int n;
	u32 ids[16];
	tdp_op_list(f->vm, ids, 16, &n);
	if (n <= 0)
		return;
	u32 id = ids[below(f, (u64)(n < 16 ? n : 16))];
	int done, res;
	struct vm_op *o = vm_find_op(f->vm, id, NULL);
	if (o)
		f->vm->cov.op = (u8)(COV_OP_STEP + o->kind);
	if (tdp_op_step(f->vm, id, &done, &res) || done || below(f, 4) == 0)
		return;
	/* Stopped at a yield point with mmu_lock dropped: other threads race on the
	 * gfns the operation is working on. */
	f->vm->cov.op = COV_OP_RACE_YIELD;
	o = vm_find_op(f->vm, id, NULL);
	if (!o || o->kind == TDP_OP_DELETE_MEMSLOT || o->kind == TDP_OP_PAGE_FAULT)
		return;
	u64 lo = o->a, hi = o->b;
	if (o->kind == TDP_OP_NX_RECOVER) {
		/* NX recovery's gfns: those of the SPs it zapped since its last flush. */
		if (!o->op.flush_pending_range)
			return;
		lo = o->op.chg_lo;
		hi = o->op.chg_hi;
	}
	if (hi <= lo)
		return;
	u64 g = lo + below(f, hi - lo), nw;
	if (below(f, 4)) {
		/* a gfn the guest touched lately, if one is in range */
		unsigned m = f->nrecent < RECENT ? f->nrecent : RECENT, i0 = (unsigned)below(f, RECENT);
		for (unsigned k = 0; k < m; k++) {
			u64 r = f->recent[(i0 + k) % m];
			if (r >= lo && r < hi) {
				g = r;
				break;
			}
		}
	}
	for (int k = 0, n = 1 + (int)below(f, 4); k < n; k++) {
		struct tdp_access_result out;
		int v = any_vcpu(f);
		switch (below(f, k ? 8 : 3)) {
		case 0: tdp_host_unmap(f->vm, g, g + 1); break;
		case 1: tdp_host_migrate(f->vm, g, &nw); break;
		default:
			if ((v = in_guest_from(f->vm, v)) >= 0)
				tdp_access(f->vm, v, g << 12, below(f, 2) ? TDP_ACC_READ : TDP_ACC_WRITE, &out);
		}
	}
}

/* A guest access hit a cached translation that its tables no longer give: the
 * host changing that gfn's page, then the guest touching it again, shows whether
 * a flush still stands between the two. */
static void chase_hazard(struct fuzz *f)
{
	tdp_vm *vm = f->vm;
	u64 g = vm->hazard_gfn, nw;
	int v = vm->hazard_vcpu;
	struct tdp_access_result out;

	vm->hazard = false;
	vm->cov.op = COV_OP_CHASE;
	f->focus = g;
	f->focus_left = FOCUS_OPS;
	if (below(f, 4) == 0)
		return;
	if (below(f, 2))
		tdp_host_migrate(vm, g, &nw);
	else
		tdp_host_unmap(vm, g, g + 1);
	if (vm->vcpus[v].mode != TDP_OUTSIDE_GUEST)
		tdp_access(vm, v, g << 12, below(f, 4) ? TDP_ACC_READ : TDP_ACC_WRITE, &out);
}

/* The same page, cached at another size than the tables now map it: does the
 * flush after zapping another gfn of the larger of the two pages (a sub-range
 * kvm_zap_gfn_range(), which flushes just its range) also drop this entry? The
 * guest then touches the gfn again; a strong hazard there is chased as above. */
static void chase_weak_hazard(struct fuzz *f)
{
	tdp_vm *vm = f->vm;
	u64 g = vm->hazard_gfn, s;
	int v = vm->hazard_vcpu, flag;
	struct tdp_access_result out;

	vm->hazard_weak = false;
	vm->cov.op = COV_OP_CHASE_WEAK;
	if (f->focus_left <= 0) {
		f->focus = g;
		f->focus_left = FOCUS_OPS;
	}
	if (below(f, 2))
		return;
	s = (g & ~511ull) + below(f, 512);
	if (s == g || tdp_kvm_zap_gfn_range(vm, s, s + 1, 0, &flag))
		return;
	if (vm->vcpus[v].mode != TDP_OUTSIDE_GUEST)
		tdp_access(vm, v, g << 12, TDP_ACC_READ, &out);
}

static void one_op(struct fuzz *f)
{
	tdp_vm *vm = f->vm;
	u64 s, e;
	int flag, v, kind = pick_kind(f);
	u32 id;

	vm->cov.op = (u8)kind;

	if (kind == FZ_ACCESS) {
		v = any_vcpu(f);
		struct tdp_access_result out;
		if (vm->vcpus[v].mode == TDP_OUTSIDE_GUEST) {
			tdp_vcpu_run(vm, v, any_pcpu(f));
			return;
		}
		u64 r = below(f, 100);
		int acc = r < (u64)f->exec_pct ? TDP_ACC_EXEC : r < 60 ? TDP_ACC_READ : TDP_ACC_WRITE;
		u64 g = pick_gfn(f);
		f->recent[f->nrecent++ % RECENT] = g;
		tdp_access(vm, v, g << 12 | below(f, 4096), acc, &out);
	} else if (kind == FZ_RUN) {
		tdp_vcpu_run(vm, any_vcpu(f), any_pcpu(f));
	} else if (kind == FZ_EXIT) {
		tdp_vcpu_exit(vm, any_vcpu(f));
	} else if (kind == FZ_UNMAP) {
		pick_range(f, &s, &e);
		tdp_host_unmap(vm, s, e);
	} else if (kind == FZ_MIGRATE) {
		u64 nw;
		tdp_host_migrate(vm, pick_gfn(f), &nw);
	} else if (kind == FZ_MEMSLOT) {
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0 && tdp_memslot_delete(vm, f->slot_id[i]) == 0)
			f->slot_id[i] = -1;
		if (f->slot_id[i] < 0)
			add_slot(f, i);
	} else if (kind == FZ_ZAP) {
		/* kvm_zap_gfn_range(): zap, then flush before unlocking. */
		pick_range(f, &s, &e);
		tdp_kvm_zap_gfn_range(vm, s, e, (int)below(f, 2), &flag);
	} else if (kind == FZ_MAP) {
		u64 g = pick_gfn(f);
		int level = 1 + (int)below(f, 3);
		g &= ~(pages_per_level(level) - 1);
		if (level == 1 && below(f, 2)) {
			/* A run of small pages, as dirty logging or the NX mitigation leave. */
			u64 m, end = g + 1 + below(f, 16);
			tdp_mmu_map_range(vm, 0, g, end < FUZZ_GFNS ? end : FUZZ_GFNS, 1, &m);
		} else {
			tdp_mmu_map(vm, 0, g, level, &flag);
		}
	} else if (kind == FZ_DIRTY_TOGGLE) {
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0) {
			struct memslot *sl = NULL;
			for (int k = 0; k < vm->nslots; k++)
				if (vm->slots[k].used && vm->slots[k].id == f->slot_id[i])
					sl = &vm->slots[k];
			tdp_dirty_log_enable(vm, f->slot_id[i], sl && !(sl->flags & TDP_SLOT_DIRTY_LOG));
		}
	} else if (kind == FZ_DIRTY_GET) {
		u64 nd;
		int i = (int)below(f, 2);
		if (f->slot_id[i] >= 0)
			tdp_dirty_log_get(vm, f->slot_id[i], f->dirty_bitmap, FUZZ_BITMAP_WORDS, &nd);
	} else if (kind == FZ_AGE) {
		pick_range(f, &s, &e);
		tdp_host_age(vm, s, e, &flag);
	} else if (kind == FZ_WRTRACK) {
		tdp_write_protect_gfn(vm, pick_gfn(f), (int)below(f, 2));
	} else if (kind == FZ_ROOTS) {
		/* Root churn: a root of another role (SMM), mapped, later put. */
		if (below(f, 2)) {
			/* Sometimes right after a fast zap, before the vCPUs reload theirs:
			 * then the vCPUs' new root is the newest, walked first. */
			if (below(f, 2))
				tdp_mmu_zap_all_fast(vm);
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
	} else if (kind == FZ_OP) {
		if (below(f, 3) == 0 || !vm->nops) {
			/* Mostly the zaps that run over several roots. */
			int okind = pick_weighted(f->op_weight, TDP_OP_LAST + 1,
						  (int)below(f, (u64)f->op_total + 1), TDP_OP_ZAP_GFN_RANGE);
			u64 a = 0, b = 0, c = 0;
			pick_range(f, &a, &b);
			if (okind == TDP_OP_DELETE_MEMSLOT) {
				int i = (int)below(f, 2);
				if (f->slot_id[i] < 0)
					return;
				a = (u64)f->slot_id[i];
			} else if (okind == TDP_OP_SPLIT) {
				c = 1 + below(f, 2);
			} else if (okind == TDP_OP_ZAP_GFN_RANGE) {
				c = below(f, 2);
			} else if (okind == TDP_OP_NX_RECOVER) {
				a = 1 + below(f, 4);
			} else if (okind == TDP_OP_PAGE_FAULT) {
				/* A fault in two halves by a vCPU with a root; the host, memslots and
				 * roots change under it before its second half (race_fault()). */
				a = (u64)any_vcpu(f);
				b = pick_gfn(f);
				c = below(f, 8) < 5 ? TDP_ACC_WRITE : below(f, 2) ? TDP_ACC_READ : TDP_ACC_EXEC;
			}
			/* NX recovery checks for a yield after each huge page it zaps (KVM's
			 * cond_resched_rwlock_write() per SP): its yields must fall inside its
			 * batch of a pages, or it would never stop with a flush pending. */
			int yield_every = okind == TDP_OP_NX_RECOVER ? 1 + (int)below(f, a + 1)
								     : 1 + (int)below(f, (u64)f->yield_max);
			vm->cov.op = (u8)(COV_OP_START + okind);
			if (tdp_op_start(vm, okind, a, b, c, yield_every, &id) == 0 &&
			    okind == TDP_OP_PAGE_FAULT && below(f, 2))
				race_fault(f, b);
		} else {
			step_ops(f);
		}
	} else if (kind == FZ_NX) {
		int z;
		tdp_mmu_recover_nx_huge_pages(vm, 1 + (int)below(f, 1 + vm->nnx), &z);
	} else if (kind == FZ_SPLIT) {
		pick_range(f, &s, &e);
		tdp_mmu_split_huge_pages(vm, s, e, 1);
	} else if (kind == FZ_RECOVER) {
		pick_range(f, &s, &e);
		tdp_mmu_recover_huge_pages(vm, s & ~511ull, (e + 511) & ~511ull, &flag);
	} else if (kind == FZ_ZAP_SP) {
		/* kvm_mmu_zap_sp() as the NX recovery worker does, with its flush. */
		u32 root = tdp_mmu_newest_root(vm);
		if (root && tdp_mmu_zap_sp(vm, root, pick_gfn(f), 1 + (int)below(f, 2), &flag) == 0 && flag)
			tdp_flush_remote_tlbs(vm);
	} else if (kind == FZ_FLUSH) {
		tdp_flush_remote_tlbs(vm);
	} else if (kind == FZ_RCU) {
		tdp_synchronize_rcu(vm);
	} else if (kind == FZ_FINISH) {
		/* Finish a stepped operation, as every one eventually does. */
		while (vm->nops) {
			int done = 0, res;
			if (tdp_op_step(vm, vm->ops[0]->id, &done, &res))
				break;
		}
	} else if (kind == FZ_WRITE) {
		struct tdp_access_result out;
		v = any_vcpu(f);
		if (vm->vcpus[v].mode != TDP_OUTSIDE_GUEST)
			tdp_access(vm, v, pick_gfn(f) << 12, TDP_ACC_WRITE, &out);
	}
}

/* Nested VMs (every 4th, seeds 2, 6, 10, ...): about once in NESTED_EVERY operations a
 * vCPU in guest mode enters L2 or goes back to L1 (nested.c), or the guest's own paging
 * acts (guest_paging.c): a vCPU turns paging on, the guest maps or unmaps a page of its
 * tables, a guest-linear access, INVLPG, INVPCID or MOV to CR3. These picks come from
 * their own stream, so every other pick is the one the VM makes without them, and they
 * count as operations (a VM still runs its number of operations). */
#define NESTED_EVERY 8
#define GUEST_POOL 896u   /* the guest's page tables: gfns 896..1023 of slot 0 */
#define GUEST_GVA 0x7f0000000000ull
static bool nested_vm(u64 seed) { return seed % 4 == 2; }

/* A burst of guest-linear accesses to one page (so the TLB's entry gets used). When
 * one hits an entry the guest's tables no longer give (allowed: the guest has not
 * flushed it), the guest does: it flushes the vCPU the paravirtual way while it is
 * preempted, and the vCPU touches the page again, so a flush KVM owes and drops shows
 * up at once (a guest-side hazard chase). */
static void guest_touch(struct fuzz *f, int v, u64 gva, u64 r)
{
	tdp_vm *vm = f->vm;
	struct vcpu *vc = &vm->vcpus[v];
	struct tdp_guest_access_result out;
	for (u64 k = 0, n = 1 + (r >> 62); k < n && vc->mode != TDP_OUTSIDE_GUEST && vc->g.levels; k++) {
		int acc = (r >> (44 + k)) % 8 < 3 ? TDP_ACC_WRITE : (r >> (44 + k)) % 8 == 3 ? TDP_ACC_EXEC : TDP_ACC_READ;
		if (tdp_guest_access(vm, v, gva | ((r >> 53) & 0xff8), acc, &out))
			break;
		if (out.stale_guest) {
			int p = vc->pcpu;
			vm->cov.op = COV_OP_CHASE;
			if (vc->in_l2 && vm->cfg.arch == TDP_VMX) {
				/* L2's translation: L1 flushes it with INVVPID on L2's VPID. */
				if (tdp_nested_exit(vm, v) == 0 &&
				    tdp_nested_invvpid(vm, v, TDP_INVVPID_SINGLE_CONTEXT, 1, 0) == 0 &&
				    tdp_nested_enter(vm, v) == 0)
					tdp_guest_access(vm, v, gva, acc, &out);
			} else if (tdp_vcpu_exit(vm, v) == 0 && tdp_guest_pv_flush(vm, v) == 0 &&
				   tdp_vcpu_run(vm, v, p) == 0) {
				tdp_guest_access(vm, v, gva, acc, &out);
			}
			break;
		}
	}
}

static void guest_op(struct fuzz *f, u64 *nrng, int v)
{
	tdp_vm *vm = f->vm;
	struct vcpu *vc = &vm->vcpus[v];
	u64 r = xorshift(nrng);
	u64 gva = GUEST_GVA + ((r >> 20) % 16) * 4096;
	if (!f->guest_cr3) {
		if (tdp_guest_set_pt_pool(vm, GUEST_POOL, FUZZ_SLOT0_PAGES - GUEST_POOL) == 0)
			tdp_guest_new_table(vm, &f->guest_cr3);
		return;
	}
	if (!vc->g.levels) {
		int pcide = (int)((r >> 9) & 1);
		if (tdp_guest_set_paging(vm, v, 4, pcide) == 0)
			tdp_guest_load_cr3(vm, v, f->guest_cr3 << 12 | (pcide ? (r >> 12) % 4 : 0));
		return;
	}
	switch ((r >> 8) % 10) {
	case 0: case 1: case 2: { /* the guest's kernel maps a page (a 4K page, or the 2M one in slot 1) */
		if ((r >> 40) % 8 == 0) {
			tdp_guest_map(vm, f->guest_cr3, 4, GUEST_GVA + (1ull << 30), FUZZ_SLOT1_BASE << 12, 2, 1);
			break;
		}
		u64 g = hot_region[(r >> 30) % 4] + (r >> 32) % 512;
		tdp_guest_unmap(vm, f->guest_cr3, 4, gva, &(int){0});
		tdp_guest_map(vm, f->guest_cr3, 4, gva, g << 12, 1, (u32)((r >> 44) & 7)); /* W, NX, G */
		if ((r >> 47) & 1)
			guest_touch(f, v, gva, r); /* the old translation may still be cached */
		break;
	}
	case 3:
		if ((r >> 16) & 1)
			tdp_guest_unmap(vm, f->guest_cr3, 4, gva, &(int){0});
		else
			tdp_guest_invlpg(vm, v, gva);
		break;
	case 4: { /* MOV to CR3: another PCID, with or without bit 63 */
		u64 pcid = vc->g.pcide ? (r >> 12) % 4 : 0;
		u64 noflush = vc->g.pcide && ((r >> 14) & 1) ? 1ull << 63 : 0;
		tdp_guest_load_cr3(vm, v, f->guest_cr3 << 12 | pcid | noflush);
		break;
	}
	case 5:
		if (vc->nested_used && !vc->in_l2 && vm->cfg.arch == TDP_VMX && (r >> 18) % 2)
			tdp_nested_invvpid(vm, v, (int)((r >> 16) % 4), 1, gva); /* L1 flushes L2's VPID */
		else
			tdp_guest_invpcid(vm, v, (int)((r >> 16) % 4), vc->g.pcide ? (u32)((r >> 12) % 4) : 0, gva);
		break;
	default:
		if ((r >> 40) % 8 == 0)
			gva = GUEST_GVA + (1ull << 30) + ((r >> 20) % 512) * 4096;
		guest_touch(f, v, gva, r);
		break;
	}
}

static void nested_op(struct fuzz *f, u64 *nrng)
{
	tdp_vm *vm = f->vm;
	u64 x = xorshift(nrng);
	int v = (int)((x >> 8) % (u64)vm->cfg.nvcpus);
	vm->cov.op = COV_OP_NESTED;
	if (vm->vcpus[v].mode == TDP_OUTSIDE_GUEST) {
		/* The guest flushes a preempted vCPU the paravirtual way. */
		if (vm->vcpus[v].g.levels && (x >> 32) % 2)
			tdp_guest_pv_flush(vm, v);
		return;
	}
	if ((x >> 24) % 4) {
		guest_op(f, nrng, v);
	} else if (vm->vcpus[v].in_l2) {
		tdp_nested_exit(vm, v);
	} else {
		tdp_nested_enter(vm, v);
	}
}

/* splitmix64: neighbouring seeds must not share swarm settings or streams. */
static u64 splitmix(u64 z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

int tdp_fuzz(tdp_vm *vm, uint64_t seed, uint64_t max_ops, uint64_t *ops_done)
{
	return tdp_fuzz_stream(vm, seed, 0, max_ops, ops_done);
}

int tdp_fuzz_stream(tdp_vm *vm, uint64_t seed, uint64_t stream, uint64_t max_ops, uint64_t *ops_done)
{
	struct fuzz f = {.vm = vm, .rng = splitmix(seed)};
	u64 n;

	f.slot_id[0] = f.slot_id[1] = -1;
	if (f.rng == 0)
		f.rng = 1;
	for (int k = 0; k < FZ_NKINDS; k++) {
		/* Some VMs rarely flush, others churn; the guest's own access volume varies too. */
		f.weight[k] = k == FZ_ACCESS ? base_weight[k] << below(&f, 3) : swarm_scale(&f, base_weight[k]);
		f.total += f.weight[k];
	}
	for (int k = 1; k <= TDP_OP_LAST; k++) {
		f.op_weight[k] = swarm_scale(&f, base_op_weight[k]);
		f.op_total += f.op_weight[k];
	}
	f.yield_max = below(&f, 2) ? 64 : 600;
	f.locality = (int)below(&f, 12);
	f.exec_pct = (int[]){2, 10, 10, 40}[below(&f, 4)];
	if (stream) {
		/* Another run of the same swarm settings: the operations differ. */
		f.rng ^= splitmix(stream ^ 0x5bd1e995u);
		if (f.rng == 0)
			f.rng = 1;
	}
	if (vm->cfg.maxphyaddr < 24)
		return vm_err(vm, TDP_EINVAL, "maxphyaddr too small for the explorer");
	add_slot(&f, 0);
	add_slot(&f, 1);
	vm->cov.on = true;
	vm->hazard_probe = true;
	bool nested = nested_vm(seed);
	u64 nrng = splitmix(seed ^ 0x6e65737465644c32ull ^ splitmix(stream)) | 1;
	for (n = 0; n < max_ops && !vm->nviol; n++) {
		if (nested && ((nrng >> 8) & (NESTED_EVERY - 1)) == 0) {
			nested_op(&f, &nrng);
			continue;
		}
		if (nested)
			nrng = splitmix(nrng) | 1;
		one_op(&f);
		if (vm->hazard)
			chase_hazard(&f);
		if (vm->hazard_weak)
			chase_weak_hazard(&f);
	}
	vm->hazard_probe = vm->hazard = vm->hazard_weak = false;
	*ops_done = n;
	return 0;
}

_Static_assert(TDP_COVERAGE_WORDS == COV_WORDS && TDP_COVERAGE_SIGNATURES == COV_SIGNATURES,
	       "the public coverage bitmap is the engine's");

int tdp_fuzz_coverage(tdp_vm *vm, uint64_t *bits, size_t nwords, uint64_t *count)
{
	u64 n = 0;

	if (nwords < COV_WORDS)
		return vm_err(vm, TDP_EINVAL, "coverage needs %d words, got %zu", COV_WORDS, nwords);
	for (int i = 0; i < COV_WORDS; i++) {
		bits[i] = vm->cov.bits[i];
		n += (u64)__builtin_popcountll(vm->cov.bits[i]);
	}
	*count = n;
	return 0;
}
