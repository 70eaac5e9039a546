"""KVM's TDP iterator (arch/x86/kvm/mmu/tdp_iter.c: tdp_iter_start(), tdp_iter_next()).

A pre-order walk over the SPTEs of one root that overlap a gfn window: step down into
a present non-leaf entry (unless at ``min_level``), else step sideways, else up.  After
a yield the walk restarts from the root toward ``next_last_level_gfn`` -- without
advancing past the entry there (bug B9 did advance; ``skip_after_restart`` brings it back;
fixed by 3a0f64de479c "KVM: x86/mmu: Don't advance iterator after restart due to yielding").
"""
from __future__ import annotations

from typing import Optional

from . import hostmem
from .spte import (gfn_round_for_level, is_last_spte, is_shadow_present_pte, pages_per_level,
                   spte_index, spte_to_pfn)


def spte_to_child_frame(mem: hostmem.HostMem, spte: int, level: int) -> Optional[int]:
    """The child table of a present non-leaf SPTE (None if the SPTE is not one, or if it
    points at something that is not a page table any more)."""
    if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
        return None
    f = mem.frame_of(spte_to_pfn(spte))
    if f is None or mem.frames[f].state in (hostmem.GUEST, hostmem.FREE):
        return None
    return f


class TdpIter:
    def __init__(self, mem: hostmem.HostMem, root_frame: int, root_level: int, min_level: int,
                 start_gfn: int, skip_after_restart: bool = False):
        self.mem = mem
        self.root_level = root_level
        self.min_level = min_level
        self.skip_after_restart = skip_after_restart
        self.pt_path = {root_level: root_frame}   # level -> frame holding that level's entries
        self.next_last_level_gfn = start_gfn
        self.yielded = False
        self.restart()

    # --- the current entry -------------------------------------------------------------
    @property
    def frame(self) -> int:
        return self.pt_path[self.level]

    @property
    def index(self) -> int:
        return spte_index(self.gfn, self.level)

    def read(self) -> int:
        return self.mem.table(self.frame)[self.index]

    def write(self, value: int) -> None:
        self.mem.table(self.frame)[self.index] = value

    def _refresh(self) -> None:
        self.old_spte = self.read()

    # --- steps ---------------------------------------------------------------------------
    def restart(self) -> None:
        self.yielded = False
        self.yielded_gfn = self.next_last_level_gfn
        self.level = self.root_level
        self.gfn = gfn_round_for_level(self.next_last_level_gfn, self.level)
        self._refresh()
        self.valid = True

    def _try_step_down(self) -> bool:
        if self.level == self.min_level:
            return False
        # Re-read: the SPTE may have changed since the snapshot (e.g. it was zapped).
        self.old_spte = self.read()
        child = spte_to_child_frame(self.mem, self.old_spte, self.level)
        if child is None:
            return False
        self.level -= 1
        self.pt_path[self.level] = child
        self.gfn = gfn_round_for_level(self.next_last_level_gfn, self.level)
        self._refresh()
        return True

    def _try_step_side(self) -> bool:
        if self.index == 511:
            return False
        self.gfn += pages_per_level(self.level)
        self.next_last_level_gfn = self.gfn
        self._refresh()
        return True

    def _try_step_up(self) -> bool:
        if self.level == self.root_level:
            return False
        self.level += 1
        self.gfn = gfn_round_for_level(self.gfn, self.level)
        self._refresh()
        return True

    def _step(self) -> None:
        if self._try_step_down():
            return
        while True:
            if self._try_step_side():
                return
            if not self._try_step_up():
                break
        self.valid = False

    def next(self) -> None:
        if self.yielded:
            self.restart()
            if self.skip_after_restart:
                # B9: the caller's `continue` stepped once more after the restart,
                # skipping the last-level entry at the restart gfn.
                while self._try_step_down():
                    pass
                self._step()
            return
        self._step()
