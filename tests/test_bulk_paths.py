"""Bulk paths against the per-SPTE path they shortcut.

Where a whole table lies inside a zap range and nothing can observe its entries one by one,
the engine processes the table in one loop (csrc/tdp_mmu.c: op_bulk_table(),
removed_pt_bulk()). The per-SPTE path is the specification: ``VM(bulk=False)`` forces it.
Here the same random operations -- ranges that start and end inside tables, shared and
exclusive zaps, whole-root zaps, stepped operations that stop at yield points, several
policies, tracing on and off -- run on a VM with the bulk paths and one without, and after
every operation the return values, digests, every counter (modelled costs included), page
tables, frame pool, event log, trace and violations must be the same.
"""
from __future__ import annotations

import random

import pytest

from tdpfast import Policy, TdpError, VM

# A differential run over random ranges (about 10 s): part of the full suite, not of -m "not slow".
pytestmark = pytest.mark.slow

PAGES = 8192                      # 16 last-level tables, four 2M-capable regions
POLICIES = [
    ("kvm", Policy.kvm()),
    # need_resched every 700 steps: some tables fit between two yields, some do not
    ("kvm-yield", Policy.kvm().replace(yield_every=700)),
    ("B1-yield", Policy.named("B1-yield-flush-lost").replace(yield_every=600)),
    ("B9-yield", Policy.named("B9-iter-skip-after-yield").replace(yield_every=530)),
    ("B9-yield-often", Policy.named("B9-iter-skip-after-yield")),
    ("no-flush-before-yield", Policy.named("no-flush-before-yield").replace(yield_every=1100)),
    ("B5-shared-zap-no-flush", Policy.named("B5-atomic-zap-no-flush")),
    ("B6-removed-pt-range", Policy.named("B6-removed-pt-range")),
    ("v5.17", Policy.named("kvm-v5.17")),
    ("per-spte-flush", Policy.named("per-spte-flush")),
]


def _snapshot(vm: VM):
    roots = [(r.id, r.valid, r.refcount) for r in vm.mmu.roots]
    tables = {r.id: vm.mmu.tables(r.id) for r in vm.mmu.roots}
    return (vm.digest(), vm.stats, roots, tables, vm.frames(), vm.event_log(), vm.trace(),
            [v.as_dict() if hasattr(v, "as_dict") else v for v in vm.violations],
            [(o.name, o.done) for o in vm.ops])


def _call(fn, *args, **kw):
    try:
        return ("ok", repr(fn(*args, **kw)))   # Root objects compare by identity: their repr
    except TdpError as e:
        return ("error", type(e).__name__, str(e))


def _random_range(rng: random.Random):
    # Mostly ranges that cover whole tables and start and end inside others.
    s = rng.choice([0, rng.randrange(PAGES), rng.randrange(PAGES // 512) * 512, rng.randrange(PAGES // 512) * 512 + rng.randrange(1, 512)])
    e = rng.choice([PAGES, rng.randrange(s + 1, PAGES + 1), min(PAGES, s + rng.randrange(1, 3000))])
    return s, max(e, s + 1)


def _op(rng: random.Random, vm: VM, state: dict):
    """One random operation, chosen by rng (both VMs get the same rng stream)."""
    k = rng.randrange(100)
    if k < 22:
        s, e = _random_range(rng)
        level = rng.choice([1, 1, 1, 2])
        s, e = (s >> 9 << 9, max((e + 511) >> 9 << 9, (s >> 9 << 9) + 512)) if level == 2 else (s, e)
        return _call(vm.mmu.map_range, s, min(e, PAGES), level)
    if k < 44:
        s, e = _random_range(rng)
        return _call(vm.mmu.zap_gfn_range, s, e, shared=rng.random() < 0.3)
    if k < 58:
        s, e = _random_range(rng)
        name = rng.choice(["kvm_zap_gfn_range", "host_unmap", "kvm_zap_gfn_range"])
        args = (s, e, int(rng.random() < 0.3)) if name == "kvm_zap_gfn_range" else (s, e)
        op = vm.start_op(name, *args, yield_every=rng.choice([7, 300, 511, 512, 513, 700, 1100]))
        state.setdefault("ops", []).append(op)
        return ("op", op.name)
    if k < 70 and vm.ops:
        op = vm.ops[rng.randrange(len(vm.ops))]
        steps = rng.randrange(1, 4)
        return [_call(op.step) for _ in range(steps)]
    if k < 75:
        return _call(vm.mmu.zap_all_fast)
    if k < 80:
        roots = vm.mmu.roots
        if roots:
            return _call(vm.mmu.zap_root, roots[rng.randrange(len(roots))].id, shared=rng.random() < 0.5)
        return None
    if k < 84:
        return _call(vm.mmu.alloc_root)
    if k < 88:
        return _call(vm.synchronize_rcu)
    if k < 94:
        gfns = [rng.randrange(PAGES) for _ in range(16)]
        return _call(vm.access_batch, 0, [g << 12 for g in gfns], "w")
    if k < 97:
        s, e = _random_range(rng)
        return _call(vm.mmu.write_protect_range, s, e)
    for op in list(vm.ops):
        _call(op.finish)
    return ("finished",)


def _run_pair(policy: Policy, trace: bool, seed: int, nops: int):
    vms = []
    for bulk in (True, False):
        vm = VM(seed=seed, policy=policy, trace=trace, vcpus=2, pcpus=2, bulk=bulk)
        vm.add_memslot(0, PAGES, max_level=2)
        vm.mmu.alloc_root()
        vm.vcpu_run(0, 0)
        vm.mmu.map_range(0, PAGES // 2, level=1)
        vm.mmu.map_range(PAGES // 2, PAGES, level=2)
        vms.append(vm)
    assert _snapshot(vms[0]) == _snapshot(vms[1])
    rngs = [random.Random(seed), random.Random(seed)]
    for i in range(nops):
        out = [_op(rngs[j], vms[j], {}) for j in range(2)]
        assert out[0] == out[1], f"op {i}: return values differ"
        a, b = _snapshot(vms[0]), _snapshot(vms[1])
        for name, x, y in zip(("digest", "stats", "roots", "tables", "frames", "events", "trace", "violations", "ops"), a, b):
            assert x == y, f"seed {seed} op {i}: {name} differs between the bulk and the per-SPTE path"
    return vms


# Tracing makes every SPTE write observable, so the bulk paths stand aside: a few policies
# with it on show that they do.
CASES = [(n, p, False) for n, p in POLICIES] + [(n, p, True) for n, p in POLICIES if n in ("kvm", "kvm-yield", "B6-removed-pt-range")]


@pytest.mark.parametrize("name,policy,trace", CASES, ids=[f"{n}-{'trace' if t else 'notrace'}" for n, _, t in CASES])
def test_bulk_matches_per_spte_path(name, policy, trace):
    for seed in range(2):
        _run_pair(policy, trace, seed, 40)


def _whole_zap_pair(**kw):
    vms = []
    for bulk in (True, False):
        vm = VM(bulk=bulk, record=True, **kw)
        vm.add_memslot(0, PAGES, max_level=2)
        vm.mmu.alloc_root()
        vm.mmu.map_range(0, PAGES, level=1)
        vms.append(vm)
    return vms


def test_whole_tables_are_zapped_with_the_same_counters():
    """A range of whole tables and a partial one: the counters the bulk path adds once per
    table are the per-SPTE path's, and every leaf is gone."""
    vms = _whole_zap_pair()
    flushes = [vm.mmu.zap_gfn_range(3, PAGES - 5) for vm in vms]
    assert flushes == [True, True]
    s = [vm.stats for vm in vms]
    assert s[0] == s[1]
    assert s[0]["pages_4k"] == 8 and s[0]["zapped_leaf_l1"] == PAGES - 8
    assert s[0]["iter_visited_l1"] >= PAGES - 8
    assert vms[0].mmu.tables() == vms[1].mmu.tables()
    assert vms[0].digest() == vms[1].digest()


def test_whole_root_zap_and_removed_tables_match():
    """Root zaps (the 4K pass clears whole tables, the 2M pass frees them, shared mode
    freezes every entry of a removed table) give the same tables, pool and counters."""
    for shared in (False, True):
        vms = _whole_zap_pair()
        for vm in vms:
            vm.mmu.zap_root(vm.mmu.roots[0].id, shared=shared)
        assert vms[0].stats == vms[1].stats
        assert vms[0].stats["pages_4k"] == 0
        assert vms[0].frames() == vms[1].frames()
        assert vms[0].digest() == vms[1].digest()


def test_a_yield_due_inside_a_table_is_taken_where_the_per_spte_path_takes_it():
    """With need_resched every 700 steps a stepped zap stops inside some tables and clears
    others whole; both paths stop at the same gfns, the same number of times."""
    vms = _whole_zap_pair(policy=Policy.kvm())
    steps = []
    for vm in vms:
        op = vm.start_op("kvm_zap_gfn_range", 0, PAGES, 0, yield_every=700)
        n = 0
        while not op.step():
            n += 1
            steps.append((n, vm.stats["iter_yields"], vm.stats["pages_4k"]))
        assert n >= 10
    half = len(steps) // 2
    assert steps[:half] == steps[half:]
    assert vms[0].stats == vms[1].stats
