"""Host physical memory: the frame pool that holds page tables and replacement guest pages.

Pool frame ``i`` is host pfn ``base_pfn + i``.  Frames are handed out from a LIFO free
stack (the most recently freed frame first), otherwise fresh in index order.  Every free
bumps the frame's generation, which lets the checker recognise a reused frame.  Page
tables are freed through RCU: ``free_rcu`` queues the frame and a grace period
(``synchronize_rcu``) frees the queue in order (handle_removed_pt() frees with call_rcu()).

A frame's 512 entries survive a free: only becoming a page table again refills them
(``tdp_mmu_alloc_sp``).  A frame that never was a table reads as zeroes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .._native import lib

# Frame states (the Violation.frame_state codes of tdpfast.results.FRAME_STATES); CURRENT
# is only reported: a memslot page that is still its gfn's page.
UNUSED, FREE, TABLE, GUEST, RCU, CURRENT = (lib.TDP_FRAME_UNUSED, lib.TDP_FRAME_FREE, lib.TDP_FRAME_TABLE,
                                           lib.TDP_FRAME_GUEST, lib.TDP_FRAME_RCU, lib.TDP_FRAME_CURRENT)

POOL_MAX_FRAMES = 1 << 26


@dataclass
class Frame:
    gen: int = 0
    state: int = UNUSED
    # A page-table page (struct kvm_mmu_page):
    sp_level: int = 0        # level of the entries in this table
    sp_gfn: int = 0          # first gfn the table covers
    sp_root: int = 0         # id of the root it belongs to
    sp_unlinked: bool = False
    sp_nx: bool = False      # on the possible-NX-huge-page list
    parent: Optional[int] = None   # frame of the parent table (None for roots)
    owner_gfn: int = 0       # a guest page: the gfn it backs
    entries: Optional[List[int]] = None  # contents once it has been a table


@dataclass
class HostMem:
    base_pfn: int
    limit: int
    frames: List[Frame] = field(default_factory=list)
    free_stack: List[int] = field(default_factory=list)   # top = next handed out
    rcu_pending: List[int] = field(default_factory=list)  # in call_rcu() order
    in_use: int = 0          # TABLE + GUEST + RCU
    grace_periods: int = 0

    def pfn(self, f: int) -> int:
        return self.base_pfn + f

    def frame_of(self, pfn: int) -> Optional[int]:
        """Pool frame of a host pfn, or None outside the pool (e.g. memslot regions)."""
        f = pfn - self.base_pfn
        return f if 0 <= f < len(self.frames) else None

    def available(self) -> int:
        return max(self.limit - self.in_use, 0)

    def alloc(self, state: int) -> Optional[int]:
        if self.in_use >= self.limit:
            return None
        if self.free_stack:
            f = self.free_stack.pop()       # LIFO: the last freed frame first
        else:
            f = len(self.frames)
            self.frames.append(Frame())
        old = self.frames[f]
        self.frames[f] = Frame(gen=old.gen, state=state, entries=old.entries)
        self.in_use += 1
        return f

    def free_now(self, f: int) -> None:
        fr = self.frames[f]
        fr.gen += 1
        fr.state = FREE
        self.free_stack.append(f)
        self.in_use -= 1

    def free_rcu(self, f: int) -> None:
        """call_rcu(): the frame waits for the end of the grace period."""
        self.frames[f].state = RCU
        self.rcu_pending.append(f)

    def synchronize_rcu(self) -> None:
        """A grace period ends: queued frames are freed in the order they were queued."""
        pending, self.rcu_pending = self.rcu_pending, []
        for f in pending:
            self.free_now(f)
        if pending:
            self.grace_periods += 1

    def table(self, f: int) -> List[int]:
        return self.frames[f].entries

    def read_entry(self, f: int, index: int) -> int:
        """What a hardware walk reads: a guest page reads as zeroes (guest data is not
        modelled), and so does a frame that never was a table."""
        fr = self.frames[f]
        if fr.state == GUEST or fr.entries is None:
            return 0
        return fr.entries[index]

    def info(self) -> Dict[str, int]:
        return {"in_use": self.in_use - len(self.rcu_pending), "free": len(self.free_stack),
                "rcu_pending": len(self.rcu_pending), "limit": self.limit}
