"""The MMU notifier of the reference model (virt/kvm/kvm_main.c's
kvm_mmu_notifier_invalidate_range_start/end and clear_flush_young, with mmu/mmu.c's
kvm_unmap_gfn_range()): the host unmaps, migrates and ages guest pages (the C engine's
counterpart is csrc/mmu_notifier.c).

While an invalidation is in progress (``mmu_invalidate_in_progress``) faults on its range
retry (is_page_fault_stale()); kvm_mmu_invalidate_end() bumps ``mmu_invalidate_seq``."""
from __future__ import annotations

from ..errors import FramePoolExhausted, InvalidArgumentError
from . import checker, cpu, hostmem, memslot as ms, tdp_mmu
from ._args import _int


def unmap_prepare(vm, start: int, end: int) -> None:
    """Record the backing of every backed gfn of the range (cannot fail in Python;
    the C engine pre-allocates here so nothing fails later)."""
    for s in vm.slots:
        if s is None or end <= s.base_gfn or s.end_gfn <= start:
            continue
        for g in range(max(start, s.base_gfn), min(end, s.end_gfn)):
            pfn = s.gfn_to_pfn(g)
            if pfn is not None:
                s.set_backing(g, pfn)


def kvm_mmu_invalidate_begin(vm, start: int, end: int) -> None:
    """kvm_mmu_invalidate_begin()/range_add(): concurrent ranges are unioned."""
    if not vm.mmu_invalidate_in_progress:
        vm.mmu_invalidate_start, vm.mmu_invalidate_end = start, end
    else:
        vm.mmu_invalidate_start = min(vm.mmu_invalidate_start, start)
        vm.mmu_invalidate_end = max(vm.mmu_invalidate_end, end)
    vm.mmu_invalidate_in_progress += 1


def kvm_mmu_invalidate_end(vm) -> None:
    """kvm_mmu_invalidate_end(): faults that raced with the invalidation retry."""
    vm.mmu_invalidate_seq += 1
    vm.mmu_invalidate_in_progress -= 1


def notifier_roots(vm) -> int:
    """kvm_tdp_mmu_unmap_gfn_range() visits every root, valid or not (policy
    ``notifier_zaps_invalid_roots``; before v5.16 only the valid ones)."""
    return tdp_mmu.ROOTS_ALL if vm.pol.notifier_zaps_invalid_roots else tdp_mmu.ROOTS_VALID


def unmap_finish(vm, start: int, end: int, flush: bool) -> None:
    """The end of invalidate_range_start (flush before returning if a valid root changed:
    no TLB may reach the pages once the host frees them), the host freeing the pages, and
    invalidate_range_end."""
    if flush:
        cpu.kvm_flush_remote_tlbs(vm)
    checker.check_range_unmapped(vm, start, end, checker.V_NOTIFIER_RANGE_MAPPED)   # I1
    for s in vm.slots:
        if s is None or end <= s.base_gfn or s.end_gfn <= start:
            continue
        for g in range(max(start, s.base_gfn), min(end, s.end_gfn)):
            pfn = s.gfn_to_pfn(g)
            if pfn is None:
                continue
            s.set_backing(g, None)
            ms.release_pfn(vm.mem, pfn)
    kvm_mmu_invalidate_end(vm)


class NotifierApi:
    """The host's side of the VM (``vm.host_*``); mixed into :class:`tdpfast.reference.vm.VM`."""

    def host_unmap(self, start_gfn: int, end_gfn: int) -> None:
        """MMU-notifier invalidation (kvm_mmu_notifier_invalidate_range_start() ->
        kvm_unmap_gfn_range()): zap every root's leaves in the range, flush before
        returning if a valid root changed, then the host frees the pages."""
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        k.op_begin()
        k.check_range(start, end)
        unmap_prepare(k, start, end)
        kvm_mmu_invalidate_begin(k, start, end)
        flush = tdp_mmu.zap_leafs(k, start, end, notifier_roots(k), False)
        unmap_finish(k, start, end, flush)
        k.log("host_unmap", start, end)
        k.op_end()

    def host_migrate(self, gfn: int) -> int:
        """Page migration: invalidate the gfn, move its page to a fresh pool frame."""
        k = self._k
        gfn = _int("gfn", gfn)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        s = k.slot_of(gfn)
        if s is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} is not in any memslot")
        old = s.gfn_to_pfn(gfn)
        if old is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} has no backing page to migrate")
        if k.mem.available() < 1:
            raise FramePoolExhausted(f"frame pool exhausted: no frame to migrate gfn {gfn:#x} to")
        s.set_backing(gfn, old)
        kvm_mmu_invalidate_begin(k, gfn, gfn + 1)
        if tdp_mmu.zap_leafs(k, gfn, gfn + 1, notifier_roots(k), False):
            cpu.kvm_flush_remote_tlbs(k)
        checker.check_range_unmapped(k, gfn, gfn + 1, checker.V_NOTIFIER_RANGE_MAPPED)   # I1
        f = k.mem.alloc(hostmem.GUEST)
        k.mem.frames[f].owner_gfn = gfn
        s.set_backing(gfn, k.mem.pfn(f))
        ms.release_pfn(k.mem, old)
        kvm_mmu_invalidate_end(k)
        k.log("host_migrate", gfn)
        k.op_end()
        return k.mem.pfn(f)

    def host_age(self, start_gfn: int, end_gfn: int) -> bool:
        """clear_flush_young (kvm_age_gfn()): no flush on x86 since ~v6.13
        (KVM_ELIDE_TLB_FLUSH_IF_YOUNG)."""
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        k.op_begin()
        k.check_range(start, end)
        young = tdp_mmu.age_gfn_range(k, start, end)
        k.log("host_age", start, end)
        k.op_end()
        return young
