"""The tables' and roots' invariants are walked incrementally by default (csrc/checker.c):
only the tables written or re-purposed since the last walk are read again, and anything
wrong hands over to the full walk, which is the specification and reports. The verdicts
must be the full walk's: the same violations (kind, root, gfn, level, SPTE) at the same
operation. VM(invariant_walk="crosscheck") runs both and makes a disagreement an engine
warning, which the suite's health check fails."""
import subprocess

import pytest

from conftest import build_c_test
from tdpfast import VM, InvalidArgumentError, Policy, fuzz


def _explore(policy, arch, seed, walk):
    cfg = fuzz.FuzzConfig(policy=Policy.named(policy), arch=arch)
    vm = cfg.vm(seed, record=False).fresh(invariant_walk=walk)
    ran = vm._fuzz(seed, cfg.chunk)
    return ran, [(v.kind, v.root, v.gpa, v.level, v.spte, v.event) for v in vm.violations], vm.health()


def test_invariant_walk_is_validated_and_kept_by_fresh():
    assert VM()._kwargs["invariant_walk"] == "incremental"
    assert VM(invariants=True, invariant_walk="full").fresh()._kwargs["invariant_walk"] == "full"
    for bad in ("fast", None, 1):
        with pytest.raises(InvalidArgumentError):
            VM(invariants=True, invariant_walk=bad)


def _same_verdicts(policy, arch, seed):
    full = _explore(policy, arch, seed, "full")
    assert _explore(policy, arch, seed, "incremental")[:2] == full[:2]
    ran, violations, health = _explore(policy, arch, seed, "crosscheck")
    assert (ran, violations) == full[:2]
    assert health["warnings"] == 0, health
    return full


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_b9_is_caught_under_every_walk(arch):
    # VM seed 1: the dirty log's write-protection skips an entry (I6) after 30 operations;
    # VM seed 2 (a nested VM: L1/L2 transitions in the mix): the notifier's unmap does (I1)
    # after 1148.
    ran, violations, _ = _same_verdicts("B9-iter-skip-after-yield", arch, 1)
    assert ran == 30 and violations[0][0] == "unlogged_writable"
    ran, violations, _ = _same_verdicts("B9-iter-skip-after-yield", arch, 2)
    assert ran == 1148 and violations[0][0] == "notifier_range_mapped"


# B9 breaks I1; the others keep the tables well-formed and find (or not) their missing
# flush through the access checker.
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["kvm", "B9-iter-skip-after-yield", "B6-removed-pt-range",
                                    "no-flush-on-migrate", "B14-dirty-log-enable-if-changed"])
@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_explorer_verdicts_are_the_full_walks(policy, arch):
    for seed in range(4):
        _same_verdicts(policy, arch, seed)


@pytest.mark.slow
def test_random_breakage_gets_the_same_reports_from_every_walk(tmp_path):
    # tests/c/invariant_walk.c breaks the state at random (frozen, cleared, retargeted or
    # doubled SPTEs, counter and refcount slips) between two explorer runs, under each walk.
    exe = build_c_test("invariant_walk", tmp_path)
    r = subprocess.run([exe, "300"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "0 disagreements" in r.stdout
    counts = dict(zip(r.stdout.split(":")[-1].split()[::2], map(int, r.stdout.split(":")[-1].split()[1::2])))
    for kind in ("malformed_table", "frozen_spte", "leaf_count", "root_refcount", "notifier_range_mapped"):
        assert counts[kind] > 0, r.stdout
