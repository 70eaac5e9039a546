"""Guest and host activity for sweeps: each workload drives a VM with any number of vCPUs
and pCPUs (vCPU v runs on pCPU v mod pCPUs unless the workload migrates it) over
``pages`` 4K pages of guest memory for ``rounds`` rounds, from a seeded generator, so a
(workload, VM, pages, rounds, seed) point always does the same work.

The same kinds of activity as the modelled-cost rows of ``tdpfast bench`` (which fixes 8
vCPUs on 4 pCPUs): a boot-time fault storm with the MTRR zaps of kvm_zap_gfn_range(),
MMU-notifier unmaps and page migration, memslot deletion (kvm_mmu_zap_all_fast()),
dirty logging (eager split, write-protect, GET_DIRTY_LOG, huge pages recovered),
migration-heavy vCPU scheduling, and root churn.
"""
from __future__ import annotations

from typing import Callable, Dict

from .vm import VM


def _gpas(np, gfns):
    return np.asarray(gfns, dtype=np.uint64) << np.uint64(12)


def _run(vm: VM, v: int) -> None:
    vm.vcpu_run(v, v % vm.npcpus)


def _zap_and_flush(vm: VM, start: int, end: int) -> None:
    """kvm_zap_gfn_range(): zap the leaves of valid roots, then the flush the caller owes."""
    vm.mmu.kvm_zap_gfn_range(start, end)


def _populate(vm: VM, pages: int) -> None:
    import numpy as np

    share = max(pages // vm.nvcpus, 1)
    for v in range(vm.nvcpus):
        lo = min(v * share, pages - 1)
        _run(vm, v)
        vm.access_batch(v, _gpas(np, np.arange(lo, min(lo + share, pages))), "w")


def _touch(vm: VM, v: int, pages: int, n: int, rng, write_frac: float = 0.3) -> None:
    import numpy as np

    g = _gpas(np, rng.integers(0, pages, n))
    acc = (rng.random(n) < write_frac).astype(np.uint8)
    if not isinstance(vm, VM):
        acc = acc.tolist()    # the reference model's access_batch takes a list of access codes
    vm.access_batch(v, g, acc)


def boot(vm: VM, pages: int, rounds: int, rng) -> None:
    """Firmware on vCPU 0 (zaps of all memory for MTRR / CR0.CD changes), each AP comes up
    and programs its MTRRs (zap + flush), then every vCPU writes its share of memory for
    the first time, round-robin; 4K backing, so every first touch faults."""
    import numpy as np

    vm.add_memslot(0, pages, max_level=1)
    _run(vm, 0)
    low = _gpas(np, np.arange(min(pages, 2048)))
    for _ in range(4):
        vm.access_batch(0, low, "w")
        _zap_and_flush(vm, 0, pages)
    for v in range(1, vm.nvcpus):
        _run(vm, v)
        _zap_and_flush(vm, 0, pages)
    share = max(pages // vm.nvcpus, 1)
    step = max(share // max(rounds, 1), 1)
    for r in range(rounds):
        for v in range(vm.nvcpus):
            lo = v * share + r * step
            hi = min(lo + step, (v + 1) * share, pages)
            if lo < hi:
                _run(vm, v)
                vm.access_batch(v, _gpas(np, np.arange(lo, hi)), "w")


def notifier(vm: VM, pages: int, rounds: int, rng) -> None:
    """MMU-notifier churn: THP-sized host unmaps and page migrations (reclaim, NUMA
    balancing, compaction) while the vCPUs keep touching memory."""
    vm.add_memslot(0, pages, max_level=2)
    _populate(vm, pages)
    for i in range(rounds * 4):
        g = int(rng.integers(0, max(pages // 512, 1))) * 512
        vm.host_unmap(g, min(g + 512, pages))
        for _ in range(4):
            m = int(rng.integers(0, pages))
            if vm.backing(m) is not None:
                vm.host_migrate(m)
        v = i % vm.nvcpus
        _run(vm, v)
        _touch(vm, v, pages, 512, rng)


def memslot(vm: VM, pages: int, rounds: int, rng) -> None:
    """A small slot (a PCI BAR or VGA window) deleted and re-added while the guest works;
    every deletion is kvm_mmu_zap_all_fast()."""
    vm.add_memslot(0, pages, max_level=2)
    bar = vm.add_memslot(pages, 256, max_level=1)
    _populate(vm, pages)
    for _ in range(rounds):
        for v in range(vm.nvcpus):
            _run(vm, v)
            _touch(vm, v, pages, 512, rng)
        vm.delete_memslot(bar)
        bar = vm.add_memslot(pages, 256, max_level=1)


def dirty_log(vm: VM, pages: int, rounds: int, rng) -> None:
    """Live migration: enable dirty logging (eager split, write-protect, flush), rounds of
    guest writes and GET_DIRTY_LOG, then disable it (huge pages recovered)."""
    slot = vm.add_memslot(0, pages, max_level=2)
    _populate(vm, pages)
    vm.set_dirty_logging(slot, True)
    for _ in range(rounds):
        for v in range(vm.nvcpus):
            _run(vm, v)
            _touch(vm, v, pages, 256, rng, write_frac=1.0)
        vm.get_dirty_log(slot)
    vm.set_dirty_logging(slot, False)
    for v in range(vm.nvcpus):
        _run(vm, v)
        _touch(vm, v, pages, 256, rng)


def migration(vm: VM, pages: int, rounds: int, rng) -> None:
    """Migration-heavy scheduling: a random vCPU on a random pCPU at every step, with an
    occasional notifier unmap, so that entries left on an old pCPU would matter."""
    vm.add_memslot(0, pages, max_level=1)
    _populate(vm, pages)
    for i in range(rounds * 16):
        v = int(rng.integers(0, vm.nvcpus))
        vm.vcpu_run(v, int(rng.integers(0, vm.npcpus)))
        _touch(vm, v, pages, 256, rng)
        if i % 8 == 7:
            g = int(rng.integers(0, max(pages // 64, 1))) * 64
            vm.host_unmap(g, min(g + 64, pages))


def root_churn(vm: VM, pages: int, rounds: int, rng) -> None:
    """kvm_mmu_zap_all_fast() without a memslot change (MMIO generation wrap, an
    nx_huge_pages toggle) while the vCPUs keep running."""
    vm.add_memslot(0, pages, max_level=2)
    _populate(vm, pages)
    for _ in range(rounds):
        vm.mmu.zap_all_fast()
        for v in range(vm.nvcpus):
            _run(vm, v)
            _touch(vm, v, pages, 512, rng)


WORKLOADS: Dict[str, Callable] = {
    "boot": boot, "notifier": notifier, "memslot": memslot, "dirty_log": dirty_log,
    "migration": migration, "root_churn": root_churn,
}
