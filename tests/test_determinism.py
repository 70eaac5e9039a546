"""Determinism: the same seed and the same inputs give the same counters, digest and
event-log bytes; replaying vm.events on vm.fresh() reproduces the digest and the
violations; random TLB replacement is a function of the seed."""
from __future__ import annotations

import random

import pytest

from tdpfast import Policy, TLBConfig, VM

A_PAGES = 4096            # memslot A: gfns [0, 4096), up to 2M pages
B_BASE, B_PAGES = 8192, 1024


def stale_recipe(vm):
    """Exposes a missing flush after a migration (no-flush-on-migrate) or in the atomic
    zap (B5); harmless under KVM's policy."""
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "r")
    vm.vcpu_run(0, 1)
    vm.host_unmap(5, 6)
    vm.vcpu_run(0, 0)
    vm.access(0, 5 << 12, "r")
    vm.vcpu_run(0, 0)
    vm.access(0, 6 << 12, "r")
    vm.mmu.zap_gfn_range(6, 7, shared=True)
    vm.host_unmap(6, 7)
    vm.access(0, 6 << 12, "r")


def workload(vm, seed, steps=350, recipe=None):
    """A random but input-determined mix of guest accesses, vCPU placement, host events,
    memslot and dirty-log changes and direct MMU operations (never an invalid call)."""
    rng = random.Random(seed)
    vm.add_memslot(0, A_PAGES, max_level=2)
    slot_b = vm.add_memslot(B_BASE, B_PAGES, max_level=1)
    logging = False

    def gfn():
        return rng.randrange(A_PAGES) if rng.random() < 0.8 else B_BASE + rng.randrange(B_PAGES)

    def running(v):
        if vm.vcpu_info(v)["mode"] == "outside_guest":
            vm.vcpu_run(v, rng.randrange(vm.npcpus))

    for step in range(steps):
        if recipe and step == steps // 2:
            recipe(vm)
        op = rng.randrange(20)
        v = rng.randrange(vm.nvcpus)
        g = gfn()
        if op < 7:
            running(v)
            vm.access(v, (g << 12) | rng.randrange(4096), rng.choice("rwwx"))
        elif op == 7:
            running(v)
            n = rng.randrange(1, 40)
            vm.access_batch(v, [gfn() << 12 for _ in range(n)], [rng.choice("rwx") for _ in range(n)])
        elif op == 8:
            vm.vcpu_run(v, rng.randrange(vm.npcpus))
        elif op == 9:
            vm.vcpu_exit(v)
        elif op == 10:
            vm.host_unmap(g, g + rng.randrange(1, 8))
        elif op == 11 and vm.backing(g) is not None:
            vm.host_migrate(g)
        elif op == 12:
            vm.mmu.zap_gfn_range(g, g + rng.randrange(1, 600), shared=rng.random() < 0.5)
        elif op == 13:
            vm.write_protect_gfn(g, rng.random() < 0.7)
        elif op == 14:
            vm.mmu.age(0, A_PAGES)
        elif op == 15:
            logging = not logging
            vm.set_dirty_logging(slot_b, logging)
        elif op == 16 and logging:
            vm.get_dirty_log(slot_b)
        elif op == 17 and rng.random() < 0.3:
            vm.delete_memslot(slot_b)
            slot_b = vm.add_memslot(B_BASE, B_PAGES, max_level=1)
            logging = False
        elif op == 18:
            vm.flush_remote_tlbs()
        elif op == 19:
            vm.mmu.split_huge_pages(0, A_PAGES) if rng.random() < 0.5 else vm.mmu.recover_huge_pages(0, A_PAGES)
    return vm


def make(arch="vmx", seed=11, policy=None, tlb=None):
    return VM(arch=arch, vcpus=3, pcpus=2, seed=seed, policy=policy, record=True,
              tlb=tlb or TLBConfig.preset("skylake" if arch == "vmx" else "zen3", replacement="random"))


@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_same_seed_and_inputs_give_identical_stats_digest_and_event_log(arch):
    policy = Policy.kvm().replace(yield_every=16)
    a = workload(make(arch, policy=policy), 5)
    b = workload(make(arch, policy=policy), 5)
    assert a.stats == b.stats
    assert a.digest() == b.digest()
    assert a.event_log() == b.event_log()
    assert len(a.event_log()) > 0 and a.stats["accesses"] > 100
    assert a.violations == b.violations == []           # KVM's policy: the checker stays quiet
    c = workload(make(arch, policy=policy), 6)          # other inputs: another history
    assert c.event_log() != a.event_log() and c.digest() != a.digest()


def test_the_trace_is_deterministic_too():
    a = workload(VM(vcpus=3, pcpus=2, seed=3, trace=True, record=True), 8, steps=150)
    b = workload(VM(vcpus=3, pcpus=2, seed=3, trace=True, record=True), 8, steps=150)
    assert a.trace() == b.trace() and len(a.trace()) > 0


@pytest.mark.parametrize("arch", ["vmx", "svm"])
@pytest.mark.parametrize("policy", ["kvm", "no-flush-on-migrate", "B5-atomic-zap-no-flush"])
def test_replaying_the_event_log_on_a_fresh_vm_reproduces_digest_and_violations(arch, policy):
    vm = workload(make(arch, policy=Policy.named(policy), tlb=TLBConfig.adversarial()), 21, recipe=stale_recipe)
    again = vm.fresh()
    again.replay(vm.events)
    assert again.digest() == vm.digest()
    assert again.violations == vm.violations
    assert again.stats == vm.stats
    assert again.event_log() == vm.event_log()
    if policy != "kvm":
        assert vm.violations                              # the buggy policies are caught...
        under_kvm = vm.fresh(policy=Policy.kvm())
        under_kvm.replay(vm.events)
        assert under_kvm.violations == []                 # ...and the same inputs under KVM are clean


def test_replay_round_trips_access_batches():
    vm = VM(tlb=TLBConfig.adversarial(), record=True)
    vm.add_memslot(0, 1024, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access_batch(0, [0x1000, 0x2000, 0x1000, 0x7000], ["r", "w", "x", "xu"])
    vm.access_batch(0, [0x3000, 0x4000], "w")
    batches = [e.batch for e in vm.events if e.op == "access_batch"]
    assert batches == [((0x1000, "r"), (0x2000, "w"), (0x1000, "x"), (0x7000, "xu")),
                       ((0x3000, "w"), (0x4000, "w"))]
    again = vm.fresh()
    again.replay(vm.events)
    assert again.digest() == vm.digest()


def test_failed_calls_and_inspection_leave_no_trace_in_the_log():
    vm = workload(make(), 2, steps=60)
    log, digest, stats = vm.event_log(), vm.digest(), vm.stats
    vm.mmu.walk(0x5000)
    vm.mmu.tables()
    vm.tlb_entries(0)
    vm.vcpu_info(0)
    vm.pcpu_info(1)
    vm.memslots
    with pytest.raises(ValueError):
        vm.mmu.map(1, 2)                                  # misaligned
    assert (vm.event_log(), vm.digest(), vm.stats) == (log, digest, stats)
    vm.flush_remote_tlbs()
    assert vm.event_log() != log and vm.digest() != digest


def _random_tlb_run(seed):
    tlb = TLBConfig(mode="setassoc", replacement="random", l1_4k=(2, 4), l2=(4, 4), psc_pde=(1, 32),
                    psc_pdpte=(1, 4), psc_pml4e=(1, 2), psc_pml5e=(1, 2))
    vm = VM(tlb=tlb, seed=seed)
    vm.add_memslot(0, 4096, max_level=1)
    vm.vcpu_run(0, 0)
    rng = random.Random(1234)                           # the same accesses for every seed
    res = vm.access_batch(0, [rng.randrange(64) << 12 for _ in range(400)], "r", per_access=True)
    return vm.digest(), res.per_access["tlb"], vm.stats["tlb_hits_l1"], vm.stats["tlb_hits_l2"]


def test_random_replacement_is_a_function_of_the_seed():
    runs = {s: _random_tlb_run(s) for s in range(6)}
    assert runs == {s: _random_tlb_run(s) for s in range(6)}     # reproducible
    assert len({r[1] and tuple(r[1]) for r in runs.values()}) > 1  # and the seed matters
