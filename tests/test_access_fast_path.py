"""The batched access path (cpu_access_batch: L1 hits handled inline, the checker's verdict
kept in the TLB entry until the memslot truth changes) against the same accesses made one
at a time through vm.access() (the engine's full path) and through the pure-Python
reference model, which checks every translation on every access."""
import random
import zlib

import pytest

from tdpfast import VM, Policy, TdpError, TLBConfig
from tdpfast.reference.model import VM as ReferenceVM

TLBS = {
    "skylake-lru": TLBConfig.preset("skylake"),
    "icelake-plru": TLBConfig.preset("icelake", replacement="plru"),
    "zen4-random": TLBConfig.preset("zen4", replacement="random"),
    "tiny-lru": TLBConfig(mode="setassoc", l1_4k=(2, 2), l2=(4, 3), psc_pde=(1, 2)),
}
KINDS = "rwxx"


def _vm(tlb, arch, policy, cls=VM):
    vm = cls(arch=arch, pcpus=2, tlb=tlb, policy=policy, seed=3, record=False)
    vm.add_memslot(0, 512, max_level=1)       # 4K translations: their verdicts are kept
    vm.add_memslot(512, 3584, max_level=2)    # 2M ones: checked on every hit
    vm.vcpu_run(0, 0)
    return vm


def _host_event(vm, rng):
    g = rng.randrange(0, 96)
    op = rng.choice((0, 0, 1, 2, 3, 4, 5, 5, 5))
    if op == 0:
        vm.host_unmap(g, g + rng.randrange(1, 4))
    elif op == 1:
        vm.host_migrate(g + rng.choice((0, 512)))
    elif op == 2:
        vm.write_protect_gfn(g + rng.choice((0, 512)), enable=rng.random() < 0.7)
    elif op == 3:
        vm.set_dirty_logging(0, rng.random() < 0.5)
    elif op == 4:
        vm.get_dirty_log(0)   # refused while dirty logging is off
    else:
        vm.vcpu_run(0, rng.randrange(2))


def _script(seed):
    rng = random.Random(seed)
    steps = []
    for _ in range(60):
        n = rng.randrange(1, 60)
        hot = rng.randrange(4, 96)
        gpas = [((rng.randrange(hot) + rng.choice((0, 0, 0, 512))) << 12) | rng.randrange(4096) for _ in range(n)]
        kinds = [rng.choice(KINDS) for _ in range(n)]
        steps.append((gpas, kinds, rng.randrange(1 << 30)))
    return steps


@pytest.mark.parametrize("tlb", sorted(TLBS))
@pytest.mark.parametrize("arch", ["vmx", "svm"])
@pytest.mark.parametrize("policy", ["kvm", "no-flush-on-migrate"])
def test_batches_match_single_accesses(tlb, arch, policy):
    pol = Policy.named(policy)
    batched, single, ref = _vm(TLBS[tlb], arch, pol), _vm(TLBS[tlb], arch, pol), _vm(TLBS[tlb], arch, pol, ReferenceVM)
    codes = {"r": 0, "w": 1, "x": 2, "xu": 3}
    for i, (gpas, kinds, ev_seed) in enumerate(_script(zlib.crc32(f"{tlb}/{arch}/{policy}".encode()))):
        res = batched.access_batch(0, gpas, bytes(codes[k] for k in kinds), per_access=True)
        assert res.per_access == ref.access_batch(0, gpas, bytes(codes[k] for k in kinds), per_access=True).per_access, i
        one = [single.access(0, g, k) for g, k in zip(gpas, kinds)]
        cols = res.per_access
        assert cols["hpa"] == [a.hpa if a.hpa is not None else cols["hpa"][j] for j, a in enumerate(one)], i
        assert cols["tlb"] == [{"l1": 1, "l2": 2, None: 0}[a.tlb] for a in one], i
        assert cols["faults"] == [a.faults for a in one], i
        assert [v != 0 for v in cols["violation"]] == [a.violation is not None for a in one], i
        for vm in (batched, single, ref):
            try:
                _host_event(vm, random.Random(ev_seed))
            except TdpError:   # refused (e.g. migrating an unmapped page): nothing changed
                pass
        assert batched.stats == single.stats == ref.stats, i
        assert batched.digest() == single.digest(), i
    key = lambda v: (v.kind, v.vcpu, v.pcpu, v.gpa, v.tag, v.stale_pfn, v.expected_pfn, v.access, v.level)  # noqa: E731
    assert [key(v) for v in batched.violations] == [key(v) for v in single.violations]
    assert [key(v) for v in batched.violations] == [key(v) for v in ref.violations]
    # KVM's policy misses no flush; without the migration flush the guest uses stale
    # translations (the tiny TLB evicts most of them first), and every use is reported.
    if policy != "kvm" and tlb != "tiny-lru":
        assert batched.violations


def test_a_kept_verdict_is_checked_again_when_the_host_changes_the_page():
    # The README's missed migration flush, through a set-associative TLB: the first
    # accesses keep the checker's verdict in the TLB entry; the host's unmap changes the
    # truth, so every later hit on the stale entry is checked and reported again.
    vm = VM(arch="vmx", vcpus=1, pcpus=2, tlb=TLBConfig.preset("skylake"),
            policy=Policy.kvm().replace(flush_on_migrate=False), record=False)
    vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    assert vm.access_batch(0, [0x5000] * 4).violations == 0
    vm.vcpu_run(0, 1)
    vm.host_unmap(5, 6)
    vm.vcpu_run(0, 0)
    res = vm.access_batch(0, [0x5000] * 3, per_access=True)
    assert res.per_access["tlb"] == [1, 1, 1]
    assert res.violations == 3
    assert [v.kind for v in vm.violations] == ["use_after_free"] * 3


@pytest.mark.parametrize("batched", [True, False])
def test_the_l1_huge_page_arrays_are_probed_before_l2(batched):
    # tlb_lookup()'s order: every L1 array, then L2. gfn 517's 4K translation is left in
    # the STLB (its L1 DTLB entry evicted by four gfns of the same set) when a zap without
    # the caller's flush and a 2M map replace it; an access to 518 fills the L1 2M array.
    # The access to 517 then hits the 2M entry in L1, in the batch's run of kept hits as
    # in a single access, not the 4K entry left in L2.
    vm = VM(arch="vmx", tlb=TLBConfig.preset("skylake"), record=False,
            policy=Policy.kvm().replace(map_huge_over_table_flush=False))
    vm.add_memslot(0, 1024, max_level=2)
    vm.vcpu_run(0, 0)
    for g in (517, 21, 37, 53, 69):                       # one L1 DTLB set (16 sets x 4 ways)
        vm.mmu.map(g, level=1)
    assert [vm.access(0, g << 12).tlb for g in (517, 517, 21, 37, 53, 69)] == [None, "l1", None, None, None, None]
    assert vm.mmu.zap_gfn_range(512, 1024) is True        # "flush needed": not done here
    vm.mmu.map(512, level=2)
    assert vm.access(0, 518 << 12).tlb is None            # walked: fills the 2M entry
    before = vm.stats
    if batched:
        res = vm.access_batch(0, [517 << 12, 518 << 12], per_access=True)
        assert res.per_access["tlb"] == [1, 1] and res.violations == 0
    else:
        assert [vm.access(0, g << 12).tlb for g in (517, 518)] == ["l1", "l1"]
    after = vm.stats
    assert after["tlb_hits_l1"] - before["tlb_hits_l1"] == 2 and after["tlb_hits_l2"] == before["tlb_hits_l2"]
