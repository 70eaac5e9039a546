"""Windows of KVM's code that the explorer has to reach, or a bug there stays invisible
however long it searches: a stepped NX recovery that yields with a flush pending and is raced
on the huge pages it already zapped, and zap-all and teardown ending inside a top-level
entry's range (a MAXPHYADDR smaller than the paging levels could map)."""
from tdpfast import fuzz


def test_small_maxphyaddr_in_every_8th_vm():
    four, five = fuzz.FuzzConfig(levels=4), fuzz.FuzzConfig(levels=5)
    assert [four.maxphyaddr_for(s) for s in range(16)] == [46] * 7 + [39] + [46] * 7 + [39]
    # 5 levels: a PML5 entry maps 2^48 bytes, more than a 46-bit space
    assert [five.maxphyaddr_for(s) for s in range(16)] == [52] * 7 + [46] + [52] * 7 + [46]
    plain = fuzz.FuzzConfig(levels=5, host_variety=False)
    assert {plain.maxphyaddr_for(s) for s in range(16)} == {52}


def test_a_5_level_vm_with_a_46_bit_space_runs_clean_under_kvm():
    # Zap-all and root teardown end at the host's MAXPHYADDR, inside the first PML5 entry:
    # KVM's zap still reaches every table (no leaked_table, no malformed_table).
    cfg = fuzz.FuzzConfig(levels=5)
    vm = cfg.vm(7, record=False)
    assert vm._kwargs["maxphyaddr"] == 46 and vm._kwargs["levels"] == 5
    assert vm._fuzz(7, 4000) == 4000 and vm.violations == []


def test_the_nx_recovery_yield_flush_is_shown_necessary():
    # Without the flush NX recovery owes before it yields (flush site nx_recover_yield), a
    # racer at that yield unmaps a page of a huge page already zapped and the guest reaches
    # it through its stale TLB entry. Deterministic by seed: VMX, seed 0, at operation 620,221.
    cfg = fuzz.FuzzConfig(mutant="nx_recover_yield")
    seed, _, total = fuzz.explore(cfg, seed=0, budget_s=600, max_ops=700_000)
    assert seed is not None and total == 620_221
    vm = cfg.vm(seed, record=False)
    vm._fuzz(seed, total - seed * cfg.chunk)
    assert vm.violations[0].kind in ("stale_page_table", "use_after_free")
    # the engine as it is runs the same VMs clean
    assert fuzz.explore(fuzz.FuzzConfig(), seed=0, budget_s=600, max_ops=total) == (None, 0, total)
