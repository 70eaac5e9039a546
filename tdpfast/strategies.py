"""Public hypothesis strategies for fuzzing a policy (or a change to the engine) of your own.

>>> from hypothesis import given
>>> import tdpfast
>>> from tdpfast import strategies as tst
>>> @given(tst.scenarios())
... def test_my_policy(ops):
...     vm = tdpfast.VM(vcpus=2, pcpus=2, policy=tdpfast.Policy.kvm().replace(flush_on_put_root=True))
...     tst.apply(vm, ops)
...     assert not vm.violations, vm.violations[0]

Operations are plain tuples ``(name, *args)`` so hypothesis can shrink them and print them
readably; :func:`apply` runs them through the public API, skipping those the model
rejects (a rejected call changes nothing).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from hypothesis import strategies as st

from .errors import TdpError
from .policy import Policy, _ENUMS
from .tlbconfig import PRESETS, TLBConfig

__all__ = ["operations", "scenarios", "policies", "tlb_configs", "apply", "GFNS"]

GFNS = 2048          # two memslots of 1024 gfns, as the C explorer uses
SLOT_PAGES = 1024

Op = Tuple


def _gfns(max_gfn: int = GFNS):
    # A few hot gfns (so zaps meet accesses), region edges, and anything.
    hot = st.integers(0, 3)
    edges = st.sampled_from([511, 512, 513, 1024, 1025, 1536, 2047])
    return st.one_of(hot, hot, hot, edges, st.integers(0, max_gfn - 1))


def _range(max_gfn: int = GFNS):
    length = st.one_of(st.integers(1, 8), st.integers(1, 1024))
    return st.tuples(_gfns(max_gfn), length).map(lambda t: (t[0], min(t[0] + t[1], max_gfn)))


GUEST_GVA = 0x7F0000000000   # guest-linear pages GUEST_GVA + i * 4096, i < GUEST_PAGES
GUEST_PAGES = 16
GUEST_POOL = 1792            # the guest's page tables: gfns 1792-2047 (the second memslot)


def guest_operations(vcpus: int = 2, max_gfn: int = GFNS) -> st.SearchStrategy:
    """One operation of the guest's own paging or of a nested transition: the guest maps or
    unmaps one of ``GUEST_PAGES`` pages in its tables, a guest-linear access, INVLPG, INVPCID,
    MOV to CR3, a paravirtual flush of a preempted vCPU, nested VM-entry or VM-exit."""
    v = st.integers(0, vcpus - 1)
    page = st.integers(0, GUEST_PAGES - 1)
    weighted = [
        (3, st.tuples(st.just("guest_map"), page, st.integers(0, GUEST_POOL - 1), st.booleans(), st.booleans())),
        (1, st.tuples(st.just("guest_unmap"), page)),
        (6, st.tuples(st.just("guest_access"), v, page, st.sampled_from(["r", "r", "w", "x"]))),
        (1, st.tuples(st.just("guest_invlpg"), v, page)),
        (1, st.tuples(st.just("guest_load_cr3"), v, st.integers(0, 3), st.booleans())),
        (1, st.tuples(st.just("guest_invpcid"), v, st.sampled_from(["address", "single", "all", "all_except_globals"]),
                      st.integers(0, 3), page)),
        (1, st.tuples(st.just("guest_pv_flush"), v)),
        (1, st.tuples(st.just("nested_enter"), v)),
        (1, st.tuples(st.just("nested_exit"), v)),
    ]
    names = [i for i, (w, _) in enumerate(weighted) for _ in range(w)]
    return st.sampled_from(names).flatmap(lambda i: weighted[i][1])


def operations(vcpus: int = 2, pcpus: int = 2, max_gfn: int = GFNS, *, guest: bool = False) -> st.SearchStrategy:
    """One operation: guest access, vCPU scheduling, host event, MMU operation, flush,
    or a step of a long operation stopped at a yield point; with ``guest=True`` also the
    guest's own paging and nested transitions (:func:`guest_operations`)."""
    v = st.integers(0, vcpus - 1)
    p = st.integers(0, pcpus - 1)
    acc = st.sampled_from(["r", "r", "w", "x"])
    slot = st.integers(0, 1)
    rng = _range(max_gfn)
    weighted = [
        (8, st.tuples(st.just("access"), v, _gfns(max_gfn), acc)),
        (3, st.tuples(st.just("vcpu_run"), v, p)),
        (1, st.tuples(st.just("vcpu_exit"), v)),
        (2, rng.map(lambda r: ("host_unmap", r[0], r[1]))),
        (1, st.tuples(st.just("host_migrate"), _gfns(max_gfn))),
        (1, rng.map(lambda r: ("host_age", r[0], r[1]))),
        (2, st.tuples(st.just("replace_memslot"), slot, st.booleans(), st.integers(1, 3))),
        (1, st.tuples(rng, st.booleans()).map(lambda t: ("zap_gfn_range", t[0][0], t[0][1], t[1]))),
        (1, st.tuples(st.just("map"), _gfns(max_gfn), st.integers(1, 3))),
        (1, st.tuples(st.just("dirty_logging"), slot, st.booleans())),
        (1, st.tuples(st.just("get_dirty_log"), slot)),
        (1, st.tuples(st.just("write_protect_gfn"), _gfns(max_gfn), st.booleans())),
        (1, st.tuples(st.just("smm_root"), rng)),
        (2, st.tuples(st.just("start_op"), st.sampled_from(["kvm_zap_gfn_range", "host_unmap", "write_protect_range",
                                                             "split_huge_pages", "recover_huge_pages",
                                                             "recover_nx_huge_pages"]), rng, st.integers(1, 600))),
        (2, st.tuples(st.just("step_op"), st.integers(0, 3))),
        (1, st.tuples(st.just("recover_nx_huge_pages"), st.integers(1, 4))),
        (1, st.tuples(st.just("flush_remote_tlbs"))),
        (1, st.tuples(st.just("synchronize_rcu"))),
    ]
    if guest:
        weighted.append((10, guest_operations(vcpus, max_gfn)))
    # Pick the kind of operation by weight, then its arguments.
    names = [i for i, (w, _) in enumerate(weighted) for _ in range(w)]
    return st.sampled_from(names).flatmap(lambda i: weighted[i][1])


def scenarios(vcpus: int = 2, pcpus: int = 2, min_ops: int = 20, max_ops: int = 80, *,
              guest: bool = False) -> st.SearchStrategy:
    """A list of operations, starting from two fresh memslots (long enough for interleavings
    to meet; hypothesis shrinks failures down to the few operations that matter). With
    ``guest=True`` the guest's own paging and nested transitions are in the mix."""
    return st.lists(operations(vcpus, pcpus, guest=guest), min_size=min_ops, max_size=max_ops)


def policies(base: Policy = None) -> st.SearchStrategy:
    """Policies with any subset of switches flipped from ``base`` (KVM's by default)."""
    base = base or Policy.kvm()
    import dataclasses

    fields = [f for f in dataclasses.fields(Policy) if f.name != "nx_recovery_ratio"]
    choices = {}
    for f in fields:
        cur = getattr(base, f.name)
        if f.name in _ENUMS:
            choices[f.name] = st.sampled_from(_ENUMS[f.name])
        elif isinstance(cur, bool):
            choices[f.name] = st.booleans()
        else:
            choices[f.name] = st.integers(0, 64)
    return st.fixed_dictionaries({}, optional=choices).map(lambda ch: base.replace(**ch))


def tlb_configs() -> st.SearchStrategy:
    """TLB geometries: presets, the adversarial mode, and small random set-associative ones."""
    small = st.builds(lambda s, w, r: TLBConfig(mode="setassoc", replacement=r, l1_4k=(s, w), l1_2m=(2, 2),
                                                l1_1g=(1, 2), l2=(s * 2, w), l2_1g=(0, 0)),
                      st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]),
                      st.sampled_from(["lru", "plru", "random"]))
    return st.one_of(st.just(TLBConfig.adversarial()), st.sampled_from(PRESETS[:-1]).map(TLBConfig.preset), small)


def apply(vm, ops: Sequence[Op], *, slots: bool = True) -> List[Op]:
    """Run ``ops`` on ``vm`` through the public API and return the ones it accepted.

    With ``slots=True`` two 1024-page memslots are added first (gfns 0-2047)."""
    slot_ids = [None, None]
    if slots:
        slot_ids = [vm.add_memslot(0, SLOT_PAGES).id, vm.add_memslot(SLOT_PAGES, SLOT_PAGES, max_level=2).id]
    ops_in_flight = []
    done = []
    cr3 = []        # the guest's top page table, made on the first guest operation

    def guest_cr3() -> int:
        if not cr3:
            vm.guest.set_table_pool(GUEST_POOL, GFNS - GUEST_POOL)
            cr3.append(vm.guest.new_table())
        return cr3[0]

    def guest_vcpu(vcpu: int) -> None:
        # The vCPU runs (on pCPU 0 if it was not loaded) with paging on this level.
        if vm.vcpu_info(vcpu)["mode"] == "outside_guest":
            vm.vcpu_run(vcpu, vm.vcpu_info(vcpu)["pcpu"] or 0)
        if not vm.vcpu_info(vcpu)["guest_levels"]:
            vm.guest.set_paging(vcpu, 4, pcide=True)
            vm.guest.load_cr3(vcpu, guest_cr3())

    for op in ops:
        name, args = op[0], op[1:]
        try:
            if name == "guest_map":
                i, gfn, write, glob = args
                vm.guest.unmap(guest_cr3(), GUEST_GVA + (i << 12))
                vm.guest.map(guest_cr3(), GUEST_GVA + (i << 12), gfn << 12, write=write, global_page=glob)
            elif name == "guest_unmap":
                vm.guest.unmap(guest_cr3(), GUEST_GVA + (args[0] << 12))
            elif name == "guest_access":
                vcpu, i, kind = args
                guest_vcpu(vcpu)
                vm.guest.access(vcpu, GUEST_GVA + (i << 12), kind)
            elif name == "guest_invlpg":
                guest_vcpu(args[0])
                vm.guest.invlpg(args[0], GUEST_GVA + (args[1] << 12))
            elif name == "guest_load_cr3":
                vcpu, pcid, noflush = args
                guest_vcpu(vcpu)
                vm.guest.load_cr3(vcpu, guest_cr3(), pcid=pcid, noflush=noflush)
            elif name == "guest_invpcid":
                vcpu, kind, pcid, i = args
                guest_vcpu(vcpu)
                vm.guest.invpcid(vcpu, kind, pcid, GUEST_GVA + (i << 12))
            elif name == "guest_pv_flush":
                vm.guest.pv_flush(args[0])
            elif name == "access":
                vcpu, gfn, kind = args
                if vm.vcpu_info(vcpu)["mode"] == "outside_guest":
                    vm.vcpu_run(vcpu, 0)
                vm.access(vcpu, gfn << 12, kind)
            elif name == "replace_memslot":
                i, readonly, level = args
                if slot_ids[i] is not None:
                    vm.delete_memslot(slot_ids[i])
                    slot_ids[i] = None
                slot_ids[i] = vm.add_memslot(i * SLOT_PAGES, SLOT_PAGES, readonly=readonly, max_level=level).id
            elif name == "zap_gfn_range":
                s, e, shared = args
                vm.mmu.kvm_zap_gfn_range(s, e, shared=shared)
            elif name == "map":
                gfn, level = args
                span = 1 << (9 * (level - 1))
                vm.mmu.map(gfn & ~(span - 1), level)
            elif name == "dirty_logging":
                i, on = args
                if slot_ids[i] is None:
                    raise TdpError("no slot")
                vm.set_dirty_logging(slot_ids[i], on)
            elif name == "get_dirty_log":
                if slot_ids[args[0]] is None:
                    raise TdpError("no slot")
                vm.get_dirty_log(slot_ids[args[0]])
            elif name == "smm_root":
                s, e = args[0]
                root = vm.mmu.alloc_root(as_id=1)
                vm.mmu.map_range(s, e, root=root)
            elif name == "start_op":
                kind, (s, e), every = args
                extra = (1,) if kind == "split_huge_pages" else ()
                if kind == "recover_nx_huge_pages":
                    ops_in_flight.append(vm.start_op(kind, 2, yield_every=every))
                else:
                    ops_in_flight.append(vm.start_op(kind, s, e, *extra, yield_every=every))
            elif name == "step_op":
                live = [o for o in ops_in_flight if not o.done]
                if not live:
                    raise TdpError("no operation in flight")
                live[args[0] % len(live)].step()
            elif name == "recover_nx_huge_pages":
                vm.mmu.recover_nx_huge_pages(args[0])
            else:
                getattr(vm, name)(*args)
        except TdpError:
            continue
        done.append(op)
    return done
