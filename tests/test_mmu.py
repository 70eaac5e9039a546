"""The TDP MMU engine (issue 2): table and leaf accounting, the zap family and its
flush contract, the fault path, the root lifecycle, the other SPTE writers, the
hardware walker on the engine's own tables, and SPTE decoding.

Expected values come from KVM (arch/x86/kvm/mmu/) and the SDM/APM (hardware): a 4 KiB
table holds 512 entries, so 1 GiB (262,144 gfns) at 4K needs one PT per 2 MiB (512 PTs)
below one PD, one PDPT and one PML4 (KVM_PAGES_PER_HPAGE()).
"""
from __future__ import annotations

import pytest

from tdpfast import Policy, TLBConfig, VM, hw
from tdpfast.spte import FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, decode

GIB = 262144           # gfns in 1 GiB
PAGES_2M = 512         # gfns in 2 MiB


def stats(vm, *keys):
    s = vm.stats
    return {k: s[k] for k in keys}


def populated(level, *, levels=4, maxphyaddr=46, arch="vmx", policy=None, npages=GIB):
    vm = VM(arch=arch, levels=levels, maxphyaddr=maxphyaddr, policy=policy)
    vm.add_memslot(0, npages)
    vm.mmu.alloc_root()
    assert vm.mmu.map_range(0, npages, level) == npages >> (9 * (level - 1))
    return vm


# --------------------------------------------------------------------------- population and range zaps

def test_populate_1gib_at_4k_creates_515_tables_and_zap_counts_every_leaf():
    vm = populated(1)
    assert len(vm.mmu.tables()) == 515          # 1 PML4 + 1 PDPT + 1 PD + 512 PT
    s = stats(vm, "mmu_pages", "tables_allocated", "pages_4k", "pages_2m", "pages_1g", "remote_tlb_flush")
    assert s == {"mmu_pages": 515, "tables_allocated": 515, "pages_4k": GIB, "pages_2m": 0, "pages_1g": 0,
                 "remote_tlb_flush": 0}
    flush = vm.mmu.zap_gfn_range(0, GIB)
    assert flush is True                         # a valid root changed: the caller must flush
    s = stats(vm, "zapped_leaf_l1", "zapped_leaf_l2", "zapped_leaf_l3", "zapped_nonleaf", "pages_4k",
              "remote_tlb_flush")
    assert s == {"zapped_leaf_l1": GIB, "zapped_leaf_l2": 0, "zapped_leaf_l3": 0, "zapped_nonleaf": 0,
                 "pages_4k": 0, "remote_tlb_flush": 0}   # exclusive zap: the flush is the caller's


def test_leaf_zap_keeps_the_non_leaf_tables():
    vm = populated(1)
    vm.mmu.zap_gfn_range(0, GIB)
    # tdp_mmu_zap_leafs() (cf3e26427c08): range zaps never zap non-leaf SPTEs; empty tables stay.
    assert len(vm.mmu.tables()) == 515
    assert vm.stats["mmu_pages"] == 515
    assert vm.stats["tables_unlinked"] == 0
    w = vm.mmu.walk(0x1234 << 12)
    assert w.fault == "violation" and w.level == 1   # the walk reaches the (empty) PT
    assert decode(vm.mmu.spte(0, 2))["kind"] == "shadow-present"
    assert decode(vm.mmu.spte(0x1234, 1))["kind"] == "nonpresent"


def test_populate_1gib_at_2m():
    vm = populated(2)
    assert len(vm.mmu.tables()) == 3
    assert stats(vm, "mmu_pages", "tables_allocated", "pages_2m", "pages_4k") == {
        "mmu_pages": 3, "tables_allocated": 3, "pages_2m": 512, "pages_4k": 0}
    assert vm.mmu.zap_gfn_range(0, GIB) is True
    assert stats(vm, "zapped_leaf_l2", "zapped_leaf_l1", "pages_2m") == {
        "zapped_leaf_l2": 512, "zapped_leaf_l1": 0, "pages_2m": 0}
    assert len(vm.mmu.tables()) == 3


def test_populate_1gib_at_1g():
    vm = populated(3)
    assert len(vm.mmu.tables()) == 2
    assert stats(vm, "mmu_pages", "tables_allocated", "pages_1g") == {
        "mmu_pages": 2, "tables_allocated": 2, "pages_1g": 1}
    assert vm.mmu.zap_gfn_range(0, GIB) is True
    assert stats(vm, "zapped_leaf_l3", "pages_1g") == {"zapped_leaf_l3": 1, "pages_1g": 0}


def test_range_zap_takes_an_overlapping_huge_leaf_whole():
    vm = populated(2, npages=4 * PAGES_2M)
    assert vm.mmu.zap_gfn_range(PAGES_2M + 7, PAGES_2M + 8) is True
    assert stats(vm, "zapped_leaf_l2", "pages_2m") == {"zapped_leaf_l2": 1, "pages_2m": 3}
    assert not vm.mmu.walk((PAGES_2M + 300) << 12).ok     # the whole 2M went
    assert vm.mmu.walk((2 * PAGES_2M) << 12).ok


@pytest.mark.parametrize("level,tables", [(1, 516), (2, 4), (3, 3)])
def test_five_level_table_counts(level, tables):
    vm = populated(level, levels=5, maxphyaddr=52)
    assert len(vm.mmu.tables()) == tables            # one more (PML5) than with 4 levels
    assert vm.stats["mmu_pages"] == tables
    assert vm.stats["tables_allocated"] == tables
    key = {1: "pages_4k", 2: "pages_2m", 3: "pages_1g"}[level]
    assert vm.stats[key] == GIB >> (9 * (level - 1))
    assert vm.mmu.newest_root().level == 5
    assert (vm.mmu.root_pointer() >> 3) & 7 == 4     # EPTP page-walk length - 1 = 4


def test_shared_zap_reports_no_flush_because_the_atomic_zap_flushed_itself():
    vm = populated(1, npages=1024)
    assert vm.mmu.zap_gfn_range(0, 1024, shared=True) is False
    s = stats(vm, "zapped_leaf_l1", "pages_4k", "remote_tlb_flush", "remote_tlb_flush_requests")
    # tdp_mmu_zap_spte_atomic: freeze, remote flush for (gfn, level), clear -- one per SPTE.
    assert s == {"zapped_leaf_l1": 1024, "pages_4k": 0, "remote_tlb_flush": 1024,
                 "remote_tlb_flush_requests": 1024}


def test_shared_zap_of_huge_leaves_flushes_once_per_leaf():
    vm = populated(2, npages=4 * PAGES_2M)
    assert vm.mmu.zap_gfn_range(0, 4 * PAGES_2M, shared=True) is False
    assert stats(vm, "zapped_leaf_l2", "remote_tlb_flush") == {"zapped_leaf_l2": 4, "remote_tlb_flush": 4}


def test_exclusive_zap_of_nothing_reports_no_flush():
    vm = populated(1, npages=1024)
    assert vm.mmu.zap_gfn_range(2048, 4096) is False
    assert vm.stats["zapped_leaf_l1"] == 0


def test_zap_over_an_invalidated_root_reports_no_flush():
    vm = populated(1, npages=1024)
    root = vm.mmu.newest_root()
    vm.mmu.invalidate_all_roots()
    # kvm_tdp_mmu_zap_leafs visits valid roots only.
    assert vm.mmu.zap_gfn_range(0, 1024) is False
    assert vm.stats["pages_4k"] == 1024
    # The MMU notifier visits invalid roots too, but zapping them never needs a flush.
    vm.host_unmap(0, 16)
    assert stats(vm, "zapped_leaf_l1", "pages_4k", "remote_tlb_flush") == {
        "zapped_leaf_l1": 16, "pages_4k": 1008, "remote_tlb_flush": 0}
    assert decode(vm.mmu.spte(3, 1, root=root))["kind"] == "nonpresent"
    assert decode(vm.mmu.spte(30, 1, root=root))["kind"] == "shadow-present"


def test_notifier_zap_over_invalid_and_valid_roots_flushes_once():
    vm = VM()
    vm.add_memslot(0, 1024)
    old = vm.mmu.alloc_root()
    vm.mmu.map_range(0, 64, 1, root=old)
    vm.mmu.invalidate_all_roots()
    new = vm.mmu.alloc_root()
    assert new != old and new.hpa != old.hpa
    vm.mmu.map_range(0, 64, 1, root=new)
    vm.host_unmap(0, 8)
    assert stats(vm, "zapped_leaf_l1", "remote_tlb_flush") == {"zapped_leaf_l1": 16, "remote_tlb_flush": 1}


# --------------------------------------------------------------------------- the fault path

def _sample_hpas(vm, start, count, step):
    return [vm.mmu.walk(((start + g) << 12) | 0x9a8).hpa for g in range(0, count, step)]


def test_fault_splits_a_2m_leaf_in_place_without_a_flush():
    vm = populated(2, npages=4 * PAGES_2M)
    before = _sample_hpas(vm, 0, PAGES_2M, 3)
    assert None not in before
    assert vm.mmu.map(5, 1) is False
    assert _sample_hpas(vm, 0, PAGES_2M, 3) == before           # identical translations
    assert vm.mmu.walk(5 << 12).level == 1 and vm.mmu.walk(511 << 12).level == 1
    s = stats(vm, "huge_pages_split", "remote_tlb_flush", "remote_tlb_flush_requests", "pages_2m", "pages_4k",
              "mmu_pages")
    assert s == {"huge_pages_split": 1, "remote_tlb_flush": 0, "remote_tlb_flush_requests": 0, "pages_2m": 3,
                 "pages_4k": 512, "mmu_pages": 4}
    # make_small_spte: every child keeps the huge leaf's attributes.
    child, huge_next = decode(vm.mmu.spte(100, 1)), decode(vm.mmu.spte(PAGES_2M, 2))
    for k in ("r", "w", "x", "memtype", "ipat", "host_writable", "mmu_writable", "accessed", "dirty"):
        assert child[k] == huge_next[k], k
    assert not child["ps"]


def test_fault_splits_a_1g_leaf_down_to_the_goal_level():
    vm = populated(3)
    before = _sample_hpas(vm, 0, GIB, 4099)
    assert vm.mmu.map(5, 1) is False
    assert _sample_hpas(vm, 0, GIB, 4099) == before
    assert stats(vm, "huge_pages_split", "remote_tlb_flush", "pages_1g", "pages_2m", "pages_4k") == {
        "huge_pages_split": 2, "remote_tlb_flush": 0, "pages_1g": 0, "pages_2m": 511, "pages_4k": 512}


def test_installing_a_huge_leaf_over_a_table_flushes():
    vm = VM()
    vm.add_memslot(0, 4 * PAGES_2M)
    vm.mmu.alloc_root()
    vm.mmu.map_range(PAGES_2M, PAGES_2M + 8, 1)
    assert vm.mmu.map(PAGES_2M, 2) is True
    assert stats(vm, "remote_tlb_flush", "tables_unlinked", "pages_4k", "pages_2m", "mmu_pages") == {
        "remote_tlb_flush": 1, "tables_unlinked": 1, "pages_4k": 0, "pages_2m": 1, "mmu_pages": 3}
    assert vm.mmu.walk((PAGES_2M + 3) << 12).level == 2
    # The same mapping again is spurious: nothing replaced, nothing flushed.
    assert vm.mmu.map(PAGES_2M, 2) is False
    assert vm.stats["remote_tlb_flush"] == 1


# --------------------------------------------------------------------------- roots

def test_alloc_root_reuses_a_valid_root_of_the_same_role():
    vm = VM()
    r1 = vm.mmu.alloc_root()
    assert r1.refcount == 2                       # the caller's and the TDP MMU's own (v6.4+)
    r2 = vm.mmu.alloc_root()
    assert r2 == r1 and r1.refcount == 3
    assert vm.stats["roots_allocated"] == 1
    smm = vm.mmu.alloc_root(as_id=1)
    l2 = vm.mmu.alloc_root(guest_mode=True)
    assert len({r1.id, smm.id, l2.id}) == 3
    assert len({r1.hpa, smm.hpa, l2.hpa}) == 3
    assert smm.refcount == 2 and l2.refcount == 2
    assert vm.stats["roots_allocated"] == 3


def test_invalidate_then_zap_invalidated_roots_drops_the_mmu_reference_without_a_flush():
    vm = populated(1, npages=4096)
    root = vm.mmu.newest_root()
    vm.mmu.invalidate_all_roots()
    assert not root.valid and root.refcount == 2
    assert vm.mmu.newest_root() is None
    vm.mmu.zap_invalidated_roots()
    assert root.alive and root.refcount == 1
    assert stats(vm, "remote_tlb_flush", "pages_4k", "roots_freed") == {
        "remote_tlb_flush": 0, "pages_4k": 0, "roots_freed": 0}
    assert len(vm.mmu.tables(root=root)) == 1       # only the root table is left
    vm.mmu.put_root(root)
    assert not root.alive
    assert stats(vm, "roots_freed", "mmu_pages", "remote_tlb_flush") == {
        "roots_freed": 1, "mmu_pages": 0, "remote_tlb_flush": 0}


def test_freed_tables_go_back_to_the_pool_only_after_a_grace_period():
    vm = VM(policy=Policy.kvm().replace(rcu_gp_at_op_end=False))
    vm.add_memslot(0, 4096)
    root = vm.mmu.alloc_root()
    vm.mmu.map_range(0, 4096, 1)                   # 1 PML4 + 1 PDPT + 1 PD + 8 PT
    assert vm.frames() == {"in_use": 11, "free": 0, "rcu_pending": 0, "limit": vm.frames()["limit"]}
    vm.mmu.invalidate_all_roots()
    vm.mmu.zap_invalidated_roots()
    vm.mmu.put_root(root)
    f = vm.frames()
    assert (f["in_use"], f["free"], f["rcu_pending"]) == (0, 0, 11)
    gp = vm.stats["rcu_grace_periods"]
    vm.synchronize_rcu()
    f = vm.frames()
    assert (f["in_use"], f["free"], f["rcu_pending"]) == (0, 11, 0)
    assert vm.stats["rcu_grace_periods"] == gp + 1


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_a_freed_root_page_is_handed_out_next(arch):
    vm = VM(arch=arch)
    vm.add_memslot(0, 4096)
    root = vm.mmu.alloc_root()
    vm.mmu.map_range(0, 4096, 1)
    hpa, pointer = root.hpa, vm.mmu.root_pointer(root)
    vm.mmu.invalidate_all_roots()
    vm.mmu.zap_invalidated_roots()
    vm.mmu.put_root(root)
    new = vm.mmu.alloc_root()
    assert new.id != root.id
    assert new.hpa == hpa                          # LIFO: the last frame freed is the root's
    assert vm.mmu.root_pointer(new) == pointer     # same EPTP / nCR3, same EP4TA tag
    if arch == "vmx":
        assert pointer == hpa | 0x5E               # WB, 4-level walk, A/D (construct_eptp)
    else:
        assert pointer == hpa


def test_v5_17_last_put_zaps_the_whole_root_without_a_flush():
    vm = VM(policy=Policy.named("kvm-v5.17"))
    vm.add_memslot(0, 4096)
    root = vm.mmu.alloc_root()
    assert root.refcount == 1                      # no TDP MMU reference before v6.4
    vm.mmu.map_range(0, 4096, 1)
    vm.mmu.put_root(root)
    assert not root.alive
    assert stats(vm, "zapped_leaf_l1", "pages_4k", "mmu_pages", "roots_freed", "remote_tlb_flush") == {
        "zapped_leaf_l1": 4096, "pages_4k": 0, "mmu_pages": 0, "roots_freed": 1, "remote_tlb_flush": 0}
    assert vm.frames()["in_use"] == 0


@pytest.mark.parametrize("every", [1, 5, 64])
def test_yielding_range_zap_still_zaps_everything(every):
    vm = populated(1, npages=4096, policy=Policy.kvm().replace(yield_every=every))
    vm.mmu.zap_gfn_range(0, 4096)
    s = vm.stats
    assert s["iter_yields"] > 0
    assert s["zapped_leaf_l1"] == 4096 and s["pages_4k"] == 0
    assert not any(vm.mmu.walk(g << 12).ok for g in range(0, 4096, 7))


def test_yield_flushes_the_pending_flush_first():
    vm = populated(1, npages=4096, policy=Policy.kvm().replace(yield_every=64))
    vm.mmu.zap_gfn_range(0, 4096)
    # Every yield after a zapped SPTE flushes before dropping the lock
    # (tdp_mmu_iter_cond_resched()).
    assert vm.stats["remote_tlb_flush"] == vm.stats["iter_yields"] > 0


def test_b9_iterator_skip_after_yield_leaves_survivors():
    vm = populated(1, npages=4096, policy=Policy.named("B9-iter-skip-after-yield"))
    vm.mmu.zap_gfn_range(0, 4096)
    survivors = [g for g in range(4096) if vm.mmu.walk(g << 12).ok]
    assert vm.stats["iter_yields"] > 0
    assert survivors and vm.stats["pages_4k"] == len(survivors)
    assert vm.stats["zapped_leaf_l1"] == 4096 - len(survivors)


def test_b9_leaves_writable_sptes_after_write_protect():
    good = populated(1, npages=4096, policy=Policy.kvm().replace(yield_every=8))
    bad = populated(1, npages=4096, policy=Policy.named("B9-iter-skip-after-yield"))
    for vm in (good, bad):
        assert vm.mmu.write_protect_range(0, 4096) is True
    assert sum(decode(good.mmu.spte(g))["w"] for g in range(4096)) == 0
    assert sum(decode(bad.mmu.spte(g))["w"] for g in range(4096)) > 0


# --------------------------------------------------------------------------- the other SPTE writers

@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_write_protect_range_clears_w_and_keeps_mmu_writable(arch):
    fmt = "ept" if arch == "vmx" else "npt"
    vm = populated(1, arch=arch, npages=1024)
    assert vm.mmu.write_protect_range(0, 4) is True
    d = decode(vm.mmu.spte(2), fmt)
    # the (host-writable, MMU-writable, W) = 110 triple: fast page faults may re-grant W.
    assert (d["host_writable"], d["mmu_writable"], d["w"]) == (True, True, False)
    assert decode(vm.mmu.spte(4), fmt)["w"] is True
    assert vm.mmu.write_protect_range(0, 4) is False             # nothing left to change
    assert vm.stats["remote_tlb_flush"] == 0                     # the caller flushes


@pytest.mark.parametrize("arch,ad", [("vmx", True), ("vmx", False), ("svm", True)])
def test_clear_dirty_range_clears_d_or_w(arch, ad):
    fmt = "ept" if arch == "vmx" else "npt"
    vm = VM(arch=arch, ad=ad)
    vm.add_memslot(0, 1024)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 16, 1)
    before = decode(vm.mmu.spte(5), fmt)
    outside = vm.mmu.spte(9)
    assert vm.mmu.clear_dirty_range(4, 8) is True
    after = decode(vm.mmu.spte(5), fmt)
    if ad:
        assert before["dirty"] and not after["dirty"] and after["w"]
    else:                                    # A/D disabled: dirty tracking is write protection
        assert before["w"] and not after["w"] and after["mmu_writable"]
    assert vm.mmu.clear_dirty_range(4, 8) is False
    assert vm.mmu.spte(9) == outside                            # outside the range: untouched
    assert vm.stats["remote_tlb_flush"] == 0                    # the caller flushes


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_age_clears_accessed_without_a_flush(arch):
    fmt = "ept" if arch == "vmx" else "npt"
    vm = populated(1, arch=arch, npages=1024)
    old = vm.mmu.spte(9)
    assert decode(old, fmt)["accessed"]
    assert vm.mmu.age(8, 12) is True
    new = vm.mmu.spte(9)
    a_bit = 1 << 8 if arch == "vmx" else 1 << 5
    assert new == old & ~a_bit
    assert vm.mmu.age(8, 12) is False                           # not young any more
    assert vm.stats["remote_tlb_flush"] == 0


def test_age_with_ept_ad_disabled_access_tracks_and_a_read_restores_rx():
    vm = VM(ad=False)
    vm.add_memslot(0, 1024, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, 9 << 12, "w")
    d = decode(vm.mmu.spte(9))
    assert d["ad_type"] == "disabled" and d["r"] and d["w"] and d["x"]
    assert vm.mmu.age(8, 12) is True
    d = decode(vm.mmu.spte(9))
    assert d["kind"] == "access-tracked" and d["mmu_present"]
    assert (d["r"], d["w"], d["x"], d["saved_r"], d["saved_x"]) == (False, False, False, True, True)
    assert vm.stats["remote_tlb_flush"] == 0
    vm.vcpu_request(0, "tlb_flush")                # drop the TLB entry so the next read walks
    fast = vm.stats["pf_fast"]
    vm.access(0, 9 << 12, "r")
    d = decode(vm.mmu.spte(9))
    assert vm.stats["pf_fast"] == fast + 1
    assert (d["r"], d["w"], d["x"], d["saved_r"], d["saved_x"]) == (True, False, True, False, False)
    vm.access(0, 9 << 12, "w")                     # W is not saved: a write re-faults to get it back
    assert decode(vm.mmu.spte(9))["w"]
    assert vm.stats["pf_fast"] == fast + 2


def test_split_huge_pages_keeps_translations_and_does_not_flush():
    vm = populated(2, npages=4 * PAGES_2M)
    before = _sample_hpas(vm, 0, 4 * PAGES_2M, 5)
    vm.mmu.split_huge_pages(0, 2 * PAGES_2M)
    assert _sample_hpas(vm, 0, 4 * PAGES_2M, 5) == before
    assert stats(vm, "huge_pages_split", "pages_2m", "pages_4k", "remote_tlb_flush") == {
        "huge_pages_split": 2, "pages_2m": 2, "pages_4k": 1024, "remote_tlb_flush": 0}


def test_split_a_1g_page_to_2m():
    vm = populated(3)
    before = _sample_hpas(vm, 0, GIB, 10007)
    vm.mmu.split_huge_pages(0, GIB, target_level=2)
    assert _sample_hpas(vm, 0, GIB, 10007) == before
    assert stats(vm, "huge_pages_split", "pages_1g", "pages_2m", "remote_tlb_flush") == {
        "huge_pages_split": 1, "pages_1g": 0, "pages_2m": 512, "remote_tlb_flush": 0}


def test_recover_huge_pages_installs_a_huge_leaf_and_flushes():
    vm = populated(2, npages=4 * PAGES_2M)
    before = _sample_hpas(vm, 0, 4 * PAGES_2M, 5)
    vm.mmu.split_huge_pages(0, 4 * PAGES_2M)
    assert vm.stats["pages_4k"] == 2048
    assert vm.mmu.recover_huge_pages(0, PAGES_2M) is True
    assert stats(vm, "huge_pages_recovered", "pages_2m", "pages_4k", "remote_tlb_flush") == {
        "huge_pages_recovered": 1, "pages_2m": 1, "pages_4k": 1536, "remote_tlb_flush": 1}
    assert vm.mmu.walk(7 << 12).level == 2
    assert decode(vm.mmu.spte(0, 2))["ps"]
    assert _sample_hpas(vm, 0, 4 * PAGES_2M, 5) == before
    assert vm.mmu.recover_huge_pages(0, PAGES_2M) is False        # nothing left to recover


def test_recover_huge_pages_respects_the_memslot_level():
    vm = VM()
    vm.add_memslot(0, 1024, max_level=1)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 1024, 1)
    assert vm.mmu.recover_huge_pages(0, 1024) is False
    assert stats(vm, "pages_2m", "pages_4k", "remote_tlb_flush") == {
        "pages_2m": 0, "pages_4k": 1024, "remote_tlb_flush": 0}


def test_nx_huge_pages_exec_fault_maps_4k_and_read_fault_maps_huge_nx():
    vm = VM(policy=Policy.kvm().replace(nx_huge_pages=True))
    vm.add_memslot(0, 4 * PAGES_2M, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x0, "x")
    vm.access(0, (2 * PAGES_2M) << 12, "r")
    assert vm.mmu.walk(0).level == 1
    assert decode(vm.mmu.spte(0, 1))["x"]                    # 4K pages stay executable
    huge = decode(vm.mmu.spte(2 * PAGES_2M, 2))
    assert huge["ps"] and not huge["x"]                      # huge SPTEs are NX under the mitigation


def test_nx_huge_page_tables_are_tracked_and_protected_from_huge_faults():
    vm = VM(policy=Policy.kvm().replace(nx_huge_pages=True))
    vm.add_memslot(0, 4 * PAGES_2M, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x0, "x")
    # kvm_tdp_mmu_map(): the table made for the exec fault is on the possible-NX list.
    assert vm.stats["nx_lpage_splits"] == 1
    # disallowed_hugepage_adjust: a read fault in that 2M maps 4K, it does not replace the table.
    vm.access(0, 1 << 12, "r")
    assert not decode(vm.mmu.spte(0, 2))["ps"]
    assert vm.mmu.walk(1 << 12).level == 1
    assert vm.mmu.walk(0, "x").ok


def test_recover_nx_huge_pages_zaps_the_tracked_table_and_flushes():
    vm = VM(policy=Policy.kvm().replace(nx_huge_pages=True))
    vm.add_memslot(0, 4 * PAGES_2M, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x0, "x")
    flushes, unlinked = vm.stats["remote_tlb_flush"], vm.stats["tables_unlinked"]
    assert vm.mmu.recover_nx_huge_pages() == 1               # ceil(1 / 60)
    assert vm.stats["nx_lpage_splits"] == 0
    assert vm.stats["tables_unlinked"] == unlinked + 1
    assert vm.stats["remote_tlb_flush"] == flushes + 1
    assert not vm.mmu.walk(0).ok
    vm.access(0, 3 << 12, "r")                               # may now be mapped huge (and NX)
    d = decode(vm.mmu.spte(0, 2))
    assert d["ps"] and not d["x"]


# --------------------------------------------------------------------------- the walker on the engine's tables

@pytest.mark.parametrize("arch", ["vmx", "svm"])
@pytest.mark.parametrize("levels,maxphyaddr", [(4, 46), (5, 52)])
def test_engine_walk_equals_the_hardware_walker_on_its_tables(arch, levels, maxphyaddr):
    vm = VM(arch=arch, levels=levels, maxphyaddr=maxphyaddr)
    high = 1 << (maxphyaddr - 14)                 # a gfn a quarter of the way up the GPA space
    vm.add_memslot(0, 2 * GIB)
    vm.add_memslot(high, 2 * GIB)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 512, 1)
    vm.mmu.map(1024, 2)
    vm.mmu.map(GIB, 3)
    vm.mmu.map(high + 5, 1)
    vm.mmu.map(high + GIB, 3)
    mmio = 1 << 20                                # no memslot: an MMIO SPTE
    vm.mmu.map(mmio, 1)
    vm.mmu.write_protect_range(7, 8)
    tables, pointer = vm.mmu.tables(), vm.mmu.root_pointer()
    fmt = "ept" if arch == "vmx" else "npt"
    gfns = [0, 5, 7, 511, 512, 1024, 1030, GIB, GIB + 77777, high + 5, high + 6, high + GIB + 3, mmio, mmio + 1]
    kinds = set()
    for g in gfns:
        for acc in ("r", "w", "x"):
            gpa = (g << 12) | 0x321
            mine = vm.mmu.walk(gpa, acc)
            theirs = hw.walk(tables, pointer, gpa, acc, fmt=fmt, levels=levels, maxphyaddr=maxphyaddr)
            assert mine == theirs, (hex(g), acc)
            kinds.add(mine.fault)
    assert kinds == ({None, "violation", "misconfig"} if arch == "vmx" else {None, "npf"})
    for g, level in ((5, 1), (1030, 2), (GIB + 77777, 3), (high + GIB + 3, 3)):
        w = vm.mmu.walk((g << 12) | 0x321)
        assert w.level == level and w.hpa == (vm.backing(g) << 12) | 0x321
        assert w.refs == levels - level + 1


# --------------------------------------------------------------------------- SPTE decoding

def test_decode_an_ept_leaf_the_engine_made():
    vm = populated(1, npages=1024)
    d = decode(vm.mmu.spte(3))
    assert d["kind"] == "shadow-present" and d["mmu_present"] and d["hw_present"]
    assert (d["r"], d["w"], d["x"]) == (True, True, True)
    assert (d["host_writable"], d["mmu_writable"]) == (True, True)
    assert d["memtype"] == "WB" and d["ipat"]
    assert d["accessed"] and d["dirty"]                      # A on a non-prefetch fault, D eagerly on W
    assert d["ad_type"] == "enabled" and d["suppress_ve"] and not d["ps"]
    assert d["pfn"] == vm.backing(3)
    nonleaf = decode(vm.mmu.spte(0, 2))
    assert nonleaf["kind"] == "shadow-present" and not nonleaf["ps"]
    assert (nonleaf["r"], nonleaf["w"], nonleaf["x"], nonleaf["accessed"]) == (True, True, True, True)
    assert nonleaf["pfn"] << 12 in vm.mmu.tables()


def test_decode_an_npt_leaf_the_engine_made():
    vm = populated(2, arch="svm", npages=1024)
    d = decode(vm.mmu.spte(512, 2), "npt")
    assert d["kind"] == "shadow-present" and d["mmu_present"] and d["hw_present"]
    assert (d["p"], d["w"], d["u"], d["nx"], d["ps"]) == (True, True, True, False, True)
    assert (d["host_writable"], d["mmu_writable"]) == (True, True)
    assert d["accessed"] and d["dirty"]
    assert d["pfn"] == vm.backing(512)


def test_decode_a_read_only_memslot_leaf():
    vm = VM()
    vm.add_memslot(0, 512, readonly=True, max_level=1)
    vm.mmu.alloc_root()
    vm.mmu.map(3, 1)
    d = decode(vm.mmu.spte(3))
    assert (d["host_writable"], d["mmu_writable"], d["w"]) == (False, False, False)
    assert d["r"] and not d["dirty"]


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_decode_the_frozen_sentinel_the_engine_wrote(arch):
    fmt = "ept" if arch == "vmx" else "npt"
    vm = VM(arch=arch, trace=True)
    vm.add_memslot(0, 2048)
    vm.mmu.alloc_root()
    vm.mmu.map(5, 1)
    n = len(vm.trace())
    vm.mmu.map(0, 2)                              # unlinks the PT: every child entry is frozen
    frozen = [r for r in vm.trace()[n:] if r[0] == "spte_changed" and r[4] == FROZEN_SPTE]
    assert len(frozen) == 512                     # shared mode freezes all 512 entries
    assert FROZEN_SPTE == 0x5A0 | SHADOW_NONPRESENT_VALUE
    d = decode(frozen[0][4], fmt)
    assert d["kind"] == "frozen" and not d["mmu_present"]


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_decode_an_mmio_spte_the_engine_made(arch):
    fmt = "ept" if arch == "vmx" else "npt"
    vm = VM(arch=arch)
    vm.add_memslot(0, 512)
    vm.mmu.alloc_root()
    gfn = 0x12345
    vm.mmu.map(gfn, 1)
    v = vm.mmu.spte(gfn, 1)
    d = decode(v, fmt)
    assert d["kind"] == "mmio" and not d["mmu_present"]
    assert d["mmio_gfn"] == gfn
    if arch == "vmx":
        assert v & 7 == 0b110                       # W|X without R: an EPT misconfiguration
        assert vm.mmu.walk(gfn << 12).fault == "misconfig"
    else:
        assert v & 1 and (v >> 51) & 1              # P with reserved bit 51: #NPF with RSVD
        w = vm.mmu.walk(gfn << 12)
        assert w.fault == "npf" and w.error_code & 8


# --------------------------------------------------------------------------- host events and dirty logging

def test_host_unmap_inside_a_2m_mapping_zaps_the_whole_leaf_and_refaults_at_4k():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "r")
    assert vm.mmu.walk(5 << 12).level == 2
    old7 = vm.backing(7)
    vm.host_unmap(7, 8)
    assert vm.backing(7) is None and vm.backing(8) == old7 + 1
    assert stats(vm, "zapped_leaf_l2", "pages_2m", "remote_tlb_flush") == {
        "zapped_leaf_l2": 1, "pages_2m": 0, "remote_tlb_flush": 1}
    assert not vm.mmu.walk(5 << 12).ok
    r = vm.access(0, 5 << 12, "r")
    assert r.outcome == "ok" and vm.mmu.walk(5 << 12).level == 1   # the host mapping is no longer huge
    r = vm.access(0, 7 << 12, "w")
    assert r.outcome == "ok" and vm.backing(7) not in (None, old7)    # a fresh host page
    assert r.hpa == vm.backing(7) << 12
    assert vm.violations == []


def test_enabling_dirty_logging_splits_write_protects_and_flushes_once():
    vm = VM(tlb=TLBConfig.adversarial())
    slot = vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    for g in (5, 600):
        vm.access(0, g << 12, "w")
    assert stats(vm, "pages_2m", "pages_4k") == {"pages_2m": 2, "pages_4k": 0}
    flushes = vm.stats["remote_tlb_flush"]
    vm.set_dirty_logging(slot, True)
    assert stats(vm, "pages_2m", "pages_4k", "huge_pages_split") == {
        "pages_2m": 0, "pages_4k": 1024, "huge_pages_split": 2}        # eager split
    assert vm.stats["remote_tlb_flush"] == flushes + 1                # the memslot flush
    d = decode(vm.mmu.spte(5))
    assert (d["w"], d["mmu_writable"]) == (False, True)
    for g in (5, 6, 700):
        r = vm.access(0, g << 12, "w")
        assert r.faults == 1 and r.violation is None
    assert vm.mmu.walk(700 << 12).level == 1                          # dirty logging forces 4K
    assert vm.get_dirty_log(slot) == [5, 6, 700]
    vm.set_dirty_logging(slot, False)
    assert stats(vm, "pages_2m", "pages_4k", "huge_pages_recovered") == {
        "pages_2m": 2, "pages_4k": 0, "huge_pages_recovered": 2}
    assert vm.violations == []


# --------------------------------------------------------------------------- MMIO SPTEs

@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_a_cached_mmio_spte_is_emulated_without_a_page_fault(arch):
    vm = VM(arch=arch)
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    first = vm.access(0, 0x800 << 12, "r")
    assert first.outcome == "mmio" and first.faults == 1
    assert vm.stats["pf_mmio_spte_created"] == 1
    # make_mmio_spte(): the MMIO SPTE makes the next access exit with an EPT
    # misconfiguration / a #NPF with RSVD, which KVM emulates without a page fault.
    again = vm.access(0, 0x800 << 12, "r")
    assert again.outcome == "mmio" and again.faults == 0
    assert stats(vm, "pf_taken", "pf_mmio_spte_created") == {"pf_taken": 1, "pf_mmio_spte_created": 1}


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_an_mmio_spte_from_an_older_memslot_generation_is_not_used(arch):
    vm = VM(arch=arch)
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    assert vm.access(0, 0x800 << 12, "r").outcome == "mmio"
    vm.add_memslot(0x800, 16, max_level=1)        # the gfn is memory now (no zap on create)
    # check_mmio_spte(): the generation in the MMIO SPTE no longer matches -> a normal fault.
    r = vm.access(0, 0x800 << 12, "r")
    assert r.outcome == "ok" and r.hpa == vm.backing(0x800) << 12
    assert vm.violations == []


def test_gfn_write_tracking_forces_4k_around_the_gfn_and_write_protects_it():
    vm = VM(tlb=TLBConfig.adversarial())
    vm.add_memslot(0, 4096, max_level=2)
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "w")
    assert vm.mmu.walk(5 << 12).level == 2
    flushes = vm.stats["remote_tlb_flush"]
    vm.write_protect_gfn(9)
    huge = decode(vm.mmu.spte(0, 2))
    # kvm_tdp_mmu_write_protect_gfn: W and MMU-writable go (host-writable stays); it changed: flush
    assert (huge["host_writable"], huge["mmu_writable"], huge["w"]) == (True, False, False)
    assert vm.stats["remote_tlb_flush"] == flushes + 1
    assert vm.access(0, 5 << 12, "w").outcome == "ok"      # a neighbour: mapped 4K, writable
    assert vm.mmu.walk(5 << 12).level == 1 and decode(vm.mmu.spte(5))["w"]
    assert vm.access(0, 9 << 12, "w").outcome == "mmio"    # the tracked gfn: emulated
    d = decode(vm.mmu.spte(9))
    assert (d["host_writable"], d["mmu_writable"], d["w"]) == (True, False, False)
    assert vm.access(0, 9 << 12, "r").outcome == "ok"
    vm.write_protect_gfn(9, False)
    assert vm.access(0, 9 << 12, "w").outcome == "ok"
    assert vm.violations == []


def test_reset_stats_keeps_the_gauges():
    vm = populated(2, npages=4 * PAGES_2M)
    vm.mmu.map(5, 1)
    vm.reset_stats()
    s = vm.stats
    assert (s["pages_2m"], s["pages_4k"], s["mmu_pages"]) == (3, 512, 4)
    assert s["tables_allocated"] == 0 and s["huge_pages_split"] == 0 and s["spte_writes"] == 0
