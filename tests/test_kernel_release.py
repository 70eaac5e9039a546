"""Kernel releases (issue 10, item 1): ``VM(kernel=...)`` / ``Policy.release()`` select the switch
values of one KVM release; the default is v6.13, the newest release the model matches exactly.

Cases A-E are the minimal cases in which the model differed from KVM v6.13's own tdp_mmu.c,
tdp_iter.c and spte.c run in user space on the same operations; each test gives KVM v6.13's result
and, where a release switch made the difference, the older release's result.
"""
from __future__ import annotations

import pytest

from tdpfast import Policy, VM
from tdpfast.errors import InvalidArgumentError
from tdpfast.policy import DEFAULT_RELEASE, RELEASE_CHANGES, RELEASES

GIB = 262144                # gfns in 1 GiB
PFN_MASK = 0x000FFFFFFFFFF000
EPT_A, EPT_D = 1 << 8, 1 << 9
PS = 1 << 7


def vm_with_root(kernel=None, npages=1024, **kw):
    vm = VM(kernel=kernel, **kw)
    vm.add_memslot(0, npages)
    root = vm.mmu.alloc_root()
    return vm, root


# ------------------------------------------------------------------ the releases

def test_the_default_policy_is_release_6_13():
    assert DEFAULT_RELEASE == "6.13" and RELEASES[-1] == DEFAULT_RELEASE
    assert Policy() == Policy.kvm() == Policy.named("kvm") == Policy.release("6.13")
    assert VM().policy == VM(kernel="6.13").policy == Policy()


def test_each_difference_between_releases_is_written_once_with_its_commit():
    switches = [switch for _, switch, _, _ in RELEASE_CHANGES]
    assert len(switches) == len(set(switches))
    for since, switch, before, commit in RELEASE_CHANGES:
        assert getattr(Policy(), switch) != before          # the default has the change
        commit_id, subject = commit.split(" ", 1)
        assert len(commit_id) == 12 and int(commit_id, 16) >= 0 and subject.startswith("KVM: x86/mmu: ")
        for version in RELEASES:                             # a release has it iff it is not older
            has = tuple(map(int, version.split("."))) >= tuple(map(int, since.split(".")))
            assert (getattr(Policy.release(version), switch) != before) == has, (version, switch)


def test_release_policies_are_the_named_era_policies():
    assert Policy.release("6.12").changed() == {
        "huge_recovery": "zap_collapsible", "ept_soft_ad": False, "fault_spurious_if_allowed": False,
        "age_valid_roots_only": False}
    assert Policy.release("6.6") == Policy.release("6.12")   # no difference the model knows
    assert Policy.release("5.17") == Policy.release("6.12").replace(root_lifetime="zap_on_last_put")
    for version in ("5.17", "6.6", "6.12"):
        assert Policy.named(f"kvm-v{version}") == Policy.release(version)
        assert VM(kernel=version).policy == Policy.release(version)


def test_kernel_is_validated_and_excludes_policy():
    with pytest.raises(InvalidArgumentError, match="unknown kernel release"):
        VM(kernel="6.14")
    with pytest.raises(InvalidArgumentError, match="not both"):
        VM(kernel="6.12", policy=Policy())


# ------------------------------------------------------------------ A: EPT with A/D disabled

@pytest.mark.parametrize("kernel", ["6.13", "6.12"])
def test_a_ept_without_ad_makes_the_leaf_with_accessed_and_dirty_set(kernel):
    """KVM v6.13: kvm_mmu_set_ept_masks() sets shadow_accessed_mask / shadow_dirty_mask (bits 8,
    9) even without hardware A/D, and make_spte() sets them on a new writable leaf: ...5b77.
    Up to v6.12 the masks are 0 without hardware A/D: ...5877."""
    vm, _ = vm_with_root(kernel, arch="vmx", ad=False)
    vm.mmu.map(5, 1)
    spte = vm.mmu.spte(5)
    assert spte & 0xFFFF == (0x5B77 if kernel == "6.13" else 0x5877)
    assert spte & (EPT_A | EPT_D) == (EPT_A | EPT_D if kernel == "6.13" else 0)
    assert spte & (1 << 52)                                    # still an AD-disabled SPTE
    # Aging clears A with the RWX bits (access tracking), a read fault restores both.
    assert vm.mmu.age(0, 16) is True
    tracked = vm.mmu.spte(5)
    assert tracked & 7 == 0 and tracked & EPT_A == 0
    assert vm.mmu.age(0, 16) is False                          # not young any more
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "r")
    assert vm.mmu.spte(5) & (EPT_A | 5) == (EPT_A | 5 if kernel == "6.13" else 5)
    assert vm.mmu.age(0, 16) is True


# ------------------------------------------------------------------ B: spurious faults

@pytest.mark.parametrize("kernel", ["6.13", "6.12"])
def test_b_fault_on_a_split_child_that_allows_the_read_is_spurious(kernel):
    """map(0x200, 2); age(0, 0x400); map(0x205, 1): the fault splits the (aged, A-clear) 2M leaf
    in place, then finds a present 4K leaf that allows the read. KVM v6.13 returns
    RET_PF_SPURIOUS without rewriting it (386d69f9f29b), so A stays clear like its siblings';
    v6.12 rebuilds the SPTE with make_spte() and sets A."""
    vm, _ = vm_with_root(kernel)
    vm.mmu.map(0x200, 2)
    vm.mmu.age(0, 0x400)
    aged = vm.mmu.spte(0x200, 2)
    assert aged & EPT_A == 0
    writes, spurious = vm.stats["spte_writes"], vm.stats["pf_spurious"]
    vm.mmu.map(0x205, 1)
    sibling = vm.mmu.spte(0x206)
    child = vm.mmu.spte(0x205)
    assert sibling == (aged & ~PS & ~PFN_MASK) | ((aged & PFN_MASK) + (6 << 12))
    if kernel == "6.13":
        assert child == sibling - (1 << 12)                    # the split child, untouched
        assert vm.stats["spte_writes"] == writes + 1           # only the link of the new table
    else:
        assert child == (sibling - (1 << 12)) | EPT_A
        assert vm.stats["spte_writes"] == writes + 2
    assert vm.stats["pf_spurious"] == spurious                 # kvm_tdp_map_page() counts only fixed faults


@pytest.mark.parametrize("kernel", ["6.13", "6.12"])
def test_b_read_fault_on_a_write_protected_leaf_leaves_it_alone(kernel):
    """map(5, 1); write_protect_range(0, 0x10); map(5, 1) as a read: the read-only leaf allows a
    read, so KVM v6.13 leaves it alone; v6.12 rebuilds it writable (W set again)."""
    vm, _ = vm_with_root(kernel)
    vm.mmu.map(5, 1)
    writable = vm.mmu.spte(5)
    vm.mmu.write_protect_range(0, 0x10)
    protected = vm.mmu.spte(5)
    assert protected == writable & ~2
    vm.mmu.map(5, 1)
    assert vm.mmu.spte(5) == (protected if kernel == "6.13" else writable)


# ------------------------------------------------------------------ C: recovery after a leaf-only zap

@pytest.mark.parametrize("kernel", RELEASES)
def test_c_recovery_builds_the_huge_leaf_from_the_first_leaf_anywhere_below(kernel):
    """map(0, 1); map(512, 1); zap_gfn_range(0, 1); recover: the PD under gfn 0's PDPTE keeps an
    empty PT for gfns 0-511 and a PT holding gfn 512. KVM (tdp_mmu_make_huge_spte() walks
    tdp_root_for_each_leaf_pte()) finds gfn 512's leaf and, with a 1 GiB slot, installs a 1G leaf
    at gfn 0 (v6.13) -- or, zapping collapsible tables (<= v6.12), zaps the whole PD. A bug of
    the model in every release (it followed only the first present entry per level) until fixed."""
    vm, _ = vm_with_root(kernel, npages=GIB)
    vm.mmu.map(0, 1)
    pfn0 = vm.mmu.spte(0) & PFN_MASK
    vm.mmu.map(512, 1)
    leaf512 = vm.mmu.spte(512)
    vm.mmu.zap_gfn_range(0, 1)
    vm.mmu.recover_huge_pages(0, GIB)
    assert vm.stats["huge_pages_recovered"] == 1
    if Policy.release(kernel).huge_recovery == "recover":
        assert vm.mmu.spte(0, 3) == (leaf512 & ~PFN_MASK) | PS | pfn0
        assert vm.stats["pages_1g"] == 1 and vm.stats["pages_2m"] == 0 and vm.stats["pages_4k"] == 0
    else:
        assert vm.mmu.spte(0, 3) & (1 << 11) == 0              # the PDPTE is no longer present
        assert vm.stats["pages_4k"] == 0


# ------------------------------------------------------------------ D: aging walks valid roots

@pytest.mark.parametrize("kernel", ["6.13", "6.12"])
def test_d_aging_skips_invalid_roots(kernel):
    """map(0, 1); invalidate_all_roots(); age(0, 1): KVM v6.13 ages only valid roots
    (526e609f0567), so nothing changes and it returns False; v6.12 clears A in the invalid root
    and returns True."""
    vm, root = vm_with_root(kernel)
    vm.mmu.map(0, 1)
    before = vm.mmu.spte(0, root=root)
    vm.mmu.invalidate_all_roots()
    young = vm.mmu.age(0, 1)
    if kernel == "6.13":
        assert young is False and vm.mmu.spte(0, root=root) == before
    else:
        assert young is True and vm.mmu.spte(0, root=root) == before & ~EPT_A


# ------------------------------------------------------------------ E: one recovery flush per root

@pytest.mark.parametrize("both", [True, False])
def test_e_recovery_flushes_once_per_root_that_changed(both):
    """Two valid roots of address space 0 -- a direct root and a guest_mode one (an L2 whose L1
    does not use EPT runs on a TDP MMU root with role.guest_mode) -- each with gfn 0 mapped at 4K.
    KVM v6.13's kvm_tdp_mmu_recover_huge_pages() runs recover_huge_pages_range() per valid root,
    each ending with kvm_flush_remote_tlbs_memslot() if that root changed: two flushes; one when
    only one root had something to recover."""
    vm, root = vm_with_root()
    l2 = vm.mmu.alloc_root(guest_mode=True)
    vm.mmu.map(0, 1, root=root)
    if both:
        vm.mmu.map(0, 1, root=l2)
    flushes = vm.stats["remote_tlb_flush"]
    assert vm.mmu.recover_huge_pages(0, 1024) is True
    assert vm.stats["huge_pages_recovered"] == (2 if both else 1)
    assert vm.stats["remote_tlb_flush"] - flushes == (2 if both else 1)
    assert vm.mmu.recover_huge_pages(0, 1024) is False
    assert vm.stats["remote_tlb_flush"] - flushes == (2 if both else 1)
