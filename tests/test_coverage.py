"""The explorer's coverage signatures (csrc/coverage.h, tdpfast.fuzz.Coverage): what a search
reached besides its operation count. They are deterministic by seed, do not depend on
whether the bulk paths or the per-SPTE paths ran, never change what the engine does, and
are reported by `tdpfast fuzz` (progress line, summary and --json)."""
import json
import subprocess
import sys

from tdpfast import VM, fuzz
from tdpfast._native import lib
from tdpfast.policy import Policy

from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV


def explored(cfg: fuzz.FuzzConfig, seed: int, n: int = 4000, **vm_kw) -> VM:
    vm = cfg.vm(seed, record=False) if not vm_kw else VM(
        arch=cfg.arch, levels=cfg.levels, seed=seed, vcpus=cfg.vcpus, pcpus=cfg.pcpus, tlb=cfg.tlb,
        policy=cfg.policy_for(seed), ad=cfg.ad_for(seed), maxphyaddr=cfg.maxphyaddr_for(seed),
        max_asid=cfg.max_asid_for(seed), record=False, invariants=cfg.invariants, **vm_kw)
    vm._fuzz(seed, n)
    return vm


def test_a_vm_driven_only_through_the_api_notes_no_signature():
    vm = VM(arch="vmx")
    vm.add_memslot(0, 1024)
    vm.vcpu_run(0, 0)
    for g in range(16):
        vm.access(0, g << 12, "w")
    vm.mmu.zap_gfn_range(0, 1024)
    assert vm._coverage_bits() == 0


def test_signatures_are_deterministic_by_seed_and_grow_with_the_search():
    cfg = fuzz.FuzzConfig()
    a, b = explored(cfg, 5)._coverage_bits(), explored(cfg, 5)._coverage_bits()
    assert a == b and bin(a).count("1") > 20
    assert a < (1 << lib.TDP_COVERAGE_SIGNATURES)
    cov = fuzz.Coverage()
    counts = []
    for s in range(6):
        cov.add(explored(cfg, s)._coverage_bits())
        counts.append(cov.count)
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert cov.add(a) == 0          # seed 5's are all in already


def test_signatures_do_not_depend_on_the_bulk_paths():
    # The bulk paths write whole tables without handle_changed_spte(); they note the same
    # signatures as the per-SPTE paths they stand for (and give the same operations).
    for arch in ("vmx", "svm"):
        cfg = fuzz.FuzzConfig(arch=arch)
        for s in range(4):
            bulk, slow = explored(cfg, s), explored(cfg, s, bulk=False)
            assert bulk._coverage_bits() == slow._coverage_bits()
            assert bulk.digest() == slow.digest()


def test_noting_signatures_changes_nothing_the_explorer_finds():
    # The catalogue's finds sit at fixed operation counts (README: no-flush-on-migrate on
    # VMX at 5,339 operations, VM seed 1, from before signatures existed); coverage only
    # writes its own bitmap, so the same VM seed violates at the same operation with it.
    cfg = fuzz.FuzzConfig(policy=Policy.named("no-flush-on-migrate"))
    cov = fuzz.Coverage()
    assert fuzz.explore(cfg, seed=0, budget_s=600, coverage=cov) == (1, 5339 - cfg.chunk, 5339)
    assert cov.count > 0


def fuzz_cli(*args):
    return subprocess.run([sys.executable, "-m", "tdpfast", "fuzz", "--max-ops", "20000", "--budget", "60",
                           "--no-progress", *args], capture_output=True, text=True, env=ENV, cwd=SUBPROCESS_CWD,
                          timeout=120)


def test_fuzz_reports_signatures_in_its_summary_and_json():
    p = fuzz_cli("--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    cov = fuzz.Coverage()
    fuzz.explore(fuzz.FuzzConfig(), seed=0, budget_s=600, max_ops=20000, coverage=cov)
    assert doc["signatures"] == cov.count > 0
    p = fuzz_cli()
    assert f"{cov.count:,} coverage signatures reached" in p.stdout


# ----------------------------------------------------------------- coverage-guided exploration
def vm_bits(cfg, seed, stream, n=None):
    vm = cfg.vm(seed, record=False)
    vm._fuzz(seed, n or cfg.chunk, stream)
    return vm


def test_stream_0_is_the_plain_explorer_and_other_streams_differ():
    cfg = fuzz.FuzzConfig()
    a, b, c = vm_bits(cfg, 3, 0), cfg.vm(3, record=False), vm_bits(cfg, 3, 1)
    b._fuzz(3, cfg.chunk)
    assert a.digest() == b.digest() and a.digest() != c.digest()
    assert vm_bits(cfg, 3, 1).digest() == c.digest()          # deterministic by seed and stream


def test_guided_follows_a_vm_that_reached_new_signatures_with_its_next_stream():
    cfg = fuzz.FuzzConfig(guided=True)
    cov = fuzz.Coverage()
    # The first VM reaches new signatures (all are new), so the second is seed 0, stream 1.
    assert fuzz.explore_guided(cfg, seed=0, budget_s=600, max_ops=2 * cfg.chunk, coverage=cov) == \
        (None, 0, 0, 2 * cfg.chunk)
    expect = fuzz.Coverage()
    for k in (0, 1):
        expect.add(vm_bits(cfg, 0, k)._coverage_bits())
    assert cov.bits == expect.bits
    again = fuzz.Coverage()
    fuzz.explore_guided(cfg, seed=0, budget_s=600, max_ops=2 * cfg.chunk, coverage=again)
    assert again.bits == cov.bits


def test_a_guided_finding_records_its_stream_and_replays():
    cfg = fuzz.FuzzConfig(policy=Policy.named("no-flush-on-migrate"), guided=True)
    seed, stream, ops, total = fuzz.explore_guided(cfg, seed=0, budget_s=600)
    assert seed is not None and stream > 0            # found in a stream a new signature earned
    vm = fuzz.record(cfg, seed, ops, stream)           # the same VM again, with its event log
    assert vm.violations
    finding, total2 = fuzz.run(cfg, seed=0, budget_s=600, shrink_budget_s=10)
    assert (finding.seed, finding.stream, total2) == (seed, stream, total)
    assert finding.witness.verdict == "policy"
    p = subprocess.run([sys.executable, "-c", fuzz.reproducer(cfg, finding.seed, finding.minimal)],
                       capture_output=True, text=True, env=ENV, cwd=SUBPROCESS_CWD, timeout=120)
    assert p.returncode == 1 and finding.violation.kind in p.stdout


def test_guided_cli_json_and_usage():
    p = fuzz_cli("--guided", "--json", "--policy", "no-flush-on-migrate")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    assert doc["config"]["guided"] is True and isinstance(doc["vm_stream"], int)
    p = fuzz_cli("--guided", "--jobs", "2")
    assert p.returncode == 2 and "--guided" in p.stderr
