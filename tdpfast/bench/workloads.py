"""Cost workloads: deterministic modelled counters (no timing) of six workloads under every
policy. Each runs on a fresh VM per policy, 8 vCPUs on 4 pCPUs with Skylake TLBs, VMX. Where
KVM's caller owes the flush (kvm_zap_gfn_range), the workload does what the caller does."""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, List, Tuple

from ..policy import Policy
from ..tlbconfig import TLBConfig
from ..vm import VM
from . import reference as ref
from .cases import gpas_of, numpy_module
from .profiles import SEED, Sizes

WL_VCPUS, WL_PCPUS = 8, 4
COST_KEYS = ("remote_tlb_flush", "remote_tlb_flush_requests", "ipis", "invept_single", "invept_global",
             "tlb_misses", "walk_refs", "spte_writes", "pf_taken", "cycles", "violations")
SAFE_POLICIES = ("kvm", "kvm-v5.17", "flush-on-put-root", "precise-range", "kvm-v6.12-zap-collapsible",
                 "flush-after-every-zap", "per-spte-flush", "removed-pt-flushes-itself")


def _wl_vm(policy: Policy, seed: int, vm_cls=VM) -> VM:
    return vm_cls(arch="vmx", vcpus=WL_VCPUS, pcpus=WL_PCPUS, tlb=TLBConfig.preset("skylake"),
                  policy=policy, seed=seed, record=False)


def _zap_and_flush(vm: VM, start: int, end: int) -> None:
    """kvm_zap_gfn_range(): zap leaves of valid roots, then the flush the caller owes."""
    vm.mmu.kvm_zap_gfn_range(start, end)


def wl_boot(vm: VM, pages: int, rounds: int, rng) -> None:
    """Boot-like fault storm: firmware on vCPU 0 (with MTRR/CR0.CD zaps of all memory),
    then the APs come up (each programs MTRRs: zap + flush) and every vCPU writes its
    share of memory for the first time, round-robin; 4K backing (no THP), so every
    page faults."""
    np = numpy_module()
    vm.add_memslot(0, pages, max_level=1)
    vm.vcpu_run(0, 0)
    low = gpas_of(np.arange(min(pages, 2048)))
    for _ in range(4):
        vm.access_batch(0, low, "w")
        _zap_and_flush(vm, 0, pages)
    for v in range(1, WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        _zap_and_flush(vm, 0, pages)
    share = pages // WL_VCPUS
    step = max(share // rounds, 1)
    for r in range(rounds):
        for v in range(WL_VCPUS):
            lo = v * share + r * step
            vm.vcpu_run(v, v % WL_PCPUS)    # 8 vCPUs share 4 pCPUs: (re-)enter before running
            vm.access_batch(v, gpas_of(np.arange(lo, min(lo + step, (v + 1) * share))), "w")


def _populate_all(vm: VM, pages: int) -> None:
    np = numpy_module()
    share = pages // WL_VCPUS
    for v in range(WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        vm.access_batch(v, gpas_of(np.arange(v * share, (v + 1) * share)), "w")


def _random_touch(vm: VM, v: int, pages: int, n: int, rng, write_frac: float = 0.3) -> None:
    np = numpy_module()
    g = gpas_of(rng.integers(0, pages, n))
    acc = (rng.random(n) < write_frac).astype(np.uint8)
    if not isinstance(vm, VM):
        acc = acc.tolist()  # the reference model's access_batch takes no uint8 buffer (yet)
    vm.access_batch(v, g, acc)


def wl_notifier(vm: VM, pages: int, rounds: int, rng) -> None:
    """MMU-notifier churn: THP-sized host_unmap()s and host_migrate()s (reclaim, NUMA
    balancing, compaction) while vCPUs keep touching memory."""
    vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    for i in range(rounds * 4):
        g = int(rng.integers(0, max(pages // 512, 1))) * 512
        vm.host_unmap(g, min(g + 512, pages))
        for _ in range(4):
            m = int(rng.integers(0, pages))
            if vm.backing(m) is not None:
                vm.host_migrate(m)
        v = i % WL_VCPUS
        vm.vcpu_run(v, v % WL_PCPUS)
        _random_touch(vm, v, pages, 512, rng)


def wl_memslot(vm: VM, pages: int, rounds: int, rng) -> None:
    """Memslot deletion: a small slot (a PCI BAR / VGA window) is deleted and re-added
    while the guest works; every deletion is kvm_mmu_zap_all_fast()."""
    vm.add_memslot(0, pages, max_level=2)
    bar = vm.add_memslot(pages, 256, max_level=1)
    _populate_all(vm, pages)
    for _ in range(rounds):
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 512, rng)
        vm.delete_memslot(bar)
        bar = vm.add_memslot(pages, 256, max_level=1)


def wl_dirty_log(vm: VM, pages: int, rounds: int, rng) -> None:
    """Dirty logging (live migration): enable (eager split, write-protect, flush), cycles
    of guest writes + GET_DIRTY_LOG, then disable (huge pages recovered)."""
    slot = vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    vm.set_dirty_logging(slot, True)
    for _ in range(rounds):
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 256, rng, write_frac=1.0)
        vm.get_dirty_log(slot)
    vm.set_dirty_logging(slot, False)
    for v in range(WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        _random_touch(vm, v, pages, 256, rng)


def wl_migration(vm: VM, pages: int, rounds: int, rng) -> None:
    """Migration-heavy scheduling: 8 vCPUs placed on random pCPUs of 4 at every step, with
    an occasional notifier unmap so that stale entries left on old pCPUs would matter."""
    vm.add_memslot(0, pages, max_level=1)
    _populate_all(vm, pages)
    for i in range(rounds * 16):
        v = int(rng.integers(0, WL_VCPUS))
        vm.vcpu_run(v, int(rng.integers(0, WL_PCPUS)))
        _random_touch(vm, v, pages, 256, rng)
        if i % 8 == 7:
            g = int(rng.integers(0, max(pages // 64, 1))) * 64
            vm.host_unmap(g, min(g + 64, pages))


def wl_root_churn(vm: VM, pages: int, rounds: int, rng) -> None:
    """Root churn: kvm_mmu_zap_all_fast() without a memslot change (MMIO generation
    wrap, nx_huge_pages toggle) while the vCPUs keep running."""
    vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    for _ in range(rounds):
        vm.mmu.zap_all_fast()
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 512, rng)


WORKLOADS: Dict[str, Callable] = {
    "boot": wl_boot, "notifier": wl_notifier, "memslot": wl_memslot, "dirty_log": wl_dirty_log,
    "migration": wl_migration, "root_churn": wl_root_churn,
}


def cost_policies() -> List[Tuple[str, Policy]]:
    """Every named policy, plus one derived: every unlinked table flushes its own range
    (pre-v5.18 handle_removed_pt, without B6's wrong range)."""
    out = [(n, Policy.named(n)) for n in Policy.names()]
    out.append(("removed-pt-flushes-itself", Policy.kvm().replace(removed_pt_flush="table")))
    return out


def run_workload(name: str, policy: Policy, pages: int, rounds: int, seed: int = SEED, vm_cls=VM) -> Dict[str, int]:
    np = numpy_module()
    vm = _wl_vm(policy, seed, vm_cls)
    WORKLOADS[name](vm, pages, rounds, np.random.default_rng(seed))
    st = vm.stats
    return {k: st[k] for k in COST_KEYS}


def cost_ids(sz: Sizes) -> List[str]:
    return [f"cost.{w}.{p}" for w in WORKLOADS for p, _ in cost_policies()]


def measure_costs(sz: Sizes, progress) -> Iterator[dict]:
    pols = cost_policies()
    kvm_rows = {}
    for wname in WORKLOADS:
        for pname, pol in pols:
            rid = f"cost.{wname}.{pname}"
            progress.case(rid)
            t1 = time.perf_counter_ns()
            c = run_workload(wname, pol, sz.wl_pages, sz.wl_rounds)
            wall = time.perf_counter_ns() - t1
            row = {"id": rid, "kind": "cost", "group": "cost", "workload": wname, "policy": pname,
                   "safe": pname in SAFE_POLICIES, "switches": pol.changed(), "counters": {k: c[k] for k in COST_KEYS},
                   "wall_ms": wall / 1e6, "reference": None}
            if pname == "kvm":
                kvm_rows[wname] = row
            yield row
    for wname, row in kvm_rows.items():
        row["reference"] = ref.run_reference("costs", _cost_reference, wname, sz)


def _cost_reference(model, wname: str, sz: Sizes) -> dict:
    """The workload under KVM's policy at a smaller size on both implementations: the
    speedup, and whether the counters agree."""
    pages, rounds = max(sz.wl_pages // sz.ref_scale, 2048), max(sz.wl_rounds // 4, 2)
    t0 = time.perf_counter_ns()
    c = run_workload(wname, Policy.kvm(), pages, rounds)
    t1 = time.perf_counter_ns()
    r = run_workload(wname, Policy.kvm(), pages, rounds, vm_cls=model.VM)
    t2 = time.perf_counter_ns()
    differ = sorted(k for k in COST_KEYS if c[k] != r[k])
    return {"status": "ok", "pages": pages, "rounds": rounds, "speedup": (t2 - t1) / max(t1 - t0, 1),
            "counters_match": not differ, "differ": {k: [c[k], r[k]] for k in differ}}
