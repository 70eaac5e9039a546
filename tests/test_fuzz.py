"""`tdpfast fuzz`: the explorer finds catalogue bugs from a random start, shrinks them, and
prints a reproducer that shows the violation on its own; KVM's policy stays clean."""
import json
import subprocess
import sys

import pytest

from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV
from tdpfast import Policy, VM, fuzz
from tdpfast import strategies as tst


B6_START = ()


def run_cli(*args, timeout=300):
    p = subprocess.run([sys.executable, "-m", "tdpfast", "fuzz", "--no-progress", *args],
                       capture_output=True, text=True, timeout=timeout, env=ENV,
                       cwd=SUBPROCESS_CWD)
    return p


# Deterministic by seed (0 here): each finds its bug within the first 3 M operations.
@pytest.mark.slow
@pytest.mark.parametrize("policy,kinds,start", [
    ("no-flush-on-migrate", {"use_after_free", "stale_page_table"}, ()),
    ("no-flush-on-root-load", {"use_after_free", "stale_page_table"}, ()),
    ("B5-atomic-zap-no-flush", {"use_after_free", "stale_page_table", "stale_write"}, ()),
    # With the state invariants on (the default), an entry skipped after a yield is caught
    # when the operation returns -- the notifier's unmap (I1) or the dirty log's
    # write-protection (I6) -- long before a guest uses the page.
    ("B9-iter-skip-after-yield", {"notifier_range_mapped", "unlogged_writable"}, ()),
    ("B6-removed-pt-range", {"use_after_free", "stale_write", "lost_dirty"}, B6_START),
])
def test_fuzz_finds_catalogue_bug_and_reproducer_shows_it(policy, kinds, start, tmp_path):
    out = tmp_path / "repro.py"
    p = run_cli("--policy", policy, *start, "--max-ops", "3000000", "--budget", "600", "--json",
                "--out", str(out))
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    assert d["violation"]["kind"] in kinds
    assert 1 <= len(d["minimal"]) <= 40           # shrunk to a few steps
    assert d["reproducer"] == out.read_text()
    # The reproducer runs on its own (public API only) and shows the violation.
    r = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 1
    assert d["violation"]["kind"] in r.stdout


@pytest.mark.slow
def test_explorer_finds_b1_and_its_recorded_history_replays_to_the_violation():
    # B1's histories are long and shrink slowly (the CLI's 30 s shrink budget leaves a long
    # reproducer), so this checks the search and the recording without shrinking.
    cfg = fuzz.FuzzConfig(policy=Policy.named("B1-yield-flush-lost"), arch="svm")
    vm_seed, nops, total = fuzz.explore(cfg, seed=0, budget_s=600, max_ops=3_000_000)
    assert vm_seed is not None
    vm = fuzz.record(cfg, vm_seed, nops)
    assert vm.violations[0].kind == "use_after_free"
    again = fuzz.replay(cfg, vm_seed, vm.events)
    assert again.violations == vm.violations
    kvm = fuzz.FuzzConfig(policy=Policy.kvm(), arch="svm")
    assert fuzz.replay(kvm, vm_seed, vm.events).violations == []   # the same inputs under KVM


@pytest.mark.slow
def test_fuzz_b14_needs_ad_off_and_finds_lost_dirty(tmp_path):
    p = run_cli("--policy", "B14-dirty-log-enable-if-changed", "--no-ad", "--max-ops", "20000000",
                "--budget", "600", "--json")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["violation"]["kind"] == "lost_dirty"


@pytest.mark.slow
def test_kvm_policy_stays_clean_and_exits_0():
    p = run_cli("--max-ops", "200000", "--budget", "600", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(p.stdout)
    assert d["violation"] is None and d["ops_explored"] == 200000


@pytest.mark.slow
def test_fuzz_set_flips_a_switch_and_bad_switch_is_a_usage_error():
    p = run_cli("--set", "flush_on_migrate=false", "--max-ops", "3000000", "--budget", "600", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["switches"] == {"flush_on_migrate": False}
    bad = run_cli("--set", "no_such_switch=1")
    assert bad.returncode == 2 and "no_such_switch" in bad.stderr
    bad = run_cli("--policy", "no-such-policy")
    assert bad.returncode == 2 and "no-such-policy" in bad.stderr


def test_explorer_is_deterministic_by_seed():
    cfg = fuzz.FuzzConfig(policy=Policy.named("no-flush-on-migrate"))
    a = fuzz.explore(cfg, seed=3, budget_s=600, max_ops=2_000_000)
    b = fuzz.explore(cfg, seed=3, budget_s=600, max_ops=2_000_000)
    assert a == b and a[0] is not None
    vm1, vm2 = fuzz.record(cfg, a[0], a[1]), fuzz.record(cfg, a[0], a[1])
    assert vm1.event_log() == vm2.event_log() and vm1.digest() == vm2.digest()


@pytest.mark.parametrize("policy,seed", [("kvm", 5), ("B6-removed-pt-range", 8)])
def test_the_explorers_hazard_probe_only_reads(policy, seed):
    """The explorer probes each TLB hit against the tables; its event log, replayed on a
    fresh VM without the probe, ends in the same state, stats and violations."""
    cfg = fuzz.FuzzConfig(policy=Policy.named(policy), arch="svm")
    vm = fuzz.record(cfg, seed, 4000)
    again = cfg.vm(seed, record=True)
    again.replay_fast(vm.events)
    assert again.digest() == vm.digest() and again.stats == vm.stats
    assert again.violations == vm.violations
    assert vm.stats["tlb_hits_l1"] > 200                  # the probe had hits to look at
    assert bool(vm.violations) == (policy != "kvm")      # and B6's VM ends in its violation


def test_shrunk_sequence_is_one_minimal():
    """Removing any single event from the shrunk sequence loses the violation."""
    cfg = fuzz.FuzzConfig(policy=Policy.named("no-flush-on-migrate"))
    finding, _ = fuzz.run(cfg, seed=0, budget_s=600, max_ops=2_000_000)
    assert finding is not None
    m = finding.minimal
    assert fuzz.replay(cfg, finding.seed, m).violations
    for i in range(len(m)):
        vm = fuzz.replay(cfg, finding.seed, m[:i] + m[i + 1:])
        assert not (vm.violations and vm.violations[0].kind == finding.violation.kind), i


@pytest.mark.slow
def test_public_strategies_hold_for_kvm():
    from hypothesis import HealthCheck, given, settings

    @given(tst.scenarios())
    @settings(max_examples=100, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(ops):
        vm = VM(vcpus=2, pcpus=2)
        applied = tst.apply(vm, ops)
        assert applied                      # the strategies produce operations the model accepts
        assert not vm.violations, vm.violations[0]

    check()


def test_strategies_apply_shows_a_migration_bug():
    ops = [("access", 0, 2, "r"), ("vcpu_run", 0, 1), ("host_unmap", 2, 3), ("vcpu_run", 0, 0),
           ("access", 0, 2, "r")]
    bad = VM(vcpus=2, pcpus=2, policy=Policy.named("no-flush-on-migrate"))
    assert tst.apply(bad, ops) == ops
    assert [v.kind for v in bad.violations] == ["use_after_free"]
    good = VM(vcpus=2, pcpus=2)
    tst.apply(good, ops)
    assert good.violations == []
