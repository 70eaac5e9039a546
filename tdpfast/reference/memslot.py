"""Memslots of the reference model: which host page backs each gfn -- the truth the
checker compares with -- plus the memslot calls of the API: add and delete, dirty logging
(KVM_GET_DIRTY_LOG) and gfn write tracking (the C engine's counterpart is csrc/memslot.c).

A memslot is backed by one contiguous host region, 1 GiB aligned so that host pfn and
gfn agree modulo 1 GiB (huge mappings are possible wherever the gfns allow them).
Pages the host unmapped or migrated are recorded per 512-gfn *chunk*: once a chunk
deviates from the region, no 2M page covers it, and once any chunk of a 1 GiB region
deviates, no 1G page covers that region (kvm_mmu_hugepage_adjust() via the host mapping
level).  [MODEL CHOICE] frames of the slot region are never reused;
replacement pages come from the frame pool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple, Union

from ..errors import FramePoolExhausted, InvalidArgumentError, InvalidStateError
from ..results import Memslot as PublicMemslot
from . import checker, cpu, hostmem, mmu, tdp_mmu
from ._args import _int
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
        """Largest page for gfn (kvm_mmu_hugepage_adjust()): inside the slot,
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


def free_slot(vm, s: Memslot) -> None:
    """Give the slot's pool pages back and free its index (memslot deletion)."""
    for pfn in list(s.pool_pages()):
        release_pfn(vm.mem, pfn)
    vm.slots = [None if x is s else x for x in vm.slots]


class MemslotApi:
    """The memslot calls of the reference VM; mixed into :class:`tdpfast.reference.vm.VM`."""

    def add_memslot(self, base_gfn: int, npages: int, *, readonly: bool = False, dirty_log: bool = False,
                    max_level: int = 3) -> PublicMemslot:
        k = self._k
        base, npages = _int("base_gfn", base_gfn), _int("npages", npages)
        max_level = _int("max_level", max_level, 0, 99)
        flags = (READONLY if readonly else 0) | (DIRTY_LOG if dirty_log else 0)
        k.op_begin()
        if npages == 0:
            raise InvalidArgumentError("npages must be positive")
        k.check_range(base, base + npages)
        if not 1 <= max_level <= 3:
            raise InvalidArgumentError(f"max_level must be 1 (4K), 2 (2M) or 3 (1G), got {max_level}")
        for s in k.slots:
            if s is not None and base < s.end_gfn and s.base_gfn < base + npages:
                raise InvalidArgumentError(f"gfns {base:#x}..{base + npages:#x} overlap memslot {s.id}")
        # A 1 GiB-aligned host region with host pfn == gfn modulo 1 GiB.
        align = 1 << 18
        region = (k.host_next_region_pfn + align - 1) & ~(align - 1)
        host_base = region + (base & (align - 1))
        if host_base + npages > 1 << (k.cfg.maxphyaddr - 12):
            raise FramePoolExhausted("host physical address space exhausted")
        slot_id = max((s.id + 1 for s in k.slots if s is not None), default=0)
        slot = Memslot(slot_id, base, npages, flags, max_level, host_base,
                       dirty=set() if flags & DIRTY_LOG else None)
        if None in k.slots:
            k.slots[k.slots.index(None)] = slot
        else:
            k.slots.append(slot)
        k.host_next_region_pfn = host_base + npages
        k.memslots_gen += 1
        k.log("add_memslot", base, npages, flags, max_level)
        k.op_end()
        return self.memslot(slot_id)

    def memslot(self, slot_id: int) -> PublicMemslot:
        s = self._k.slot_by_id(_int("slot", slot_id, 0, 1 << 30))
        return PublicMemslot(s.id, s.base_gfn, s.npages, s.readonly, s.dirty_log, s.max_level, s.host_base_pfn)

    @property
    def memslots(self) -> List[PublicMemslot]:
        return [self.memslot(s.id) for s in self._k.slots if s is not None]

    def _slot_id(self, slot: Union[PublicMemslot, int]) -> int:
        return slot.id if isinstance(slot, PublicMemslot) else _int("slot", slot, 0, 1 << 30)

    def delete_memslot(self, slot: Union[PublicMemslot, int]) -> None:
        """kvm_arch_flush_shadow_memslot(): kvm_mmu_zap_all_fast() -- or, with
        ``memslot_delete_zap_all=False``, only the slot's gfns with a flush (B18: commit
        4e103134b862 "KVM: x86/mmu: Zap only the relevant pages when removing a memslot",
        reverted by d012a06ab1d2)."""
        k = self._k
        sid = self._slot_id(slot)
        k.op_begin()
        s = k.slot_by_id(sid)
        if s.deleting:
            raise InvalidStateError(f"memslot {sid} is already being deleted by a stepped operation")
        if k.pol.memslot_delete_zap_all:
            mmu.kvm_mmu_zap_all_fast(k)
        elif tdp_mmu.zap_leafs(k, s.base_gfn, s.end_gfn, tdp_mmu.ROOTS_ALL, False):
            mmu.kvm_flush_remote_tlbs_memslot(k, s)
        checker.check_range_unmapped(k, s.base_gfn, s.end_gfn, checker.V_DELETED_SLOT_MAPPED)   # I5
        free_slot(k, s)
        k.memslots_gen += 1
        k.log("delete_memslot", sid)
        k.op_end()

    def backing(self, gfn: int) -> Optional[int]:
        s = self._k.slot_of(_int("gfn", gfn))
        return s.gfn_to_pfn(gfn) if s is not None else None

    def set_dirty_logging(self, slot: Union[PublicMemslot, int], enable: bool = True) -> None:
        """kvm_mmu_slot_apply_flags(): enable = eager split (no flush), write-protect, then
        the memslot flush -- always since b64d740ea7dd "KVM: x86/mmu: Always flush TLBs when
        enabling dirty logging" (B14 flushes only if an SPTE changed); disable = recover
        huge pages, flushing if any changed."""
        k = self._k
        sid = self._slot_id(slot)
        enable = bool(enable)
        k.op_begin()
        s = k.slot_by_id(sid)
        if s.deleting:
            raise InvalidStateError(f"memslot {sid} is being deleted")
        if enable and not s.dirty_log:
            if k.pol.eager_split:
                need = (s.npages + 511) // 512 + 2
                avail = k.mem.available()
                if avail < need * max(len(k.roots), 1) and \
                        avail < k.stats["pages_2m"] + 512 * k.stats["pages_1g"] + 1:
                    raise FramePoolExhausted("frame pool exhausted: eager splitting needs more frames")
            s.dirty = set()
            s.flags |= DIRTY_LOG
            if k.pol.eager_split:
                tdp_mmu.split_huge_pages(k, s.base_gfn, s.end_gfn, 1)
            changed = tdp_mmu.write_protect(k, s.base_gfn, s.end_gfn, 1)
            if k.pol.dirty_log_enable_flush == "always" or changed:
                mmu.kvm_flush_remote_tlbs_memslot(k, s)
        elif not enable and s.dirty_log:
            s.flags &= ~DIRTY_LOG
            s.dirty = None
            tdp_mmu.recover_huge_pages(k, s.base_gfn, s.end_gfn)   # each root that changed flushes the slot
        k.log("set_dirty_logging", sid, int(enable))
        k.op_end()

    def get_dirty_log(self, slot: Union[PublicMemslot, int]) -> List[int]:
        """KVM_GET_DIRTY_LOG (kvm_get_dirty_log_protect()): fetch-and-clear, re-protect each
        dirty page, flush the memslot if any was dirty -- before the bitmap is reported, so
        that every later write faults and is logged."""
        k = self._k
        sid = self._slot_id(slot)
        self.memslot(sid)
        k.op_begin()
        s = k.slot_by_id(sid)
        if not s.dirty_log:
            raise InvalidStateError(f"memslot {sid} does not have dirty logging enabled")
        dirty = sorted(s.dirty)
        s.dirty = set()
        for g in dirty:
            tdp_mmu.write_protect(k, g, g + 1, 1)
        if dirty:
            mmu.kvm_flush_remote_tlbs_memslot(k, s)
        k.log("get_dirty_log", sid)
        k.op_end()
        return dirty

    def write_protect_gfn(self, gfn: int, enable: bool = True) -> None:
        """KVM's gfn write tracking (kvm_write_track_add_gfn): write-protect, flush if an
        SPTE changed; or release the gfn."""
        k = self._k
        gfn = _int("gfn", gfn)
        enable = bool(enable)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        s = k.slot_of(gfn)
        if s is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} is not in any memslot")
        if enable:
            s.wrtrack.add(gfn)
            if tdp_mmu.write_protect_gfn(k, gfn):
                cpu.kvm_flush_remote_tlbs(k)
        else:
            s.wrtrack.discard(gfn)
        k.log("write_protect_gfn", gfn, int(enable))
        k.op_end()
