"""The checker (issue 3): every violation kind with a scenario that must report it and
a near-identical one (KVM's policy, or the missing flush put back) that must not;
stale translations that are still correct must not be reported; the scenarios of
`tdpfast demo` on the public API and through the CLI.

The checker compares the translation a guest access used (TLB, paging-structure
cache or walk) with the truth: the gfn's current backing, its write protection and
its dirty-log state: KVM's contracts that no TLB reaches a page once the MMU notifier
has unmapped it, that an unlinked table is flushed before RCU frees it, and that a
write after KVM_GET_DIRTY_LOG faults or is logged (see tdpfast/reference/checker.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV

from tdpfast import Policy, TLBConfig, VM, demo

GFN = 5
GPA = GFN << 12


def kinds(vm):
    return [v.kind for v in vm.violations]


def last_event(vm):
    return vm.events[-1]


# --------------------------------------------------------------------------- use_after_free

def _b5(policy):
    vm = VM(policy=policy, tlb=TLBConfig.adversarial(), record=True)
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "r")                       # TLB: gfn 5 -> frame X
    old = vm.backing(GFN)
    assert vm.mmu.zap_gfn_range(GFN, GFN + 1, shared=True) is False
    vm.host_unmap(GFN, GFN + 1)                  # nothing left to zap, so no flush; X is freed
    assert vm.backing(GFN) is None
    r = vm.access(0, GPA, "r")
    return vm, r, old


def test_use_after_free_through_the_atomic_zap_without_its_flush_b5():
    vm, r, old = _b5(Policy.named("B5-atomic-zap-no-flush"))
    assert r.tlb == "l1" and r.violation is not None
    v = r.violation
    assert vm.violations == [v]
    assert (v.kind, v.vcpu, v.pcpu, v.gpa, v.access, v.level) == ("use_after_free", 0, 0, GPA, "r", 1)
    assert v.stale_pfn == old and v.expected_pfn is None
    assert v.tag == vm.mmu.newest_root().hpa >> 12           # the EP4TA of the current root
    assert v.frame_state == "a memslot page the gfn no longer maps"
    assert vm.events[v.event].op == "access"
    assert vm.stats["violations"] == 1


def test_no_use_after_free_when_the_atomic_zap_flushes():
    vm, r, old = _b5(Policy.kvm())
    assert vm.violations == [] and r.violation is None
    assert r.tlb is None and r.faults == 1                   # re-faulted onto a fresh page
    assert vm.backing(GFN) not in (None, old)
    assert r.hpa == vm.backing(GFN) << 12


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_use_after_free_after_migrating_back_without_the_migration_flush(arch):
    def run(policy):
        vm = VM(arch=arch, vcpus=1, pcpus=2, tlb=TLBConfig.adversarial(), policy=policy)
        vm.add_memslot(0, 512, max_level=1)
        vm.vcpu_run(0, 0)
        vm.access(0, GPA, "r")                    # pCPU 0 caches gfn 5 -> X
        vm.vcpu_run(0, 1)
        vm.host_unmap(GFN, GFN + 1)               # zap, flush (the vCPU is on pCPU 1), free X
        vm.vcpu_run(0, 0)
        return vm, vm.access(0, GPA, "r")
    vm, r = run(Policy.named("no-flush-on-migrate"))
    assert kinds(vm) == ["use_after_free"]
    assert r.violation.pcpu == 0 and r.violation.gpa == GPA and r.tlb == "l1"
    assert r.violation.expected_pfn == vm.backing(GFN)       # the fresh page the host gave gfn 5
    vm, r = run(Policy.kvm())
    assert vm.violations == [] and r.tlb is None


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_use_after_free_through_a_reused_root_without_the_root_load_flush(arch):
    def run(policy):
        vm = VM(arch=arch, vcpus=1, pcpus=1, tlb=TLBConfig.adversarial(), policy=policy)
        slot = vm.add_memslot(0, 512, max_level=1)
        vm.vcpu_run(0, 0)
        vm.access(0, GPA, "w")
        dead = vm.mmu.newest_root()
        dead_tag = dead.hpa >> 12
        asid = vm.vcpu_info(0)["asid"]
        roots = []
        for _ in range(2):                        # two memslot updates: two root teardowns
            vm.vcpu_exit(0)
            vm.delete_memslot(slot)               # zap_all_fast: invalidate, zap, no flush
            slot = vm.add_memslot(0, 512, max_level=1)
            vm.vcpu_run(0, 0)
            roots.append(vm.mmu.newest_root().hpa >> 12)
            vm.access(0, GPA, "r")
            if vm.violations:
                break
        return vm, dead_tag, asid, roots
    vm, dead_tag, asid, roots = run(Policy.named("no-flush-on-root-load"))
    assert kinds(vm) == ["use_after_free"]
    v = vm.violations[0]
    if arch == "vmx":
        # the first new root gets another page; the second one gets the dead root's page
        # back (LIFO), with the dead root's EP4TA, so its stale entries are reachable.
        assert roots == [roots[0], dead_tag] and roots[0] != dead_tag
        assert v.tag == dead_tag
    else:
        assert roots == [roots[0]]                # the ASID never changed: the first reload
        assert v.tag == asid == vm.vcpu_info(0)["asid"]
    assert v.expected_pfn == vm.backing(GFN) != v.stale_pfn
    vm, *_ = run(Policy.kvm())
    assert vm.violations == []


def test_boot_time_junk_is_unreachable_because_the_first_load_flushes():
    def run(policy):
        vm = VM(tlb=TLBConfig.adversarial(junk=500), policy=policy, seed=1)
        vm.add_memslot(0, 1 << 20, max_level=1)
        root_tag = vm.mmu.alloc_root().hpa >> 12           # the frame the vCPU's root will get
        junk = sorted(e["gfn"] for e in vm.tlb_entries(0) if e["tag"] == root_tag)
        assert junk
        vm.vcpu_run(0, 0)
        return vm, vm.access_batch(0, [g << 12 for g in junk], "r", per_access=True), len(junk)
    for pol in (Policy.kvm(), Policy.kvm().replace(flush_on_migrate=False),
                Policy.kvm().replace(flush_on_root_load=False)):
        vm, res, n = run(pol)
        assert res.violations == 0 and vm.violations == [], pol.changed()
    vm, res, n = run(Policy.kvm().replace(flush_on_migrate=False, flush_on_root_load=False))
    assert res.violations == n and set(kinds(vm)) == {"use_after_free"}
    assert [v.batch_index for v in vm.violations] == list(range(n))
    assert res.per_access["violation"] == [i + 1 for i in range(n)]


# --------------------------------------------------------------------------- stale_page_table

def _huge_over_table(policy):
    vm = VM(policy=policy, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    vm.mmu.map_range(0, 512, 1)
    vm.access(0, GPA, "r")                        # PSC: the PDE for gfns 0-511 -> the PT
    assert vm.mmu.map(0, 2) is True               # a 2M leaf replaces the PT, which is freed
    return vm, vm.access(0, 7 << 12, "r")         # not in the TLB: the walk starts at the PT


def test_stale_page_table_when_a_huge_leaf_replaces_a_table_without_a_flush():
    vm, r = _huge_over_table(Policy.kvm().replace(map_huge_over_table_flush=False))
    assert kinds(vm) == ["stale_page_table"]
    v = r.violation
    assert v.level == 2 and v.gpa == 7 << 12 and v.frame_state == "free"
    assert v.expected_pfn is None


def test_no_stale_page_table_with_the_flush_after_a_huge_leaf_replaces_a_table():
    vm, r = _huge_over_table(Policy.kvm())
    assert vm.violations == [] and r.outcome == "ok"
    assert r.hpa == vm.backing(7) << 12


@pytest.mark.parametrize("flush", [False, True])
def test_stale_page_table_after_zap_sp_unless_the_caller_flushes(flush):
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "r")
    assert vm.mmu.zap_sp(GFN, 1) is True          # kvm_tdp_mmu_zap_sp: "caller must flush"
    if flush:
        vm.flush_remote_tlbs()
    r = vm.access(0, 9 << 12, "r")
    if flush:
        assert vm.violations == [] and r.outcome == "ok"
    else:
        assert kinds(vm) == ["stale_page_table"] and r.violation.level == 2


def _nx_recovery(policy):
    vm = VM(policy=policy, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 0, "x")                          # a possible-NX table A for gfns 0-511
    vm.access(0, 512 << 12, "x")                  # and table B for gfns 512-1023
    assert vm.stats["nx_lpage_splits"] == 2
    vm.mmu.zap_gfn_range(512, 1024)               # B keeps no leaf
    vm.flush_remote_tlbs()
    vm.access(0, 0, "x")                          # refill the PSC: PDE(0-511) -> A
    assert vm.mmu.recover_nx_huge_pages(2) == 2   # zap A (flush needed), then B (nothing)
    return vm, vm.access(0, 1 << 12, "r")


def test_stale_page_table_when_nx_recovery_overwrites_the_pending_flush_b4():
    vm, r = _nx_recovery(Policy.named("B4-nx-recovery-flush-overwritten"))
    assert kinds(vm) == ["stale_page_table"]
    assert r.violation.level == 2


def test_no_stale_page_table_when_nx_recovery_ors_the_flush():
    vm, r = _nx_recovery(Policy.kvm().replace(nx_huge_pages=True))
    assert vm.violations == [] and r.outcome == "ok"


def test_b6_range_and_level_3_over_4k_leave_no_stale_table():
    # The B6 recipe in precise-range mode: a 1G leaf over 4K mappings. Every stale
    # entry left behind still translates to the gfn's current page.
    vm = VM(policy=Policy.named("B6-removed-pt-range"), tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 262144)
    vm.vcpu_run(0, 0)
    vm.mmu.map_range(0, 262144, 1)
    for g in (5, 600, 70000):
        vm.access(0, g << 12, "r")
    assert vm.mmu.map(0, 3) is True
    res = vm.access_batch(0, [g << 12 for g in (5, 6, 600, 601, 70000, 70001)], "r")
    assert res.ok == 6 and res.violations == 0
    assert vm.stats["range_flushes"] > 0 and vm.stats["remote_tlb_flush"] == 0


# --------------------------------------------------------------------------- lost_dirty

def _b14(policy):
    vm = VM(policy=policy, ad=False, tlb=TLBConfig.adversarial())
    slot = vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")                        # TLB: a writable entry
    assert vm.mmu.age(0, 4096) is True            # access-tracked (W cleared), no flush
    vm.set_dirty_logging(slot, True)              # write-protect finds nothing to change
    r = vm.access(0, GPA, "w")
    return vm, r, vm.get_dirty_log(slot)


def test_lost_dirty_when_enabling_dirty_logging_flushes_only_if_an_spte_changed_b14():
    vm, r, dirty = _b14(Policy.named("B14-dirty-log-enable-if-changed"))
    assert kinds(vm) == ["lost_dirty"]
    v = r.violation
    assert r.tlb == "l1" and v.access == "w" and v.gpa == GPA
    assert v.stale_pfn == v.expected_pfn == vm.backing(GFN)
    assert dirty == []                            # the write never reached the dirty log


def test_no_lost_dirty_when_enabling_dirty_logging_always_flushes():
    vm, r, dirty = _b14(Policy.kvm())
    assert vm.violations == []
    assert r.tlb is None and r.faults == 1        # the write faulted and was logged
    assert dirty == [GFN]


def test_dirty_log_harvest_reprotects_and_flushes():
    vm = VM(tlb=TLBConfig.adversarial())
    slot = vm.add_memslot(0, 4096, max_level=1, dirty_log=True)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")
    assert vm.get_dirty_log(slot) == [GFN]
    r = vm.access(0, GPA, "w")                    # re-protected and flushed: faults, logged again
    assert r.violation is None and r.faults == 1
    assert vm.get_dirty_log(slot) == [GFN]
    assert vm.violations == []


# --------------------------------------------------------------------------- stale_write

def _stale_write(policy):
    vm = VM(pcpus=2, policy=policy, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")                        # pCPU 0: a writable entry
    vm.vcpu_run(0, 1)
    vm.write_protect_gfn(GFN)                     # clears W, flushes (the vCPU is on pCPU 1)
    vm.vcpu_run(0, 0)
    return vm, vm.access(0, GPA, "w")


def test_stale_write_after_write_protection_with_a_missing_flush():
    vm, r = _stale_write(Policy.named("no-flush-on-migrate"))
    assert kinds(vm) == ["stale_write"]
    v = r.violation
    assert r.tlb == "l1" and v.access == "w" and v.stale_pfn == v.expected_pfn == vm.backing(GFN)


def test_no_stale_write_when_the_write_faults():
    vm, r = _stale_write(Policy.kvm())
    assert vm.violations == []
    assert r.outcome == "mmio" and r.faults == 1          # a write to a tracked gfn is emulated


def test_stale_write_and_lost_dirty_reports_describe_the_frame_truthfully():
    # The stale frame IS the gfn's current page here; the report must not claim otherwise.
    vm, r = _stale_write(Policy.named("no-flush-on-migrate"))
    v = r.violation
    assert v.stale_pfn == v.expected_pfn
    assert v.frame_state != "a memslot page the gfn no longer maps"
    vm, r, _ = _b14(Policy.named("B14-dirty-log-enable-if-changed"))
    assert r.violation.frame_state != "a memslot page the gfn no longer maps"


# --------------------------------------------------------------------------- stale but correct: not reported

def test_split_in_place_leaves_a_stale_2m_entry_that_is_not_reported():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    vm.mmu.map(0, 2)
    vm.access(0, GPA, "r")
    assert vm.mmu.map(GFN, 1) is False            # split in place, no flush
    assert vm.stats["remote_tlb_flush"] == 0
    r = vm.access(0, 300 << 12, "w")
    assert r.tlb == "l1" and r.violation is None  # the 2M entry, still correct
    assert r.hpa == vm.mmu.walk(300 << 12).hpa
    assert vm.violations == []


def test_a_permission_upgrade_leaves_a_stale_read_only_entry_that_is_not_reported():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.write_protect_gfn(GFN)
    vm.access(0, GPA, "r")                        # a read-only entry
    vm.write_protect_gfn(GFN, False)              # permission upgrade: no flush needed
    r = vm.access(0, GPA, "r")
    assert r.tlb == "l1" and r.violation is None
    r = vm.access(0, GPA, "w")                    # the stale entry denies: a fault, then W
    assert r.violation is None and r.faults == 1 and r.outcome == "ok"
    assert vm.violations == []


def test_a_zap_without_flush_while_the_backing_is_unchanged_is_not_reported():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")
    assert vm.mmu.zap_gfn_range(GFN, GFN + 1) is True     # the caller "forgets" to flush
    r = vm.access(0, GPA, "w")
    assert r.tlb == "l1" and r.violation is None
    assert vm.mmu.age(0, 4096) is False                   # nothing mapped is young now
    assert vm.violations == []


def test_aging_without_a_flush_is_not_reported():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")
    assert vm.host_age(0, 4096) is True                   # clear_flush_young: no flush on x86
    r = vm.access(0, GPA, "w")
    assert r.tlb == "l1" and r.violation is None and vm.violations == []


def test_host_page_migration_under_kvm_is_not_reported():
    vm = VM(vcpus=2, pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    for v in range(2):
        vm.vcpu_run(v, v)
        vm.access(v, GPA, "w")
    new = vm.host_migrate(GFN)
    for v in range(2):
        r = vm.access(v, GPA, "r")
        assert r.violation is None and r.hpa == new << 12
    assert vm.violations == []


# --------------------------------------------------------------------------- livelock

def test_livelock_when_a_root_is_invalidated_without_the_free_obsolete_request():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.mmu.invalidate_all_roots()                 # no KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
    r = vm.access(0, GPA, "r")
    assert r.outcome == "livelock" and r.violation.kind == "livelock"
    ok = VM(tlb=TLBConfig.adversarial())
    ok.add_memslot(0, 4096, max_level=1)
    ok.vcpu_run(0, 0)
    ok.mmu.zap_all_fast()                         # invalidates AND asks the vCPUs to reload
    assert ok.access(0, GPA, "r").outcome == "ok" and ok.violations == []


# --------------------------------------------------------------------------- the demo

def test_demo_scenarios_through_tdpfast_demo():
    res = demo.run_all()
    got = {(s.name, s.arch, s.policy): len(s.violations) for s in res["reuse"] + res["migration"] + res["nested"]}
    assert got == {
        ("root teardown, then a new root", "vmx", "kvm"): 0,
        ("root teardown, then a new root", "vmx", "no-flush-on-root-load"): 1,
        ("root teardown, then a new root", "svm", "kvm"): 0,
        ("root teardown, then a new root", "svm", "no-flush-on-root-load"): 1,
        ("migration away and back", "vmx", "kvm"): 0,
        ("migration away and back", "vmx", "no-flush-on-migrate"): 1,
        ("migration away and back", "svm", "kvm"): 0,
        ("migration away and back", "svm", "no-flush-on-migrate"): 1,
        ("a remote flush while L1 runs", "vmx", "kvm"): 0,
        ("a remote flush while L1 runs", "vmx", "B16-remote-flush-current-only"): 1,
    }
    assert demo.verdict(res) == {"kvm_clean": True, "removals": 5, "removals_broken": 5}
    for arch in ("vmx", "svm"):
        costs = res["costs"][arch]
        assert costs["deferred"]["violations"] == 0 and costs["flush_on_put"]["violations"] == 0
        assert costs["deferred"]["remote_tlb_flush"] == 0
        assert costs["flush_on_put"]["remote_tlb_flush"] == 8          # one per memslot update


def test_cli_demo_json():
    p = subprocess.run([sys.executable, "-m", "tdpfast", "demo", "--json"], cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-500:]
    out = json.loads(p.stdout)
    assert out["schema_version"] == 1 and out["command"] == "demo"
    assert len(out["reuse"]) == 4 and len(out["migration"]) == 4 and len(out["nested"]) == 2
    for s in out["reuse"] + out["migration"] + out["nested"]:
        assert set(s) >= {"name", "arch", "policy", "violations", "events", "stats"}
        if s["policy"] == "kvm":
            assert s["violations"] == [] and s["stats"]["violations"] == 0
        else:
            assert len(s["violations"]) == 1 and s["violations"][0]["kind"] == "use_after_free"
            assert s["stats"]["violations"] == 1
            assert s["events"][-1]["op"] == "access"                     # the exposing event
            assert s["violations"][0]["event"] == s["events"][-1]["index"]
    reuse_vmx = [s for s in out["reuse"] if s["arch"] == "vmx" and s["policy"] != "kvm"][0]
    assert reuse_vmx["violations"][0]["tag"] == 0x40000                  # the dead root's EP4TA
    assert set(out["costs"]) == {"vmx", "svm"}
    for arch in ("vmx", "svm"):
        assert set(out["costs"][arch]) == {"deferred", "flush_on_put"}


def test_cli_policies_json():
    p = subprocess.run([sys.executable, "-m", "tdpfast", "policies", "--json"], cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-500:]
    items = {i["name"]: i for i in json.loads(p.stdout)["policies"]}
    assert items["kvm"]["switches"] == {}
    assert items["no-flush-on-migrate"]["switches"] == {"flush_on_migrate": False}
    assert items["B14-dirty-log-enable-if-changed"]["switches"] == {"dirty_log_enable_flush": "if_changed"}


# --------------------------------------------------------------------------- memslot deletion policies

@pytest.mark.parametrize("policy", ["kvm", "B18-memslot-precise-zap"])
def test_memslot_deletion_policies_are_both_safe_here(policy):
    vm = VM(policy=Policy.named(policy), tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 512, max_level=1)
    gone = vm.add_memslot(1024, 512, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "r")
    vm.access(0, 1030 << 12, "r")
    root = vm.mmu.newest_root()
    vm.delete_memslot(gone)
    if policy == "kvm":                           # zap_all_fast: every root goes, no flush
        assert not root.valid and vm.stats["remote_tlb_flush"] == 0
    else:                                         # B18: zap only the slot, with a (range) flush
        assert root.valid and vm.mmu.walk(GPA).ok and not vm.mmu.walk(1030 << 12).ok
        assert vm.stats["remote_tlb_flush"] == 1
    assert vm.access(0, 1030 << 12, "r").outcome == "mmio"
    assert vm.access(0, GPA, "r").outcome == "ok"
    assert vm.violations == []


# --------------------------------------------------------------------------- B1 (interleaving at a yield)

def _b1(policy):
    """A range zap walks two roots (the vCPU's, then an SMM root whose tables are empty);
    it yields inside the second; meanwhile a notifier for an already-zapped gfn finds
    nothing to zap, so it does not flush, and the host frees the page."""
    vm = VM(policy=policy, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096)
    smm = vm.mmu.alloc_root(as_id=1)
    vm.mmu.map_range(512, 2048, root=smm)
    vm.mmu.zap_gfn_range(512, 1536)                 # leaves empty tables behind in the SMM root
    vm.flush_remote_tlbs()
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "r")                      # the vCPU's root is the newest: walked first
    op = vm.start_op("kvm_zap_gfn_range", 5, 2048, yield_every=300)
    assert not op.step()                            # stopped at a yield point in the SMM root
    vm.host_unmap(5, 6)
    r = vm.access(0, 5 << 12, "r")
    op.finish()
    return vm, r


def test_b1_a_yield_in_a_later_root_loses_the_flush():
    vm, r = _b1(Policy.named("B1-yield-flush-lost"))
    assert r.tlb == "l1" and r.violation is not None
    assert kinds(vm) == ["use_after_free"] and r.violation.expected_pfn is None


def test_b1_fixed_the_pending_flush_is_done_before_the_yield():
    vm, r = _b1(Policy.kvm())
    assert vm.violations == [] and r.tlb is None    # flushed before the yield: the access walked


def test_recovering_a_1g_page_flushes_all_of_it_in_precise_range_mode():
    """Found by `tdpfast fuzz --policy precise-range`: recovering huge pages in a window
    can install a 1G leaf whose unlinked tables lie outside the window; the flush must
    cover the huge page (KVM flushes the memslot), or a paging-structure-cache entry
    keeps pointing at a freed table."""
    vm = VM(vcpus=2, pcpus=2, policy=Policy.named("precise-range"), tlb=TLBConfig.adversarial())
    vm.add_memslot(0x40000, 0x40000, max_level=3)
    vm.vcpu_run(0, 1)
    vm.vcpu_run(1, 0)
    vm.access(1, 0x40202ad5, "r")                    # a 1G leaf
    vm.mmu.split_huge_pages(0x4014C, 0x404FD, 1)     # 2M, then 4K tables in the window
    vm.access(0, 0x401D1DE6, "x")                    # caches the PDE for gfns 0x40000-0x401ff
    assert vm.mmu.recover_huge_pages(0x40200, 0x40400) is True   # back to one 1G leaf
    r = vm.access(0, 0x40003F0C, "x")
    assert vm.violations == [] and r.outcome == "ok"
    assert vm.stats["range_flushes"] >= 1
