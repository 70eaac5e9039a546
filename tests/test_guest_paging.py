"""Guest paging: the guest's tables in guest memory, the two-dimensional walk and its
reference count, combined TLB entries with their tags, and every invalidation that
reaches them (Intel SDM Vol. 3C "Operations that Invalidate Cached Mappings"; Vol. 3A
4.10.4 for INVLPG, INVPCID and MOV to CR3; AMD APM Vol. 2 15.16 for TLB_CONTROL).

Each invalidation test has a twin: the test shows the instruction drops what it must
(it fails if the rule is dropped from the engine), the twin shows what the same
instruction must leave alone, or that the entry is really there without it (so the
first test cannot pass by the entry never having been cached)."""
import pytest

import tdpfast
from tdpfast import InvalidArgumentError, InvalidStateError
from tdpfast._native import ffi, lib

GVA = 0x7F0000000000
GVA2 = 0x7F0000200000
POOL = 0x3F000
NOPSC = dict(psc_pde=(0, 0), psc_pdpte=(0, 0), psc_pml4e=(0, 0), psc_pml5e=(0, 0))


def setup(arch="vmx", *, pcide=False, levels=4, glevels=4, tlb=None, global_page=False, vcpus=2):
    vm = tdpfast.VM(arch=arch, levels=levels, vcpus=vcpus, pcpus=2, tlb=tlb, record=True)
    vm.add_memslot(0, 1 << 18, max_level=1)
    if vcpus > 1:
        vm.vcpu_run(1, 0)    # its first load on pCPU 0 flushes everything (vmx_vcpu_load_vmcs())
    vm.vcpu_run(0, 0)
    g = vm.guest
    g.set_table_pool(POOL, 512)
    cr3 = g.new_table()
    g.map(cr3, GVA, 0x5000, global_page=global_page, levels=glevels)
    g.map(cr3, GVA2, 0x6000, levels=glevels)
    g.set_paging(0, glevels, pcide=pcide)
    g.load_cr3(0, cr3)
    return vm, g, cr3


def leaf_table(g, cr3, gva, levels=4):
    """The gfn of the last-level table that maps gva (read through the guest's tables)."""
    t = cr3
    for lv in range(levels, 1, -1):
        t = (g.read_pte(t, (gva >> (12 + 9 * (lv - 1))) & 511) & ((1 << 52) - 1)) >> 12
    return t


def cached(g, vcpu=0, gva=GVA):
    """Whether the next access of gva hits a combined entry (and so was cached)."""
    return g.access(vcpu, gva).tlb == "combined"


def fill(g, vcpu=0, gva=GVA):
    r = g.access(vcpu, gva)
    assert r.outcome == "ok"
    return r


# ---------------------------------------------------------------- the 2D walk

@pytest.mark.parametrize("arch", ["vmx", "svm"])
@pytest.mark.parametrize("glevels,hlevels,refs", [(4, 4, 24), (5, 4, 29), (4, 5, 29), (5, 5, 35)])
def test_cold_2d_walk_makes_g_times_h_plus_g_plus_h_references(arch, glevels, hlevels, refs):
    tlb = tdpfast.TLBConfig.preset("skylake", **NOPSC)
    vm, g, cr3 = setup(arch, levels=hlevels, glevels=glevels, tlb=tlb)
    vm.mmu.map_range(0, 1 << 18, 1)        # EPT/NPT populated: no faults on the way
    g.map(cr3, 0x7F0000400000, 0x7000, accessed=True, levels=glevels)   # A set: no A/D writes
    vm.flush_remote_tlbs()
    vm.vcpu_run(0, 0)
    before = vm.stats["cycles"]
    r = g.access(0, 0x7F0000400000, "r")
    assert r.outcome == "ok" and r.tlb is None and r.faults == 0
    assert (r.refs, r.guest_refs, r.nested_refs) == (refs, glevels, refs - glevels)
    # The cost model charges every reference (walk_ref) and each TLB miss: the combined
    # one and the g + 1 guest-physical ones.
    c = ffi.new("struct tdp_costs *")
    lib.tdp_default_costs(c)
    assert vm.stats["cycles"] - before == refs * c.walk_ref + (glevels + 2) * c.tlb_miss
    again = g.access(0, 0x7F0000400000, "r")
    assert again.tlb == "combined" and again.refs == 0


def test_paging_structure_caches_shorten_the_nested_dimension():
    vm, g, cr3 = setup(tlb=tdpfast.TLBConfig.preset("skylake"))
    vm.mmu.map_range(0, 1 << 18, 1)
    g.map(cr3, 0x7F0000400000, 0x7000, accessed=True)
    vm.flush_remote_tlbs()
    vm.vcpu_run(0, 0)
    r = g.access(0, 0x7F0000400000, "r")
    assert r.outcome == "ok" and r.guest_refs == 4 and r.refs < 24


def test_a_guest_huge_page_shortens_the_guest_dimension():
    tlb = tdpfast.TLBConfig.preset("skylake", **NOPSC)
    vm, g, cr3 = setup(tlb=tlb)
    vm.mmu.map_range(0, 1 << 18, 1)
    g.map(cr3, 0x7F0040000000, 0x200000, level=2, accessed=True)
    vm.flush_remote_tlbs()
    vm.vcpu_run(0, 0)
    r = g.access(0, 0x7F0040012345)
    assert r.guest_level == 2 and r.gpa == 0x212345 and (r.refs, r.guest_refs) == (3 * 5 + 4, 3)


def test_guest_walk_sets_accessed_and_dirty_in_guest_memory():
    vm, g, cr3 = setup()
    assert g.read_pte(leaf_table(g, cr3, GVA), (GVA >> 12) & 511) & 0x60 == 0
    g.access(0, GVA, "w")
    leaf = g.translate(cr3, GVA)
    assert leaf.gpa == 0x5000 and leaf.perms == "rwx"
    pte = g.read_pte(leaf_table(g, cr3, GVA), (GVA >> 12) & 511)
    assert pte & 0x20 and pte & 0x40   # A and D


def test_guest_page_faults_and_their_error_codes():
    vm, g, cr3 = setup()
    assert g.access(0, 0x1000).outcome == "guest_page_fault"
    assert g.access(0, 0x1000).pf_error == 0                 # not present, read
    g.map(cr3, 0x7F0000600000, 0x8000, write=False, nx=True)
    r = g.access(0, 0x7F0000600000, "w")
    assert r.outcome == "guest_page_fault" and r.pf_error == 1 | 2   # present, write
    r = g.access(0, 0x7F0000600000, "x")
    assert r.outcome == "guest_page_fault" and r.pf_error == 1 | 16  # present, fetch
    g.write_pte(leaf_table(g, cr3, 0x7F0000600000), (0x7F0000600000 >> 12) & 511, (1 << 51) | 0x8000 | 1)   # a reserved bit
    r = g.access(0, 0x7F0000600000, "r")
    assert r.outcome == "guest_page_fault" and r.pf_error == 1 | 8


def test_guest_table_reads_fault_through_kvm():
    vm, g, cr3 = setup()
    r = g.access(0, GVA)
    assert r.outcome == "ok" and r.faults == 5    # four guest tables and the page, each an EPT violation
    assert vm.stats["pf_fixed"] == 5


# ---------------------------------------------------------------- stale guest translations

def test_a_changed_guest_pte_is_used_until_the_guest_flushes_it():
    vm, g, cr3 = setup()
    fill(g)
    g.unmap(cr3, GVA)
    r = g.access(0, GVA)
    assert r.tlb == "combined" and r.stale_guest and r.violation is None   # the guest owes the flush
    assert vm.stats["guest_stale_hits"] == 1
    g.invlpg(0, GVA)
    assert g.access(0, GVA).outcome == "guest_page_fault"


# ---------------------------------------------------------------- the guest's own flushes

def test_invlpg_drops_the_page_of_the_current_pcid():
    vm, g, _ = setup()
    fill(g)
    fill(g, gva=GVA2)
    g.invlpg(0, GVA)
    assert not cached(g)


def test_invlpg_twin_other_pages_and_other_pcids_stay():
    vm, g, cr3 = setup(pcide=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    fill(g, gva=GVA2)
    g.load_cr3(0, cr3, pcid=2)
    g.invlpg(0, GVA)                                  # PCID 2's page
    g.load_cr3(0, cr3, pcid=1, noflush=True)
    assert cached(g) and cached(g, gva=GVA2)


def test_invlpg_drops_global_entries_of_any_pcid():
    vm, g, cr3 = setup(pcide=True, global_page=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    g.load_cr3(0, cr3, pcid=2)
    assert cached(g)                                  # a global entry serves every PCID
    g.invlpg(0, GVA)
    assert not cached(g)


def test_invpcid_address_drops_one_page_of_one_pcid():
    vm, g, cr3 = setup(pcide=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    fill(g, gva=GVA2)
    g.load_cr3(0, cr3, pcid=2, noflush=True)
    g.invpcid(0, "address", pcid=1, gva=GVA)
    g.load_cr3(0, cr3, pcid=1, noflush=True)
    assert not cached(g)


def test_invpcid_address_twin_globals_and_other_pages_stay():
    """The SDM lets type 0 drop global translations too; the model keeps them, and says so."""
    vm, g, cr3 = setup(pcide=True, global_page=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)                                           # a global entry
    fill(g, gva=GVA2)
    g.invpcid(0, "address", pcid=1, gva=GVA)
    g.invpcid(0, "address", pcid=1, gva=GVA + 0x1000)
    assert cached(g) and cached(g, gva=GVA2)


def test_invpcid_single_context_drops_that_pcid():
    vm, g, cr3 = setup(pcide=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    g.invpcid(0, "single", pcid=1)
    assert not cached(g)


def test_invpcid_single_context_twin_other_pcids_and_globals_stay():
    vm, g, cr3 = setup(pcide=True, global_page=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)                                           # global
    fill(g, gva=GVA2)                                 # non-global, PCID 1
    g.invpcid(0, "single", pcid=3)
    assert cached(g, gva=GVA2)
    g.invpcid(0, "single", pcid=1)
    assert cached(g) and not cached(g, gva=GVA2)


def test_invpcid_all_including_globals():
    vm, g, _ = setup(pcide=True, global_page=True)
    fill(g)
    fill(g, gva=GVA2)
    g.invpcid(0, "all")
    assert not cached(g) and not cached(g, gva=GVA2)


def test_invpcid_all_except_globals_twin_keeps_globals():
    vm, g, _ = setup(pcide=True, global_page=True)
    fill(g)
    fill(g, gva=GVA2)
    g.invpcid(0, "all_except_globals")
    assert cached(g) and not cached(g, gva=GVA2)


def test_mov_cr3_without_pcids_drops_non_global_entries():
    vm, g, cr3 = setup(global_page=True)
    fill(g)
    fill(g, gva=GVA2)
    g.load_cr3(0, cr3)
    assert not cached(g, gva=GVA2)


def test_mov_cr3_without_pcids_twin_keeps_globals():
    vm, g, cr3 = setup(global_page=True)
    fill(g)
    g.load_cr3(0, cr3)
    assert cached(g)


def test_mov_cr3_with_pcids_drops_the_new_pcid_only():
    vm, g, cr3 = setup(pcide=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    g.load_cr3(0, cr3, pcid=2)
    fill(g, gva=GVA2)
    g.load_cr3(0, cr3, pcid=1)                        # bit 63 clear: PCID 1 is flushed
    assert not cached(g)


def test_mov_cr3_with_pcids_twin_other_pcid_and_bit63_keep_entries():
    vm, g, cr3 = setup(pcide=True)
    g.load_cr3(0, cr3, pcid=1)
    fill(g)
    g.load_cr3(0, cr3, pcid=2)                        # flushes PCID 2, not 1
    g.load_cr3(0, cr3, pcid=1, noflush=True)          # bit 63: nothing
    assert cached(g)


def test_a_paging_mode_change_drops_everything_of_the_vpid():
    vm, g, _ = setup(global_page=True)
    fill(g)
    g.set_paging(0, 4)
    assert not cached(g)


# ---------------------------------------------------------------- the hypervisor's flushes (VMX)

def two_vpids():
    """vCPU 0 (VPID 1) and vCPU 1 (VPID 2), the same guest tables, entries on pCPU 0
    (both were loaded there before, so switching between them flushes nothing)."""
    vm, g, cr3 = setup(global_page=True)
    vm.vcpu_run(1, 0)
    g.set_paging(1, 4)
    g.load_cr3(1, cr3)
    vm.vcpu_run(0, 0)
    fill(g)
    vm.vcpu_run(1, 0)
    fill(g, 1)
    return vm, g, cr3


def test_invvpid_individual_address_drops_the_page_in_every_pcid_globals_too():
    vm, g, cr3 = two_vpids()
    fill(g, 1, GVA2)
    vm.invvpid(0, "individual", 2, GVA)
    assert not cached(g, 1) and cached(g, 1, GVA2)


def test_invvpid_individual_address_twin_other_vpid_stays():
    vm, g, _ = two_vpids()
    vm.invvpid(0, "individual", 2, GVA)
    vm.vcpu_run(0, 0)
    assert cached(g, 0)


def test_invvpid_single_context_drops_the_vpid():
    vm, g, _ = two_vpids()
    vm.invvpid(0, "single", 2)
    assert not cached(g, 1)


def test_invvpid_single_context_twin_other_vpid_and_guest_physical_mappings_stay():
    vm, g, _ = two_vpids()
    gp_before = [e for e in vm.tlb_entries(0) if e["kind"] == "tlb"]
    vm.invvpid(0, "single", 2)
    assert [e for e in vm.tlb_entries(0) if e["kind"] == "tlb"] == gp_before
    vm.vcpu_run(0, 0)
    assert cached(g, 0)


def test_invvpid_all_context_drops_every_vpid():
    vm, g, _ = two_vpids()
    vm.invvpid(0, "all", 0)
    assert not cached(g, 1)
    vm.vcpu_run(0, 0)
    assert not cached(g, 0)


def test_invvpid_retaining_globals_twin_keeps_globals():
    vm, g, _ = two_vpids()
    fill(g, 1, GVA2)
    vm.invvpid(0, "single_retaining_globals", 2)
    assert cached(g, 1) and not cached(g, 1, GVA2)


def test_invept_single_context_drops_combined_entries_of_the_ep4ta_for_every_vpid():
    vm, g, _ = two_vpids()
    vm.invept(0, "single", vm.mmu.root_pointer())
    assert not cached(g, 1)
    vm.vcpu_run(0, 0)
    assert not cached(g, 0)


def test_invept_single_context_twin_another_ep4ta_keeps_entries():
    vm, g, _ = two_vpids()
    other = vm.mmu.root_pointer() ^ (1 << 30)         # the same EPTP bits, another EP4TA
    vm.invept(0, "single", other)
    assert cached(g, 1)


def test_invept_global_drops_everything():
    vm, g, _ = two_vpids()
    vm.invept(0, "global")
    assert not cached(g, 1)


def test_kvm_flush_guest_is_invvpid_of_the_vcpus_vpid():
    vm, g, _ = two_vpids()
    vm.vcpu_request(1, "tlb_flush_guest")
    vm.vcpu_run(1, 0)
    assert not cached(g, 1)
    vm.vcpu_run(0, 0)
    assert cached(g, 0)


def test_an_entry_under_another_ep4ta_is_not_used():
    """Combined entries are tagged by EP4TA: a new root's context never uses them."""
    vm, g, _ = setup()
    fill(g)
    vm.mmu.invalidate_all_roots()
    vm.vcpu_request(0, "mmu_free_obsolete_roots")
    vm.vcpu_run(0, 0)
    assert not cached(g)


# ---------------------------------------------------------------- SVM: TLB_CONTROL and ASIDs

def svm_two():
    vm, g, cr3 = setup("svm", global_page=True)
    fill(g)
    fill(g, gva=GVA2)
    return vm, g, cr3


def test_tlb_control_flush_asid_drops_globals_too():
    vm, g, _ = svm_two()
    vm.set_tlb_control(0, 3)
    vm.vcpu_exit(0)
    vm.vcpu_run(0, 0)
    assert not cached(g) and not cached(g, gva=GVA2)


def test_tlb_control_flush_non_global_twin_keeps_globals():
    vm, g, _ = svm_two()
    vm.set_tlb_control(0, 7)
    vm.vcpu_exit(0)
    vm.vcpu_run(0, 0)
    assert cached(g) and not cached(g, gva=GVA2)


def test_tlb_control_flush_all_drops_every_asid():
    vm, g, cr3 = svm_two()
    vm.vcpu_run(1, 0)
    g.set_paging(1, 4)
    g.load_cr3(1, cr3)
    fill(g, 1)
    vm.set_tlb_control(0, 1)
    vm.vcpu_run(0, 0)
    assert not cached(g)
    vm.vcpu_run(1, 0)
    assert not cached(g, 1)


def test_tlb_control_zero_twin_keeps_entries():
    vm, g, _ = svm_two()
    vm.set_tlb_control(0, 0)
    vm.vcpu_exit(0)
    vm.vcpu_run(0, 0)
    assert cached(g) and cached(g, gva=GVA2)


def test_a_new_asid_does_not_use_the_old_asids_entries():
    vm, g, _ = svm_two()
    asid = vm.vcpu_info(0)["asid"]
    vm.vcpu_run(0, 1)                                 # another pCPU: its own ASID there
    assert not cached(g)
    vm.vcpu_run(0, 0)                                 # back: a fresh ASID on pCPU 0
    assert vm.vcpu_info(0)["asid"] != asid
    assert not cached(g)


def test_on_svm_invlpg_and_mov_cr3_act_within_the_asid():
    vm, g, cr3 = svm_two()
    g.invlpg(0, GVA2)
    assert cached(g) and not cached(g, gva=GVA2)


# ---------------------------------------------------------------- the host side of a combined hit

def test_after_a_host_unmap_kvms_flush_drops_the_combined_entry():
    vm, g, _ = setup()
    fill(g)
    vm.host_unmap(5, 6)                               # KVM's notifier zaps and flushes
    r = g.access(0, GVA)
    assert r.tlb is None and r.violation is None      # KVM flushed: re-walked, re-faulted


# ---------------------------------------------------------------- API contract

def test_arguments_are_checked_and_nothing_changes_on_failure():
    vm, g, cr3 = setup()
    d = vm.digest()
    with pytest.raises(InvalidArgumentError):
        g.map(cr3, 0x8000_0000_0000, 0x1000)          # non-canonical
    with pytest.raises(InvalidArgumentError):
        g.map(cr3, GVA + 0x1000, 0x1000, level=2)     # misaligned
    with pytest.raises(InvalidArgumentError):
        g.load_cr3(0, cr3, noflush=True)              # bit 63 needs PCIDE
    with pytest.raises(InvalidArgumentError):
        g.invpcid(0, "single", pcid=5)                # PCID with PCIDE=0
    with pytest.raises(InvalidArgumentError):
        g.invpcid(0, "bogus")
    with pytest.raises(InvalidArgumentError):
        g.set_paging(0, 3)
    g.map(cr3, 0x7F0040000000, 0x200000, level=2)
    with pytest.raises(InvalidStateError):
        g.map(cr3, 0x7F0040001000, 0x1000)            # inside a guest 2M page
    assert vm.digest() != d
    d = vm.digest()
    vm.vcpu_exit(1)
    with pytest.raises(InvalidStateError):
        g.access(1, GVA)                              # vCPU 1 is not in guest mode
    vm.vcpu_run(1, 1)
    with pytest.raises(InvalidStateError):
        g.access(1, GVA)                              # guest paging off on vCPU 1
    vm.vcpu_exit(1)
    assert vm.guest.translate(cr3, 0x1000) is None


def test_the_table_pool_runs_out_without_a_partial_mapping():
    vm = tdpfast.VM()
    vm.add_memslot(0, 1 << 18)
    g = vm.guest
    g.set_table_pool(POOL, 2)
    cr3 = g.new_table()
    d = vm.digest()
    with pytest.raises(InvalidStateError):
        g.map(cr3, GVA, 0x5000)                       # needs three more tables, one is left
    assert vm.digest() == d and g.translate(cr3, GVA) is None


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_guest_paging_events_replay_to_the_same_digest(arch):
    vm, g, cr3 = setup(arch, pcide=True, global_page=True)
    fill(g)
    g.access(0, GVA2, "w")
    g.unmap(cr3, GVA2)
    g.invpcid(0, "address", pcid=0, gva=GVA2)
    g.write_pte(cr3 + 3, 7, 0x9003)
    g.load_cr3(0, cr3, pcid=3, noflush=True)
    g.invlpg(0, GVA)
    g.access(0, GVA, "x")
    copy = tdpfast.VM(arch=arch, vcpus=2, pcpus=2, record=True)
    copy.replay(vm.events)
    assert copy.digest() == vm.digest()


def test_a_vm_without_guest_paging_keeps_its_digest_and_counters():
    """Guest paging state enters the digest only once used."""
    a = tdpfast.VM()
    a.add_memslot(0, 1 << 10)
    a.vcpu_run(0, 0)
    a.access(0, 0x1000)
    assert all(a.stats[k] == 0 for k in ("guest_accesses", "combined_hits", "combined_fills"))
    assert a.guest.combined_entries(0) == []


# ---------------------------------------------------------------- who owes a flush

def pv_scenario(**kw):
    """vCPU 0 caches GVA, the guest unmaps it, preempts the vCPU and flushes it the
    paravirtual way; KVM services the flush at the next entry; the vCPU touches GVA."""
    vm = tdpfast.VM(vcpus=2, pcpus=2, record=True, **kw)
    vm.add_memslot(0, 1 << 18, max_level=1)
    vm.vcpu_run(0, 0)
    g = vm.guest
    g.set_table_pool(POOL, 64)
    cr3 = g.new_table()
    g.map(cr3, GVA, 0x5000)
    g.set_paging(0, 4)
    g.load_cr3(0, cr3)
    fill(g)
    g.unmap(cr3, GVA)
    vm.vcpu_exit(0)
    return vm, g


def test_after_a_serviced_guest_flush_the_guest_owes_nothing():
    vm, g = pv_scenario()
    g.pv_flush(0)
    vm.vcpu_run(0, 0)                                 # KVM_REQ_TLB_FLUSH_GUEST: INVVPID single-context
    r = g.access(0, GVA)
    assert r.outcome == "guest_page_fault" and not r.stale_guest and vm.violations == []


@pytest.mark.parametrize("mutant", ["req_tlb_flush_guest", "pv_flush"])
def test_a_guest_flush_kvm_drops_is_kvms_violation(mutant):
    """Dropped where KVM turns the guest's flag into a request, or where it services it."""
    vm, g = pv_scenario(mutant=mutant)
    g.pv_flush(0)
    vm.vcpu_run(0, 0)
    r = g.access(0, GVA)
    assert r.tlb == "combined" and r.violation is not None
    assert r.violation.kind == "stale_guest_translation" and r.violation.gpa == 0x5000
    assert "KVM owes" in str(r.violation)


def test_without_a_guest_flush_the_guest_owes_it_even_under_the_mutant():
    vm, g = pv_scenario(mutant="req_tlb_flush_guest")
    vm.vcpu_run(0, 0)
    r = g.access(0, GVA)
    assert r.tlb == "combined" and r.stale_guest and r.violation is None


def test_a_paravirtual_flush_is_for_a_preempted_vcpu():
    vm, g, _ = setup()
    with pytest.raises(InvalidStateError):
        g.pv_flush(0)                                 # running: the guest IPIs it instead
    with pytest.raises(InvalidStateError):
        g.pv_flush(1)                                 # guest paging off on vCPU 1


# ---------------------------------------------------------------- batches

def test_a_batch_gives_what_single_accesses_give():
    import numpy as np
    gvas = np.array([GVA, GVA + 0x10, GVA2, 0x1000, GVA, GVA2 + 8, GVA], dtype=np.uint64)
    kinds = bytes([0, 1, 0, 0, 2, 1, 0])
    a, ga, _ = setup()
    b, gb, _ = setup()
    res = ga.access_batch(0, gvas, kinds)
    one = [gb.access(0, int(x), "rwxx"[k] if k < 3 else "xu") for x, k in zip(gvas, kinds)]
    assert res.accesses == res.requested == 7 and res.stopped is None
    assert res.ok == sum(r.outcome == "ok" for r in one) and res.guest_page_faults == 1
    assert res.combined_hits == sum(r.tlb == "combined" for r in one) > 0
    assert res.refs == sum(r.refs for r in one) and res.faults == sum(r.faults for r in one)
    assert a.stats == b.stats and a.digest() == b.digest()
    copy = tdpfast.VM(vcpus=2, pcpus=2, record=True)
    copy.replay(a.events)
    assert copy.digest() == a.digest()


def test_a_batch_with_a_bad_address_changes_nothing():
    vm, g, _ = setup()
    d = vm.digest()
    with pytest.raises(InvalidArgumentError):
        g.access_batch(0, [GVA, 0x8000_0000_0000], "r")
    with pytest.raises(InvalidArgumentError):
        g.access_batch(0, [GVA], [7])
    assert vm.digest() == d


# ---------------------------------------------------------------- property: KVM's policy with guest paging

def test_kvms_policy_stays_clean_with_guest_paging_and_nested_transitions():
    from hypothesis import HealthCheck, given, settings
    from tdpfast import strategies as tst

    guest_ops = []

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(tst.scenarios(guest=True), st_arch())
    def run(ops, arch):
        vm = tdpfast.VM(arch=arch, vcpus=2, pcpus=2, record=True)
        applied = tst.apply(vm, ops)
        assert not vm.violations, vm.violations[0]
        assert vm.health()["warnings"] == 0
        copy = tdpfast.VM(arch=arch, vcpus=2, pcpus=2, record=True)
        copy.replay(vm.events)                        # the guest's operations replay too
        assert copy.digest() == vm.digest()
        guest_ops.append(vm.stats["guest_accesses"])

    run()
    assert sum(guest_ops) > 0                         # the mix really had guest-linear accesses


def st_arch():
    from hypothesis import strategies as st
    return st.sampled_from(["vmx", "svm"])


def test_guest_strategies_produce_guest_operations_the_model_accepts():
    from hypothesis import strategies as st
    from hypothesis import find
    from tdpfast import strategies as tst

    def accepted_guest_ops(ops):
        vm = tdpfast.VM(vcpus=2, pcpus=2)
        applied = tst.apply(vm, ops)
        return sum(op[0].startswith(("guest_", "nested_")) for op in applied) >= 5 and \
            vm.stats["combined_hits"] > 0 and vm.stats["nested_entries"] > 0

    find(st.lists(tst.guest_operations(), min_size=10, max_size=60), accepted_guest_ops)
