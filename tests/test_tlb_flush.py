"""TLBs, paging-structure caches and every invalidation primitive (issue 3), checked
against the tag rules of the Intel SDM Vol. 3C (28.3 "Caching Translation Information")
and the AMD64 APM Vol. 2 (15.16 "TLB Control"), and KVM's flush requests and remote
flushes (kvm_flush_remote_tlbs(), vcpu_enter_guest()); TLB geometry presets (CPUID).

Guest-physical mappings and EPT paging-structure-cache entries are tagged by the
EP4TA (VMX, EPTP bits 51:12) or by the ASID (SVM); `vm.tlb_entries(pcpu)` lists them
with that tag (EP4TA as a pfn).
"""
from __future__ import annotations

import pytest

from tdpfast import Policy, TLBConfig, VM

GPA = lambda gfn: gfn << 12  # noqa: E731


def entries(vm, pcpu=0, tag=None):
    return {(e["kind"], e["tag"], e["level"], e["gfn"], e["pfn"]) for e in vm.tlb_entries(pcpu)
            if tag is None or e["tag"] == tag}


def tags(vm, pcpu=0):
    return {e["tag"] for e in vm.tlb_entries(pcpu)}


def stats(vm, *keys):
    s = vm.stats
    return {k: s[k] for k in keys}


def vmx_two_contexts():
    """One vCPU on pCPU 0 whose TLB holds entries of two EPT roots: root A (torn down
    with a memslot deletion, so never flushed) and the current root B."""
    vm = VM(tlb=TLBConfig.adversarial())
    slot = vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    for g in (1, 2, 600):
        vm.access(0, GPA(g))
    a = vm.mmu.newest_root()
    eptp_a, tag_a = vm.mmu.root_pointer(a), a.hpa >> 12
    vm.delete_memslot(slot)
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)                         # FREE_OBSOLETE_ROOTS, a new root, flush of ITS context
    b = vm.mmu.newest_root()
    assert b.hpa >> 12 != tag_a
    for g in (1, 3):
        vm.access(0, GPA(g))
    tag_b = b.hpa >> 12
    assert tags(vm) == {tag_a, tag_b}
    return vm, eptp_a, tag_a, vm.mmu.root_pointer(b), tag_b


# --------------------------------------------------------------------------- INVEPT / INVVPID

def test_invept_single_context_drops_only_that_ep4ta():
    vm, eptp_a, tag_a, eptp_b, tag_b = vmx_two_contexts()
    a_kinds = {e[0] for e in entries(vm, tag=tag_a)}
    assert a_kinds == {"tlb", "psc"}
    keep = entries(vm, tag=tag_b)
    n = vm.stats["invept_single"]
    vm.invept(0, "single", eptp_a)
    assert entries(vm, tag=tag_a) == set()            # TLB and paging-structure-cache entries
    assert entries(vm) == keep
    assert vm.stats["invept_single"] == n + 1
    vm.invept(0, "single", eptp_b)
    assert entries(vm) == set()


def test_invept_single_context_matches_the_ep4ta_not_the_whole_eptp():
    vm, eptp_a, tag_a, eptp_b, tag_b = vmx_two_contexts()
    keep = entries(vm, tag=tag_b)
    # Same EP4TA (bits 51:12), memory type UC and A/D off: still that context (SDM 28.3.3.1).
    vm.invept(0, "single", (eptp_a & ~0xFFF) | (3 << 3))
    assert entries(vm) == keep


def test_invept_global_drops_every_context():
    vm, *_ = vmx_two_contexts()
    n = vm.stats["invept_global"]
    vm.invept(0, "global")
    assert entries(vm) == set()
    assert vm.stats["invept_global"] == n + 1
    assert vm.pcpu_info(0)["tlb_entries"] == 0 and vm.pcpu_info(0)["psc_entries"] == 0


def test_invept_acts_on_one_pcpu_only():
    vm = VM(vcpus=2, pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.vcpu_run(1, 1)
    vm.access(0, GPA(1))
    vm.access(1, GPA(2))
    other = entries(vm, 1)
    vm.invept(0, "global")
    assert entries(vm, 0) == set()
    assert entries(vm, 1) == other and other


@pytest.mark.parametrize("kind", ["individual", "single", "all", "single_retaining_globals"])
def test_invvpid_never_drops_guest_physical_mappings(kind):
    vm, *_ = vmx_two_contexts()
    before = entries(vm)
    n = vm.stats["invvpid"]
    vm.invvpid(0, kind, vm.vcpu_info(0)["vpid"], 0x1000)
    assert entries(vm) == before
    assert vm.stats["invvpid"] == n + 1
    if kind == "all":
        vm.invvpid(0, kind, 0)                         # all-context accepts VPID 0
        assert vm.stats["invvpid"] == n + 2
    else:
        with pytest.raises(ValueError, match="vpid 0"):
            vm.invvpid(0, kind, 0)                     # VMfail for types 0, 1 and 3
        assert vm.stats["invvpid"] == n + 1


def test_kvm_req_tlb_flush_guest_keeps_ept_mappings_on_vmx():
    vm, *_ = vmx_two_contexts()
    before = entries(vm)
    n = stats(vm, "flush_guest", "invvpid", "invept_single", "invept_global")
    vm.vcpu_request(0, "tlb_flush_guest")
    vm.access(0, GPA(1))                               # re-enters, servicing the request
    assert stats(vm, "flush_guest", "invvpid", "invept_single", "invept_global") == {
        "flush_guest": n["flush_guest"] + 1, "invvpid": n["invvpid"] + 1,
        "invept_single": n["invept_single"], "invept_global": n["invept_global"]}
    assert entries(vm) == before


def test_tlb_flush_current_invepts_the_current_root_only():
    vm, eptp_a, tag_a, eptp_b, tag_b = vmx_two_contexts()
    stale = entries(vm, tag=tag_a)
    n = stats(vm, "flush_current", "invept_single", "invept_global")
    vm.vcpu_request(0, "tlb_flush_current")
    vm.vcpu_run(0, 0)
    assert stats(vm, "flush_current", "invept_single", "invept_global") == {
        "flush_current": n["flush_current"] + 1, "invept_single": n["invept_single"] + 1,
        "invept_global": n["invept_global"]}
    assert entries(vm) == stale                        # the dead root's context is not current


# --------------------------------------------------------------------------- SVM: TLB_CONTROL and ASIDs

def svm_two_vcpus_one_pcpu(**kw):
    vm = VM(arch="svm", vcpus=2, tlb=TLBConfig.adversarial(), **kw)
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    vm.vcpu_run(1, 0)                                  # preempts vCPU 0 on the same pCPU
    vm.access(1, GPA(2))
    a0, a1 = vm.vcpu_info(0)["asid"], vm.vcpu_info(1)["asid"]
    assert a0 != a1 and tags(vm) == {a0, a1}
    return vm, a0, a1


def test_each_vcpu_on_a_pcpu_gets_its_own_asid_and_entries_do_not_leak():
    vm, a0, a1 = svm_two_vcpus_one_pcpu()
    assert (a0, a1) == (1, 2)                          # min_asid, then the next one
    r = vm.access(1, GPA(1))                           # cached for ASID a0 only
    assert r.tlb is None and r.walk_refs > 0


def test_tlb_control_1_flushes_every_asid_at_the_next_vmrun():
    vm, a0, a1 = svm_two_vcpus_one_pcpu()
    before = entries(vm)
    n = vm.stats["tlb_control_flush_all"]
    vm.set_tlb_control(1, 1)
    assert vm.vcpu_info(1)["tlb_control"] == 1
    assert entries(vm) == before                        # nothing happens before VMRUN
    vm.vcpu_run(1, 0)
    assert entries(vm) == set()
    assert vm.stats["tlb_control_flush_all"] == n + 1
    assert vm.vcpu_info(1)["tlb_control"] == 0          # back to DO_NOTHING after the run


@pytest.mark.parametrize("value", [3, 7])
def test_tlb_control_3_and_7_flush_only_the_current_asid(value):
    vm, a0, a1 = svm_two_vcpus_one_pcpu()
    keep = entries(vm, tag=a0)
    n = vm.stats["tlb_control_flush_asid"]
    vm.set_tlb_control(1, value)
    assert entries(vm, tag=a1)                          # still there until VMRUN
    vm.vcpu_run(1, 0)
    assert entries(vm) == keep and keep
    assert vm.stats["tlb_control_flush_asid"] == n + 1
    assert vm.vcpu_info(1)["tlb_control"] == 0


def test_a_fresh_asid_makes_old_entries_unreachable_but_they_stay():
    vm = VM(arch="svm", flush_by_asid=False, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    old = vm.vcpu_info(0)["asid"]
    cached = entries(vm, tag=old)
    assert cached
    n = stats(vm, "asid_new", "tlb_control_flush_asid", "tlb_control_flush_all")
    vm.vcpu_request(0, "tlb_flush_current")             # without FlushByAsid: a new ASID
    r = vm.access(0, GPA(1))
    new = vm.vcpu_info(0)["asid"]
    assert new == old + 1
    assert r.tlb is None                                # the old entry is unreachable...
    assert entries(vm, tag=old) == cached               # ...but it is still in the TLB
    assert stats(vm, "asid_new", "tlb_control_flush_asid", "tlb_control_flush_all") == {
        "asid_new": n["asid_new"] + 1, "tlb_control_flush_asid": n["tlb_control_flush_asid"],
        "tlb_control_flush_all": n["tlb_control_flush_all"]}


def test_asid_generation_roll_over():
    vm = VM(arch="svm", vcpus=3, max_asid=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    p = vm.pcpu_info(0)
    # svm_cpu_init: next_asid = max_asid + 1, so the first VMRUN starts a generation.
    assert (p["asid_generation"], p["next_asid"], p["min_asid"], p["max_asid"]) == (1, 3, 1, 2)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    assert (vm.vcpu_info(0)["asid"], vm.vcpu_info(0)["asid_generation"]) == (1, 2)
    vm.vcpu_run(1, 0)
    vm.access(1, GPA(2))
    assert (vm.vcpu_info(1)["asid"], vm.vcpu_info(1)["asid_generation"]) == (2, 2)
    assert tags(vm) == {1, 2}
    n = stats(vm, "asid_generation_bumps", "tlb_control_flush_all")
    vm.vcpu_run(2, 0)                                   # next_asid 3 > max_asid 2: roll over
    p = vm.pcpu_info(0)
    assert (p["asid_generation"], p["next_asid"]) == (3, 2)
    assert (vm.vcpu_info(2)["asid"], vm.vcpu_info(2)["asid_generation"]) == (1, 3)
    assert entries(vm) == set()                         # TLB_CONTROL 1: every ASID flushed
    assert stats(vm, "asid_generation_bumps", "tlb_control_flush_all") == {
        "asid_generation_bumps": n["asid_generation_bumps"] + 1,
        "tlb_control_flush_all": n["tlb_control_flush_all"] + 1}
    vm.vcpu_run(0, 0)                                   # vCPU 0's generation is stale: new ASID
    assert (vm.vcpu_info(0)["asid"], vm.vcpu_info(0)["asid_generation"]) == (2, 3)
    assert vm.pcpu_info(0)["next_asid"] == 3


# --------------------------------------------------------------------------- migration

def test_vmx_migration_flushes_all_contexts_on_the_new_pcpu():
    vm = VM(pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    keys = ("invept_global", "invept_single", "tlb_flush", "flush_all", "vcpu_migrations")
    vm.vcpu_run(0, 0)
    # loaded_vmcs->cpu starts at -1: the first load requests a flush, the root load flushes too.
    assert stats(vm, *keys) == {"invept_global": 1, "invept_single": 1, "tlb_flush": 1, "flush_all": 1,
                                "vcpu_migrations": 0}
    vm.access(0, GPA(1))
    on0 = entries(vm, 0)
    vm.vcpu_run(0, 0)                                   # same pCPU: no flush
    assert stats(vm, *keys)["invept_global"] == 1
    vm.tlb_fill_junk(1, 50)                             # pCPU 1 holds arbitrary stale entries
    vm.vcpu_run(0, 1)
    assert vm.vcpu_info(0)["last_pcpu"] == 1 and vm.vcpu_info(0)["pcpu"] == 1
    assert stats(vm, *keys) == {"invept_global": 2, "invept_single": 1, "tlb_flush": 2, "flush_all": 2,
                                "vcpu_migrations": 1}
    assert entries(vm, 1) == set()                      # INVEPT global on pCPU 1
    assert entries(vm, 0) == on0                        # pCPU 0 untouched
    vm.vcpu_run(0, 0)
    assert stats(vm, *keys)["invept_global"] == 3 and vm.stats["vcpu_migrations"] == 2
    assert entries(vm, 0) == set()


def test_svm_migration_gives_a_fresh_asid():
    vm = VM(arch="svm", pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    first = vm.vcpu_info(0)["asid"]
    cached = entries(vm, 0)
    vm.vcpu_run(0, 1)
    info = vm.vcpu_info(0)
    assert info["asid_generation"] == vm.pcpu_info(1)["asid_generation"]
    vm.vcpu_run(0, 0)                                   # back: the VMCB last ran elsewhere
    back = vm.vcpu_info(0)["asid"]
    assert back != first and back == vm.pcpu_info(0)["next_asid"] - 1
    assert entries(vm, 0) == cached                     # no flush, the old ASID is unreachable
    r = vm.access(0, GPA(1))
    assert r.tlb is None
    assert vm.stats["vcpu_migrations"] == 2


def test_without_the_migration_flush_vmx_keeps_stale_contexts_and_svm_keeps_its_asid():
    pol = Policy.named("no-flush-on-migrate")
    vmx = VM(pcpus=2, policy=pol, tlb=TLBConfig.adversarial())
    vmx.add_memslot(0, 4096, max_level=1)
    vmx.vcpu_run(0, 0)
    vmx.access(0, GPA(1))
    vmx.vcpu_run(0, 1)
    vmx.vcpu_run(0, 0)
    assert vmx.stats["invept_global"] == 0 and vmx.stats["tlb_flush"] == 0
    assert vmx.access(0, GPA(1)).tlb == "l1"
    svm = VM(arch="svm", pcpus=2, policy=pol, tlb=TLBConfig.adversarial())
    svm.add_memslot(0, 4096, max_level=1)
    svm.vcpu_run(0, 0)
    svm.access(0, GPA(1))
    asid = svm.vcpu_info(0)["asid"]
    svm.vcpu_run(0, 1)
    svm.vcpu_run(0, 0)
    assert svm.vcpu_info(0)["asid"] == asid
    assert svm.access(0, GPA(1)).tlb == "l1"


# --------------------------------------------------------------------------- requests

@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_tlb_flush_covers_a_pending_flush_current(arch):
    vm = VM(arch=arch, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    vm.reset_stats()
    vm.vcpu_request(0, "tlb_flush", "tlb_flush_current")
    info = vm.vcpu_info(0)
    assert set(info["requests"]) == {"tlb_flush", "tlb_flush_current"}
    assert info["mode"] == "exiting_guest" and vm.stats["ipis"] == 1
    r = vm.access(0, GPA(1))                           # re-entry services both
    assert vm.vcpu_info(0)["requests"] == [] and vm.vcpu_info(0)["mode"] == "in_guest"
    assert stats(vm, "tlb_flush", "flush_all", "flush_current") == {"tlb_flush": 1, "flush_all": 1,
                                                                     "flush_current": 0}
    if arch == "vmx":
        assert stats(vm, "invept_global", "invept_single") == {"invept_global": 1, "invept_single": 0}
    else:
        assert stats(vm, "tlb_control_flush_asid", "tlb_control_flush_all") == {
            "tlb_control_flush_asid": 1, "tlb_control_flush_all": 0}
    assert r.tlb is None


def test_free_obsolete_roots_is_serviced_before_loading_a_root_which_flushes_it():
    vm = VM(trace=True, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA(1))
    old = vm.mmu.newest_root()
    old_pfn = old.hpa >> 12
    vm.mmu.invalidate_all_roots()
    vm.mmu.zap_invalidated_roots()
    assert old.refcount == 1 and not old.valid             # only the vCPU holds it
    vm.vcpu_run(0, 0)                                      # no request: the vCPU keeps its root
    assert vm.vcpu_info(0)["root"] == old.id
    vm.reset_stats()
    n = len(vm.trace())
    vm.vcpu_request(0, "mmu_free_obsolete_roots")
    vm.vcpu_run(0, 0)
    new = vm.mmu.newest_root()
    assert vm.vcpu_info(0)["root"] == new.id != old.id
    assert not old.alive
    assert stats(vm, "flush_current", "invept_single", "invept_global", "roots_freed", "roots_allocated") == {
        "flush_current": 1, "invept_single": 1, "invept_global": 0, "roots_freed": 1, "roots_allocated": 1}
    order = [(r[0], r[1], r[2], r[3]) for r in vm.trace()[n:]
             if r[0] in ("root_put", "root_free", "root_alloc", "vendor_flush")]
    assert order == [("root_put", 0, old.id, old_pfn), ("root_free", 0, old.id, old_pfn),
                     ("root_alloc", 0, new.id, new.hpa >> 12),
                     ("vendor_flush", 1, 0, new.hpa >> 12)]   # INVEPT single of the NEW root, pCPU 0


# --------------------------------------------------------------------------- remote flushes

def test_remote_flush_sends_ipis_only_to_vcpus_in_guest_mode():
    vm = VM(vcpus=3, pcpus=3, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    for v in range(3):
        vm.vcpu_run(v, v)
        vm.access(v, GPA(v + 1))
    vm.vcpu_exit(2)
    vm.reset_stats()
    vm.flush_remote_tlbs()
    assert stats(vm, "remote_tlb_flush", "remote_tlb_flush_requests", "ipis", "tlb_flush") == {
        "remote_tlb_flush": 1, "remote_tlb_flush_requests": 1, "ipis": 2, "tlb_flush": 0}
    assert [vm.vcpu_info(v)["mode"] for v in range(3)] == ["exiting_guest", "exiting_guest", "outside_guest"]
    assert all(vm.vcpu_info(v)["requests"] == ["tlb_flush"] for v in range(3))
    assert entries(vm, 0) and entries(vm, 2)           # the flush happens on the vCPU's way back in
    vm.access(0, GPA(7))
    vm.vcpu_run(1, 1)
    vm.vcpu_run(2, 2)
    assert vm.stats["tlb_flush"] == 3 and vm.stats["invept_global"] == 3
    assert not any(e[3] in (1, 2, 3) for p in range(3) for e in entries(vm, p) if e[0] == "tlb")


def test_ranged_remote_flush_on_bare_metal_is_a_full_flush():
    vm = VM(vcpus=2, pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    for v in range(2):
        vm.vcpu_run(v, v)
        for g in (5, 600):
            vm.access(v, GPA(g))
    vm.reset_stats()
    vm.flush_remote_tlbs_range(5, 1)
    assert stats(vm, "remote_tlb_flush", "remote_tlb_flush_requests", "range_flushes", "ipis") == {
        "remote_tlb_flush": 1, "remote_tlb_flush_requests": 1, "range_flushes": 0, "ipis": 2}
    vm.vcpu_run(0, 0)
    vm.vcpu_run(1, 1)
    assert entries(vm, 0) == set() and entries(vm, 1) == set()   # gfn 600 went too


def test_precise_range_flush_drops_only_the_range_everywhere():
    vm = VM(vcpus=2, pcpus=2, policy=Policy.named("precise-range"), tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=1)
    for v in range(2):
        vm.vcpu_run(v, v)
        for g in (5, 6, 600):
            vm.access(v, GPA(g))
    vm.reset_stats()
    vm.flush_remote_tlbs_range(5, 1)
    assert stats(vm, "remote_tlb_flush", "remote_tlb_flush_requests", "range_flushes", "ipis") == {
        "remote_tlb_flush": 0, "remote_tlb_flush_requests": 1, "range_flushes": 1, "ipis": 0}
    for p in range(2):
        tlb = {e[3] for e in entries(vm, p) if e[0] == "tlb"}
        assert tlb == {6, 600}                           # gfn 5 only, at once, no request needed
        psc = {(e[2], e[3]) for e in entries(vm, p) if e[0] == "psc"}
        assert psc == {(2, 512)}                          # every PSC entry covering gfn 5 went
    assert vm.access(0, GPA(600)).tlb == "l1"
    assert vm.access(0, GPA(5)).tlb is None


def test_b6_flushes_from_the_last_child_and_leaves_the_first_511():
    def run(policy):
        vm = VM(policy=policy, tlb=TLBConfig.adversarial())
        vm.add_memslot(0, 4096, max_level=2)
        vm.vcpu_run(0, 0)
        vm.mmu.map_range(0, 1024, 1)
        for g in (5, 510, 511, 600):
            vm.access(0, GPA(g))
        assert vm.mmu.map(0, 2) is True                   # a huge leaf replaces the first PT
        return {e[3] for e in entries(vm) if e[0] == "tlb"}, vm
    right, vm = run(Policy.named("precise-range").replace(map_huge_over_table_flush=False,
                                                          removed_pt_flush="table"))
    assert right == {600}                                 # [0, 512) flushed
    assert vm.stats["range_flushes"] == 1
    wrong, vm = run(Policy.named("B6-removed-pt-range"))
    assert wrong == {5, 510}                              # [511, 1023) flushed instead
    assert vm.stats["range_flushes"] == 1


# --------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("name,l1,l2,entries_total", [
    ("skylake", ((16, 4), (8, 4), (1, 4)), ((128, 12), (4, 4)), 64 + 32 + 4 + 1536 + 16),
    ("icelake", ((16, 4), (8, 4), (1, 8)), ((128, 8), (128, 8)), 64 + 32 + 8 + 1024 + 1024),
    ("goldencove", ((16, 4), (8, 4), (1, 8)), ((128, 8), (128, 8)), 64 + 32 + 8 + 1024 + 1024),
    ("zen2", ((1, 64), (1, 64), (1, 64)), ((256, 8), (0, 0)), 64 * 3 + 2048),
    ("zen3", ((1, 64), (1, 64), (1, 64)), ((256, 8), (1, 64)), 64 * 3 + 2048 + 64),
    ("zen4", ((1, 72), (1, 72), (1, 72)), ((256, 12), (1, 64)), 72 * 3 + 3072 + 64),
])
def test_presets_have_the_spec_geometry_and_build_a_vm(name, l1, l2, entries_total):
    t = TLBConfig.preset(name)
    assert t.mode == "setassoc" and t.name == name
    assert (t.l1_4k, t.l1_2m, t.l1_1g) == l1
    assert (t.l2, t.l2_1g) == l2
    assert t.entries == entries_total
    assert (t.psc_pde, t.psc_pdpte, t.psc_pml4e, t.psc_pml5e) == ((1, 32), (1, 4), (1, 2), (1, 2))
    vm = VM(arch="svm" if name.startswith("zen") else "vmx", tlb=t)
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    assert vm.access(0, GPA(3)).outcome == "ok"
    assert vm.access(0, GPA(3)).tlb == "l1"


def test_adversarial_preset_and_default():
    for t in (TLBConfig.preset("adversarial"), TLBConfig.adversarial(), TLBConfig()):
        assert t.mode == "adversarial" and t.entries == 0


def test_default_paging_structure_caches_are_fully_associative():
    # [MODEL CHOICE] (Intel does not enumerate them): PML4E-cache 2, PDPTE-cache 4, PDE-cache 32, fully assoc.
    t = TLBConfig()
    assert (t.psc_pde, t.psc_pdpte, t.psc_pml4e, t.psc_pml5e) == ((1, 32), (1, 4), (1, 2), (1, 2))


def _tiny(replacement="lru", **kw):
    return TLBConfig(mode="setassoc", replacement=replacement, l1_4k=(1, 4), psc_pde=(1, 32), psc_pdpte=(1, 4),
                     psc_pml4e=(1, 2), psc_pml5e=(1, 2), **kw)


def _prefaulted(tlb, seed=0):
    vm = VM(tlb=tlb, seed=seed)
    vm.add_memslot(0, 4096, max_level=1)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 4096, 1)
    vm.vcpu_run(0, 0)
    return vm


def test_a_small_set_associative_tlb_evicts_and_the_adversarial_one_never_does():
    small = _prefaulted(_tiny())
    adv = _prefaulted(TLBConfig.adversarial())
    for vm in (small, adv):
        for g in range(10, 30):
            vm.access(0, GPA(g))
    assert small.pcpu_info(0)["tlb_entries"] == 4             # capacity: 1 set x 4 ways
    assert adv.pcpu_info(0)["tlb_entries"] == 20
    assert small.access(0, GPA(10)).tlb is None              # evicted: walk again
    assert adv.access(0, GPA(10)).tlb == "l1"


def _victim(replacement, seed=0):
    vm = _prefaulted(_tiny(replacement), seed)
    for g in (10, 11, 12, 13):                                 # fill the 4 ways
        vm.access(0, GPA(g))
    assert vm.access(0, GPA(10)).tlb == "l1"                  # touch the first again
    vm.access(0, GPA(14))                                      # one must go
    left = {e["gfn"] for e in vm.tlb_entries(0) if e["kind"] == "tlb"}
    assert 14 in left and len(left) == 4
    (gone,) = {10, 11, 12, 13} - left
    return gone


def test_lru_plru_and_random_pick_different_victims():
    assert _victim("lru") == 11                                # least recently used
    assert _victim("plru") == 12                               # tree-PLRU: the other half, its left leaf
    picks = {s: _victim("random", s) for s in range(12)}
    assert picks == {s: _victim("random", s) for s in range(12)}   # deterministic by seed
    assert len(set(picks.values())) > 1


def test_l2_hit_refills_l1():
    tlb = TLBConfig(mode="setassoc", l1_4k=(1, 2), l2=(4, 4), psc_pde=(1, 32))
    vm = _prefaulted(tlb)
    for g in (1, 2, 3):
        assert vm.access(0, GPA(g)).tlb is None
    assert vm.access(0, GPA(1)).tlb == "l2"
    assert vm.access(0, GPA(1)).tlb == "l1"
    assert vm.stats["tlb_hits_l2"] == 1


def test_flushing_one_context_leaves_the_others_in_a_set_associative_tlb():
    vm = VM(tlb=TLBConfig.preset("skylake"))
    slot = vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    for g in range(8):
        vm.access(0, GPA(g))
    a = vm.mmu.newest_root()
    eptp_a, tag_a = vm.mmu.root_pointer(a), a.hpa >> 12
    vm.delete_memslot(slot)
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    b = vm.mmu.newest_root()
    for g in range(8):
        vm.access(0, GPA(g))
    keep = entries(vm, tag=b.hpa >> 12)
    assert keep and entries(vm, tag=tag_a)
    vm.invept(0, "single", eptp_a)
    assert entries(vm) == keep
    assert all(vm.access(0, GPA(g)).tlb == "l1" for g in range(8))


# --------------------------------------------------------------------------- A/D assists and cached translations

@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_accessed_and_dirty_are_set_by_walks_not_by_cached_translations(arch):
    from tdpfast.spte import decode
    fmt = "ept" if arch == "vmx" else "npt"
    vm = VM(arch=arch, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 512, max_level=1)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 16, 1)
    vm.vcpu_run(0, 0)

    def ad():
        d = decode(vm.mmu.spte(5), fmt)
        return d["accessed"], d["dirty"]

    vm.mmu.age(0, 16)
    vm.mmu.clear_dirty_range(0, 16)
    assert ad() == (False, False)
    r = vm.access(0, GPA(5), "r")                 # SDM 28.2.4: the walk sets A
    assert r.tlb is None and ad() == (True, False)
    r = vm.access(0, GPA(5), "w")                 # the cached entry has not recorded D: re-walk
    assert r.tlb is None and r.walk_refs > 0 and ad() == (True, True)
    vm.mmu.age(0, 16)                             # cleared without INVEPT / TLB_CONTROL ...
    vm.mmu.clear_dirty_range(0, 16)
    r = vm.access(0, GPA(5), "w")                 # ... so the cached translation is used
    assert r.tlb == "l1" and ad() == (False, False)
    assert decode(vm.mmu.spte(5, 2), fmt)["accessed"]   # non-leaf A is set eagerly by KVM


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_zap_all_fast_kicks_vcpus_to_free_obsolete_roots_and_each_flushes_on_reload(arch):
    vm = VM(arch=arch, vcpus=2, pcpus=2, tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096)
    for v in range(2):
        vm.vcpu_run(v, v)
        vm.access(v, GPA(v + 1))
    old = vm.mmu.newest_root()
    vm.reset_stats()
    vm.mmu.zap_all_fast()
    # kvm_mmu_zap_all_fast(): no TLB flush; KVM_REQ_MMU_FREE_OBSOLETE_ROOTS (WAIT) to every vCPU.
    assert stats(vm, "remote_tlb_flush", "ipis", "flush_current") == {"remote_tlb_flush": 0, "ipis": 2,
                                                                       "flush_current": 0}
    assert all(vm.vcpu_info(v)["requests"] == ["mmu_free_obsolete_roots"] for v in range(2))
    for v in range(2):
        vm.access(v, GPA(v + 1))
    new = vm.mmu.newest_root()
    assert not old.alive and new.refcount == 3              # two vCPUs and the TDP MMU
    assert stats(vm, "roots_freed", "roots_allocated", "flush_current") == {
        "roots_freed": 1, "roots_allocated": 1, "flush_current": 2}     # each load flushes
    key = "invept_single" if arch == "vmx" else "tlb_control_flush_asid"
    assert vm.stats[key] == 2
    assert vm.violations == []


def test_get_dirty_log_flushes_only_when_something_was_dirty():
    vm = VM(tlb=TLBConfig.adversarial())
    slot = vm.add_memslot(0, 1024, max_level=1, dirty_log=True)
    vm.vcpu_run(0, 0)
    n = vm.stats["remote_tlb_flush"]
    assert vm.get_dirty_log(slot) == []
    assert vm.stats["remote_tlb_flush"] == n
    vm.access(0, GPA(3), "w")
    assert vm.get_dirty_log(slot) == [3]
    assert vm.stats["remote_tlb_flush"] == n + 1
