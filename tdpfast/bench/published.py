"""Published counts: disabling dirty logging on 64 vCPUs x 4 GiB backed by 2 MiB pages
(dirty_log_perf_test -s anonymous_hugetlb_2mb -v 64 -b 4g -e) costs 131,072 remote TLB
flushes when KVM zaps collapsible SPTEs one self-flushing zap at a time (<= v6.12) and 76
when it batches the flushes and recovers huge pages in place (v6.13+), as reported in
D. Matlack, "[PATCH 3/7] KVM: x86/mmu: Batch TLB flushes when zapping collapsible TDP MMU
SPTEs", kvm@vger.kernel.org, 2024-08-05 (Message-ID 20240805233114.4060019-4-dmatlack@google.com).
131,072 = 64 x 4 GiB / 2 MiB (one flush per collapsed huge page). The model reproduces
76 as 75 need_resched yields + the final flush, choosing ``Policy.yield_every`` so that
the walk yields 75 times (KVM's yields come from real scheduling)."""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Iterator, List, Optional

from ..policy import Policy
from ..tlbconfig import TLBConfig
from ..vm import VM
from . import reference as ref
from .profiles import Sizes

PUBLISHED_FLUSHES = {"zap_collapsible": 131072, "recover": 76}
TARGET_YIELDS = PUBLISHED_FLUSHES["recover"] - 1   # 76 = 75 yields + the final flush
FULL_SCALE = (64, 1 << 20)                          # vCPUs, 4K pages per vCPU (4 GiB)
REFERENCE_SCALE = (4, 4096)                         # 4 vCPUs x 16 MiB on both implementations
PUBLISHED_IDS = ("published.zap_collapsible", "published.recover", "published.recover_yield")


def published_run(sz: Sizes, mode: Optional[str], yield_every: int = 0, vm_cls=VM) -> Dict[str, int]:
    """Populate at 2M, enable dirty logging (eager split to 4K), then disable it with
    ``huge_recovery=mode``; the counters of the disable only."""
    nv, per = sz.published_vcpus, sz.published_pages_per_vcpu
    pol = Policy.kvm() if mode is None else Policy.kvm().replace(huge_recovery=mode)
    vm = vm_cls(vcpus=nv, pcpus=nv, record=False, tlb=TLBConfig.preset("skylake"), policy=pol)
    npages = nv * per
    slot = vm.add_memslot(0, npages, max_level=2)
    for v in range(nv):
        vm.vcpu_run(v, v)
    vm.mmu.map_range(0, npages, level=2)
    vm.set_dirty_logging(slot, True)
    for v in range(nv):          # the vCPUs are back in the guest when logging is disabled
        vm.vcpu_run(v, v)
    if yield_every:
        vm.policy = vm.policy.replace(yield_every=yield_every)
    vm.reset_stats()
    t0 = time.perf_counter_ns()
    vm.set_dirty_logging(slot, False)
    dt = time.perf_counter_ns() - t0
    st = vm.stats
    out = {k: st[k] for k in ("remote_tlb_flush", "ipis", "iter_yields", "huge_pages_recovered", "cycles",
                              "spte_writes", "violations")}
    out["iter_steps"] = sum(st[f"iter_visited_l{i}"] for i in range(1, 6))
    out["huge_pages"] = npages // 512
    out["disable_ms"] = dt / 1e6
    return out


def published_ids(sz: Sizes) -> List[str]:
    return list(PUBLISHED_IDS)


def _row(rid: str, sz: Sizes, mode: str, counters: dict, expected: int, yield_every: int = 0) -> dict:
    return {"id": rid, "kind": "published", "group": "published", "mode": mode, "yield_every": yield_every,
            "vcpus": sz.published_vcpus, "pages_per_vcpu": sz.published_pages_per_vcpu,
            "published_flushes": PUBLISHED_FLUSHES[mode], "expected_flushes": expected,
            "flushes": counters["remote_tlb_flush"], "match": counters["remote_tlb_flush"] == expected,
            "counters": {k: v for k, v in counters.items() if k != "disable_ms"},   # counts only: compared exactly
            "disable_ms": counters["disable_ms"], "reference": None}


def measure_published(sz: Sizes, progress) -> Iterator[dict]:
    full_scale = (sz.published_vcpus, sz.published_pages_per_vcpu) == FULL_SCALE
    rows = []
    progress.case("published.zap_collapsible")
    zc = published_run(sz, "zap_collapsible")
    # one self-flushing atomic zap per collapsed 2M region
    rows.append(_row("published.zap_collapsible", sz, "zap_collapsible", zc,
                     PUBLISHED_FLUSHES["zap_collapsible"] if full_scale else zc["huge_pages"]))
    yield rows[-1]
    progress.case("published.recover")
    rec = published_run(sz, "recover")
    # no need_resched: one flush at the end
    rows.append(_row("published.recover", sz, "recover", rec, rec["iter_yields"] + 1))
    yield rows[-1]
    progress.case("published.recover_yield")
    ye = max(1, rec["iter_steps"] // TARGET_YIELDS)
    recy = published_run(sz, "recover", yield_every=ye)
    rows.append(_row("published.recover_yield", sz, "recover", recy, recy["iter_yields"] + 1, ye))
    if full_scale:
        rows[-1]["match"] = rows[-1]["match"] and recy["remote_tlb_flush"] == PUBLISHED_FLUSHES["recover"]
    yield rows[-1]
    for r in rows:
        r["reference"] = ref.run_reference("published", _on_reference, r, sz)


def _on_reference(model, row: dict, sz: Sizes) -> dict:
    """The same run at 4 vCPUs x 16 MiB on both implementations: the flush counts must agree."""
    vcpus, per = REFERENCE_SCALE
    small = dataclasses.replace(sz, published_vcpus=vcpus, published_pages_per_vcpu=per)
    mode = row["mode"]
    c = published_run(small, mode)
    ye = max(1, c["iter_steps"] // TARGET_YIELDS) if row["yield_every"] else 0
    c = published_run(small, mode, ye)
    r = published_run(small, mode, ye, vm_cls=model.VM)
    return {"status": "ok", "vcpus": vcpus, "pages_per_vcpu": per,
            "speedup": r["disable_ms"] / max(c["disable_ms"], 1e-6), "flushes": r["remote_tlb_flush"],
            "c_flushes": c["remote_tlb_flush"], "counters_match": r["remote_tlb_flush"] == c["remote_tlb_flush"]}
