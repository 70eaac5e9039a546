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
"""
from __future__ import annotations

from typing import Optional

from ..results import ACCESS_NAMES, FRAME_STATES, VIOLATION_KINDS, Violation
from . import hostmem

# Violation kinds (TDP_V_* in csrc/tdpfast.h).
V_USE_AFTER_FREE, V_STALE_PAGE_TABLE, V_LOST_DIRTY, V_STALE_WRITE, V_LIVELOCK = 1, 2, 3, 4, 5


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
