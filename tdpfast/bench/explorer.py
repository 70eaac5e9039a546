"""The explorer's rate: operations per second of the C explorer behind ``tdpfast fuzz``
(fresh VMs of 4,000 operations each, from VM seed 0, KVM's policy, every invariant on,
adversarial TLBs), on each vendor. The same numbers as ``tdpfast fuzz --json``'s
``ops_per_second``, here with a fixed operation count per round so that rounds compare.
It has no limit loop (nothing simpler does the same work) and no reference-model row (the
reference model has no explorer)."""
from __future__ import annotations

from typing import Iterator, List

from .. import fuzz
from .measure import per_unit, timing_row
from .profiles import Sizes
from .timing import time_rounds

ARCHES = ("vmx", "svm")


def explorer_ids(sz: Sizes) -> List[str]:
    return [f"explorer.{a}" for a in ARCHES]


def measure_explorer(sz: Sizes, progress) -> Iterator[dict]:
    for arch in ARCHES:
        progress.case(f"explorer.{arch}")
        cfg = fuzz.FuzzConfig(arch=arch)

        def run(_state=None):
            vm_seed, _, total = fuzz.explore(cfg, seed=0, budget_s=float("inf"), max_ops=sz.explorer_ops)
            if vm_seed is not None:    # KVM's policy is safe: a violation here is an engine bug
                raise RuntimeError(f"the explorer found a violation under KVM's policy ({arch}, VM seed {vm_seed})")
            return total

        t, total = time_rounds(run, None, sz.explorer_rounds)
        row = timing_row(f"explorer.{arch}", "explorer", "m_ops_per_s", per_unit(t, "m_ops_per_s", total),
                         better="higher",
                         extra={"arch": arch, "policy": "kvm", "invariants": True, "ops": total,
                                "ops_per_vm": cfg.chunk, "vms": -(-total // cfg.chunk)})
        yield row
