"""Reproducers are differential witnesses: a shrunk sequence violates under the policy that
was searched and not under KVM's policy, so it accuses the policy of what it did; a sequence
that violates under both is reported as a defect of the engine or of a caller."""
import json
import subprocess
import sys

import pytest

from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV
from tdpfast import TLBConfig, VM, Policy, fuzz

# (policy, arch, VM seed, operations in that VM to the find): where `tdpfast fuzz --policy P`
# from seed 0 finds each catalogue bug it finds (the README table); exploring that one VM
# again finds the same violation (the explorer is deterministic by seed).
FOUND = [
    ("no-flush-on-root-load", "vmx", 1, 1970),
    ("no-flush-on-migrate", "vmx", 1, 1339),
    ("no-flush-before-yield", "vmx", 1, 369),
    ("B1-yield-flush-lost", "vmx", 115, 413),
    ("B4-nx-recovery-flush-overwritten", "vmx", 41, 48),
    ("B5-atomic-zap-no-flush", "vmx", 4, 195),
    ("B6-removed-pt-range", "vmx", 8, 3829),
    ("B9-iter-skip-after-yield", "vmx", 1, 30),
    ("B14-dirty-log-enable-if-changed", "vmx", 293, 2308),
    ("B18-memslot-precise-zap", "vmx", 943, 3249),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,seed,nops", FOUND)
def test_shrunk_reproducer_violates_under_the_policy_and_not_under_kvm(name, arch, seed, nops):
    cfg = fuzz.FuzzConfig(policy=Policy.named(name), arch=arch)
    # A short shrink budget keeps the long histories (B1, the missing flush before a yield)
    # within seconds; the property must hold of every intermediate result too.
    finding, _ = fuzz.run(cfg, seed=seed, budget_s=600, max_ops=nops, shrink_budget_s=2.0)
    assert finding is not None and finding.seed == seed
    assert finding.witness.as_dict() == {"policy_violates": True, "kvm_violates": False, "verdict": "policy"}
    # Checked again from scratch: the minimal sequence on fresh VMs under both policies.
    assert fuzz.replay(cfg, seed, finding.minimal).violations
    kvm = fuzz.FuzzConfig(policy=Policy.kvm(), arch=arch)
    assert fuzz.replay(kvm, seed, finding.minimal).violations == []


@pytest.mark.slow
def test_seed7_svm_reproducer_keeps_the_flush_kvm_owes(tmp_path):
    # The example: shrinking once dropped the remote flush owed after zap_sp and
    # printed a reproducer that failed under KVM's policy as well.
    out = tmp_path / "repro.py"
    p = subprocess.run([sys.executable, "-m", "tdpfast", "fuzz", "--no-progress", "--set", "flush_on_root_load=false",
                        "--arch", "svm", "--budget", "30", "--seed", "7", "--json", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=ENV, cwd=SUBPROCESS_CWD)
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    assert d["witness"] == {"policy_violates": True, "kvm_violates": False, "verdict": "policy"}
    script = out.read_text()
    assert "flush_on_root_load=False" in script
    r = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=120, env=ENV,
                       cwd=SUBPROCESS_CWD)
    assert r.returncode == 1
    kvm_script = tmp_path / "repro_kvm.py"
    kvm_script.write_text(script.replace("Policy.kvm().replace(flush_on_root_load=False)", "Policy.kvm()"))
    r = subprocess.run([sys.executable, str(kvm_script)], capture_output=True, text=True, timeout=120, env=ENV,
                       cwd=SUBPROCESS_CWD)
    assert r.returncode == 0, r.stdout


def _zap_sp_without_its_flush(policy):
    # The old seed-7 reproducer: zap_sp() without the remote flush its caller owes,
    # then an access through the dropped table.
    vm = VM(arch="svm", levels=4, seed=7, vcpus=2, pcpus=3, ad=False, maxphyaddr=46, tlb=TLBConfig.adversarial(),
            policy=policy, record=True)
    vm.add_memslot(0, 0x400, readonly=False, dirty_log=False, max_level=2)
    vm.vcpu_run(0, 2)
    vm.access(0, 0xb83cd, "r")
    vm.mmu.zap_sp(5, 2, root=1)
    vm.access(0, 0x205217, "r")
    return vm


def test_sequence_violating_under_kvm_too_is_blamed_on_engine_or_caller():
    pol = Policy.kvm().replace(flush_on_root_load=False)
    vm = _zap_sp_without_its_flush(pol)
    assert vm.violations
    cfg = fuzz.FuzzConfig(policy=pol, arch="svm", ad=False)
    w = fuzz.witness(cfg, 7, vm.events)
    assert (w.policy_violates, w.kvm_violates, w.verdict) == (True, True, "engine_or_caller")


def test_seed7_svm_finding_in_process_is_a_witness():
    # The fast, in-process form of the example (found in the first VMs of seed 7).
    cfg = fuzz.FuzzConfig(policy=Policy.kvm().replace(flush_on_root_load=False), arch="svm")
    finding, _ = fuzz.run(cfg, seed=7, budget_s=600, max_ops=5000, shrink_budget_s=30.0)
    assert finding is not None and finding.shrink_complete
    assert finding.witness.verdict == "policy"
    assert fuzz.replay(fuzz.kvm_twin(cfg), finding.seed, finding.minimal).violations == []
    # 1-minimal under the differential predicate: dropping any one event loses the
    # violation under the policy or makes KVM's policy violate as well.
    for i in range(len(finding.minimal) - 1):
        cand = finding.minimal[:i] + finding.minimal[i + 1:]
        v = fuzz.replay(cfg, finding.seed, cand).violations
        assert not (v and v[0].kind == finding.violation.kind) or \
            fuzz.replay(fuzz.kvm_twin(cfg), finding.seed, cand).violations
