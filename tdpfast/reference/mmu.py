"""KVM's mmu/mmu.c around the TDP MMU, for the reference model: the page-fault entry
(kvm_tdp_page_fault() with fast_page_fault()), kvm_mmu_zap_all_fast(), the NX-huge-page
recovery worker (kvm_recover_nx_huge_pages()), and the stepped operations -- each a
whole KVM operation whose end (:meth:`SteppedOps._op_finish`) is the caller's flush
contract (the C engine's counterpart is csrc/mmu.c)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from ..errors import FramePoolExhausted, InvalidArgumentError, InvalidStateError, NotFoundError
from ..events import OPS
from ..results import Memslot
from . import api, checker, cpu, memslot, mmu_notifier, tdp_mmu
from ._args import _int
from .spte import (W, is_access_tracked_spte, is_last_spte, is_mmu_writable_spte, is_present_leaf,
                   is_shadow_present_pte, restore_acc_track_spte, spte_hw_perms)
from .tdp_iter import spte_to_child_frame

if TYPE_CHECKING:  # pragma: no cover
    from .vm import VM


# ======================================================================== zap everything
def kvm_mmu_zap_all_fast(vm) -> None:
    """kvm_mmu_zap_all_fast() (mmu/mmu.c; memslot delete/move, MMIO generation wrap):
    invalidate every root and request KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in the same critical
    section, then zap the invalid roots before returning -- without a flush (vCPUs flush
    when they load their next root; commit db01416b22d9 "KVM: x86/mmu: Formalize TDP MMU's
    (unintended?) deferred TLB flush logic")."""
    vm.memslots_gen += 1
    tdp_mmu.invalidate_all_roots(vm)
    cpu.kvm_make_all_cpus_request(vm, cpu.REQ_MMU_FREE_OBSOLETE_ROOTS)
    tdp_mmu.zap_invalidated_roots(vm, shared=True)


def kvm_flush_remote_tlbs_memslot(vm, s) -> None:
    """kvm_flush_remote_tlbs_memslot(): a ranged remote flush of the slot's gfns."""
    cpu.kvm_flush_remote_tlbs_range(vm, s.base_gfn, s.npages)


# ======================================================================== NX huge page recovery
def _subtree_has_leaf(vm, f: int) -> bool:
    """Whether a table still maps anything (what v5.12's kvm_tdp_mmu_zap_sp() returned)."""
    level = vm.mem.frames[f].sp_level
    for s in vm.mem.table(f):
        if not is_shadow_present_pte(s):
            continue
        if is_last_spte(s, level):
            return True
        c = spte_to_child_frame(vm.mem, s, level)
        if c is not None and _subtree_has_leaf(vm, c):
            return True
    return False


def nx_recovery_count(vm, count: int) -> int:
    """How many tables one run zaps: ``count``, else ceil(possible NX pages / ratio)
    (nx_huge_pages_recovery_ratio)."""
    if count > 0:
        return count
    ratio = vm.pol.nx_recovery_ratio
    return -(-len(vm.nx_list) // ratio) if ratio > 0 else 0


def nx_recovery(vm, op: tdp_mmu.Op):
    """kvm_recover_nx_huge_pages(): zap the oldest possible-NX tables (a slot being dirty
    logged just untracks them); flush before every yield and at the end, inside RCU.
    B4 (``nx_recovery_flush_assign``, fixed by 315f02c60d94 "KVM: x86/mmu: preserve pending
    TLB flush across calls to kvm_tdp_mmu_zap_sp"): flush = zap_sp() instead of |=, with
    v5.12's zap_sp, which said whether the table still mapped anything."""
    while op.nx_left > 0 and vm.nx_list:
        f = vm.nx_list[0]
        s = vm.slot_of(vm.mem.frames[f].sp_gfn)
        if s is not None and s.dirty_log:
            tdp_mmu.untrack_possible_nx(vm, f)
        else:
            if vm.pol.nx_recovery_flush_assign:
                had = _subtree_has_leaf(vm, f)
                tdp_mmu.tdp_mmu_zap_sp(vm, f)
                op.flush = had
            else:
                op.flush |= tdp_mmu.tdp_mmu_zap_sp(vm, f)
            if vm.mem.frames[f].sp_nx:
                tdp_mmu.untrack_possible_nx(vm, f)
            op.nx_done += 1
        if tdp_mmu.op_need_resched(op):
            if op.flush:
                cpu.kvm_flush_remote_tlbs(vm)
            op.flush = False
            vm.stats["iter_yields"] += 1
            vm.rcu_quiescent(at_yield=True)
            yield
        op.nx_left -= 1
    if op.flush:
        cpu.kvm_flush_remote_tlbs(vm)
    op.flush = False


def recover_nx_huge_pages(vm, count: int) -> int:
    """One run of the recovery worker; returns how many tables it zapped."""
    op = tdp_mmu.new_op(vm, tdp_mmu.NX_RECOVER, tdp_mmu.ROOTS_ALL, 0, 0, False)
    op.nx_left = nx_recovery_count(vm, count)
    tdp_mmu.run(nx_recovery(vm, op))
    return op.nx_done


# ======================================================================== the page fault
def _spte_allows(vm, s: int, access: int) -> bool:
    p = spte_hw_perms(vm.masks, s)
    return bool(p & {0: 1, 1: 2}.get(access, 4))


def _fast_page_fault(vm, r: tdp_mmu.Root, gfn: int, access: int, slot) -> Optional[int]:
    """fast_page_fault(): a present leaf that only lacks A (access tracking) or W is fixed in
    place; one that already allows the access is spurious. None: the slow path runs."""
    spte, level, f, i = tdp_mmu.lookup(vm, r, gfn)
    if not is_present_leaf(spte, level):
        return None
    new = spte
    if is_access_tracked_spte(vm.masks, spte):  # and A, where A is a software bit (v6.13)
        new = restore_acc_track_spte(spte) | vm.masks.accessed
    # never make a huge SPTE writable while the slot is dirty logged
    if access == 1 and not new & W and is_mmu_writable_spte(vm.masks, new) and \
            not (level > 1 and slot is not None and slot.dirty_log):
        new |= W
    if not _spte_allows(vm, new, access):
        return None
    if new == spte:
        vm.stats["pf_spurious"] += 1
        return tdp_mmu.RET_PF_SPURIOUS
    vm.mem.table(f)[i] = new
    vm.stats["pf_fast"] += 1
    vm.stats["spte_writes"] += 1
    vm.cost("spte_write")
    if new & W and not spte & W and slot is not None and slot.dirty_log:
        slot.mark_dirty(gfn)
    return tdp_mmu.RET_PF_FIXED


@dataclass
class FaultHalf:
    """A page fault between its halves (the page_fault stepped operation)."""
    root: int
    mmu_seq: int = 0
    pfn: Optional[int] = None
    result: Optional[int] = None     # set when the first half ended the fault


def page_fault_first_half(vm, v, gfn: int, access: int) -> FaultHalf:
    """kvm_tdp_page_fault() up to kvm_faultin_pfn(): fast_page_fault(), then read
    mmu_invalidate_seq and look up the host page outside mmu_lock."""
    r = tdp_mmu.find_root(vm, v.root_id)
    slot = vm.slot_of(gfn)
    fh = FaultHalf(r.id)
    vm.stats["pf_taken"] += 1
    vm.cost("fault")
    if r.invalid:
        fh.result = tdp_mmu.RET_PF_RETRY
        return fh
    fast = _fast_page_fault(vm, r, gfn, access, slot)
    if fast is not None:
        fh.result = fast
        return fh
    if slot is not None and access == 1 and slot.readonly:
        vm.stats["pf_emulate"] += 1
        fh.result = tdp_mmu.RET_PF_EMULATE
        return fh
    fh.mmu_seq = vm.mmu_invalidate_seq
    if (vm.mmu_invalidate_in_progress and vm.mmu_invalidate_start <= gfn < vm.mmu_invalidate_end) or \
            (slot is not None and slot.deleting):
        vm.stats["pf_retry"] += 1
        fh.result = tdp_mmu.RET_PF_BLOCKED
        return fh
    if slot is not None:
        fh.pfn = memslot.fault_in_pfn(vm.mem, slot, gfn)
        if fh.pfn is None:
            fh.result = tdp_mmu.RET_PF_NOMEM
    return fh


def _fault_mapped(vm, r, gfn: int, goal: int, ret: int) -> int:
    """The end of a fault's map step, synchronous or a second half: the outcome counted as
    kvm_mmu_do_page_fault() counts it, and I5 on a fresh install."""
    if ret == tdp_mmu.RET_PF_FIXED and vm.cfg.invariants:
        checker.check_fault_install(vm, r, gfn, goal)     # I5
    name = {tdp_mmu.RET_PF_FIXED: "pf_fixed", tdp_mmu.RET_PF_SPURIOUS: "pf_spurious",
            tdp_mmu.RET_PF_EMULATE: "pf_emulate", tdp_mmu.RET_PF_RETRY: "pf_retry"}.get(ret)
    if name:
        vm.stats[name] += 1
    return ret


def page_fault_second_half(vm, fh: FaultHalf, gfn: int, access: int) -> int:
    """Under mmu_lock: is_page_fault_stale() (the root invalid or gone, or
    mmu_invalidate_retry_gfn(): an invalidation covering gfn in progress or ended since
    the first half) retries; otherwise map the first half's pfn."""
    if fh.result is not None:
        return fh.result
    r = tdp_mmu.find_root(vm, fh.root)
    slot = vm.slot_of(gfn)
    stale_seq = (vm.mmu_invalidate_in_progress and vm.mmu_invalidate_start <= gfn < vm.mmu_invalidate_end) or \
        vm.mmu_invalidate_seq != fh.mmu_seq
    # the first half's memslot gone (or one added over an MMIO gfn): retry (model choice)
    if r is None or r.invalid or stale_seq or (slot is None) != (fh.pfn is None) or \
            (slot is not None and slot.deleting):
        vm.stats["pf_retry"] += 1
        fh.result = tdp_mmu.RET_PF_RETRY
        return fh.result
    exec_ = access in (2, 3)
    goal = vm.max_mapping_level(slot, gfn) if slot is not None else 1
    if slot is not None and slot.gfn_to_pfn(gfn) != fh.pfn:
        goal = 1     # a pfn that no longer backs gfn maps at 4K
    req_level = goal
    huge_disallowed = False
    if exec_ and vm.pol.nx_huge_pages and goal > 1:
        huge_disallowed, goal = True, 1
    ret, _ = tdp_mmu.map_gfn(vm, r, gfn, goal, access == 1, huge_disallowed, req_level, exec_fault=exec_,
                             pfn=fh.pfn)
    fh.result = _fault_mapped(vm, r, gfn, goal, ret)
    return ret


def page_fault(vm, r: Optional[tdp_mmu.Root], gfn: int, access: int) -> int:
    """kvm_tdp_page_fault(): fast_page_fault() first (lockless, only ever adds
    permissions: never a flush), then the slow path -- kvm_mmu_hugepage_adjust(),
    is_page_fault_stale() against an MMU-notifier invalidation in progress, fault the pfn
    in, kvm_tdp_mmu_map()."""
    write = access == 1
    exec_ = access in (2, 3)
    slot = vm.slot_of(gfn)
    vm.stats["pf_taken"] += 1
    vm.cost("fault")
    if r is None or r.invalid:
        vm.stats["pf_retry"] += 1
        return tdp_mmu.RET_PF_RETRY
    fast = _fast_page_fault(vm, r, gfn, access, slot)
    if fast is not None:
        return fast
    if slot is not None and write and slot.readonly:
        vm.stats["pf_emulate"] += 1
        return tdp_mmu.RET_PF_EMULATE
    goal = vm.max_mapping_level(slot, gfn) if slot is not None else 1
    req_level = goal
    huge_disallowed = False
    if exec_ and vm.pol.nx_huge_pages and goal > 1:
        huge_disallowed, goal = True, 1
    # is_page_fault_stale() / a memslot being deleted: retry until the invalidation ends
    # (the vCPU is blocked, not livelocked).
    if (vm.mmu_invalidate_in_progress and vm.mmu_invalidate_start <= gfn < vm.mmu_invalidate_end) or \
            (slot is not None and slot.deleting):
        vm.stats["pf_retry"] += 1
        return tdp_mmu.RET_PF_BLOCKED
    if slot is not None and memslot.fault_in_pfn(vm.mem, slot, gfn) is None:
        return tdp_mmu.RET_PF_NOMEM
    # The walk follows the faulting gfn; the target level aligns it (so a goal lowered
    # on the way down by disallowed_hugepage_adjust() still maps this gfn).
    ret, _ = tdp_mmu.map_gfn(vm, r, gfn, goal, write, huge_disallowed, req_level, exec_fault=exec_)
    return _fault_mapped(vm, r, gfn, goal, ret)


# ======================================================================== stepped operations
def _fault_second_half(k, op, gfn: int, access: int):
    """The page_fault operation's one step: its second half (a generator that never yields)."""
    page_fault_second_half(k, op.fault, gfn, access)
    return
    yield   # pragma: no cover - makes this a generator
@dataclass
class _StepOp:
    """A stepped operation in flight: its kind and arguments as started, the walk's state
    and the generator that runs it to the next yield point."""
    id: int
    kind: int
    a: int
    b: int
    c: int
    op: tdp_mmu.Op
    gen: object


class Op:
    """A long operation in flight (see :meth:`VM.start_op`)."""

    def __init__(self, vm: "VM", op_id: int, name: str):
        self._vm = vm
        self.id = op_id
        self.name = name
        self.done = False
        self.result: Optional[int] = None

    def step(self) -> bool:
        if self.done:
            return True
        done, result = self._vm._step_op(self.id)
        if done:
            self.done, self.result = True, result
        return self.done

    def finish(self) -> int:
        while not self.step():
            pass
        return self.result

    def __repr__(self) -> str:
        return f"Op(id={self.id}, {self.name}, done={self.done})"


class SteppedOps:
    """The reference VM's stepped operations (``vm.start_op``); mixed into
    :class:`tdpfast.reference.vm.VM`."""

    def start_op(self, name: str, *args: int, yield_every: int = 16) -> "Op":
        """Start a long operation that stops at each yield point (where KVM drops mmu_lock
        and leaves RCU) -- see :meth:`tdpfast.VM.start_op`."""
        k = self._k
        if name not in OPS:
            raise InvalidArgumentError(f"unknown operation {name!r}; operations: {', '.join(OPS)}")
        vals = [a.id if isinstance(a, (Memslot, api.Root)) else _int(f"{name} argument", a) for a in args]
        if len(vals) > 3:
            raise InvalidArgumentError(f"{name} takes at most 3 arguments, got {len(vals)}")
        a, b, c = vals + [0] * (3 - len(vals))
        yield_every = _int("yield_every", yield_every, 0, 1 << 30)
        kind = OPS[name]
        k.op_begin()
        if not 1 <= yield_every <= 1 << 24:
            raise InvalidArgumentError(f"yield_every must be 1..16777216, got {yield_every}")
        slot = None
        if kind in (1, 2, 5, 6, 8):
            k.check_range(a, b)
            if kind == 2:
                mmu_notifier.unmap_prepare(k, a, b)
        elif kind == 7:
            k.check_range(a, b)
            if c not in (1, 2):
                raise InvalidArgumentError(f"target_level must be 1 (4K) or 2 (2M), got {c}")
        elif kind == 4:
            if a > 0x7FFFFFFF:
                raise NotFoundError(f"memslot {a} does not exist (deleted or never added)")
            slot = k.slot_by_id(a)
            if slot.deleting:
                raise InvalidStateError(f"memslot {a} is already being deleted")
        elif kind == 9 and a > 1 << 30:
            raise InvalidArgumentError(f"count must be 0..{1 << 30}")
        elif kind == 10:
            if a >= k.cfg.nvcpus:
                raise InvalidArgumentError(f"vcpu {a} out of range (the VM has {k.cfg.nvcpus})")
            k.check_gfn("gfn", b)
            if c > 3:
                raise InvalidArgumentError(f"access must be 0..3 (r, w, x, xu), got {c}")
            if tdp_mmu.find_root(k, k.vcpus[a].root_id) is None:
                raise InvalidStateError(f"vcpu {a} has no root loaded (vcpu_run it first)")
        T = tdp_mmu
        if kind == 1:
            op = T.new_op(k, T.ZAP_LEAFS, T.ROOTS_VALID, a, b, c != 0)
        elif kind == 2:
            mmu_notifier.kvm_mmu_invalidate_begin(k, a, b)
            op = T.new_op(k, T.ZAP_LEAFS, mmu_notifier.notifier_roots(k), a, b, False)
        elif kind == 3:
            op = T.new_op(k, T.ZAP_ROOTS, T.ROOTS_SCHEDULED, 0, k.max_gfn, True)
        elif kind == 4:
            # The slot becomes KVM_MEMSLOT_INVALID (faults on it wait), then the roots go
            # as in kvm_mmu_zap_all_fast(), or only the slot (B18).
            slot.deleting = True
            k.memslots_gen += 1
            if k.pol.memslot_delete_zap_all:
                T.invalidate_all_roots(k)
                cpu.kvm_make_all_cpus_request(k, cpu.REQ_MMU_FREE_OBSOLETE_ROOTS)
                op = T.new_op(k, T.ZAP_ROOTS, T.ROOTS_SCHEDULED, 0, k.max_gfn, True)
            else:
                op = T.new_op(k, T.ZAP_LEAFS, T.ROOTS_ALL, slot.base_gfn, slot.end_gfn, False)
        elif kind == 5:
            op = T.new_op(k, T.WRPROT, T.ROOTS_VALID, a, b, True)
        elif kind == 6:
            op = T.new_op(k, T.CLEAR_DIRTY, T.ROOTS_VALID, a, b, True)
        elif kind == 7:
            op = T.new_op(k, T.SPLIT, T.ROOTS_VALID, a, b, True)
            op.target_level = c
        elif kind == 8:
            op = T.new_op(k, T.RECOVER_HUGE, T.ROOTS_VALID, a, b, True)
        elif kind == 10:
            op = T.new_op(k, T.ZAP_LEAFS, T.ROOTS_VALID, 0, 0, False)   # unused: a fault is not a walk
            op.fault = page_fault_first_half(k, k.vcpus[a], b, c)
        else:
            op = T.new_op(k, T.NX_RECOVER, T.ROOTS_ALL, 0, 0, False)
            op.nx_left = nx_recovery_count(k, a)
        op.yield_every = yield_every
        k.next_op_id += 1
        gen = nx_recovery(k, op) if kind == 9 else _fault_second_half(k, op, b, c) if kind == 10 else T.run_op(k, op)
        k.ops.append(_StepOp(k.next_op_id, kind, a, b, c, op, gen))
        k.log("start_op", kind, a, b, c, yield_every | k.next_op_id << 32)
        k.op_end()
        return Op(self, k.next_op_id, name)

    @property
    def ops(self) -> List["Op"]:
        return [Op(self, o.id, "?") for o in self._k.ops]

    def _step_op(self, op_id: int):
        k = self._k
        k.op_begin()
        o = next((o for o in k.ops if o.id == op_id), None)
        if o is None:
            raise NotFoundError(f"operation {op_id} does not exist (finished, or never started)")
        try:
            next(o.gen)
            done, result = False, 0
        except StopIteration:
            done, result = True, self._op_finish(o)
            k.ops.remove(o)
        k.log("step_op", op_id)
        k.op_end()
        if done and o.op.err:
            raise FramePoolExhausted(f"operation {op_id} ran out of frames and stopped")
        return done, result

    def _op_finish(self, o: _StepOp) -> int:
        """What the caller of each operation does once the walk is over."""
        k, op = self._k, o.op
        flush = op.flush or op.result_flush
        if o.kind == 1:
            # kvm_zap_gfn_range(): the caller flushes the range before unlocking.
            if flush:
                cpu.kvm_flush_remote_tlbs_range(k, o.a, o.b - o.a)
            return int(flush)
        if o.kind == 2:
            mmu_notifier.unmap_finish(k, o.a, o.b, flush)
            return int(flush)
        if o.kind == 4:
            s = next((s for s in k.slots if s is not None and s.id == o.a), None)
            if not k.pol.memslot_delete_zap_all and flush and s is not None:
                kvm_flush_remote_tlbs_memslot(k, s)
            if s is not None:
                checker.check_range_unmapped(k, s.base_gfn, s.end_gfn, checker.V_DELETED_SLOT_MAPPED)   # I5
                memslot.free_slot(k, s)
            k.memslots_gen += 1
            return 0
        if o.kind in (5, 6):
            # As their callers do: flush the range if an SPTE lost W or D.
            if op.result:
                cpu.kvm_flush_remote_tlbs_range(k, o.a, o.b - o.a)
            return int(op.result)
        if o.kind == 8:
            return int(op.result)   # each root that changed flushed at its end
        if o.kind == 9:
            return op.nx_done
        if o.kind == 10:
            return op.fault.result
        return 0
