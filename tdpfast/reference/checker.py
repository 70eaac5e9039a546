"""The checker of the reference model: every decision that a guest access used a
translation it must no longer have, in one place (the C engine's is csrc/checker.c).

A guest access is judged on the translation it used, whether that came from a TLB hit,
a walk that started from a paging-structure-cache entry, or a full walk:

* the frame it reached must be the one its gfn is backed by now (else *use after free*:
  KVM's MMU-notifier contract, kvm_mmu_notifier_invalidate_range_start() must not return
  while a TLB can still reach the pages being unmapped);
* a walk may start from a cached paging-structure entry only while that table is still
  linked and live (else *stale page table*: the RCU contract of handle_removed_pt(), a
  table unlinked from a valid root is flushed before it is freed -- commits bd29677952fa
  and bb95dfb9e2df);
* a write must be to a writable gfn (else *stale write*) and, with dirty logging, to a gfn
  already marked dirty (else *lost dirty*: after KVM_GET_DIRTY_LOG write-protected a page,
  every later write faults or is logged -- commit b64d740ea7dd "KVM: x86/mmu: Always flush
  TLBs when enabling dirty logging");
* a fault must not retry forever (*livelock*; commit ba6e3fe25543 "KVM: x86/mmu: Fix an
  sign-extension bug with mmu_seq that hangs vCPUs").

State invariants (``VM(invariants=...)``; the C engine's are in csrc/checker.c): this model
mirrors I1 (after the MMU notifier's zap no SPTE in any root maps the range) and I5 (when
memslot deletion returns no SPTE maps the slot; a fault never installs into an invalidated
root). The well-formed-tables and I7 checks are the C engine's only so far.
"""
from __future__ import annotations

from typing import Optional

from ..results import ACCESS_NAMES, FRAME_STATES, VIOLATION_KINDS, Violation
from . import hostmem

# Violation kinds (TDP_V_* in csrc/tdpfast.h).
V_USE_AFTER_FREE, V_STALE_PAGE_TABLE, V_LOST_DIRTY, V_STALE_WRITE, V_LIVELOCK = 1, 2, 3, 4, 5
V_NOTIFIER_RANGE_MAPPED, V_DELETED_SLOT_MAPPED, V_STALE_FAULT_INSTALL = 6, 7, 8
# The invariants' bits (enum tdp_invariant) and the kinds each one reports.
INV_NOTIFIER, INV_MEMSLOT, INV_TABLES, INV_ROOTS, INV_ALL = 1, 2, 4, 8, 15
_INVARIANT_OF = {V_NOTIFIER_RANGE_MAPPED: INV_NOTIFIER, V_DELETED_SLOT_MAPPED: INV_MEMSLOT,
                 V_STALE_FAULT_INSTALL: INV_MEMSLOT}


def report(vm, kind: int, v, gpa: int, tag: int, stale_pfn: Optional[int], expected_pfn: Optional[int],
           access: int, level: int, frame_state: int, batch_index: int) -> None:
    """Record a violation against the current event."""
    vm.stats["violations"] += 1
    vm.violations.append(Violation(
        kind=VIOLATION_KINDS[kind], vcpu=v.id if v else -1, pcpu=v.pcpu if v else -1, gpa=gpa,
        tag=tag, stale_pfn=stale_pfn, expected_pfn=expected_pfn, event=vm.cur_event,
        access=ACCESS_NAMES[access], level=level, frame_state=FRAME_STATES.get(frame_state, "?"),
        batch_index=batch_index))


def check_translation(vm, v, gpa: int, access: int, pfn: int, level: int, tag: int,
                      batch_index: int) -> None:
    """The frame a guest access reached must be the one its gfn is backed by now (else
    use-after-free), a write must be to a writable gfn (else stale write) and, with dirty
    logging, to a gfn already marked dirty (else lost dirty)."""
    gfn = gpa >> 12
    s = vm.slot_of(gfn)
    expected = s.gfn_to_pfn(gfn) if s is not None else None
    # What the frame used is now: a pool frame's state, else (a memslot page) whether it
    # is still the gfn's page (FRAME_CURRENT) or one it no longer maps (0).
    f = vm.mem.frame_of(pfn)
    state = vm.mem.frames[f].state if f is not None else (hostmem.CURRENT if pfn == expected else 0)
    if pfn != expected:
        report(vm, V_USE_AFTER_FREE, v, gpa, tag, pfn, expected, access, level, state, batch_index)
        return
    if access == 1:
        if not s.writable(gfn):
            report(vm, V_STALE_WRITE, v, gpa, tag, pfn, expected, access, level, state, batch_index)
        elif s.dirty_log and not s.is_dirty(gfn):
            report(vm, V_LOST_DIRTY, v, gpa, tag, pfn, expected, access, level, state, batch_index)


def check_psc_entry(vm, v, gpa: int, access: int, psc, tag: int, batch_index: int) -> bool:
    """A walk starting from a paging-structure-cache entry: the cached table must still be
    a live, linked table of the same generation; otherwise the walk goes on through a
    freed or reused frame.  True when a violation was reported."""
    f = vm.mem.frame_of(psc.pfn)
    fr = vm.mem.frames[f] if f is not None else None
    if fr is None or fr.gen != psc.gen or fr.sp_unlinked or fr.state != hostmem.TABLE:
        report(vm, V_STALE_PAGE_TABLE, v, gpa, tag, psc.pfn, None, access, psc.level,
               fr.state if fr is not None else 0, batch_index)
        return True
    return False


def report_livelock(vm, v, gpa: int, access: int, batch_index: int) -> None:
    """Liveness: the fault kept retrying."""
    report(vm, V_LIVELOCK, v, gpa, 0, None, None, access, 0, 0, batch_index)


# ------------------------------------------------------------------ state invariants (I1, I5)
def _report_state(vm, kind: int, root: int, gfn: int, level: int, spte: int, expected: Optional[int]) -> None:
    """Each kind once per VM, at the operation that broke it."""
    if not vm.cfg.invariants & _INVARIANT_OF[kind] or kind in vm.inv_reported:
        return
    vm.inv_reported.add(kind)
    from .spte import is_shadow_present_pte, spte_to_pfn
    pfn = spte_to_pfn(spte) if is_shadow_present_pte(spte) else None
    f = vm.mem.frame_of(pfn) if pfn is not None else None
    vm.stats["violations"] += 1
    vm.violations.append(Violation(
        kind=VIOLATION_KINDS[kind], vcpu=-1, pcpu=-1, gpa=gfn << 12, tag=0, stale_pfn=pfn, expected_pfn=expected,
        event=vm.cur_event, access=ACCESS_NAMES[0], level=level,
        frame_state=FRAME_STATES.get(vm.mem.frames[f].state if f is not None else 0, "?"), batch_index=0,
        root=root, spte=spte))


def _find_leaf(vm, f: int, level: int, base: int, start: int, end: int):
    """The first present leaf of table f that overlaps [start, end): (gfn, level, spte)."""
    from .spte import is_last_spte, is_shadow_present_pte
    from .tdp_iter import spte_to_child_frame
    t = vm.mem.table(f)
    span = 1 << (9 * (level - 1))
    i = (start - base) // span if start > base else 0
    while i < 512 and base + i * span < end:
        s = t[i]
        if is_shadow_present_pte(s):
            if is_last_spte(s, level):
                return base + i * span, level, s
            c = spte_to_child_frame(vm.mem, s, level)
            if c is not None and vm.mem.frames[c].state == hostmem.TABLE:
                hit = _find_leaf(vm, c, level - 1, base + i * span, start, end)
                if hit:
                    return hit
        i += 1
    return None


def _being_zapped(vm, root_id: int) -> bool:
    """[MODEL CHOICE] as in csrc/checker.c: a stepped zap of the invalidated roots holds it."""
    from . import tdp_mmu
    return any(o.op.cur == root_id and o.op.which == tdp_mmu.ROOTS_SCHEDULED for o in vm.ops)


def check_range_unmapped(vm, start: int, end: int, kind: int) -> None:
    """I1 / I5: no present leaf SPTE in any root (valid or invalid, SMM or not) maps a gfn of
    [start, end)."""
    if not vm.cfg.invariants & _INVARIANT_OF[kind] or kind in vm.inv_reported:
        return
    for r in vm.roots:                                  # oldest first, as the C engine
        if vm.mem.frames[r.frame].state != hostmem.TABLE:
            continue
        if kind == V_DELETED_SLOT_MAPPED and _being_zapped(vm, r.id):
            continue
        hit = _find_leaf(vm, r.frame, r.level, 0, start, end)
        if hit:
            gfn, level, spte = hit
            g = max(gfn, start)
            s = vm.slot_of(g)
            _report_state(vm, kind, r.id, g, level, spte, s.gfn_to_pfn(g) if s is not None else None)
            return


def check_fault_install(vm, root, gfn: int, level: int) -> None:
    """I5: a fault installed into root: it must still be valid (is_page_fault_stale())."""
    if root.invalid:
        s = vm.slot_of(gfn)
        _report_state(vm, V_STALE_FAULT_INSTALL, root.id, gfn, level, 0, s.gfn_to_pfn(gfn) if s is not None else None)


def invariants_mask(spec) -> int:
    """``VM(invariants=...)``: True (all), False/None (none) or a collection of names."""
    from ..errors import InvalidArgumentError
    names = {"notifier": INV_NOTIFIER, "memslot": INV_MEMSLOT, "tables": INV_TABLES, "roots": INV_ROOTS}
    if spec is None or spec is False:
        return 0
    if spec is True:
        return INV_ALL
    if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
        raise InvalidArgumentError(f"invariants must be True, False or a collection of names, got {spec!r}")
    m = 0
    for n in spec:
        if n not in names:
            raise InvalidArgumentError(f"unknown invariant {n!r}; invariants: {', '.join(names)}")
        m |= names[n]
    return m
