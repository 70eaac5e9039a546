"""`tdpfast audit`: each switchable flush removed in turn; the explorer shows the ones it
needs (load-bearing, with a reproducer that is clean under KVM's policy) and says "not shown
necessary in N operations" of the others; deterministic by seed wherever the runs happen."""
import json
import subprocess
import sys

import pytest

import schema_check
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV
from tdpfast import Policy, audit, fuzz
from tdpfast.scheduler import InProcessScheduler, ProcessScheduler


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tdpfast", "audit", "--no-progress", *args], capture_output=True,
                          text=True, timeout=300, env=ENV, cwd=SUBPROCESS_CWD)


def test_every_site_removes_a_flush_kvm_makes():
    names = [s.name for s in audit.SITES]
    assert len(names) == len(set(names))
    for s in audit.SITES:
        changed = s.policy().changed()
        assert changed and changed == dict(s.removed)     # a real change from Policy.kvm()
        assert s.policy() != Policy.kvm()


def _runs(sched):
    sites = [audit._BY_NAME["shared_zap_flush"], audit._BY_NAME["remote_flush_all_contexts"]]
    with sched:
        return audit.run(sites, ["vmx"], sched, seed=0, budget_s=600, max_ops=20_000, shrink_budget_s=10,
                         invariants=True).rows


def test_load_bearing_and_not_shown_verdicts():
    rows = _runs(InProcessScheduler())
    b5, b16 = rows
    assert (b5["site"], b5["verdict"], b5["kind"], b5["ops_to_find"]) == ("shared_zap_flush", "load_bearing",
                                                                           "use_after_free", 16195)
    assert b5["witness"]["verdict"] == "policy" and 1 <= b5["reproducer_events"] <= 10
    # The finding replays: that VM seed under the removed flush violates, KVM's policy does not.
    cfg = fuzz.FuzzConfig(policy=Policy.kvm().replace(**b5["removed"]))
    vm = fuzz.record(cfg, b5["vm_seed"], 4000)
    assert vm.violations and fuzz.replay(fuzz.kvm_twin(cfg), b5["vm_seed"], vm.events[:vm.violations[0].event + 1]) \
        .violations == []
    # B16 shows in the nested VMs (seeds 2, 6, ...): a remote flush serviced while the vCPU
    # runs L1 leaves L2's entries.
    assert (b16["verdict"], b16["kind"], b16["ops_to_find"]) == ("load_bearing", "use_after_free", 9167)
    assert b16["witness"]["verdict"] == "policy"


@pytest.mark.slow
def test_worker_processes_give_the_same_table():
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_runs(ProcessScheduler(2))) == strip(_runs(InProcessScheduler()))


@pytest.mark.slow
def test_audit_json_matches_its_schema_and_the_table_prints():
    p = run_cli("--arch", "both", "--site", "flush_on_root_load", "--site", "remote_flush_all_contexts",
                "--max-ops", "20000", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    schema_check.check(doc, "audit.schema.json")
    # remote_flush_all_contexts: load-bearing on VMX (L2 keeps its own EPTP context); on SVM
    # svm_flush_tlb_all() is the current ASID either way, so removing it changes nothing.
    assert doc["summary"] == {"runs": 4, "load_bearing": 3, "not_shown": 1, "engine_or_caller": 0,
                              "mutation_score": None}
    assert [(r["site"], r["arch"]) for r in doc["results"]] == [
        ("flush_on_root_load", "vmx"), ("flush_on_root_load", "svm"),
        ("remote_flush_all_contexts", "vmx"), ("remote_flush_all_contexts", "svm")]
    p = run_cli("--arch", "svm", "--site", "flush_on_root_load", "--max-ops", "20000")
    assert p.returncode == 0
    assert "| `flush_on_root_load` | load-bearing: stale_page_table after" in p.stdout


def test_usage_errors_exit_2_before_working():
    for args in (["--site", "nope"], ["--budget", "0"], ["--jobs", "0"], ["--arch", "arm"]):
        p = run_cli(*args)
        assert p.returncode == 2 and p.stdout == "", args


def test_mutants_audit_the_engines_own_flush_sites(tmp_path):
    png = tmp_path / "audit.png"
    p = run_cli("--site", "root_load", "--site", "migrate_svm", "--site", "req_tlb_flush_guest", "--arch", "both",
                "--max-ops", "20000", "--json", "--chart", str(png))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    schema_check.check(doc, "audit.schema.json")
    assert doc["config"]["mutants"] is True
    # migrate_svm is SVM code: it runs on SVM only.
    assert [(r["site"], r["arch"]) for r in doc["results"]] == [
        ("root_load", "vmx"), ("root_load", "svm"), ("migrate_svm", "svm"),
        ("req_tlb_flush_guest", "vmx"), ("req_tlb_flush_guest", "svm")]
    by = {(r["site"], r["arch"]): r for r in doc["results"]}
    assert by["root_load", "svm"]["verdict"] == "load_bearing" and by["root_load", "svm"]["mutant"] == "root_load"
    assert by["root_load", "svm"]["removed"] == {} and by["root_load", "svm"]["witness"]["verdict"] == "policy"
    # No operation of the model raises KVM_REQ_TLB_FLUSH_GUEST (it needs guest paging).
    assert by["req_tlb_flush_guest", "vmx"]["verdict"] == "not_shown"
    assert doc["summary"]["mutation_score"] == {"sites": 3, "killed": 2, "survived": ["req_tlb_flush_guest"]}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mutants_usage_errors(tmp_path):
    for args in (["--mutants", "--site", "yield"], ["--chart", str(tmp_path / "no" / "x.png")]):
        p = run_cli(*args)
        assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr, args
