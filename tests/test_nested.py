"""Nested L2 contexts: L2's own root (role.guest_mode) and TLB tag, KVM's nested TLB-flush
rules on each transition, and the two catalogue bugs that need them: B16 (a remote flush
that flushes only the current EPTP/VPID context) and B22 (ASID generation and last pCPU
kept per vCPU instead of per VMCB). Each bug has a twin under KVM's policy that stays clean."""
import pytest

import tdpfast
from tdpfast import InvalidStateError, Policy


def vm_with(arch, policy="kvm", **kw):
    vm = tdpfast.VM(arch=arch, vcpus=2, pcpus=2, policy=Policy.named(policy), record=True, **kw)
    vm.add_memslot(0, 1 << 12, max_level=1)
    return vm


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_l2_runs_on_its_own_root_and_tag(arch):
    vm = vm_with(arch)
    vm.vcpu_run(0, 0)
    l1 = vm.vcpu_info(0)
    vm.nested_enter(0)
    l2 = vm.vcpu_info(0)
    assert l2["in_l2"] and l2["root"] != l1["root"] and l2["other_root"] == l1["root"]
    roots = {r.id: r for r in vm.mmu.roots}
    assert roots[l2["root"]].guest_mode and not roots[l1["root"]].guest_mode
    if arch == "vmx":
        assert l2["vpid"] != l1["vpid"]
    else:
        assert l2["asid"] != l1["asid"]
    r = vm.access(0, 0x5000, "w")
    assert r.outcome == "ok" and r.violation is None
    vm.nested_exit(0)
    assert vm.vcpu_info(0)["root"] == l1["root"] and not vm.vcpu_info(0)["in_l2"]
    assert vm.stats["nested_entries"] == vm.stats["nested_exits"] == 1
    copy = vm.fresh()
    copy.replay(vm.events)
    assert copy.digest() == vm.digest()


def test_transitions_are_checked():
    vm = vm_with("vmx")
    with pytest.raises(InvalidStateError):
        vm.nested_enter(0)                     # not in guest mode
    vm.vcpu_run(0, 0)
    with pytest.raises(InvalidStateError):
        vm.nested_exit(0)                      # not in L2
    vm.nested_enter(0)
    with pytest.raises(InvalidStateError):
        vm.nested_enter(0)                     # already in L2


def b16_scenario(policy):
    """L2 touches gfn 5; nested exit to L1; the host unmaps the page (KVM zaps every root
    and flushes remotely); the freed frame is handed out again; L2 touches gfn 5."""
    vm = vm_with("vmx", policy)
    vm.vcpu_run(0, 0)
    vm.nested_enter(0)
    vm.access(0, 0x5000, "w")
    vm.nested_exit(0)
    vm.host_unmap(5, 6)
    vm.vcpu_run(0, 0)                          # services the flush in L1's context
    vm.access(0, 0x9000, "w")                  # a new page for L1 (the freed frame may be reused)
    vm.nested_enter(0)
    return vm, vm.access(0, 0x5000, "r")


def test_b16_a_remote_flush_of_the_current_context_only_leaves_l2s_entry():
    vm, r = b16_scenario("B16-remote-flush-current-only")
    assert r.tlb is not None and r.violation is not None
    assert r.violation.kind in ("use_after_free", "stale_page_table")


def test_b16_twin_kvm_flushes_every_context():
    vm, r = b16_scenario("kvm")
    assert r.tlb is None and r.violation is None and vm.violations == []


def b22_scenario(policy):
    """Two ASIDs per pCPU, so generations roll over: vCPU 0 runs L2 (vmcb02 gets an ASID),
    exits to L1, L1 takes ASIDs until the generation rolls over, then vCPU 1 and vCPU 0's L1
    take this generation's ASIDs; vCPU 0 re-enters L2."""
    vm = vm_with("svm", policy, min_asid=1, max_asid=2)
    vm.vcpu_run(0, 0)
    vm.nested_enter(0)
    vm.access(0, 0x5000, "r")
    vm.nested_exit(0)
    vm.vcpu_run(1, 0)                          # vCPU 1 takes an ASID on pCPU 0
    vm.vcpu_run(0, 0)
    vm.nested_enter(0)
    return vm


def test_b22_vmcb02_runs_without_an_asid_of_its_own():
    """With the generation per vCPU, vmcb02's first VMRUN finds the generation current and
    keeps the ASID field it has (none: the host's ASID 0)."""
    vm = b22_scenario("B22-asid-generation-per-vcpu")
    assert [v.kind for v in vm.violations][:1] == ["tlb_tag_alias"]


def test_b22_twin_kvm_tracks_the_generation_per_vmcb():
    vm = b22_scenario("kvm")
    assert vm.violations == []
    a, b = vm.vcpu_info(0), vm.vcpu_info(1)
    assert (a["asid"], a["asid_generation"]) != (b["asid"], b["asid_generation"]) and a["asid"] != 0


# ---------------------------------------------------------------- L1's INVVPID for L2

def l2_with_guest_paging():
    vm = tdpfast.VM(vcpus=2, pcpus=2, record=True)
    vm.add_memslot(0, 1 << 12, max_level=1)
    vm.vcpu_run(0, 0)
    g = vm.guest
    g.set_table_pool(0x800, 64)
    cr3 = g.new_table()
    g.map(cr3, 0x7F0000000000, 0x5000, global_page=True)
    g.map(cr3, 0x7F0000001000, 0x6000)
    vm.nested_enter(0)
    g.set_paging(0, 4)
    g.load_cr3(0, cr3)
    g.access(0, 0x7F0000000000)
    g.access(0, 0x7F0000001000)
    vm.nested_exit(0)
    return vm, g, cr3


def l2_cached(vm, g, gva):
    vm.nested_enter(0)
    hit = g.access(0, gva).tlb == "combined"
    vm.nested_exit(0)
    return hit


@pytest.mark.parametrize("kind", ["single", "all", "single_retaining_globals"])
def test_l1_invvpid_flushes_vpid02(kind):
    vm, g, _ = l2_with_guest_paging()
    vm.nested_invvpid(0, kind, 1)
    assert not l2_cached(vm, g, 0x7F0000001000)      # KVM flushes the whole context on VPID02
    assert not l2_cached(vm, g, 0x7F0000000000)      # globals too (vpid_sync_context())


def test_l1_invvpid_individual_address_twin_other_pages_stay():
    vm, g, _ = l2_with_guest_paging()
    vm.nested_invvpid(0, "individual", 1, 0x7F0000001000)
    assert not l2_cached(vm, g, 0x7F0000001000) and l2_cached(vm, g, 0x7F0000000000)


def test_l1_invvpid_twin_l1s_own_entries_stay():
    vm, g, cr3 = l2_with_guest_paging()
    g.set_paging(0, 4)                                # L1's own paging, same tables
    g.load_cr3(0, cr3)
    g.access(0, 0x7F0000001000)
    vm.nested_invvpid(0, "single", 1)
    assert g.access(0, 0x7F0000001000).tlb == "combined"   # VPID01 untouched


def test_l1_invvpid_kvm_drops_is_kvms_violation_and_the_operand_is_checked():
    vm, g, cr3 = l2_with_guest_paging()
    bad = tdpfast.VM(vcpus=2, pcpus=2, mutant="nested_invvpid")
    bad.replay(vm.events)
    bad.guest.unmap(cr3, 0x7F0000001000)              # L1 changes L2's tables ...
    bad.nested_invvpid(0, "single", 1)                # ... and flushes them; KVM drops it
    bad.nested_enter(0)
    r = bad.guest.access(0, 0x7F0000001000)
    assert r.violation is not None and r.violation.kind == "stale_guest_translation"
    vm.guest.unmap(cr3, 0x7F0000001000)               # the twin: KVM's engine flushes VPID02
    vm.nested_invvpid(0, "single", 1)
    vm.nested_enter(0)
    r = vm.guest.access(0, 0x7F0000001000)
    assert r.outcome == "guest_page_fault" and r.violation is None
    vm.nested_exit(0)
    with pytest.raises(tdpfast.InvalidArgumentError):
        vm.nested_invvpid(0, "single", 0)             # VPID 0: VMfailValid
    with pytest.raises(tdpfast.InvalidArgumentError):
        vm.nested_invvpid(0, "single", 1 << 16)
    vm.nested_enter(0)
    with pytest.raises(InvalidStateError):
        vm.nested_invvpid(0, "single", 1)             # L2 does not execute L1's INVVPID


def test_the_reference_model_says_it_has_no_guest_paging_or_l2():
    import tdpfast.reference.model as ref
    vm, _, _ = l2_with_guest_paging()
    for replay in (ref.VM(vcpus=2, pcpus=2).replay, ref.VM(vcpus=2, pcpus=2).replay_fast):
        with pytest.raises(tdpfast.InvalidArgumentError, match="no guest paging or nested L2"):
            replay(vm.events)
