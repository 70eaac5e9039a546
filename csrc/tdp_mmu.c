/* tdp_mmu.c — KVM's TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c): the SPTE writers, the
 * zap family and the other range operations with their driver. Roots are in
 * tdp_mmu_root.c, the fault path in tdp_mmu_map.c, huge pages in tdp_mmu_huge.c.
 * Function names follow mmu/tdp_mmu.c; the flush contract of each writer is stated
 * where it is defined. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

static inline u64 *table_of(struct tdp_vm *vm, u32 f) { return hostmem_table(&vm->mem, f); }
static inline u64 min_u64(u64 a, u64 b) { return a < b ? a : b; }

/* ------------------------------------------------------------------ pages */

u32 tdp_mmu_alloc_sp(struct tdp_vm *vm, int level, u64 gfn, u32 root_id, u32 parent)
{
	u32 f = hostmem_alloc(&vm->mem, FRAME_TABLE);
	u64 *t;

	if (f == NO_FRAME)
		return NO_FRAME;
	t = table_of(vm, f);
	if (!t) {
		vm->mem.frames[f].state = FRAME_FREE;
		vm->mem.free_stack[vm->mem.nfree++] = f;
		vm->mem.in_use--;
		return NO_FRAME;
	}
	/* Page tables start out SHADOW_NONPRESENT_VALUE-filled (v6.10+). */
	for (int i = 0; i < 512; i++)
		t[i] = SHADOW_NONPRESENT_VALUE;
	struct frame *fr = &vm->mem.frames[f];
	fr->sp_level = (u8)level;
	fr->sp_gfn = gfn;
	fr->sp_root = root_id;
	fr->parent = parent;
	vm->stats[ST_tables_allocated]++;
	vm->stats[ST_mmu_pages]++;
	return f;
}

static void handle_removed_pt(struct tdp_vm *vm, u32 f, bool shared);

void tdp_mmu_account_leaf(struct tdp_vm *vm, int level, int delta)
{
	static const int st[4] = {0, ST_pages_4k, ST_pages_2m, ST_pages_1g};
	if (level >= 1 && level <= 3) {
		TDP_WARN_ON(vm, delta < 0 && vm->stats[st[level]] < (u64)-(int64_t)delta); /* a gauge below zero */
		vm->stats[st[level]] += (u64)(int64_t)delta;
	}
}

/* handle_changed_spte(): bookkeeping for every change made through the TDP MMU
 * helpers; recurses into an unlinked child table. No flush here. */
static void handle_changed_spte(struct tdp_vm *vm, u64 gfn, u64 old, u64 new, int level, bool shared)
{
	bool was_present = is_shadow_present_pte(old), is_present = is_shadow_present_pte(new);
	bool was_leaf = was_present && is_last_spte(old, level);
	bool is_leaf = is_present && is_last_spte(new, level);

	if (old == new)
		return;
	cov_note_spte(&vm->cov, old, new, level);
	vm->stats[ST_spte_writes]++;
	vm->stats[ST_spte_changed_l1 + level - 1]++;
	vm_cost(vm, vm->costs.spte_write);
	vm_trace(vm, TR_SPTE_CHANGED, (u32)level, gfn, old, new);
	if (was_leaf)
		tdp_mmu_account_leaf(vm, level, -1);
	if (is_leaf)
		tdp_mmu_account_leaf(vm, level, +1);
	if (was_present && !was_leaf && (is_leaf || !is_present || spte_to_pfn(old) != spte_to_pfn(new))) {
		u32 child = spte_to_child_frame(&vm->mem, old, level);
		/* A present non-leaf SPTE always points at a table of the pool. */
		if (!TDP_WARN_ON(vm, child == NO_FRAME) && !vm->mem.frames[child].sp_unlinked)
			handle_removed_pt(vm, child, shared);
	}
}

/* Bulk paths. Where nothing can observe the individual steps of a walk over a
 * whole table (no trace consumer, no per-SPTE flush policy, no yield due), one
 * tight loop over its 512 entries gives exactly what the per-SPTE path (the
 * specification; cfg.no_bulk forces it) gives: the same entries written, the same
 * counters, the same modelled costs, added once per table. tests/test_bulk_paths.py
 * compares the two on random ranges. */
static inline bool bulk_allowed(const struct tdp_vm *vm)
{
	return !vm->cfg.no_bulk && !vm->cfg.trace && !vm->pol.per_spte_flush;
}

/* The leaf gauge of `level` can lose n leaves without going below zero, so the
 * per-SPTE path's TDP_WARN_ON() in tdp_mmu_account_leaf() would not fire either. */
static inline bool leaf_gauge_covers(const struct tdp_vm *vm, int level, u64 n)
{
	static const int st[4] = {0, ST_pages_4k, ST_pages_2m, ST_pages_1g};
	return level < 1 || level > 3 || vm->stats[st[level]] >= n;
}

/* What handle_changed_spte() adds for n leaves of `level` made non-present. */
static inline void account_zapped_leaves(struct tdp_vm *vm, int level, u64 n)
{
	vm->stats[ST_spte_writes] += n;
	vm->stats[ST_spte_changed_l1 + level - 1] += n;
	vm->stats[ST_cycles] += n * vm->costs.spte_write;
	tdp_mmu_account_leaf(vm, level, -(int)n);
}

/* handle_removed_pt()'s loop for a last-level table (every present entry is a
 * leaf, so nothing recurses): freeze what the loop would freeze. False: not
 * taken (the caller runs the per-SPTE loop). */
static bool removed_pt_bulk(struct tdp_vm *vm, u64 *t, bool shared)
{
	u64 nleaf = 0, nfrozen = 0;

	if (!bulk_allowed(vm))
		return false;
	if (!leaf_gauge_covers(vm, 1, 512)) {
		for (int i = 0; i < 512; i++)
			nleaf += is_shadow_present_pte(t[i]);
		if (!leaf_gauge_covers(vm, 1, nleaf))
			return false;
		nleaf = 0;
	}
	for (int i = 0; i < 512; i++) {
		u64 old = t[i];
		bool present = is_shadow_present_pte(old);
		if ((!shared && !present) || is_frozen_spte(old))
			continue;
		t[i] = FROZEN_SPTE;
		nfrozen++;
		nleaf += present;
	}
	/* handle_changed_spte() per frozen entry: a write each, a leaf each present one. */
	if (vm->cov.on && nfrozen)
		cov_note(&vm->cov, COV_FROZEN, 1);
	vm->stats[ST_spte_writes] += nfrozen;
	vm->stats[ST_spte_changed_l1] += nfrozen;
	vm->stats[ST_cycles] += nfrozen * vm->costs.spte_write;
	tdp_mmu_account_leaf(vm, 1, -(int)nleaf);
	return true;
}

/* handle_removed_pt(): freeze all 512 entries of an unlinked table (so a racing
 * fault retries), process each child, and free the page through RCU. The flush
 * is the caller's (since v5.18); B6-era kernels flushed here, see removed_pt_flush. */
static void handle_removed_pt(struct tdp_vm *vm, u32 f, bool shared)
{
	struct frame *fr = &vm->mem.frames[f];
	int level = fr->sp_level;
	u64 base = fr->sp_gfn, span = pages_per_level(level);
	u64 *t = table_of(vm, f);

	fr->sp_unlinked = 1;
	vm->stats[ST_tables_unlinked]++;
	vm->stats[ST_mmu_shadow_zapped]++;
	vm->stats[ST_mmu_pages]--;
	if (fr->sp_nx)
		untrack_possible_nx_huge_page(vm, f);
	if (level == 1 && removed_pt_bulk(vm, t, shared)) {
		/* done: the same writes, counters and costs as the loop below */
	} else {
		/* A non-present entry frozen (shared mode) is one write for
		 * handle_changed_spte() and nothing else: where nothing observes the
		 * single writes (bulk_allowed()), they are counted once, after the loop. */
		bool bulk = bulk_allowed(vm);
		u64 nonpresent = 0;
		for (int i = 0; i < 512; i++) {
			u64 old = t[i];
			if (!shared && !is_shadow_present_pte(old))
				continue;
			if (is_frozen_spte(old))
				continue; /* owned by a racing writer */
			t[i] = FROZEN_SPTE;
			if (bulk && !is_shadow_present_pte(old))
				nonpresent++;
			else
				handle_changed_spte(vm, base + (u64)i * span, old, FROZEN_SPTE, level, shared);
		}
		if (vm->cov.on && nonpresent)
			cov_note(&vm->cov, COV_FROZEN, level);
		vm->stats[ST_spte_writes] += nonpresent;
		vm->stats[ST_spte_changed_l1 + level - 1] += nonpresent;
		vm->stats[ST_cycles] += nonpresent * vm->costs.spte_write;
	}
	/* not a KVM flush site: removed_pt_flush, the B6 era's flushes (none since v6.x) */
	if (vm->pol.removed_pt_flush == 1)
		kvm_flush_remote_tlbs_range(vm, base, 512 * span);
	else if (vm->pol.removed_pt_flush == 2)
		/* B6: the loop variable's final gfn (the last child) as the base. */
		kvm_flush_remote_tlbs_range(vm, base + 511 * span, 512 * span);
	hostmem_free_rcu(&vm->mem, f);
}

/* ------------------------------------------------------------------ writers */

/* tdp_mmu_set_spte(): exclusive (write lock) writer. No flush: the caller
 * accumulates "flush needed". */
void tdp_mmu_iter_set_spte(struct tdp_vm *vm, struct tdp_iter *it, u64 new)
{
	u64 old = it->old_spte;

	*it->sptep = new;
	hostmem_note(&vm->mem, tdp_iter_frame(it), HOSTMEM_NOTE_WRITE);
	it->old_spte = new;
	handle_changed_spte(vm, it->gfn, old, new, it->level, false);
}

/* tdp_mmu_set_spte_atomic(): shared (read lock) writer, CMPXCHG against the
 * snapshot; -1 (EBUSY) and a refreshed snapshot if the SPTE changed. No flush. */
int tdp_mmu_set_spte_atomic(struct tdp_vm *vm, struct tdp_iter *it, u64 new)
{
	u64 old = it->old_spte;

	if (*it->sptep != old || is_frozen_spte(old)) {
		it->old_spte = *it->sptep;
		return -1;
	}
	*it->sptep = new;
	hostmem_note(&vm->mem, tdp_iter_frame(it), HOSTMEM_NOTE_WRITE);
	handle_changed_spte(vm, it->gfn, old, new, it->level, true);
	return 0;
}

/* tdp_mmu_zap_spte_atomic(): freeze, flush (gfn, level), then clear. Because it
 * flushes for itself, shared-mode zaps never report "flush needed". */
int tdp_mmu_zap_spte_atomic(struct tdp_vm *vm, struct tdp_iter *it)
{
	u64 old = it->old_spte;

	if (*it->sptep != old || is_frozen_spte(old)) {
		it->old_spte = *it->sptep;
		return -1;
	}
	*it->sptep = FROZEN_SPTE;
	hostmem_note(&vm->mem, tdp_iter_frame(it), HOSTMEM_NOTE_WRITE);
	if (vm->pol.shared_zap_flush && FLUSH_SITE(vm, SHARED_ZAP))
		kvm_flush_remote_tlbs_range(vm, it->gfn, pages_per_level(it->level));
	*it->sptep = SHADOW_NONPRESENT_VALUE;
	it->old_spte = SHADOW_NONPRESENT_VALUE;
	handle_changed_spte(vm, it->gfn, old, SHADOW_NONPRESENT_VALUE, it->level, true);
	return 0;
}

bool tdp_op_need_resched(struct tdp_op *op)
{
	/* need_resched(): every `yield_every` steps of the operation (0: never). */
	if (op->yield_every <= 0)
		return false;
	if (++op->since_yield < (u64)op->yield_every)
		return false;
	op->since_yield = 0;
	return true;
}

/* tdp_mmu_iter_cond_resched(): yield only after forward progress; a pending
 * flush is done first (unless the policy drops that rule), then RCU is left,
 * so a grace period can end while the walker is away. */
static bool tdp_mmu_iter_cond_resched(struct tdp_vm *vm, struct tdp_op *op, bool *flush)
{
	struct tdp_iter *it = &op->it;

	if (it->next_last_level_gfn == it->yielded_gfn && !vm->cfg.no_progress)
		return false;
	if (!tdp_op_need_resched(op))
		return false;
	if (*flush && vm->pol.flush_before_yield && FLUSH_SITE(vm, YIELD)) {
		kvm_flush_remote_tlbs(vm);
		*flush = false;
	}
	vm->stats[ST_iter_yields]++;
	vm_trace(vm, TR_YIELD, (u32)it->level, it->next_last_level_gfn, *flush, 0);
	vm_rcu_quiescent(vm, true);
	it->yielded = true;
	return true;
}

void tdp_mmu_iter_start(struct tdp_vm *vm, struct tdp_iter *it, struct tdp_root *root, int min_level, u64 start)
{
	vm->cov.root_invalid = root->invalid;
	it->skip_after_restart = vm->pol.iter_skip_after_yield != 0;
	it->no_restart = vm->cfg.stale_iter != 0;
	tdp_iter_start(it, &vm->mem, root->frame, root->level, min_level, start);
}

static inline void visited(struct tdp_vm *vm, int level)
{
	vm->stats[ST_iter_visited_l1 + level - 1]++;
}

/* Every present leaf SPTE of root in [start, end) (tdp_root_for_each_leaf_pte()
 * upstream); every SPTE the iterator passes on the way counts as visited. */
#define tdp_root_for_each_leaf_pte(vm, it, root, start, end) \
	for_each_tdp_pte_min_level(vm, it, root, 1, start, end) \
		if (visited(vm, (it).level), \
		    !is_shadow_present_pte((it).old_spte) || !is_last_spte((it).old_spte, (it).level)) {} else

/* Snapshot of root ids, newest first (list_add_rcu adds at the head). */
static int root_ids(struct tdp_vm *vm, u32 *ids, int max)
{
	int n = 0;
	for (int i = vm->nroots - 1; i >= 0 && n < max; i--)
		ids[n++] = vm->roots[i].id;
	return n;
}


/* ------------------------------------------------------------------ long operations */

/* kvm_tdp_mmu_zap_sp(): zap the parent SPTE of a table; the subtree goes through
 * handle_removed_pt. Returns "caller must flush". */
bool tdp_mmu_zap_sp_frame(struct tdp_vm *vm, u32 f)
{
	struct frame *fr = &vm->mem.frames[f];
	int plevel = fr->sp_level + 1;
	u32 parent = fr->parent;
	u64 *sptep, old;

	if (parent == NO_FRAME)
		return false;
	sptep = table_of(vm, parent) + spte_index(fr->sp_gfn, plevel);
	old = *sptep;
	if (!is_shadow_present_pte(old) || spte_to_child_frame(&vm->mem, old, plevel) != f)
		return false;
	*sptep = SHADOW_NONPRESENT_VALUE;
	vm->stats[ST_zapped_nonleaf]++;
	handle_changed_spte(vm, fr->sp_gfn, old, SHADOW_NONPRESENT_VALUE, plevel, false);
	/* not a KVM flush site: the per_spte_flush and flush_after_zap policies */
	if (vm->pol.per_spte_flush)
		kvm_flush_remote_tlbs_range(vm, fr->sp_gfn, pages_per_level(plevel));
	if (vm->pol.flush_after_zap)
		kvm_flush_remote_tlbs(vm);
	return true;
}

/* Long operations run through one driver so that they can stop at a yield point
 * and be resumed later (by then other operations may have run, as when KVM drops
 * mmu_lock): each is "for every root the operation visits, for every SPTE the
 * iterator yields: maybe yield, then the body". A synchronous call runs the driver
 * to the end; tdp_op_step() runs it to its next yield point. */

static bool op_wants_root(const struct tdp_op *op, const struct tdp_root *r)
{
	switch (op->which) {
	case ROOTS_VALID: return !r->invalid;
	case ROOTS_SCHEDULED: return r->scheduled;
	case ROOTS_ONE: return r->id == op->one_root;
	default: return true;
	}
}

/* ------------------------------------------------------------------ per-operation handlers
 * What each long operation does, as KVM passes a handler (tdp_handler_t) to its
 * root walkers: the smallest level its iterator descends to, and its body for one
 * SPTE, which returns 0 when done with the SPTE, 1 to retry it (a CMPXCHG lost to
 * a racing writer), <0 on error. */

static int min_level_4k(const struct tdp_op *op, const struct tdp_root *r)
{
	(void)op;
	(void)r;
	return 1;
}

/* tdp_mmu_zap_leafs(): leaf-only; exclusive mode reports a flush for a valid root
 * only; shared mode uses the self-flushing atomic zap. */
static int zap_leafs_spte(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	struct tdp_iter *it = &op->it;
	u64 old = it->old_spte;

	if (!is_shadow_present_pte(old) || !is_last_spte(old, it->level))
		return 0;
	if (op->shared) {
		if (tdp_mmu_zap_spte_atomic(vm, it))
			return 1;
	} else {
		tdp_mmu_iter_set_spte(vm, it, SHADOW_NONPRESENT_VALUE);
		if (!r->invalid && FLUSH_SITE(vm, ZAP_LEAF_FLAG))
			op->flush = true;
	}
	vm->stats[ST_zapped_leaf_l1 + it->level - 1]++;
	op->result = true;
	return 0;
}

/* tdp_mmu_zap_root(): passes of decreasing granularity, 4K, 2M, 1G, then the root
 * level, so that each freed subtree is small. */
static int zap_root_pass_level(const struct tdp_op *op, const struct tdp_root *r)
{
	static const int passes[3] = {1, 2, 3};
	return op->pass < 3 ? passes[op->pass] : r->level;
}

/* __tdp_mmu_zap_root(): zap present entries at exactly the pass level. */
static int zap_root_spte(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	struct tdp_iter *it = &op->it;
	u64 old = it->old_spte;
	int zap_level = zap_root_pass_level(op, r);

	if (!is_shadow_present_pte(old) || it->level > zap_level)
		return 0;
	if (is_last_spte(old, it->level))
		vm->stats[ST_zapped_leaf_l1 + it->level - 1]++;
	else
		vm->stats[ST_zapped_nonleaf]++;
	if (!op->shared)
		tdp_mmu_iter_set_spte(vm, it, SHADOW_NONPRESENT_VALUE);
	else if (tdp_mmu_set_spte_atomic(vm, it, SHADOW_NONPRESENT_VALUE))
		return 1;
	return 0;
}

static int wrprot_min_level(const struct tdp_op *op, const struct tdp_root *r)
{
	(void)r;
	return op->min_level;
}

/* wrprot_gfn_range() clears W (MMU-writable kept for the fast path);
 * clear_dirty_gfn_range() clears D with A/D, W without. */
static int wrprot_or_clear_dirty_spte(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	struct tdp_iter *it = &op->it;
	u64 old = it->old_spte;
	u64 bit = (op->kind == OP_WRPROT || !vm->masks.ad) ? SPTE_W : vm->masks.dirty;

	(void)r;
	if (!is_shadow_present_pte(old) || !is_last_spte(old, it->level) || !(old & bit))
		return 0;
	if (tdp_mmu_set_spte_atomic(vm, it, old & ~bit))
		return 1;
	op->result = true;
	return 0;
}

static int split_min_level(const struct tdp_op *op, const struct tdp_root *r)
{
	(void)r;
	return op->target_level + 1;
}

/* tdp_mmu_split_huge_pages_root(): split every huge leaf above the target level. */
static int split_spte(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	struct tdp_iter *it = &op->it;
	u64 old = it->old_spte;

	if (!is_shadow_present_pte(old) || !is_large_pte(old))
		return 0;
	int rc = tdp_mmu_split_huge_page(vm, it, r, true, false);
	if (rc == TDP_ENOMEM)
		return TDP_ENOMEM;
	return rc ? 1 : 0;
}

static int recover_min_level(const struct tdp_op *op, const struct tdp_root *r)
{
	(void)op;
	(void)r;
	return 2;
}

static int recover_huge_spte(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	(void)r;
	return tdp_mmu_recover_huge_spte(vm, op);
}

struct tdp_op_handler {
	int (*min_level)(const struct tdp_op *op, const struct tdp_root *r);
	int (*spte)(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r);
};

/* OP_NX_RECOVER walks the possible-NX list, not the roots (tdp_mmu_nx_recover_run). */
static const struct tdp_op_handler op_handlers[] = {
	[OP_ZAP_LEAFS] = {min_level_4k, zap_leafs_spte},
	[OP_ZAP_ROOTS] = {zap_root_pass_level, zap_root_spte},
	[OP_WRPROT] = {wrprot_min_level, wrprot_or_clear_dirty_spte},
	[OP_CLEAR_DIRTY] = {min_level_4k, wrprot_or_clear_dirty_spte},
	[OP_SPLIT] = {split_min_level, split_spte},
	[OP_RECOVER_HUGE] = {recover_min_level, recover_huge_spte},
};
_Static_assert(sizeof(op_handlers) / sizeof(op_handlers[0]) == OP_NX_RECOVER, "a handler for every root-walking operation");

/* The per-SPTE body, and the "per-SPTE flush" policy around it. */
static int op_body(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	u64 writes = vm->stats[ST_spte_writes];
	int level = op->it.level;
	u64 gfn = op->it.gfn;
	int rc = op_handlers[op->kind].spte(vm, op, r);

	if (vm->stats[ST_spte_writes] != writes) {
		op->changed = true;
		if (vm->pol.per_spte_flush && op->kind != OP_SPLIT) /* not a KVM flush site: a policy */
			kvm_flush_remote_tlbs_range(vm, gfn, pages_per_level(level));
	}
	return rc;
}

/* How many of the cond_resched checks of a whole table's 512 entries count
 * towards need_resched (tdp_mmu_iter_cond_resched() skips the check where
 * next_last_level_gfn is the gfn it last yielded at). */
static u64 resched_checks_in_table(const struct tdp_iter *it, u64 base, u64 span)
{
	u64 k = 512, y = it->yielded_gfn;

	if (it->next_last_level_gfn == y)      /* entry 0, reached by a step down */
		k--;
	if (y > base && y <= base + 511 * span && (y - base) % span == 0)
		k--;                           /* entries 1..511, reached by a step side */
	return k;
}

/* A bulk path may take the whole table at once only if no yield comes due inside
 * it; *k: the cond_resched checks of its 512 entries that count (0: none count). */
static bool bulk_no_yield_due(const struct tdp_op *op, u64 base, u64 span, u64 *k)
{
	*k = 0;
	if (!op->can_yield || op->yield_every <= 0)
		return true;
	*k = resched_checks_in_table(&op->it, base, span);
	return op->since_yield + *k < (u64)op->yield_every;
}

/* After a bulk path: the k checks counted, and the iterator on entry 511 of table t,
 * where the per-SPTE loop would have left it. */
static void bulk_table_done(struct tdp_op *op, u64 *t, u64 base, u64 span, u64 k)
{
	struct tdp_iter *it = &op->it;

	op->since_yield += k;
	it->gfn = base + 511 * span;
	it->next_last_level_gfn = it->gfn;
	it->sptep = t + 511;
	it->old_spte = t[511];
}

/* The zaps' bulk path: the iterator is at entry 0 of a table whose 512 entries
 * the per-SPTE loop would all visit at this level, with none of them observable
 * on its own (bulk_allowed(), and no yield can come due inside the table). Does
 * what op_body() would do for each entry, in one loop, and leaves the iterator on
 * entry 511 as the per-SPTE loop would. Taken for tdp_mmu_zap_leafs() (tables of
 * leaves) and __tdp_mmu_zap_root() (the pass level's table: leaves are cleared in
 * the loop, child tables go through handle_changed_spte() in order). */
static bool op_bulk_table(struct tdp_vm *vm, struct tdp_op *op, struct tdp_root *r)
{
	struct tdp_iter *it = &op->it;
	int level = it->level;
	u64 span = pages_per_level(level), base = it->gfn, k = 0, nleaf = 0;
	u64 *t = it->sptep;
	bool has_tables = false;

	if (!bulk_allowed(vm) || spte_index(base, level) != 0 || base + 511 * span >= op->end)
		return false;
	if (op->kind == OP_ZAP_LEAFS) {
		/* the self-flushing atomic zap flushes per SPTE */
		if (op->shared && vm->pol.shared_zap_flush)
			return false;
	} else if (op->kind == OP_ZAP_ROOTS) {
		if (level != zap_root_pass_level(op, r))
			return false;
	} else {
		return false;
	}
	if (!bulk_no_yield_due(op, base, span, &k))
		return false;
	if (level > 1 || !leaf_gauge_covers(vm, level, 512)) {
		/* A child table is descended into by zap_leafs, and freed (maybe with a
		 * flush) by zap_root; the leaf gauge must cover what is zapped. */
		for (int i = 0; i < 512; i++) {
			u64 s = t[i];
			if (!is_shadow_present_pte(s))
				continue;
			if (is_last_spte(s, level))
				nleaf++;
			else
				has_tables = true;
		}
		if (has_tables && (op->kind == OP_ZAP_LEAFS || vm->pol.removed_pt_flush))
			return false;
		if (!leaf_gauge_covers(vm, level, nleaf))
			return false;
		nleaf = 0;
	}
	u64 nonleaf = 0;
	hostmem_note(&vm->mem, tdp_iter_frame(it), HOSTMEM_NOTE_WRITE);
	for (int i = 0; i < 512; i++) {
		u64 old = t[i];
		if (!is_shadow_present_pte(old))
			continue;
		t[i] = SHADOW_NONPRESENT_VALUE;
		if (is_last_spte(old, level)) {
			nleaf++;
		} else {
			nonleaf++;
			handle_changed_spte(vm, base + (u64)i * span, old, SHADOW_NONPRESENT_VALUE, level, op->shared);
		}
	}
	account_zapped_leaves(vm, level, nleaf);
	if (vm->cov.on && nleaf)
		cov_note(&vm->cov, COV_LEAF_TO_NP, level);
	vm->stats[ST_iter_visited_l1 + level - 1] += 512;
	vm->stats[ST_zapped_leaf_l1 + level - 1] += nleaf;
	vm->stats[ST_zapped_nonleaf] += nonleaf;
	if (nleaf + nonleaf) {
		op->changed = true;
		if (op->kind == OP_ZAP_LEAFS) {
			op->result = true;
			if (!op->shared && !r->invalid && FLUSH_SITE(vm, ZAP_LEAF_FLAG))
				op->flush = true;
		}
	}
	bulk_table_done(op, t, base, span, k);
	return true;
}

/* The write-protect and clear-dirty bulk path: the iterator is at entry 0 of a
 * last-level table whose 512 entries the per-SPTE loop would all visit (as for
 * op_bulk_table()). Every present entry with the bit set loses it, with the
 * counters and costs that handle_changed_spte() adds per write (a leaf replaced by
 * a leaf: the leaf gauge's -1 and +1, which need a gauge of at least 1). */
static bool op_bulk_wrprot(struct tdp_vm *vm, struct tdp_op *op)
{
	struct tdp_iter *it = &op->it;
	u64 base = it->gfn, k = 0, n = 0;
	u64 *t = it->sptep;

	if ((op->kind != OP_WRPROT && op->kind != OP_CLEAR_DIRTY) || it->level != 1 || !bulk_allowed(vm) ||
	    spte_index(base, 1) != 0 || base + 511 >= op->end || !leaf_gauge_covers(vm, 1, 1))
		return false;
	if (!bulk_no_yield_due(op, base, 1, &k))
		return false;
	u64 bit = (op->kind == OP_WRPROT || !vm->masks.ad) ? SPTE_W : vm->masks.dirty;
	hostmem_note(&vm->mem, tdp_iter_frame(it), HOSTMEM_NOTE_WRITE);
	for (int i = 0; i < 512; i++) {
		u64 old = t[i];
		if (!is_shadow_present_pte(old) || !(old & bit))
			continue;
		t[i] = old & ~bit;
		n++;
	}
	if (vm->cov.on && n)
		cov_note(&vm->cov, COV_LEAF_TO_LEAF, 1);
	vm->stats[ST_spte_writes] += n;
	vm->stats[ST_spte_changed_l1] += n;
	vm->stats[ST_cycles] += n * vm->costs.spte_write;
	vm->stats[ST_iter_visited_l1] += 512;
	if (n)
		op->result = op->changed = true;
	bulk_table_done(op, t, base, 1, k);
	return true;
}

/* The first entry of t in [from, lim) that is present, else lim: eight entries
 * at a time where none is (the tables it passes over are mostly empty). */
static int next_present(const u64 *t, int from, int lim)
{
	int j = from;

	for (; j + 8 <= lim; j += 8)
		if ((t[j] | t[j + 1] | t[j + 2] | t[j + 3] | t[j + 4] | t[j + 5] | t[j + 6] | t[j + 7]) &
		    SPTE_MMU_PRESENT)
			break;
	while (j < lim && !is_shadow_present_pte(t[j]))
		j++;
	return j;
}

/* The third bulk path: the iterator is on a non-present SPTE, which no root
 * walker's body touches (and none descends into). The following non-present
 * entries of the same table that the loop would visit before a yield comes due
 * are passed over at once, counted as visited and towards need_resched as the
 * per-SPTE loop counts them; the iterator is left on the last of them, so the
 * loop's step goes on from there. False: not taken. */
static bool op_skip_nonpresent(struct tdp_vm *vm, struct tdp_op *op)
{
	struct tdp_iter *it = &op->it;
	int level = it->level, i = spte_index(it->gfn, level), j;
	u64 span = pages_per_level(level), y = it->yielded_gfn;
	bool counts = op->can_yield && op->yield_every > 0;
	u64 budget = counts ? (u64)op->yield_every - 1 - op->since_yield : ~0ull, used = 0;

	if (op->kind > OP_SPLIT || !bulk_allowed(vm) || is_shadow_present_pte(it->old_spte) || i == 511)
		return false;
	if (counts && op->since_yield + 1 >= (u64)op->yield_every)
		return false;
	const u64 *t = it->sptep - i;
	u64 base = it->gfn - (u64)i * span;
	if (counts && it->next_last_level_gfn != y)
		used++; /* the current entry's check */
	if (used > budget)
		return false;
	/* The per-entry walk stops at the first entry that is present, at or past
	 * op->end, or over the budget (each entry costs a check but the one at the
	 * yielded gfn): the last two are computed, then the first present entry
	 * before them is found by a loop that reads nothing else. */
	u64 lim = op->end <= base ? 0 : (op->end - base + span - 1) / span; /* first g >= end */
	u64 jy = y >= base && (y - base) % span == 0 ? (y - base) / span : ~0ull; /* the free one */
	if (counts) {
		u64 b = budget - used, jb = b >= 512 ? 512 : (u64)i + 1 + b;
		if (jy > (u64)i && jy <= jb)
			jb++;
		lim = jb < lim ? jb : lim;
	}
	lim = lim > 512 ? 512 : lim;
	j = lim > (u64)i + 1 ? next_present(t, i + 1, (int)lim) : i + 1;
	if (counts)
		used += (u64)(j - 1 - i) - (jy > (u64)i && jy < (u64)j);
	/* entries i..j-1 */
	if (counts)
		op->since_yield += used;
	vm->stats[ST_iter_visited_l1 + level - 1] += (u64)(j - i);
	if (j - 1 > i) {
		it->gfn = base + (u64)(j - 1) * span;
		it->next_last_level_gfn = it->gfn;
		it->sptep += j - 1 - i;
		it->old_spte = *it->sptep;
	}
	return true;
}

int tdp_op_run(struct tdp_vm *vm, struct tdp_op *op, bool stop_at_yield)
{
	if (op->kind == OP_NX_RECOVER)
		return tdp_mmu_nx_recover_run(vm, op, stop_at_yield);
	for (;;) {
		struct tdp_root *r;
		if (!op->cur) {
			/* for_each_tdp_mmu_root_yield_safe(): the next root, newest first,
			 * with a reference held while it is walked. */
			r = NULL;
			while (op->ri < op->nroots) {
				struct tdp_root *c = tdp_mmu_find_root(vm, op->root_ids[op->ri++]);
				if (c && c->refcount > 0 && op_wants_root(op, c)) {
					r = c;
					break;
				}
			}
			if (!r) {
				/* flush_after_zap: every zap that changed something flushes
				 * (not a KVM flush site: a policy). */
				if (vm->pol.flush_after_zap && op->changed &&
				    (op->kind == OP_ZAP_LEAFS || op->kind == OP_ZAP_ROOTS))
					kvm_flush_remote_tlbs(vm);
				return 1;
			}
			tdp_mmu_get_root(r);
			op->cur = r->id;
			op->pass = 0;
			op->started = false;
			if (op->which == ROOTS_SCHEDULED)
				r->scheduled = false;
			if (op->kind == OP_ZAP_LEAFS && vm->pol.per_root_flush_reset) {
				/* B1: every root's zap starts from flush = false. */
				op->result_flush |= op->flush;
				op->flush = false;
			}
		}
		r = tdp_mmu_find_root(vm, op->cur);
		if (!op->started) {
			tdp_mmu_iter_start(vm, &op->it, r, op_handlers[op->kind].min_level(op, r), op->start);
			op->started = true;
		} else if (op->resume_next) {
			op->resume_next = false;
			tdp_iter_next(&op->it); /* the caller's `continue` after a yield */
		}
		for (; op->it.valid && op->it.gfn < op->end; tdp_iter_next(&op->it)) {
			if (op_bulk_table(vm, op, r) || op_bulk_wrprot(vm, op) || op_skip_nonpresent(vm, op))
				continue;
retry:
			if (op->can_yield && tdp_mmu_iter_cond_resched(vm, op, &op->flush)) {
				if (op->it.next_last_level_gfn != op->stuck_gfn || !op->stuck_yields) {
					op->stuck_gfn = op->it.next_last_level_gfn;
					op->stuck_yields = 0;
				}
				if (++op->stuck_yields >= TDP_WALK_STUCK_YIELDS) {
					/* No forward progress: a livelock, reported instead of hung. */
					checker_report_walk_livelock(vm, r, &op->it);
					op->stuck_yields = 0;
					op->it.valid = false;
					break;
				}
				if (stop_at_yield) {
					op->resume_next = true;
					return 0;
				}
				continue;
			}
			visited(vm, op->it.level);
			int rc = op_body(vm, op, r);
			if (rc == 1)
				goto retry;
			if (rc < 0) {
				op->err = rc;
				op->it.valid = false;
				op->ri = op->nroots;
				break;
			}
		}
		if (op->it.stale_frame != NO_FRAME) {
			/* The walk found a table freed under it (tdp_iter.h): a use after
			 * free of a page-table page, reported; the walk of this root ends. */
			checker_report_stale_walk(vm, r, &op->it);
			op->it.stale_frame = NO_FRAME;
		}
		if (op->kind == OP_ZAP_ROOTS && ++op->pass < 4 && !op->err) {
			op->started = false;
			continue;
		}
		if (op->kind == OP_RECOVER_HUGE)
			tdp_mmu_recover_huge_root_done(vm, op);
		u32 id = op->cur;
		op->cur = 0;
		if (op->which == ROOTS_SCHEDULED)
			tdp_mmu_put_root_internal(vm, id, op->shared); /* the TDP MMU's own reference */
		tdp_mmu_put_root_internal(vm, id, op->shared);
		if (op->err)
			return op->err;
	}
}

void tdp_op_init(struct tdp_vm *vm, struct tdp_op *op, int kind, int which, u64 start, u64 end, bool shared)
{
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->which = which;
	op->start = start;
	op->end = min_u64(end, vm_max_gfn(vm));
	op->shared = shared;
	op->can_yield = true;
	op->yield_every = vm->pol.yield_every;
	op->min_level = 1;
	op->nroots = root_ids(vm, op->root_ids, MAX_ROOTS_WALK);
}

static bool op_sync(struct tdp_vm *vm, int kind, int which, u64 start, u64 end, bool shared, bool flush)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, kind, which, start, end, shared);
	op.flush = flush;
	tdp_op_run(vm, &op, false);
	return op.flush || op.result_flush;
}

/* kvm_tdp_mmu_zap_leafs() (valid roots) / kvm_tdp_mmu_unmap_gfn_range() (all
 * roots). The pending flush is threaded through every root so a yield in a
 * later root flushes what an earlier root zapped (the fix for B1). */
bool tdp_mmu_zap_leafs_all(struct tdp_vm *vm, u64 start, u64 end, int which, bool shared, bool flush)
{
	return op_sync(vm, OP_ZAP_LEAFS, which, start, end, shared, flush);
}

bool tdp_mmu_wrprot(struct tdp_vm *vm, u64 start, u64 end, int min_level)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_WRPROT, ROOTS_VALID, start, end, true);
	op.min_level = min_level;
	tdp_op_run(vm, &op, false);
	return op.result;
}

bool tdp_mmu_clear_dirty(struct tdp_vm *vm, u64 start, u64 end)
{
	struct tdp_op op;
	tdp_op_init(vm, &op, OP_CLEAR_DIRTY, ROOTS_VALID, start, end, true);
	tdp_op_run(vm, &op, false);
	return op.result;
}

/* kvm_tdp_mmu_age_gfn_range(): clear A (A/D on) or access-track the SPTE (A/D
 * off), on the valid roots of the address space since 526e609f0567 "KVM:
 * x86/mmu: Process only valid TDP MMU roots when aging a gfn range" (v6.13), on
 * every root before. Not through handle_changed_spte, and never a flush (x86
 * elides it, ~v6.13). */
bool tdp_mmu_age(struct tdp_vm *vm, u64 start, u64 end)
{
	bool young = false;
	struct tdp_root *r;
	struct tdp_iter it;

	for_each_tdp_mmu_root(vm, r) {
		if (vm->pol.age_valid_roots_only && r->invalid)
			continue;
		tdp_root_for_each_leaf_pte(vm, it, r, start, end) {
			if (!spte_is_accessed(&vm->masks, it.old_spte))
				continue;
			young = true;
			u64 nw = mark_spte_for_access_track(&vm->masks, it.old_spte);
			if (nw != it.old_spte) {
				cov_note_spte(&vm->cov, it.old_spte, nw, it.level);
				*it.sptep = nw;
				hostmem_note(&vm->mem, tdp_iter_frame(&it), HOSTMEM_NOTE_WRITE);
				vm->stats[ST_spte_writes]++;
				vm_cost(vm, vm->costs.spte_write);
				vm_trace(vm, TR_SPTE_CHANGED, (u32)it.level, it.gfn, it.old_spte, nw);
				it.old_spte = nw;
			}
		}
	}
	return young;
}

/* kvm_tdp_mmu_write_protect_gfn(): clear W and MMU-writable (gfn write
 * tracking). The caller flushes if anything changed. */
bool tdp_mmu_write_protect_gfn(struct tdp_vm *vm, u64 gfn)
{
	bool set = false;
	struct tdp_root *r;
	struct tdp_iter it;

	for_each_valid_tdp_mmu_root(vm, r) {
		tdp_root_for_each_leaf_pte(vm, it, r, gfn, gfn + 1) {
			u64 nw = it.old_spte & ~(SPTE_W | vm->masks.mmu_writable);
			if (nw == it.old_spte)
				continue;
			tdp_mmu_iter_set_spte(vm, &it, nw);
			set = true;
		}
	}
	return set;
}
