/* checker.c — the checker: every decision that a guest access used a translation
 * it must no longer have, and the reports that record it. The truth is the
 * memslots (which host page backs a gfn now, whether it may be written, whether
 * dirty logging saw the write) and the frames (a paging-structure-cache entry
 * pointing at a table page that was freed or reused: its generation changed).
 * A hardware TLB may keep any translation until it is flushed (Intel SDM Vol. 3A
 * 4.10.4 "Invalidation of TLBs and Paging-Structure Caches"; AMD APM Vol. 2 5.5
 * "Translation-Lookaside Buffer (TLB)"), so each of these is a missing flush. */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
#endif
#include "vm.h"

static void append(struct tdp_vm *vm, const struct tdp_violation *v)
{
	vm->stats[ST_violations]++;
	if (vm->nviol == vm->viol_cap) {
		size_t ncap = vm->viol_cap ? vm->viol_cap * 2 : 64;
		struct tdp_violation *n = realloc(vm->viol, ncap * sizeof(*n));
		if (!n) {
			vm_drop_record(vm); /* counted in ST_violations; the next call fails */
			return;
		}
		vm->viol = n;
		vm->viol_cap = ncap;
	}
	vm->viol[vm->nviol++] = *v;
}

void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index)
{
	TDP_WARN_ON(vm, (kind < TDP_V_USE_AFTER_FREE || kind > TDP_V_LIVELOCK) && kind < TDP_V_TLB_TAG_ALIAS);
	append(vm, &(struct tdp_violation){
		.kind = kind, .vcpu = v ? v->id : -1, .pcpu = v ? v->pcpu : -1, .gpa = gpa, .tag = tag,
		.stale_pfn = stale_pfn, .expected_pfn = expected_pfn, .event = vm->cur_event,
		.access = access, .level = level, .frame_state = frame_state, .batch_index = batch_index});
}

/* The checker: compare the translation a guest access used with the truth. */
int checker_check_translation(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn,
			     int level, u64 tag, u64 batch_index)
{
	u64 gfn = gpa >> 12;
	struct memslot *s = vm_slot_of(vm, gfn);
	u64 expected = s ? vm_gfn_to_pfn(vm, s, gfn) : NO_PFN;

	if (pfn == expected && access != TDP_ACC_WRITE)
		return 0; /* the common case: nothing to report, so no frame state to name */
	u32 f = hostmem_frame_of(&vm->mem, pfn);
	int st = f == NO_FRAME ? (pfn == expected ? TDP_FRAME_CURRENT : TDP_FRAME_UNUSED) : vm->mem.frames[f].state;

	if (pfn != expected) {
		vm_report(vm, TDP_V_USE_AFTER_FREE, v, gpa, tag, pfn, expected, access, level, st, batch_index);
		return 1;
	}
	if (access == TDP_ACC_WRITE) {
		if (!vm_gfn_writable(vm, s, gfn)) {
			vm_report(vm, TDP_V_STALE_WRITE, v, gpa, tag, pfn, expected, access, level, st, batch_index);
			return 1;
		}
		if ((s->flags & TDP_SLOT_DIRTY_LOG) && !vm_gfn_is_dirty(s, gfn)) {
			vm_report(vm, TDP_V_LOST_DIRTY, v, gpa, tag, pfn, expected, access, level, st, batch_index);
			return 1;
		}
	}
	return 0;
}

/* For the explorer: does the vCPU's current root still give this translation? */
void checker_probe_hazard(struct tdp_vm *vm, struct vcpu *v, u64 gfn, u64 pfn, int cached_level)
{
	struct tdp_root *root = tdp_mmu_find_root(vm, v->root_id);
	int level;
	if (!root)
		return;
	u64 spte = tdp_mmu_lookup(vm, root, gfn, &level, NULL);
	if (is_shadow_present_pte(spte) && is_last_spte(spte, level) &&
	    spte_to_pfn(spte) + (gfn & (pages_per_level(level) - 1)) == pfn) {
		/* The same page, but maybe not the same page size. */
		if (level != cached_level && !vm->hazard_weak) {
			vm->hazard_weak = true;
			vm->hazard_vcpu = v->id;
			vm->hazard_gfn = gfn;
		}
		return;
	}
	vm->hazard = true;
	vm->hazard_vcpu = v->id;
	vm->hazard_gfn = gfn;
}

bool checker_check_psc(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 table_pfn,
		       u32 gen, int level, u64 tag, u64 batch_index)
{
	/* The cached entry names a table page: stale if the frame was freed,
	 * reused (a new generation), or unlinked from its tree. */
	u32 f = hostmem_frame_of(&vm->mem, table_pfn);
	if (f == NO_FRAME || vm->mem.frames[f].gen != gen || vm->mem.frames[f].sp_unlinked ||
	    vm->mem.frames[f].state != FRAME_TABLE) {
		int st = f == NO_FRAME ? TDP_FRAME_UNUSED : vm->mem.frames[f].state;
		vm_report(vm, TDP_V_STALE_PAGE_TABLE, v, gpa, tag, table_pfn, NO_PFN, access, level, st, batch_index);
		return true;
	}
	return false;
}

void checker_report_stale_walk(struct tdp_vm *vm, const struct tdp_root *root, const struct tdp_iter *it)
{
	u32 f = it->stale_frame;
	/* No vCPU: the host's walk; the root and the table's pfn say whose and which. */
	append(vm, &(struct tdp_violation){
		.kind = TDP_V_USE_AFTER_FREE, .vcpu = -1, .pcpu = -1, .gpa = it->gfn << 12, .tag = 0,
		.stale_pfn = hostmem_pfn(&vm->mem, f), .expected_pfn = NO_PFN, .event = vm->cur_event,
		.access = TDP_ACC_READ, .level = it->level, .frame_state = vm->mem.frames[f].state,
		.batch_index = 0, .root = root ? root->id : 0, .spte = 0});
}

void checker_report_walk_livelock(struct tdp_vm *vm, const struct tdp_root *root, const struct tdp_iter *it)
{
	/* No vCPU: a host-side walk (a zap, a write-protect, ...) kept yielding at gfn
	 * without getting past it; `spte` is how many times in a row. */
	append(vm, &(struct tdp_violation){
		.kind = TDP_V_LIVELOCK, .vcpu = -1, .pcpu = -1, .gpa = it->next_last_level_gfn << 12, .tag = 0,
		.stale_pfn = NO_PFN, .expected_pfn = NO_PFN, .event = vm->cur_event, .access = TDP_ACC_READ,
		.level = it->level, .frame_state = 0, .batch_index = 0, .root = root ? root->id : 0,
		.spte = TDP_WALK_STUCK_YIELDS});
}

void checker_report_livelock(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 batch_index)
{
	vm_report(vm, TDP_V_LIVELOCK, v, gpa, 0, NO_PFN, NO_PFN, access, 0, 0, batch_index);
}

/* A combined-TLB hit the guest's tables no longer give. The guest may change its
 * tables and keep using the old translation until it flushes it (Intel SDM Vol. 3A
 * 4.10.4.4 "Delayed Invalidation"): then the guest owes the flush, and it is no
 * violation (counted as guest_stale_hits). But if the guest asked KVM for a flush
 * since the entry was filled (its paravirtual flush, KVM_REQ_TLB_FLUSH_GUEST) and KVM
 * has serviced it, the entry must be gone: KVM owes it. Returns 1 if reported. */
int checker_guest_stale(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn, u32 gseq, u64 tag)
{
	if ((int32_t)(v->g.flush_done - gseq) > 0) {
		vm_report(vm, TDP_V_STALE_GUEST_TRANSLATION, v, gpa, tag, pfn, NO_PFN, access, 1, 0, 0);
		return 1;
	}
	vm->stats[ST_guest_stale_hits]++;
	return 0;
}

/* SVM: VMRUN of v's current VMCB on its pCPU. ASIDs are handed out per pCPU and
 * generation (new_asid(), svm/svm.c), so no two VMCBs that may run on a pCPU without
 * a new ASID hold the same one: two address spaces would share TLB entries (AMD APM
 * Vol. 2 15.16). A VMCB may run without a new ASID when it last ran on this pCPU in
 * its current generation; with per-vCPU tracking (B22) an inactive VMCB takes the
 * vCPU's generation and last pCPU. ASID 0 is the host's (a VMRUN with it is
 * VMEXIT_INVALID). */
void checker_check_asid_alias(struct tdp_vm *vm, struct vcpu *v)
{
	const struct pcpu *pc = &vm->pcpus[v->pcpu];
	if (v->asid == 0) {
		vm_report(vm, TDP_V_TLB_TAG_ALIAS, v, 0, 0, NO_PFN, NO_PFN, TDP_ACC_READ, 0, 0, 0);
		return;
	}
	for (int i = 0; i < vm->cfg.nvcpus; i++) {
		const struct vcpu *u = &vm->vcpus[i];
		for (int k = u == v; k < 2; k++) {
			bool other = k == 1;
			if (other && !u->nested_used)
				continue;
			u32 asid = other ? u->other.asid : u->asid;
			u64 gen = other && vm->pol.per_vmcb_asid ? u->other.asid_generation : u->asid_generation;
			int cpu = other && vm->pol.per_vmcb_asid ? u->other.vmcs_cpu : u->vmcs_cpu;
			if (asid == v->asid && gen == pc->asid_generation && cpu == v->pcpu) {
				vm_report(vm, TDP_V_TLB_TAG_ALIAS, v, 0, v->asid, NO_PFN, NO_PFN, TDP_ACC_READ, 0, 0, 0);
				return;
			}
		}
	}
}

size_t tdp_violation_count(tdp_vm *vm) { return vm->nviol; }

size_t tdp_violations(tdp_vm *vm, struct tdp_violation *out, size_t max)
{
	size_t n = vm->nviol < max ? vm->nviol : max;
	if (n)
		memcpy(out, vm->viol, n * sizeof(*out));
	return n;
}

/* ------------------------------------------------------------------ state invariants
 * What KVM's TDP MMU keeps true of its tables and roots whatever the TLBs hold
 * (mmu/tdp_mmu.c): a guest's stale use of a translation is often only the last
 * consequence of one of these going wrong, many operations earlier. Each is
 * reported once per VM, at the operation that broke it (vm->cur_event), with the
 * root, gfn, level and SPTE where it was seen. */

static int invariant_of(int kind)
{
	switch (kind) {
	case TDP_V_NOTIFIER_RANGE_MAPPED: return TDP_INV_NOTIFIER;
	case TDP_V_DELETED_SLOT_MAPPED:
	case TDP_V_STALE_FAULT_INSTALL: return TDP_INV_MEMSLOT;
	case TDP_V_ROOT_REFCOUNT:
	case TDP_V_LEAKED_TABLE: return TDP_INV_ROOTS;
	case TDP_V_UNLOGGED_WRITABLE: return TDP_INV_DIRTY_LOG;
	default: return TDP_INV_TABLES;
	}
}

static void report_state(struct tdp_vm *vm, int kind, u32 root, u64 gfn, int level, u64 spte, u64 expected)
{
	vm->inv.seen++;
	if (!(vm->cfg.invariants & invariant_of(kind)) || (vm->inv.reported & (1u << kind)))
		return;
	vm->inv.reported |= 1u << kind;
	bool present = is_shadow_present_pte(spte) && kind != TDP_V_LEAF_COUNT && kind != TDP_V_ROOT_REFCOUNT;
	u64 pfn = present ? spte_to_pfn(spte) : NO_PFN;
	u32 f = present ? hostmem_frame_of(&vm->mem, pfn) : NO_FRAME;
	append(vm, &(struct tdp_violation){
		.kind = kind, .vcpu = -1, .pcpu = -1, .gpa = gfn << 12, .tag = 0, .stale_pfn = pfn,
		.expected_pfn = expected, .event = vm->cur_event, .access = TDP_ACC_READ, .level = level,
		.frame_state = f == NO_FRAME ? TDP_FRAME_UNUSED : vm->mem.frames[f].state, .batch_index = 0,
		.root = root, .spte = spte});
}

static u64 backing_of(struct tdp_vm *vm, u64 gfn)
{
	struct memslot *s = vm_slot_of(vm, gfn);
	return s ? vm_gfn_to_pfn(vm, s, gfn) : NO_PFN;
}

/* The first present leaf of table f (entries of `level`, base gfn `base`) that
 * overlaps [start, end); only present non-leaf SPTEs that point at a table are
 * followed (the well-formedness check reports the others). */
static bool find_leaf(struct tdp_vm *vm, u32 f, int level, u64 base, u64 start, u64 end, u64 *gfn, int *lvl,
		      u64 *spte)
{
	const u64 *t = hostmem_table_read(&vm->mem, f);
	u64 span = pages_per_level(level);
	int i = start > base ? (int)((start - base) / span) : 0;

	for (; i < 512 && base + (u64)i * span < end; i++) {
		u64 s = t[i];
		if (!is_shadow_present_pte(s))
			continue;
		if (is_last_spte(s, level)) {
			*gfn = base + (u64)i * span;
			*lvl = level;
			*spte = s;
			return true;
		}
		u32 c = spte_to_child_frame(&vm->mem, s, level);
		if (c != NO_FRAME && vm->mem.frames[c].state == FRAME_TABLE &&
		    find_leaf(vm, c, level - 1, base + (u64)i * span, start, end, gfn, lvl, spte))
			return true;
	}
	return false;
}

static bool walker_holds(const struct vm_op *o, u32 id, bool scheduled_only);

/* [MODEL CHOICE] An invalidated root that a stepped zap of the invalidated roots
 * (kvm_tdp_mmu_zap_invalidated_roots()) has taken and stopped in at a yield point.
 * KVM runs that zap only inside kvm_mmu_zap_all_fast(), under slots_lock, so it
 * never overlaps a memslot deletion; the model lets the two interleave, and the
 * deletion's own zap then skips the root the other zap holds (no longer
 * tdp_mmu_scheduled_root_to_zap). Such a root is exempt from I5 until that zap
 * finishes emptying it. */
static bool being_zapped(struct tdp_vm *vm, const struct tdp_root *r)
{
	for (int k = 0; k < vm->nops; k++)
		if (walker_holds(vm->ops[k], r->id, true))
			return true;
	return false;
}

void checker_check_range_unmapped(struct tdp_vm *vm, u64 start, u64 end, int kind)
{
	u64 gfn, spte;
	int level;

	if (!(vm->cfg.invariants & invariant_of(kind)) || (vm->inv.reported & (1u << kind)))
		return;
	for (int i = 0; i < vm->nroots; i++) {
		struct tdp_root *r = &vm->roots[i];
		if (vm->mem.frames[r->frame].state != FRAME_TABLE)
			continue; /* reported as a malformed root by the tables' check */
		if (kind == TDP_V_DELETED_SLOT_MAPPED && being_zapped(vm, r))
			continue;
		if (find_leaf(vm, r->frame, r->level, 0, start, end, &gfn, &level, &spte)) {
			u64 g = gfn < start ? start : gfn;
			report_state(vm, kind, r->id, g, level, spte, backing_of(vm, g));
			return;
		}
	}
}

/* The first writable leaf under table f (entries of `level`, based at gfn base) that maps
 * a gfn of slot s whose dirty bit is clear: its gfn, level and SPTE. */
static bool find_unlogged_writable(struct tdp_vm *vm, struct memslot *s, u32 f, int level, u64 base, u64 *gfn,
				   int *lvl, u64 *spte)
{
	const u64 *t = hostmem_table_read(&vm->mem, f);
	u64 span = pages_per_level(level), start = s->base_gfn, end = s->base_gfn + s->npages;
	int i = start > base ? (int)((start - base) / span) : 0;

	for (; i < 512 && base + (u64)i * span < end; i++) {
		u64 e = t[i], g0 = base + (u64)i * span;
		if (!is_shadow_present_pte(e))
			continue;
		if (is_last_spte(e, level)) {
			if (!(e & SPTE_W))
				continue;
			for (u64 g = g0 < start ? start : g0; g < g0 + span && g < end; g++)
				if (!vm_gfn_is_dirty(s, g)) {
					*gfn = g, *lvl = level, *spte = e;
					return true;
				}
			continue;
		}
		u32 c = spte_to_child_frame(&vm->mem, e, level);
		if (c != NO_FRAME && vm->mem.frames[c].state == FRAME_TABLE &&
		    find_unlogged_writable(vm, s, c, level - 1, g0, gfn, lvl, spte))
			return true;
	}
	return false;
}

void checker_check_dirty_log(struct tdp_vm *vm, struct memslot *s)
{
	u64 gfn, spte;
	int level;

	if (!(vm->cfg.invariants & TDP_INV_DIRTY_LOG) || (vm->inv.reported & (1u << TDP_V_UNLOGGED_WRITABLE)) ||
	    !(s->flags & TDP_SLOT_DIRTY_LOG) || !s->dirty)
		return;
	for (int i = 0; i < vm->nroots; i++) {
		struct tdp_root *r = &vm->roots[i];
		if (r->invalid || vm->mem.frames[r->frame].state != FRAME_TABLE)
			continue; /* vCPUs leave an invalid root before they run again */
		if (find_unlogged_writable(vm, s, r->frame, r->level, 0, &gfn, &level, &spte)) {
			report_state(vm, TDP_V_UNLOGGED_WRITABLE, r->id, gfn, level, spte, backing_of(vm, gfn));
			return;
		}
	}
}

void checker_check_fault_install(struct tdp_vm *vm, const struct tdp_root *root, u64 gfn, int level)
{
	if (root->invalid)
		report_state(vm, TDP_V_STALE_FAULT_INSTALL, root->id, gfn, level, 0, backing_of(vm, gfn));
}

/* Walk one table reached from root r: every present non-leaf SPTE points at a live
 * table of the next level down, for its gfn, of the same root, whose parent is
 * this table, reached once; no SPTE is frozen between operations (only a writer
 * inside one holds FROZEN_SPTE, tdp_mmu_zap_spte_atomic(); an unlinked table's
 * frozen entries are no longer reachable). Leaves are counted per level. */
static void walk_table(struct tdp_vm *vm, const struct tdp_root *r, u32 f, int level, u64 base, u64 *leaves)
{
	const u64 *t = hostmem_table_read(&vm->mem, f);
	u64 span = pages_per_level(level);

	for (int i = 0; i < 512; i++) {
		u64 s = t[i], gfn = base + (u64)i * span;
		if (is_frozen_spte(s)) {
			report_state(vm, TDP_V_FROZEN_SPTE, r->id, gfn, level, s, NO_PFN);
			continue;
		}
		if (!is_shadow_present_pte(s))
			continue;
		if (is_last_spte(s, level)) {
			if (level > 3)
				report_state(vm, TDP_V_MALFORMED_TABLE, r->id, gfn, level, s, NO_PFN);
			else
				leaves[level]++;
			continue;
		}
		u64 pfn = spte_to_pfn(s);
		u32 c = hostmem_frame_of(&vm->mem, pfn);
		const struct frame *fr = c == NO_FRAME ? NULL : &vm->mem.frames[c];
		if (!fr || fr->state != FRAME_TABLE || fr->sp_unlinked || fr->sp_level != level - 1 || fr->sp_gfn != gfn ||
		    fr->sp_root != r->id || fr->parent != f || vm->inv.mark[c] == vm->inv.epoch) {
			report_state(vm, TDP_V_MALFORMED_TABLE, r->id, gfn, level, s, NO_PFN);
			continue;
		}
		vm->inv.mark[c] = vm->inv.epoch;
		vm->inv.reached++;
		walk_table(vm, r, c, level - 1, gfn, leaves);
	}
}

static bool walker_holds(const struct vm_op *o, u32 id, bool scheduled_only)
{
	return o->op.cur == id && (!scheduled_only || o->op.which == ROOTS_SCHEDULED);
}

#define CHECKER_ROOTS_AT_ONCE 64

/* The index in vm->roots of root id among the first n, or -1. */
static int root_index(const struct tdp_vm *vm, u32 id, int n)
{
	for (int i = 0; id && i < n; i++)
		if (vm->roots[i].id == id)
			return i;
	return -1;
}

/* I7: a root's refcount is the number of its holders - the vCPUs that loaded it,
 * the references taken through the public alloc_root(), stepped walkers stopped
 * in it, and the TDP MMU's own reference (kvm_tdp_mmu_alloc_root() since v6.4;
 * dropped by kvm_tdp_mmu_zap_invalidated_roots() once the root is zapped; in the
 * v5.17 lifetime taken by the invalidation instead). A vCPU never holds a freed
 * root. */
static void check_roots(struct tdp_vm *vm)
{
	/* The vCPUs' and the walkers' references, counted per root in one pass over
	 * each (for up to CHECKER_ROOTS_AT_ONCE roots; past that, per root). */
	int counted[CHECKER_ROOTS_AT_ONCE];
	bool sched[CHECKER_ROOTS_AT_ONCE];
	int n = vm->nroots < CHECKER_ROOTS_AT_ONCE ? vm->nroots : CHECKER_ROOTS_AT_ONCE, j;
	memset(counted, 0, sizeof(counted));
	memset(sched, 0, sizeof(sched));
	for (int v = 0; v < vm->cfg.nvcpus; v++) {
		if ((j = root_index(vm, vm->vcpus[v].root_id, n)) >= 0)
			counted[j]++;
		if ((j = root_index(vm, vm->vcpus[v].other.root_id, n)) >= 0)
			counted[j]++; /* the other level's MMU (root_mmu / guest_mmu) */
	}
	for (int k = 0; k < vm->nops; k++)
		if ((j = root_index(vm, vm->ops[k]->op.cur, n)) >= 0) {
			counted[j]++;
			sched[j] |= walker_holds(vm->ops[k], vm->roots[j].id, true);
		}
	for (int i = 0; i < vm->nroots; i++) {
		const struct tdp_root *r = &vm->roots[i];
		int holders = r->user_refs;
		bool sched_walk = false;
		if (i < n) {
			holders += counted[i];
			sched_walk = sched[i];
		} else {
			for (int v = 0; v < vm->cfg.nvcpus; v++)
				holders += (vm->vcpus[v].root_id == r->id) + (vm->vcpus[v].other.root_id == r->id);
			for (int k = 0; k < vm->nops; k++) {
				holders += walker_holds(vm->ops[k], r->id, false);
				sched_walk |= walker_holds(vm->ops[k], r->id, true);
			}
		}
		bool own = r->scheduled || sched_walk ||
			   (vm->pol.root_lifetime == TDP_ROOT_PRESERVE && !r->invalid);
		holders += own;
		if (r->refcount != holders) {
			report_state(vm, TDP_V_ROOT_REFCOUNT, r->id, 0, r->level, (u64)(int64_t)r->refcount, (u64)holders);
			return;
		}
	}
	for (int v = 0; v < vm->cfg.nvcpus; v++) {
		u32 ids[2] = {vm->vcpus[v].root_id, vm->vcpus[v].other.root_id};
		for (int k = 0; k < 2; k++)
			if (ids[k] && !tdp_mmu_find_root(vm, ids[k])) {
				report_state(vm, TDP_V_ROOT_REFCOUNT, ids[k], 0, 0, 0, NO_PFN);
				return;
			}
	}
}

#define CHECKER_LEAF_PERIOD 8

/* What the tables' walk depends on: unchanged, the tables are as last checked. */
static u64 structure_signature(const struct tdp_vm *vm)
{
	return vm->stats[ST_tables_allocated] * 0x9e3779b97f4a7c15ull ^ vm->stats[ST_tables_unlinked] << 40 ^
	       vm->stats[ST_roots_allocated] << 8 ^ vm->stats[ST_roots_freed] << 50 ^ vm->mem.frames_freed << 30 ^
	       (u64)vm->mem.nframes << 12 ^ (u64)vm->nroots;
}

static bool grow_marks(struct tdp_vm *vm)
{
	struct checker_state *cs = &vm->inv;
	if (cs->mark_cap >= vm->mem.nframes)
		return true;
	u32 ncap = vm->mem.nframes + vm->mem.nframes / 2 + 64;
	u32 *n = realloc(cs->mark, (size_t)ncap * sizeof(*n));
	if (!n)
		return false;
	cs->mark = n;
	if (vm->mem.track) {
		struct inv_node *nn = realloc(cs->node, (size_t)ncap * sizeof(*nn));
		if (!nn)
			return false;
		cs->node = nn;
		u64 *nk = realloc(cs->kids, (size_t)ncap * 8 * sizeof(*nk));
		if (!nk)
			return false;
		cs->kids = nk;
		for (u32 f = cs->mark_cap; f < ncap; f++)
			nn[f] = (struct inv_node){.parent = NO_FRAME};
		/* kids needs no zeroing: a table's words are cleared when it is read
		 * (inc_table()) before anything reads them (a CLEAN or BELOW table, or
		 * the parent of a walked one, has been read). Most frames are never
		 * tables, so most of this memory is never touched. */
	}
	memset(n + cs->mark_cap, 0, (size_t)(ncap - cs->mark_cap) * sizeof(*n));
	cs->mark_cap = ncap;
	return true;
}

/* ------------------------------------------------------------------ the incremental walk
 * The same checks as walk_table() and the roots' loop below, on the tables written
 * or re-purposed since the last walk only. A table is CLEAN when neither its
 * entries, nor the metadata of the tables they link, nor anything in its subtree
 * changed since a walk found it well-formed: then the full walk would find it as
 * it did, and its subtree's counts stand. Writers note the frames they write
 * (hostmem_table(), hostmem_note()); the pool notes frames handed out or freed.
 * A noted frame becomes STALE (read again), and so does the table that linked it if
 * its metadata changed; the tables above become BELOW (their entries stand, their
 * subtree's counts are summed again through the entries that link a child). The
 * first thing found wrong ends the incremental walk: the full walk then runs and
 * reports, exactly as it would have without the incremental one. */
enum inv_node_state { INV_STALE = 0, INV_BELOW = 1, INV_CLEAN = 2 };

static void forget_all(struct checker_state *cs)
{
	for (u32 f = 0; f < cs->mark_cap; f++)
		cs->node[f] = (struct inv_node){.parent = NO_FRAME};
}

/* Does table p still link f through entry i, as when f was last walked? (If p's
 * entries were written since, p is read again anyway.) */
static bool links(struct tdp_vm *vm, u32 p, int i, u32 f)
{
	const u64 *t = hostmem_table_read(&vm->mem, p);
	return t && (vm->inv.kids[(size_t)p * 8 + i / 64] >> (i % 64) & 1) &&
	       hostmem_frame_of(&vm->mem, spte_to_pfn(t[i])) == f;
}

/* Apply the pool's notes to the memory of the last walk (if notes were lost, or a
 * chain of parents is longer than any chain of tables, all of it is forgotten and
 * every table is read again). */
static void apply_notes(struct tdp_vm *vm)
{
	struct checker_state *cs = &vm->inv;
	struct hostmem *h = &vm->mem;

	if (h->noted_lost) {
		forget_all(cs);
		if (h->noted)
			memset(h->noted, 0, h->noted_size);
		h->nnoted = 0;
		h->noted_lost = false;
		return;
	}
	for (u32 k = 0; k < h->nnoted; k++) {
		u32 f = h->noted_list[k];
		unsigned what = h->noted[f];
		h->noted[f] = 0;
		if (f >= cs->mark_cap)
			continue; /* never walked */
		cs->node[f].state = INV_STALE;
		u32 p = cs->node[f].parent;
		if (p == NO_FRAME)
			continue;
		if ((what & HOSTMEM_NOTE_META) && links(vm, p, cs->node[f].index, f))
			cs->node[p].state = INV_STALE; /* its entry for f is checked against f's metadata */
		for (int d = 0; p != NO_FRAME; p = cs->node[p].parent) {
			if (++d > 8) { /* longer than any chain of tables: forget, to be safe */
				forget_all(cs);
				break;
			}
			if (cs->node[p].state == INV_CLEAN)
				cs->node[p].state = INV_BELOW;
		}
	}
	h->nnoted = 0;
}

static void add_subtree(struct inv_node *n, const struct inv_node *c)
{
	n->tables += c->tables;
	for (int l = 0; l < 3; l++)
		n->leaves[l] += c->leaves[l];
}

/* One pass over a table's 512 entries: a bit per present entry (SPTE_MMU_PRESENT)
 * in present[8]; true when an entry is FROZEN_SPTE. The incremental walk reads
 * every entry of each table it reads again, so this is its inner loop. */
static bool scan_table(const u64 *t, u64 present[8])
{
#if defined(__x86_64__) && defined(__GNUC__)
	/* SSE2, which every x86-64 CPU has: the low halves of four entries in one
	 * vector give four present bits (bit 11) at once, and a low half equal to
	 * FROZEN_SPTE's (0x5a0) sends the table to the exact comparison below. */
	const __m128i lo_frozen = _mm_set1_epi32((int)(u32)FROZEN_SPTE);
	__m128i maybe = _mm_setzero_si128();
	for (int w = 0; w < 8; w++) {
		u64 m = 0;
		for (int j = 0; j < 64; j += 16) {
			const __m128i *p = (const __m128i *)(t + w * 64 + j);
			__m128i b[4];
			for (int k = 0; k < 4; k++) {
				__m128 lo = _mm_shuffle_ps(_mm_castsi128_ps(_mm_loadu_si128(p + 2 * k)),
							   _mm_castsi128_ps(_mm_loadu_si128(p + 2 * k + 1)),
							   _MM_SHUFFLE(2, 0, 2, 0));
				maybe = _mm_or_si128(maybe, _mm_cmpeq_epi32(_mm_castps_si128(lo), lo_frozen));
				b[k] = _mm_slli_epi32(_mm_castps_si128(lo), 31 - 11); /* bit 11 to the sign */
			}
			/* Packing with signed saturation keeps each sign, in order. */
			__m128i bytes = _mm_packs_epi16(_mm_packs_epi32(b[0], b[1]), _mm_packs_epi32(b[2], b[3]));
			m |= (u64)(u32)_mm_movemask_epi8(bytes) << j;
		}
		present[w] = m;
	}
	if (!_mm_movemask_epi8(maybe))
		return false;
	for (int i = 0; i < 512; i++)
		if (t[i] == FROZEN_SPTE)
			return true;
	return false;
#else
	u64 frozen = 0;
	for (int w = 0; w < 8; w++) {
		u64 m = 0;
		for (int b = 0; b < 64; b++) {
			u64 s = t[w * 64 + b];
			frozen |= s == FROZEN_SPTE;
			m |= (u64)((s & SPTE_MMU_PRESENT) != 0) << b;
		}
		present[w] = m;
	}
	return frozen;
#endif
}

/* walk_table() for a table that is not CLEAN; false at the first thing it would
 * report. */
static bool inc_table(struct tdp_vm *vm, const struct tdp_root *r, u32 f, int level, u64 base)
{
	struct checker_state *cs = &vm->inv;
	struct inv_node *n = &cs->node[f];
	const u64 *t = hostmem_table_read(&vm->mem, f);
	u64 *kids = cs->kids + (size_t)f * 8;
	u64 span = pages_per_level(level);

	if (n->state == INV_CLEAN)
		return true;
	if (n->state == INV_BELOW) {
		/* Its entries and their children's metadata are as the last walk found them. */
		n->tables = 1;
		n->leaves[0] = n->leaves[1] = n->leaves[2] = 0;
		if (level <= 3)
			n->leaves[level - 1] = n->own;
		for (int w = 0; w < 8; w++)
			for (u64 m = kids[w]; m; m &= m - 1) {
				int i = w * 64 + __builtin_ctzll(m);
				u32 c = hostmem_frame_of(&vm->mem, spte_to_pfn(t[i]));
				if (c == NO_FRAME || c >= cs->mark_cap || cs->mark[c] == cs->epoch)
					return false;
				cs->mark[c] = cs->epoch;
				if (!inc_table(vm, r, c, level - 1, base + (u64)i * span))
					return false;
				add_subtree(n, &cs->node[c]);
			}
		n->state = INV_CLEAN;
		return true;
	}
	struct inv_node acc = {.parent = n->parent, .tables = 1};
	memset(kids, 0, 8 * sizeof(*kids));
	/* One pass finds the frozen and the present entries (most entries of the
	 * upper levels are neither); then the present ones, in order. */
	u64 present[8];
	if (scan_table(t, present))
		return false;
	if (level == 1) {
		/* Every present entry is a leaf. */
		u32 cnt = 0;
		for (int w = 0; w < 8; w++)
			cnt += (u32)__builtin_popcountll(present[w]);
		acc.own = acc.leaves[0] = cnt;
		acc.state = INV_CLEAN;
		cs->node[f] = acc;
		return true;
	}
	for (int w = 0; w < 8; w++) {
		for (u64 m = present[w]; m; m &= m - 1) {
			int i = w * 64 + __builtin_ctzll(m);
			u64 s = t[i], gfn = base + (u64)i * span;
			if (is_last_spte(s, level)) {
				if (level > 3)
					return false;
				acc.own++;
				continue;
			}
			u32 c = hostmem_frame_of(&vm->mem, spte_to_pfn(s));
			const struct frame *fr = c == NO_FRAME ? NULL : &vm->mem.frames[c];
			if (!fr || fr->state != FRAME_TABLE || fr->sp_unlinked || fr->sp_level != level - 1 ||
			    fr->sp_gfn != gfn || fr->sp_root != r->id || fr->parent != f || cs->mark[c] == cs->epoch)
				return false;
			cs->mark[c] = cs->epoch;
			cs->node[c].parent = f;
			cs->node[c].index = (u16)i;
			if (!inc_table(vm, r, c, level - 1, gfn))
				return false;
			kids[w] |= 1ull << (i % 64);
			add_subtree(&acc, &cs->node[c]);
		}
	}
	if (level <= 3)
		acc.leaves[level - 1] += acc.own;
	acc.state = INV_CLEAN;
	cs->node[f] = acc;
	return true;
}

/* The roots' loop of checker_check_invariants() over the incremental walk: true
 * when the full walk would report nothing; *leaves and *reached are then what it
 * would count. */
static bool inc_walk(struct tdp_vm *vm, u64 leaves[4])
{
	struct checker_state *cs = &vm->inv;
	int inv = vm->cfg.invariants;

	apply_notes(vm);
	cs->reached = 0;
	for (int i = 0; i < vm->nroots; i++) {
		const struct tdp_root *r = &vm->roots[i];
		const struct frame *fr = &vm->mem.frames[r->frame];
		if (fr->state != FRAME_TABLE || fr->sp_level != r->level || fr->sp_root != r->id || fr->sp_unlinked ||
		    cs->mark[r->frame] == cs->epoch || (r->refcount <= 0 && (inv & TDP_INV_ROOTS)))
			return false;
		cs->mark[r->frame] = cs->epoch;
		cs->node[r->frame].parent = NO_FRAME;
		if (!inc_table(vm, r, r->frame, r->level, 0))
			return false;
		const struct inv_node *n = &cs->node[r->frame];
		cs->reached += n->tables;
		for (int l = 1; l <= 3; l++)
			leaves[l] += n->leaves[l - 1];
	}
	if (inv & TDP_INV_TABLES)
		if (vm->stats[ST_pages_4k] != leaves[1] || vm->stats[ST_pages_2m] != leaves[2] ||
		    vm->stats[ST_pages_1g] != leaves[3])
			return false;
	return !(inv & TDP_INV_ROOTS) || cs->reached == vm->stats[ST_mmu_pages];
}

static void next_epoch(struct tdp_vm *vm)
{
	if (++vm->inv.epoch == 0) {
		memset(vm->inv.mark, 0, (size_t)vm->inv.mark_cap * sizeof(*vm->inv.mark));
		vm->inv.epoch = 1;
	}
}

static void full_walk(struct tdp_vm *vm);

void checker_check_invariants(struct tdp_vm *vm)
{
	int inv = vm->cfg.invariants;

	if (inv & TDP_INV_ROOTS)
		check_roots(vm);
	if (!(inv & (TDP_INV_TABLES | TDP_INV_ROOTS)))
		return;
	/* The walk runs when the tables' structure changed (a table allocated,
	 * unlinked or freed, a root added or removed); when only leaf SPTEs were
	 * written, at every CHECKER_LEAF_PERIOD-th such operation (then a frozen SPTE
	 * or a leaf-counter slip is reported up to that many operations late). */
	u64 sig = structure_signature(vm);
	if (sig == vm->inv.sig && vm->inv.epoch) {
		if (vm->stats[ST_spte_writes] == vm->inv.writes || ++vm->inv.leaf_ops < CHECKER_LEAF_PERIOD)
			return;
	}
	vm->inv.leaf_ops = 0;
	vm->inv.writes = vm->stats[ST_spte_writes];
	if (!grow_marks(vm))
		return; /* no host memory for the marks: the walk waits for the next operation */
	vm->inv.sig = sig;
	next_epoch(vm);
	u64 inc_leaves[4] = {0}, inc_reached = 0, seen = vm->inv.seen;
	bool inc_clean = false;
	if (vm->mem.track) {
		inc_clean = inc_walk(vm, inc_leaves);
		inc_reached = vm->inv.reached;
		if (inc_clean && vm->cfg.invariant_walk == TDP_INV_WALK_INCREMENTAL)
			return;
		if (!inc_clean)
			forget_all(&vm->inv); /* read every table again once the state is well-formed */
		next_epoch(vm);
	}
	full_walk(vm);
	if (vm->mem.track && vm->cfg.invariant_walk == TDP_INV_WALK_CROSSCHECK) {
		/* The incremental walk must see something wrong exactly when the full
		 * walk does, and count the same tables and leaves when all is well. */
		bool full_clean = vm->inv.seen == seen, same = vm->inv.reached == inc_reached;
		for (int l = 1; l <= 3; l++)
			same &= vm->inv.full_leaves[l] == inc_leaves[l];
		TDP_WARN_ON(vm, full_clean != inc_clean || (inc_clean && !same));
	}
}

/* Every table from the roots (the specification of the tables' and roots'
 * invariants). */
static void full_walk(struct tdp_vm *vm)
{
	int inv = vm->cfg.invariants;
	u64 *leaves = vm->inv.full_leaves;
	memset(vm->inv.full_leaves, 0, sizeof(vm->inv.full_leaves));
	vm->inv.reached = 0;
	for (int i = 0; i < vm->nroots; i++) {
		const struct tdp_root *r = &vm->roots[i];
		const struct frame *fr = &vm->mem.frames[r->frame];
		if (fr->state != FRAME_TABLE || fr->sp_level != r->level || fr->sp_root != r->id || fr->sp_unlinked ||
		    vm->inv.mark[r->frame] == vm->inv.epoch) {
			report_state(vm, TDP_V_MALFORMED_TABLE, r->id, 0, r->level, 0, NO_PFN);
			continue;
		}
		if (r->refcount <= 0 && (inv & TDP_INV_ROOTS))
			report_state(vm, TDP_V_LEAKED_TABLE, r->id, 0, r->level, 0, NO_PFN); /* a root nobody holds */
		vm->inv.mark[r->frame] = vm->inv.epoch;
		vm->inv.reached++;
		walk_table(vm, r, r->frame, r->level, 0, leaves);
	}
	if (inv & TDP_INV_TABLES) {
		static const int st[4] = {0, ST_pages_4k, ST_pages_2m, ST_pages_1g};
		for (int l = 1; l <= 3; l++)
			if (vm->stats[st[l]] != leaves[l]) {
				report_state(vm, TDP_V_LEAF_COUNT, 0, 0, l, vm->stats[st[l]], leaves[l]);
				break;
			}
	}
	if ((inv & TDP_INV_ROOTS) && vm->inv.reached != vm->stats[ST_mmu_pages]) {
		vm->inv.seen++; /* a table is missing even if the search below does not find it */
		/* I7: every table page is reachable from a root or on its way back to
		 * the pool (unlinked: RCU-freed). The live-table gauge (mmu_pages) says
		 * whether one is missing; only then are the frames searched for it. */
		for (u32 f = 0; f < vm->mem.nframes; f++)
			if (vm->mem.frames[f].state == FRAME_TABLE && vm->inv.mark[f] != vm->inv.epoch) {
				const struct frame *fr = &vm->mem.frames[f];
				report_state(vm, TDP_V_LEAKED_TABLE, fr->sp_root, fr->sp_gfn, fr->sp_level,
					     make_nonleaf_spte(&vm->masks, hostmem_pfn(&vm->mem, f)), NO_PFN);
				break;
			}
	}
}
