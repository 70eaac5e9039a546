"""KVM's TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c): roots, the SPTE writers, the long
operations (zaps, write-protection, split, recovery), kvm_tdp_mmu_map().  The fault
entry, kvm_mmu_zap_all_fast() and NX recovery are mmu/mmu.c's (:mod:`.mmu`).

Every function takes the VM state ``vm`` (see :class:`tdpfast.reference.vm.Kvm`):
``vm.mem`` (frame pool), ``vm.masks``, ``vm.pol`` (the Policy), ``vm.roots`` (oldest
first; KVM's list is newest first), ``vm.stats``, ``vm.nx_list``.

Flush contracts are stated where each writer is defined.  No function here flushes TLBs
except through ``cpu.kvm_flush_remote_tlbs[_range]``, and only where KVM does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from . import cpu, hostmem
from .spte import (ACC_ALL, ACC_EXEC, ACC_WRITE, FROZEN_SPTE, PFN_MASK, SHADOW_NONPRESENT_VALUE, W,
                   is_frozen_spte, is_large_pte, is_last_spte, is_present_leaf, is_shadow_present_pte,
                   make_huge_spte, make_leaf_spte, make_mmio_spte, make_nonleaf_spte, make_small_spte,
                   make_spte_executable, mark_spte_for_access_track, pages_per_level, spte_index,
                   spte_is_accessed, spte_to_pfn, is_access_allowed)
from .tdp_iter import TdpIter, spte_to_child_frame

# Fault outcomes (RET_PF_*); NOMEM and BLOCKED are the model's.
RET_PF_FIXED, RET_PF_SPURIOUS, RET_PF_RETRY, RET_PF_EMULATE, RET_PF_NOMEM, RET_PF_BLOCKED = range(6)

# Which roots a long operation visits.
ROOTS_VALID, ROOTS_ALL, ROOTS_SCHEDULED, ROOTS_ONE = range(4)


@dataclass(eq=False)
class Root:
    id: int
    frame: int
    level: int
    as_id: int
    guest_mode: int
    refcount: int        # tdp_mmu_root_count
    invalid: bool = False    # role.invalid
    scheduled: bool = False  # tdp_mmu_scheduled_root_to_zap


# ======================================================================== pages
def tdp_mmu_alloc_sp(vm, level: int, gfn: int, root_id: int, parent: Optional[int]) -> Optional[int]:
    """A page-table page, filled with SHADOW_NONPRESENT_VALUE (v6.10+)."""
    f = vm.mem.alloc(hostmem.TABLE)
    if f is None:
        return None
    fr = vm.mem.frames[f]
    fr.entries = [SHADOW_NONPRESENT_VALUE] * 512
    fr.sp_level, fr.sp_gfn, fr.sp_root, fr.parent = level, gfn, root_id, parent
    vm.stats["tables_allocated"] += 1
    vm.stats["mmu_pages"] += 1
    return f


def free_unlinked_sp(vm, f: int) -> None:
    """A table allocated but never linked (lost CMPXCHG): freed at once."""
    vm.mem.frames[f].sp_unlinked = True
    vm.stats["mmu_pages"] -= 1
    vm.mem.free_now(f)


def track_possible_nx(vm, f: int) -> None:
    vm.nx_list.append(f)
    vm.mem.frames[f].sp_nx = True
    vm.stats["nx_lpage_splits"] = len(vm.nx_list)


def untrack_possible_nx(vm, f: int) -> None:
    if f in vm.nx_list:
        vm.nx_list.remove(f)
    vm.mem.frames[f].sp_nx = False
    vm.stats["nx_lpage_splits"] = len(vm.nx_list)


def account_leaf(vm, level: int, delta: int) -> None:
    name = {1: "pages_4k", 2: "pages_2m", 3: "pages_1g"}.get(level)
    if name:
        vm.stats[name] += delta


# ======================================================================== SPTE bookkeeping
def handle_changed_spte(vm, gfn: int, old: int, new: int, level: int, shared: bool) -> None:
    """handle_changed_spte(): bookkeeping for every change made through the TDP MMU helpers: leaf
    accounting, and the teardown of a child table that is no longer linked.  No flush."""
    if old == new:
        return
    was_present, is_present = is_shadow_present_pte(old), is_shadow_present_pte(new)
    was_leaf = was_present and is_last_spte(old, level)
    is_leaf = is_present and is_last_spte(new, level)
    vm.stats["spte_writes"] += 1
    vm.stats[f"spte_changed_l{level}"] += 1
    vm.cost("spte_write")
    if was_leaf:
        account_leaf(vm, level, -1)
    if is_leaf:
        account_leaf(vm, level, +1)
    if was_present and not was_leaf and (is_leaf or not is_present or spte_to_pfn(old) != spte_to_pfn(new)):
        child = spte_to_child_frame(vm.mem, old, level)
        if child is not None and not vm.mem.frames[child].sp_unlinked:
            handle_removed_pt(vm, child, shared)


def handle_removed_pt(vm, f: int, shared: bool) -> None:
    """handle_removed_pt(): an unlinked table: freeze its entries so a racing fault retries (shared
    mode: all 512; exclusive: the present ones), tear each child down, and free the page
    through RCU (call_rcu()).  The flush is the caller's since v5.18; ``removed_pt_flush``
    reproduces the older in-place flush and bug B6's wrong range."""
    fr = vm.mem.frames[f]
    level, base, span = fr.sp_level, fr.sp_gfn, pages_per_level(fr.sp_level)
    table = fr.entries
    fr.sp_unlinked = True
    vm.stats["tables_unlinked"] += 1
    vm.stats["mmu_shadow_zapped"] += 1
    vm.stats["mmu_pages"] -= 1
    if fr.sp_nx:
        untrack_possible_nx(vm, f)
    for i in range(512):
        old = table[i]
        if not shared and not is_shadow_present_pte(old):
            continue
        if is_frozen_spte(old):
            continue  # owned by a racing writer
        table[i] = FROZEN_SPTE
        handle_changed_spte(vm, base + i * span, old, FROZEN_SPTE, level, shared)
    if vm.pol.removed_pt_flush == "table":
        cpu.kvm_flush_remote_tlbs_range(vm, base, 512 * span)
    elif vm.pol.removed_pt_flush == "last_child":
        # B6: the loop variable's final gfn (the last child) used as the base.
        cpu.kvm_flush_remote_tlbs_range(vm, base + 511 * span, 512 * span)
    vm.mem.free_rcu(f)


# ======================================================================== SPTE writers
def tdp_mmu_iter_set_spte(vm, it: TdpIter, new: int) -> None:
    """tdp_mmu_set_spte(): the exclusive (mmu_lock write) writer.  No flush: the caller
    accumulates "flush needed"."""
    old = it.old_spte
    it.write(new)
    it.old_spte = new
    handle_changed_spte(vm, it.gfn, old, new, it.level, False)


def tdp_mmu_set_spte_atomic(vm, it: TdpIter, new: int) -> bool:
    """The shared (read lock) writer: CMPXCHG against the snapshot.  False (EBUSY)
    with a refreshed snapshot if the SPTE changed or is frozen.  No flush.  On success
    the snapshot keeps the old value, as KVM's try_cmpxchg leaves it."""
    old = it.old_spte
    if it.read() != old or is_frozen_spte(old):
        it.old_spte = it.read()
        return False
    it.write(new)
    handle_changed_spte(vm, it.gfn, old, new, it.level, True)
    return True


def tdp_mmu_zap_spte_atomic(vm, it: TdpIter) -> bool:
    """freeze -> flush (gfn, level) -> clear.  It flushes by itself, so shared-mode
    zaps never report "flush needed" (bug B5 drops the flush: ``shared_zap_flush``)."""
    old = it.old_spte
    if it.read() != old or is_frozen_spte(old):
        it.old_spte = it.read()
        return False
    it.write(FROZEN_SPTE)
    if vm.pol.shared_zap_flush:
        cpu.kvm_flush_remote_tlbs_range(vm, it.gfn, pages_per_level(it.level))
    it.write(SHADOW_NONPRESENT_VALUE)
    it.old_spte = SHADOW_NONPRESENT_VALUE
    handle_changed_spte(vm, it.gfn, old, SHADOW_NONPRESENT_VALUE, it.level, True)
    return True


# ======================================================================== roots
def find_root(vm, root_id: int) -> Optional[Root]:
    for r in vm.roots:
        if r.id == root_id:
            return r
    return None


def get_vcpu_root(vm, as_id: int, guest_mode: int) -> Optional[int]:
    """kvm_tdp_mmu_alloc_root(): reuse the newest valid root of the role, else a
    new one with refcount 2 (the vCPU's and the TDP MMU's own; v6.4+) or 1 (v5.17).
    None when no frame is left."""
    for r in reversed(vm.roots):
        if not r.invalid and r.as_id == as_id and r.guest_mode == guest_mode and r.refcount > 0:
            r.refcount += 1
            return r.id
    root_id = vm.next_root_id
    f = tdp_mmu_alloc_sp(vm, vm.cfg.levels, 0, root_id, None)
    if f is None:
        return None
    vm.next_root_id += 1
    vm.roots.append(Root(root_id, f, vm.cfg.levels, as_id, guest_mode,
                         refcount=2 if vm.pol.root_lifetime == "preserve" else 1))
    vm.stats["roots_allocated"] += 1
    return root_id


def put_root(vm, root_id: int, shared: bool) -> None:
    """kvm_tdp_mmu_put_root(): at zero, zap what is left (v5.17: everything; v6.6+:
    nothing, the root was zapped when invalidated) and free the page through RCU -- with
    no flush (the deferred-flush argument; ``flush_on_put_root`` flushes eagerly)."""
    r = find_root(vm, root_id)
    if r is None:
        return
    r.refcount -= 1
    if r.refcount > 0:
        return
    zap_root_passes(vm, r, shared, can_yield=False)
    vm.mem.frames[r.frame].sp_unlinked = True
    vm.stats["mmu_pages"] -= 1
    vm.roots.remove(r)
    vm.stats["roots_freed"] += 1
    vm.mem.free_rcu(r.frame)
    if vm.pol.flush_on_put_root:
        cpu.kvm_flush_remote_tlbs(vm)


def invalidate_all_roots(vm) -> None:
    """kvm_tdp_mmu_invalidate_all_roots(): every valid root becomes invalid and
    scheduled for zapping.  In the v5.17 lifetime the invalidation takes a reference so
    the root survives until zap_invalidated_roots."""
    for r in vm.roots:
        if r.invalid:
            continue
        r.invalid = r.scheduled = True
        if vm.pol.root_lifetime == "zap_on_last_put":
            r.refcount += 1


# ======================================================================== long operations
# A long operation is "for every root it visits (newest first, holding a reference), for
# every SPTE the iterator yields: maybe yield, then the body".  Written as a generator
# that yields at each yield point (where KVM drops mmu_lock and leaves RCU), so it can be
# run to the end (``run``) or stepped (``VM.start_op``).
ZAP_LEAFS, ZAP_ROOTS, WRPROT, CLEAR_DIRTY, SPLIT, RECOVER_HUGE, NX_RECOVER = range(1, 8)


@dataclass(eq=False)
class Op:
    kind: int
    which: int
    start: int
    end: int
    shared: bool
    root_ids: List[int] = field(default_factory=list)   # snapshot, newest first
    one_root: int = 0
    can_yield: bool = True
    yield_every: int = 0
    since_yield: int = 0
    min_level: int = 1
    target_level: int = 1
    flush: bool = False          # pending flush
    result_flush: bool = False   # B1: flushes OR-ed from earlier roots
    result: bool = False         # something changed
    nx_left: int = 0
    nx_done: int = 0
    changed: bool = False        # some SPTE was written (for flush_after_zap)
    chg_lo: int = 0              # gfns covered by the SPTEs recovery replaced ...
    chg_hi: int = 0              # ... (0, 0: none)
    err: Optional[str] = None    # "nomem" when a split ran out of frames
    it: Optional[TdpIter] = None
    cur: int = 0                 # the root being walked (a reference held), 0 none


def new_op(vm, kind: int, which: int, start: int, end: int, shared: bool) -> Op:
    return Op(kind, which, start, min(end, vm.max_gfn), shared,
              root_ids=[r.id for r in reversed(vm.roots)], yield_every=vm.pol.yield_every)


def run(gen: Iterator) -> None:
    for _ in gen:
        pass


def op_need_resched(op: Op) -> bool:
    """need_resched(): true every ``yield_every`` steps of the operation (0: never)."""
    if op.yield_every <= 0:
        return False
    op.since_yield += 1
    if op.since_yield < op.yield_every:
        return False
    op.since_yield = 0
    return True


def tdp_mmu_iter_cond_resched(vm, op: Op) -> bool:
    """Yield only after forward progress; a pending flush is done first (mandatory before
    leaving RCU: an unlinked table must be flushed before its grace period can end --
    ``flush_before_yield``; B1, fixed by a835429cda91 "KVM: x86/mmu: Ensure TLBs are flushed
    when yielding during GFN range zap"), then RCU is left, so a grace period may end while
    the walker is away (``rcu_gp_at_yield``)."""
    it = op.it
    if it.next_last_level_gfn == it.yielded_gfn:
        return False
    if not op_need_resched(op):
        return False
    if op.flush and vm.pol.flush_before_yield:
        cpu.kvm_flush_remote_tlbs(vm)
        op.flush = False
    vm.stats["iter_yields"] += 1
    vm.rcu_quiescent(at_yield=True)
    it.yielded = True
    return True


def _wants_root(op: Op, r: Root) -> bool:
    if op.which == ROOTS_VALID:
        return not r.invalid
    if op.which == ROOTS_SCHEDULED:
        return r.scheduled
    if op.which == ROOTS_ONE:
        return r.id == op.one_root
    return True


def _min_levels(op: Op, r: Root) -> List[int]:
    """The iterator passes over one root: tdp_mmu_zap_root() zaps 4K, 2M, 1G, then the
    root level (~v6.9+; two passes since 1b6043e8e584) so that each freed subtree is small."""
    if op.kind == ZAP_ROOTS:
        return [1, 2, 3, r.level]
    return [{WRPROT: op.min_level, SPLIT: op.target_level + 1, RECOVER_HUGE: 2}.get(op.kind, 1)]


def run_op(vm, op: Op):
    """The driver (a generator: it yields at every yield point)."""
    for root_id in op.root_ids:
        r = find_root(vm, root_id)
        if r is None or r.refcount <= 0 or not _wants_root(op, r):
            continue
        r.refcount += 1   # for_each_tdp_mmu_root_yield_safe() holds a reference
        op.cur = r.id
        if op.which == ROOTS_SCHEDULED:
            r.scheduled = False
        if op.kind == ZAP_LEAFS and vm.pol.per_root_flush_reset:
            # B1: every root's zap starts from flush = false.
            op.result_flush |= op.flush
            op.flush = False
        for min_level in _min_levels(op, r):
            op.it = TdpIter(vm.mem, r.frame, r.level, min_level, op.start, vm.pol.iter_skip_after_yield)
            while op.it.valid and op.it.gfn < op.end:
                while True:  # `goto retry` after a lost CMPXCHG
                    if op.can_yield and tdp_mmu_iter_cond_resched(vm, op):
                        yield
                        break
                    vm.stats[f"iter_visited_l{op.it.level}"] += 1
                    rc = _op_body_flushing(vm, op, r, min_level)
                    if rc == "retry":
                        continue
                    if rc == "nomem":
                        op.err = "nomem"
                    break
                if op.err:
                    break
                op.it.next()
            if op.err:
                break
        if op.kind == RECOVER_HUGE:
            recover_root_done(vm, op)
        op.cur = 0
        if op.which == ROOTS_SCHEDULED:
            put_root(vm, r.id, op.shared)   # the TDP MMU's own reference (v6.6+)
        put_root(vm, r.id, op.shared)
        if op.err:
            return
    # Policy flush_after_zap (a safe alternative to KVM's contracts): every zap that
    # changed an SPTE ends with a remote flush, even of an invalid root.
    if vm.pol.flush_after_zap and op.changed and op.kind in (ZAP_LEAFS, ZAP_ROOTS):
        cpu.kvm_flush_remote_tlbs(vm)


def _op_body_flushing(vm, op: Op, r: Root, min_level: int) -> Optional[str]:
    """The body, and policy per_spte_flush (a safe alternative): every changed SPTE is
    flushed (gfn, level) on the spot instead of accumulating one pending flush."""
    writes, level, gfn = vm.stats["spte_writes"], op.it.level, op.it.gfn
    rc = _op_body(vm, op, r, min_level)
    if vm.stats["spte_writes"] != writes:
        op.changed = True
        if vm.pol.per_spte_flush and op.kind != SPLIT:
            cpu.kvm_flush_remote_tlbs_range(vm, gfn, pages_per_level(level))
    return rc


def _op_body(vm, op: Op, r: Root, min_level: int) -> Optional[str]:
    """The per-SPTE work; "retry" when the CMPXCHG lost, "nomem" when out of frames."""
    it = op.it
    old = it.old_spte
    if op.kind == ZAP_LEAFS:
        # tdp_mmu_zap_leafs(): leaves only (since cf3e26427c08); exclusive mode reports a
        # flush for a valid root only (invalid roots never need one: 7ae5840e6f33); shared
        # mode zaps with the self-flushing atomic zap.
        if not is_present_leaf(old, it.level):
            return None
        if op.shared:
            if not tdp_mmu_zap_spte_atomic(vm, it):
                return "retry"
        else:
            tdp_mmu_iter_set_spte(vm, it, SHADOW_NONPRESENT_VALUE)
            if not r.invalid:
                op.flush = True
        vm.stats[f"zapped_leaf_l{it.level}"] += 1
        op.result = True
    elif op.kind == ZAP_ROOTS:
        # __tdp_mmu_zap_root(): zap present entries at exactly the pass level.
        if not is_shadow_present_pte(old) or it.level > min_level:
            return None
        if is_last_spte(old, it.level):
            vm.stats[f"zapped_leaf_l{it.level}"] += 1
        else:
            vm.stats["zapped_nonleaf"] += 1
        if not op.shared:
            tdp_mmu_iter_set_spte(vm, it, SHADOW_NONPRESENT_VALUE)
        elif not tdp_mmu_set_spte_atomic(vm, it, SHADOW_NONPRESENT_VALUE):
            return "retry"
    elif op.kind == WRPROT:
        # wrprot_gfn_range(): clear W, keep MMU-writable for the fast path.
        if not is_present_leaf(old, it.level) or not old & W:
            return None
        if not tdp_mmu_set_spte_atomic(vm, it, old & ~W):
            return "retry"
        op.result = True
    elif op.kind == CLEAR_DIRTY:
        # clear_dirty_gfn_range(): D with A/D, W without.
        dbit = vm.masks.dirty if vm.masks.ad else W
        if not is_present_leaf(old, it.level) or not old & dbit:
            return None
        if not tdp_mmu_set_spte_atomic(vm, it, old & ~dbit):
            return "retry"
        op.result = True
    elif op.kind == SPLIT:
        if not is_shadow_present_pte(old) or not is_large_pte(old):
            return None
        rc = split_huge_page(vm, it, r, shared=True, nx_disallowed=False)
        if rc == "nomem" or rc == "retry":
            return rc
    elif op.kind == RECOVER_HUGE:
        return _recover_huge_body(vm, op)
    return None


def split_huge_page(vm, it: TdpIter, r: Root, shared: bool, nx_disallowed: bool) -> Optional[str]:
    """tdp_mmu_split_huge_page(): a child table of make_small_spte() entries
    linked over the huge leaf -- no flush, the translations are identical.  Under the NX
    mitigation the 4K children are executable again (make_small_spte())."""
    f = tdp_mmu_alloc_sp(vm, it.level - 1, it.gfn, r.id, it.frame)
    if f is None:
        return "nomem"
    child = [make_small_spte(it.old_spte, it.level, i) for i in range(512)]
    if vm.pol.nx_huge_pages and it.level - 1 == 1:
        child = [make_spte_executable(vm.masks, s) for s in child]
    vm.mem.frames[f].entries = child
    account_leaf(vm, it.level - 1, 512)
    new = make_nonleaf_spte(vm.masks, vm.mem.pfn(f))
    if shared:
        if not tdp_mmu_set_spte_atomic(vm, it, new):
            account_leaf(vm, it.level - 1, -512)
            free_unlinked_sp(vm, f)
            return "retry"
    else:
        tdp_mmu_iter_set_spte(vm, it, new)
    if nx_disallowed:
        track_possible_nx(vm, f)
    vm.stats["huge_pages_split"] += 1
    return None


def _first_leaf_below(vm, spte: int, level: int) -> int:
    """The first present leaf anywhere under a non-leaf SPTE, depth first in gfn order
    (tdp_root_for_each_leaf_pte()), or 0."""
    c = spte_to_child_frame(vm.mem, spte, level)
    if c is None:
        return 0
    for s in vm.mem.table(c):
        if not is_shadow_present_pte(s):
            continue
        if is_last_spte(s, level - 1):
            return s
        leaf = _first_leaf_below(vm, s, level - 1)
        if leaf:
            return leaf
    return 0


def _recover_huge_body(vm, op: Op) -> Optional[str]:
    """recover_huge_pages_range() (v6.13+, 13e2e4f62a4b): CMPXCHG a huge SPTE built from a
    child leaf over a table whose range may now be mapped huge; flushed before yielding
    and at the end of each root (:func:`recover_root_done`).  ``huge_recovery="zap_collapsible"`` is the
    <= v6.12 zap_collapsible_spte_range(): zap the table with the self-flushing atomic
    zap; the next fault maps it huge."""
    it = op.it
    if it.level > 3 or not is_shadow_present_pte(it.old_spte) or is_last_spte(it.old_spte, it.level):
        return None
    s = vm.slot_of(it.gfn)
    if s is None or vm.max_mapping_level(s, it.gfn) < it.level:
        return None
    leaf = _first_leaf_below(vm, it.old_spte, it.level)
    if not leaf:
        return None
    if vm.pol.huge_recovery == "zap_collapsible":
        if not tdp_mmu_zap_spte_atomic(vm, it):
            return "retry"
        vm.stats["huge_pages_recovered"] += 1
        return None
    huge = make_huge_spte(leaf, it.level)
    huge = (huge & ~PFN_MASK) | ((s.gfn_to_pfn(it.gfn) << 12) & PFN_MASK)
    if vm.pol.nx_huge_pages:
        huge = (huge & ~vm.masks.x) | vm.masks.nx
    if not tdp_mmu_set_spte_atomic(vm, it, huge):
        return "retry"
    vm.stats["huge_pages_recovered"] += 1
    op.flush = True
    # The flush covers the whole huge page (KVM flushes the memslot), not just the
    # window: a 1G leaf unlinks tables outside it.
    lo, hi = it.gfn, it.gfn + pages_per_level(it.level)
    if not op.chg_hi or lo < op.chg_lo:
        op.chg_lo = lo
    op.chg_hi = max(op.chg_hi, hi)
    return None


# ------------------------------------------------------------------------ zap one table (NX recovery)
def tdp_mmu_zap_sp(vm, f: int) -> bool:
    """kvm_tdp_mmu_zap_sp(): zap the parent SPTE of a table with the exclusive
    writer; the subtree goes through handle_removed_pt.  Returns "caller must flush"."""
    fr = vm.mem.frames[f]
    if fr.parent is None:
        return False
    plevel = fr.sp_level + 1
    ptable = vm.mem.table(fr.parent)
    i = spte_index(fr.sp_gfn, plevel)
    old = ptable[i]
    if not is_shadow_present_pte(old) or spte_to_child_frame(vm.mem, old, plevel) != f:
        return False
    ptable[i] = SHADOW_NONPRESENT_VALUE
    vm.stats["zapped_nonleaf"] += 1
    handle_changed_spte(vm, fr.sp_gfn, old, SHADOW_NONPRESENT_VALUE, plevel, False)
    if vm.pol.per_spte_flush:
        cpu.kvm_flush_remote_tlbs_range(vm, fr.sp_gfn, pages_per_level(plevel))
    if vm.pol.flush_after_zap:
        cpu.kvm_flush_remote_tlbs(vm)
    return True


# ------------------------------------------------------------------------ the synchronous forms
def zap_leafs(vm, start: int, end: int, which: int, shared: bool) -> bool:
    """kvm_tdp_mmu_zap_leafs() (valid roots) / kvm_tdp_mmu_unmap_gfn_range() (all roots):
    the pending flush is threaded through every root, so a yield in a later root flushes
    what an earlier root zapped (the fix for B1).  Returns "flush needed"."""
    op = new_op(vm, ZAP_LEAFS, which, start, end, shared)
    run(run_op(vm, op))
    return op.flush or op.result_flush


def zap_root_passes(vm, r: Root, shared: bool, can_yield: bool) -> None:
    """tdp_mmu_zap_root() on a root being put: walked even at refcount 0."""
    op = new_op(vm, ZAP_ROOTS, ROOTS_ONE, 0, vm.max_gfn, shared)
    op.one_root, op.can_yield, op.root_ids = r.id, can_yield, [r.id]
    r.refcount += 1
    run(run_op(vm, op))
    r = find_root(vm, op.one_root)
    if r is not None:
        r.refcount -= 1


def zap_whole_root(vm, r: Root, shared: bool) -> None:
    op = new_op(vm, ZAP_ROOTS, ROOTS_ONE, 0, vm.max_gfn, shared)
    op.one_root = r.id
    run(run_op(vm, op))


def zap_invalidated_roots(vm, shared: bool) -> None:
    """kvm_tdp_mmu_zap_invalidated_roots(): zap each scheduled root in full with NO
    TLB flush, then drop the TDP MMU's reference."""
    run(run_op(vm, new_op(vm, ZAP_ROOTS, ROOTS_SCHEDULED, 0, vm.max_gfn, shared)))


def write_protect(vm, start: int, end: int, min_level: int = 1) -> bool:
    op = new_op(vm, WRPROT, ROOTS_VALID, start, end, True)
    op.min_level = min_level
    run(run_op(vm, op))
    return op.result


def clear_dirty(vm, start: int, end: int) -> bool:
    op = new_op(vm, CLEAR_DIRTY, ROOTS_VALID, start, end, True)
    run(run_op(vm, op))
    return op.result


def split_huge_pages(vm, start: int, end: int, target_level: int) -> Optional[str]:
    op = new_op(vm, SPLIT, ROOTS_VALID, start, end, True)
    op.target_level = target_level
    run(run_op(vm, op))
    return op.err


def recover_root_done(vm, op: Op) -> None:
    """The end of one root's recover_huge_pages_range(): if the root changed, flush the
    memslot (here: the range asked for, widened to every huge page installed) -- one flush
    per root that changed.  ``op.result`` says a flush was done."""
    if not op.flush:
        return
    lo, hi = op.start, op.end
    if op.chg_hi:
        lo, hi = min(lo, op.chg_lo), max(hi, op.chg_hi)
    cpu.kvm_flush_remote_tlbs_range(vm, lo, hi - lo)
    op.flush, op.result = False, True
    op.chg_lo = op.chg_hi = 0


def recover_huge_pages(vm, start: int, end: int) -> bool:
    """Returns whether a root's flush was done (each root that changed flushes itself)."""
    op = new_op(vm, RECOVER_HUGE, ROOTS_VALID, start, end, True)
    run(run_op(vm, op))
    return op.result


# ======================================================================== aging, write tracking
def age_gfn_range(vm, start: int, end: int) -> bool:
    """kvm_tdp_mmu_age_gfn_range(): clear A (A/D on) or access-track the SPTE (A/D
    off) in the valid roots (v6.13, 526e609f0567; every root before: Policy
    age_valid_roots_only); not through handle_changed_spte and never a flush (x86 elides
    it, ~v6.13).  Returns "young"."""
    young = False
    for r in reversed(vm.roots):
        if r.invalid and vm.pol.age_valid_roots_only:
            continue
        it = TdpIter(vm.mem, r.frame, r.level, 1, start)
        while it.valid and it.gfn < end:
            vm.stats[f"iter_visited_l{it.level}"] += 1
            old = it.old_spte
            if is_present_leaf(old, it.level) and spte_is_accessed(vm.masks, old):
                young = True
                new = mark_spte_for_access_track(vm.masks, old)
                if new != old:
                    it.write(new)
                    it.old_spte = new
                    vm.stats["spte_writes"] += 1
                    vm.cost("spte_write")
            it.next()
    return young


def write_protect_gfn(vm, gfn: int) -> bool:
    """kvm_tdp_mmu_write_protect_gfn(): clear W and MMU-writable on the leaves
    mapping gfn in valid roots (gfn write tracking).  The caller flushes if it changed
    anything."""
    changed = False
    for r in reversed(vm.roots):
        if r.invalid:
            continue
        it = TdpIter(vm.mem, r.frame, r.level, 1, gfn)
        while it.valid and it.gfn < gfn + 1:
            vm.stats[f"iter_visited_l{it.level}"] += 1
            if is_present_leaf(it.old_spte, it.level):
                new = it.old_spte & ~(W | vm.masks.mmu_writable)
                if new != it.old_spte:
                    tdp_mmu_iter_set_spte(vm, it, new)
                    changed = True
            it.next()
    return changed


# ======================================================================== the fault path (kvm_tdp_mmu_map())
def lookup(vm, r: Root, gfn: int):
    """The SPTE that ends the walk for gfn: (value, level, frame, index)."""
    f = r.frame
    for level in range(r.level, 0, -1):
        i = spte_index(gfn, level)
        s = vm.mem.table(f)[i]
        if not is_shadow_present_pte(s) or is_last_spte(s, level):
            return s, level, f, i
        child = spte_to_child_frame(vm.mem, s, level)
        if child is None:
            return s, level, f, i
        f = child
    return s, level, f, i  # pragma: no cover - level 1 always returns above


def tables_needed(vm, r: Root, start: int, end: int, level: int) -> int:
    """An upper bound of the tables mapping [start, end) at ``level`` allocates: every
    missing table on the paths, and one per huge leaf above ``level`` to split."""
    need = 0
    for l in range(r.level, level, -1):
        span = pages_per_level(l)
        for g in range(start & ~(span - 1), end, span):
            s, got, _, _ = lookup(vm, r, g)
            if got > l or (got == l and (not is_shadow_present_pte(s) or is_last_spte(s, l))):
                need += 1
    return need


def map_gfn(vm, r: Root, gfn: int, goal_level: int, write_fault: bool, huge_disallowed: bool,
            req_level: int, exec_fault: bool = False, pfn: Optional[int] = None):
    """kvm_tdp_mmu_map() + tdp_mmu_map_handle_target_level(): walk to ``goal_level``
    creating tables (CMPXCHG), splitting a huge leaf above the goal in place (v6.2+: no
    flush), then install the leaf.  ``req_level`` is the level the fault could have used
    without the NX mitigation: tables created at or below it for a huge-disallowed fault
    go on the possible-NX list (possible_nx_huge_pages).  Returns (RET_PF_*, "replaced a
    table"). ``pfn``: gfn's host page as the fault's first half saw it (None: the slot's now)."""
    slot = vm.slot_of(gfn)
    nx = vm.pol.nx_huge_pages
    if r.invalid:
        return RET_PF_RETRY, False
    it = TdpIter(vm.mem, r.frame, r.level, 1, gfn)
    while it.valid and it.gfn < gfn + 1:
        # disallowed_hugepage_adjust(): a table that exists because of the NX mitigation
        # forces the fault one level down.
        if nx and it.level > 1 and it.level == goal_level and is_shadow_present_pte(it.old_spte) \
                and not is_large_pte(it.old_spte):
            c = spte_to_child_frame(vm.mem, it.old_spte, it.level)
            if c is not None and vm.mem.frames[c].sp_nx:
                goal_level -= 1
        if is_frozen_spte(it.old_spte):
            return RET_PF_RETRY, False
        if it.level == goal_level:
            return _map_target_level(vm, it, slot, gfn, goal_level, write_fault, exec_fault, pfn)
        if is_shadow_present_pte(it.old_spte) and not is_large_pte(it.old_spte):
            it.next()
            continue
        track = huge_disallowed and req_level >= it.level
        if is_shadow_present_pte(it.old_spte):
            rc = split_huge_page(vm, it, r, shared=True, nx_disallowed=track)
            if rc == "nomem":
                return RET_PF_NOMEM, False
            if rc == "retry":
                return RET_PF_RETRY, False
        else:
            f = tdp_mmu_alloc_sp(vm, it.level - 1, it.gfn, r.id, it.frame)
            if f is None:
                return RET_PF_NOMEM, False
            if not tdp_mmu_set_spte_atomic(vm, it, make_nonleaf_spte(vm.masks, vm.mem.pfn(f))):
                free_unlinked_sp(vm, f)
                return RET_PF_RETRY, False
            if track:
                track_possible_nx(vm, f)
        it.next()
    return RET_PF_RETRY, False


def _map_target_level(vm, it: TdpIter, slot, gfn: int, level: int, write_fault: bool, exec_fault: bool,
                      pfn: Optional[int] = None):
    # A present leaf that already allows the access is not rewritten (386d69f9f29b, v6.13).
    if vm.pol.fault_spurious_if_allowed and is_present_leaf(it.old_spte, it.level) and \
            is_access_allowed(vm.masks, it.old_spte, write_fault, exec_fault):
        return RET_PF_SPURIOUS, False
    wrprot = False
    if slot is None:
        new = make_mmio_spte(vm.masks, it.gfn, vm.memslots_gen)
    else:
        acc = ACC_ALL
        host_writable = not slot.readonly
        if level > 1 and vm.pol.nx_huge_pages:
            acc &= ~ACC_EXEC   # huge SPTEs are NX under the mitigation (make_spte())
        if not slot.writable(gfn) and host_writable:
            acc &= ~ACC_WRITE  # a write-tracked gfn: make_spte write-protects it
            wrprot = True
        base = slot.gfn_to_pfn(it.gfn) if pfn is None else pfn - (gfn - it.gfn)   # a huge leaf starts at it.gfn
        new = make_leaf_spte(vm.masks, base, level, acc, host_writable)
        if wrprot:  # host-writable stays, MMU-writable does not (spte.h: the "100" state)
            new &= ~(W | vm.masks.mmu_writable)
    ret, replaced_table = RET_PF_FIXED, False
    if new == it.old_spte:
        ret = RET_PF_SPURIOUS
    elif not tdp_mmu_set_spte_atomic(vm, it, new):
        return RET_PF_RETRY, False
    elif is_shadow_present_pte(it.old_spte) and not is_last_spte(it.old_spte, it.level):
        # A huge leaf replaced a table: flush (gfn, level) before leaving RCU (1e203847aa92).
        if vm.pol.map_huge_over_table_flush:
            cpu.kvm_flush_remote_tlbs_range(vm, it.gfn, pages_per_level(it.level))
        replaced_table = True
    if slot is not None and new & W and slot.dirty_log:
        slot.mark_dirty(it.gfn)
    if wrprot and write_fault:
        ret = RET_PF_EMULATE
    if slot is None:
        vm.stats["pf_mmio_spte_created"] += 1
        ret = RET_PF_EMULATE
    return ret, replaced_table
