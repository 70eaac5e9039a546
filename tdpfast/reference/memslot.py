"""Memslots: which host page backs each gfn -- the truth the checker compares with.

A memslot is backed by one contiguous host region, 1 GiB aligned so that host pfn and
gfn agree modulo 1 GiB (huge mappings are possible wherever the gfns allow them).
Pages the host unmapped or migrated are recorded per 512-gfn *chunk*: once a chunk
deviates from the region, no 2M page covers it, and once any chunk of a 1 GiB region
deviates, no 1G page covers that region (kvm_mmu_hugepage_adjust via the host mapping
level, kvm-tdp-mmu.md §1.6).  [MODEL CHOICE] frames of the slot region are never reused;
replacement pages come from the frame pool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from . import hostmem
from .spte import pages_per_level

READONLY, DIRTY_LOG = 1, 2


@dataclass(eq=False)
class Memslot:
    id: int
    base_gfn: int
    npages: int
    flags: int
    max_level: int
    host_base_pfn: int
    dev: Dict[int, List[Optional[int]]] = field(default_factory=dict)   # chunk -> 512 pfns (None: unbacked)
    dev_count_1g: Dict[int, int] = field(default_factory=dict)          # 1G region -> deviating chunks
    dirty: Optional[Set[int]] = None      # dirty bitmap, as a set of gfns (None: not logging)
    wrtrack: Set[int] = field(default_factory=set)   # gfns write-tracked by KVM
    deleting: bool = False                # KVM_MEMSLOT_INVALID during a stepped deletion

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.end_gfn

    @property
    def readonly(self) -> bool:
        return bool(self.flags & READONLY)

    @property
    def dirty_log(self) -> bool:
        return bool(self.flags & DIRTY_LOG)

    def _chunk(self, gfn: int) -> int:
        return (gfn >> 9) - (self.base_gfn >> 9)

    def _region_1g(self, gfn: int) -> int:
        return (gfn >> 18) - (self.base_gfn >> 18)

    # --- the host mapping ------------------------------------------------------------------
    def gfn_to_pfn(self, gfn: int) -> Optional[int]:
        chunk = self.dev.get(self._chunk(gfn))
        if chunk is not None:
            return chunk[gfn & 511]
        return self.host_base_pfn + (gfn - self.base_gfn)

    def set_backing(self, gfn: int, pfn: Optional[int]) -> None:
        c = self._chunk(gfn)
        if c not in self.dev:
            first = gfn & ~511
            self.dev[c] = [self.host_base_pfn + (g - self.base_gfn) if self.contains(g) else None
                           for g in range(first, first + 512)]
            r = self._region_1g(gfn)
            self.dev_count_1g[r] = self.dev_count_1g.get(r, 0) + 1
        self.dev[c][gfn & 511] = pfn

    def pool_pages(self):
        """Replacement (pool) pfns of deviating chunks, in gfn order."""
        for c in sorted(self.dev):
            for pfn in self.dev[c]:
                if pfn is not None:
                    yield pfn

    # --- what KVM may map -------------------------------------------------------------------
    def max_mapping_level(self, gfn: int, invalidating: Optional[Tuple[int, int]] = None) -> int:
        """Largest page for gfn (kvm_mmu_hugepage_adjust, §1.6): inside the slot,
        host-contiguous, not write-tracked; a dirty-logged slot maps 4K only.
        [MODEL CHOICE] the host splits a huge mapping before invalidating part of it, so
        while an invalidation of ``invalidating`` = (start, end) is in progress the host
        maps the pages around it small."""
        if self.dirty_log:
            return 1
        level = self.max_level
        while level > 1:
            span = pages_per_level(level)
            base = gfn & ~(span - 1)
            if (base >= self.base_gfn and base + span <= self.end_gfn
                    and not (level == 2 and self._chunk(base) in self.dev)
                    and not (level == 3 and self.dev_count_1g.get(self._region_1g(base), 0))
                    and not any(base <= g < base + span for g in self.wrtrack)
                    and not (invalidating and base < invalidating[1] and invalidating[0] < base + span)):
                break
            level -= 1
        return level

    def writable(self, gfn: int) -> bool:
        return not self.readonly and gfn not in self.wrtrack

    def mark_dirty(self, gfn: int) -> None:
        if self.dirty is not None:
            self.dirty.add(gfn)

    def is_dirty(self, gfn: int) -> bool:
        return self.dirty is not None and gfn in self.dirty


def release_pfn(mem: hostmem.HostMem, pfn: int) -> None:
    """The host frees a page: a pool frame returns to the LIFO pool at once (page-cache
    pages do not wait for KVM's grace periods)."""
    f = mem.frame_of(pfn)
    if f is not None and mem.frames[f].state == hostmem.GUEST:
        mem.free_now(f)


def fault_in_pfn(mem: hostmem.HostMem, slot: Memslot, gfn: int) -> Optional[int]:
    """hva_to_pfn(): the backing page; for a gfn the host unmapped, a fresh pool page."""
    pfn = slot.gfn_to_pfn(gfn)
    if pfn is not None:
        return pfn
    f = mem.alloc(hostmem.GUEST)
    if f is None:
        return None
    mem.frames[f].owner_gfn = gfn
    pfn = mem.pfn(f)
    slot.set_backing(gfn, pfn)
    return pfn
