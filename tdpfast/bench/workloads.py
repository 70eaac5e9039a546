"""Cost workloads: deterministic modelled counters (no timing) of the six workloads of
:mod:`tdpfast.workload` under every policy. Each runs on a fresh VM per policy, 8 vCPUs on 4
pCPUs with Skylake TLBs, VMX."""
from __future__ import annotations

import time
from typing import Dict, Iterator, List, Tuple

from ..policy import Policy
from ..tlbconfig import TLBConfig
from ..vm import VM
from ..workload import WORKLOADS
from . import reference as ref
from .cases import numpy_module
from .profiles import SEED, Sizes

WL_VCPUS, WL_PCPUS = 8, 4
COST_KEYS = ("remote_tlb_flush", "remote_tlb_flush_requests", "ipis", "invept_single", "invept_global",
             "tlb_misses", "walk_refs", "spte_writes", "pf_taken", "cycles", "violations")
SAFE_POLICIES = ("kvm", "kvm-v5.17", "flush-on-put-root", "precise-range", "kvm-v6.12-zap-collapsible",
                 "flush-after-every-zap", "per-spte-flush", "removed-pt-flushes-itself")


def _wl_vm(policy: Policy, seed: int, vm_cls=VM) -> VM:
    return vm_cls(arch="vmx", vcpus=WL_VCPUS, pcpus=WL_PCPUS, tlb=TLBConfig.preset("skylake"),
                  policy=policy, seed=seed, record=False)


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
