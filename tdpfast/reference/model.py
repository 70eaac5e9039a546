"""The pure-Python reference model of tdpfast: an executable specification of KVM x86's
TDP MMU, the per-pCPU TLBs it must keep coherent, and the checker -- with the same
public API as :class:`tdpfast.VM` (``VM``, ``VM.mmu`` (:class:`MMU`), :class:`Root`,
:class:`Op`).

It shares no code with the C engine: only the result types (``tdpfast.results``), the
exceptions (``tdpfast.errors``) and the configuration types (``tdpfast.Policy``,
``tdpfast.TLBConfig``).  It is slow and meant to be read: the mechanics live in

* :mod:`.spte` -- SPTE encodings (kvm-tdp-mmu.md §1),
* :mod:`.hostmem` -- the frame pool with LIFO reuse and RCU-deferred frees (§3.7),
* :mod:`.tdp_iter` -- the TDP iterator (§2),
* :mod:`.tdp_mmu` -- roots, zaps and the other SPTE writers, the fault path (§3, §4, §6),
* :mod:`.tlb` -- TLBs and paging-structure caches (x86-translation.md §3, §6),
* :mod:`.page_walker` -- the hardware walk the TLBs are filled from (x86-translation.md §1, §2),
* :mod:`.cpu` -- vCPUs, requests, vendor flushes, guest accesses and the checker (§5),
* :mod:`.memslot` -- the guest memory truth.

This module is the API layer: argument checks (a failed call changes nothing, except
where noted), the event log, counters.

**Known deviations of the C engine** can be reproduced on request with
``VM(..., quirks=KNOWN_C_QUIRKS)`` (each one is described in :data:`KNOWN_C_QUIRKS`);
by default the reference follows the spec.
"""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, Iterable, List, Optional, Sequence, Union

from ..errors import (FramePoolExhausted, InvalidArgumentError, InvalidStateError, LivelockError,
                      NotFoundError)
from ..policy import Policy
from ..results import (ACCESS_NAMES, FRAME_STATES, VIOLATION_KINDS, AccessResult, BatchResult, Event,
                       Memslot, Violation, WalkResult)
from ..tlbconfig import TLBConfig
from . import cpu, hostmem, memslot as ms, page_walker, tdp_mmu
from .spte import Masks, pages_per_level, spte_index
from .tdp_iter import spte_to_child_frame
from .tlb import TLB, ept_context

U64 = (1 << 64) - 1

#: Deviations of the C engine from the spec that the reference can reproduce on request.
#: None are left. (Fixed in the engine: MMIO SPTEs carrying SHADOW_NONPRESENT_VALUE, i.e.
#: SVE on EPT, so that is_mmio_spte() never matched; the NX-reduced goal passed as
#: req_level, so no table was tracked as a possible NX huge page; a TLB hit that denies the
#: access counted as an L1 hit even when it hit in the L2 TLB.)
KNOWN_C_QUIRKS: Dict[str, str] = {}

#: Counter names, in the order of csrc/stats.def.
STAT_NAMES = (
    "remote_tlb_flush remote_tlb_flush_requests pages_4k pages_2m pages_1g mmu_pages "
    "mmu_shadow_zapped pf_taken pf_fixed pf_fast pf_spurious pf_emulate pf_mmio_spte_created "
    "pf_retry tlb_flush spte_writes spte_changed_l1 spte_changed_l2 spte_changed_l3 "
    "spte_changed_l4 spte_changed_l5 zapped_leaf_l1 zapped_leaf_l2 zapped_leaf_l3 "
    "zapped_nonleaf iter_visited_l1 iter_visited_l2 iter_visited_l3 iter_visited_l4 "
    "iter_visited_l5 iter_yields huge_pages_split huge_pages_recovered nx_lpage_splits "
    "tables_allocated tables_unlinked roots_allocated roots_freed tlb_hits_l1 tlb_hits_l2 "
    "tlb_misses tlb_fills psc_fills psc_hits_l2 psc_hits_l3 psc_hits_l4 psc_hits_l5 walks "
    "walk_refs ad_updates flush_current flush_all flush_guest invept_single invept_global "
    "invvpid tlb_control_flush_asid tlb_control_flush_all asid_new asid_generation_bumps "
    "range_flushes ipis vm_exits vm_entries vcpu_migrations accesses violations "
    "rcu_grace_periods cycles").split()
_GAUGES = ("pages_4k", "pages_2m", "pages_1g", "mmu_pages", "nx_lpage_splits")

#: Cycle costs ([MODEL CHOICE] anchored on calibration.md §1.2).
DEFAULT_COSTS = {"spte_write": 20, "walk_ref": 40, "tlb_hit": 1, "tlb_miss": 10, "flush_current": 1276,
                 "flush_all": 2283, "flush_range_page": 150, "ipi": 6000, "vm_exit": 1000,
                 "vm_entry": 1000, "fault": 2000, "remote_flush": 3000}

#: Event-log operation codes and the number of arguments each records.
EVENT_OPS = ("add_memslot delete_memslot host_unmap host_migrate host_age set_dirty_logging "
             "get_dirty_log write_protect_gfn alloc_root put_root invalidate_all_roots "
             "zap_invalidated_roots zap_all_fast map map_range zap_gfn_range zap_root zap_sp "
             "write_protect_range clear_dirty_range age split_huge_pages recover_huge_pages "
             "recover_nx_huge_pages vcpu_run vcpu_exit vcpu_request access access_batch "
             "flush_remote_tlbs flush_remote_tlbs_range invept invvpid set_tlb_control "
             "synchronize_rcu tlb_fill_junk start_op step_op").split()
EVENT_NARGS = dict(add_memslot=4, delete_memslot=1, host_unmap=2, host_migrate=1, host_age=2,
                   set_dirty_logging=2, get_dirty_log=1, write_protect_gfn=2, alloc_root=2, put_root=1,
                   invalidate_all_roots=0, zap_invalidated_roots=0, zap_all_fast=0, map=3, map_range=4,
                   zap_gfn_range=3, zap_root=2, zap_sp=3, write_protect_range=2, clear_dirty_range=2,
                   age=2, split_huge_pages=3, recover_huge_pages=2, recover_nx_huge_pages=1, vcpu_run=2,
                   vcpu_exit=1, vcpu_request=2, access=3, access_batch=1, flush_remote_tlbs=0,
                   flush_remote_tlbs_range=2, invept=3, invvpid=4, set_tlb_control=2, synchronize_rcu=0,
                   tlb_fill_junk=3, start_op=5, step_op=1)

REQUESTS = {"tlb_flush": cpu.REQ_TLB_FLUSH, "tlb_flush_current": cpu.REQ_TLB_FLUSH_CURRENT,
            "tlb_flush_guest": cpu.REQ_TLB_FLUSH_GUEST,
            "mmu_free_obsolete_roots": cpu.REQ_MMU_FREE_OBSOLETE_ROOTS,
            "load_mmu_pgd": cpu.REQ_LOAD_MMU_PGD}
OPS = {"zap_gfn_range": 1, "host_unmap": 2, "zap_invalidated_roots": 3, "delete_memslot": 4,
       "write_protect_range": 5, "clear_dirty_range": 6, "split_huge_pages": 7, "recover_huge_pages": 8,
       "recover_nx_huge_pages": 9}
_MODES = ("outside_guest", "in_guest", "exiting_guest")
_INVVPID_KINDS = ("individual", "single", "all", "single_retaining_globals")

HOST_SLOT_REGION_OFFSET = 1 << 38   # memslot regions start 256 GiB above the pool base


# ======================================================================== argument helpers
def _int(name: str, v, lo: int = 0, hi: int = U64) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = operator.index(v)
        except TypeError:
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo:#x} and {hi:#x}, got {v}")
    return v


def _access_code(access) -> int:
    if isinstance(access, str) and access in ACCESS_NAMES:
        return ACCESS_NAMES.index(access)
    if isinstance(access, int) and not isinstance(access, bool) and 0 <= access < 4:
        return access
    raise InvalidArgumentError(f"access must be 'r', 'w', 'x' or 'xu', got {access!r}")


# ======================================================================== the VM state
class Kvm:
    """Everything the model knows (struct kvm + the host): what the modules operate on."""

    def __init__(self, cfg: SimpleNamespace, tlbcfg: TLBConfig, policy: Policy, costs: Dict[str, int],
                 quirks: Iterable[str]):
        self.cfg, self.pol, self.costs = cfg, policy, costs
        self.quirks = frozenset(quirks)
        self.masks = Masks.for_ept(cfg.ad) if cfg.arch == "vmx" else Masks.for_npt()
        self.hw = page_walker.HwParams(ept=cfg.arch == "vmx", levels=cfg.levels,
                                       ad=cfg.arch == "svm" or cfg.ad, maxphyaddr=cfg.maxphyaddr,
                                       exec_only=True, mbec=cfg.mbec)
        self.mem = hostmem.HostMem(cfg.hpa_base >> 12, cfg.frame_limit or hostmem.POOL_MAX_FRAMES)
        self.max_gfn = 1 << (cfg.maxphyaddr - 12)    # tdp_mmu_max_gfn_exclusive()
        self.roots: List[tdp_mmu.Root] = []           # oldest first
        self.user_refs: Dict[int, int] = {}           # root id -> references taken by alloc_root()
        self.next_root_id = 1
        self.slots: List[Optional[ms.Memslot]] = []   # by index; None = a free index
        self.host_next_region_pfn = (cfg.hpa_base + HOST_SLOT_REGION_OFFSET) >> 12
        self.memslots_gen = 0
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_start = self.mmu_invalidate_end = 0
        self.nx_list: List[int] = []                  # possible NX huge pages, oldest first
        self.vcpus = [cpu.Vcpu(i, vpid=i + 1) for i in range(cfg.nvcpus)]
        self.pcpus = [cpu.Pcpu(TLB(tlbcfg, (cfg.seed * 0x100000001B3 + p + 1) & U64), cfg.min_asid, cfg.max_asid)
                      for p in range(cfg.npcpus)]
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.violations: List[Violation] = []
        self.events: List[tuple] = []                 # (op name, the five logged words, batch or None)
        self.nblob = 0                                # bytes of access batches logged (9 per access)
        self.cur_event = 0
        self.ops: List["_StepOp"] = []
        self.next_op_id = 0

    # --- small services the modules use ---------------------------------------------------
    def quirk(self, name: str) -> bool:
        return name in self.quirks

    def cost(self, name: str, times: int = 1) -> None:
        self.stats["cycles"] += self.costs[name] * times

    def slot_of(self, gfn: int) -> Optional[ms.Memslot]:
        for s in self.slots:
            if s is not None and s.contains(gfn):
                return s
        return None

    def max_mapping_level(self, slot: ms.Memslot, gfn: int) -> int:
        inv = (self.mmu_invalidate_start, self.mmu_invalidate_end) if self.mmu_invalidate_in_progress else None
        return slot.max_mapping_level(gfn, inv)

    def rcu_quiescent(self, at_yield: bool) -> None:
        """A point where a grace period may end (every top-level operation's end, and --
        with ``rcu_gp_at_yield`` -- a walker's yield)."""
        if not at_yield or self.pol.rcu_gp_at_yield:
            self.mem.synchronize_rcu()
        self.stats["rcu_grace_periods"] = self.mem.grace_periods

    def report(self, kind: int, v: Optional[cpu.Vcpu], gpa: int, tag: int, stale_pfn: Optional[int],
               expected_pfn: Optional[int], access: int, level: int, frame_state: int,
               batch_index: int) -> None:
        self.stats["violations"] += 1
        self.violations.append(Violation(
            kind=VIOLATION_KINDS[kind], vcpu=v.id if v else -1, pcpu=v.pcpu if v else -1, gpa=gpa,
            tag=tag, stale_pfn=stale_pfn, expected_pfn=expected_pfn, event=self.cur_event,
            access=ACCESS_NAMES[access], level=level, frame_state=FRAME_STATES.get(frame_state, "?"),
            batch_index=batch_index))

    # --- operation bracket ------------------------------------------------------------------
    def op_begin(self) -> None:
        self.cur_event = len(self.events)

    def op_end(self) -> None:
        if self.pol.rcu_gp_at_op_end:
            self.mem.synchronize_rcu()
        self.stats["rcu_grace_periods"] = self.mem.grace_periods

    def log(self, op: str, *args: int, batch=None) -> None:
        if self.cfg.record:
            self.events.append((op, tuple(args) + (0,) * (5 - len(args)), batch))
            if batch:
                self.nblob += 9 * len(batch)

    # --- argument checks shared by the API ------------------------------------------------
    def check_gfn(self, what: str, gfn: int) -> None:
        if gfn >= self.max_gfn:
            raise InvalidArgumentError(f"{what} {gfn:#x} is beyond the guest physical address width")

    def check_range(self, start: int, end: int) -> None:
        self.check_gfn("start_gfn", start)
        if end > self.max_gfn:
            raise InvalidArgumentError(f"end_gfn {end:#x} is beyond the guest physical address width")
        if end <= start:
            raise InvalidArgumentError(f"end_gfn {end:#x} must be greater than start_gfn {start:#x}")

    def check_vcpu(self, vcpu: int) -> cpu.Vcpu:
        if not 0 <= vcpu < self.cfg.nvcpus:
            raise InvalidArgumentError(f"vcpu must be between 0 and {self.cfg.nvcpus - 1}, got {vcpu}")
        return self.vcpus[vcpu]

    def check_pcpu(self, pcpu: int) -> cpu.Pcpu:
        if not 0 <= pcpu < self.cfg.npcpus:
            raise InvalidArgumentError(f"pcpu must be between 0 and {self.cfg.npcpus - 1}, got {pcpu}")
        return self.pcpus[pcpu]

    def slot_by_id(self, slot_id: int) -> ms.Memslot:
        for s in self.slots:
            if s is not None and s.id == slot_id:
                return s
        raise NotFoundError(f"memslot {slot_id} does not exist (deleted or never added)")

    def resolve_root(self, root_id: int) -> tdp_mmu.Root:
        """0 means the newest valid root."""
        if root_id == 0:
            for r in reversed(self.roots):
                if not r.invalid:
                    return r
            raise InvalidStateError("no valid root: call vm.mmu.alloc_root() first (or pass root=)")
        r = tdp_mmu.find_root(self, root_id)
        if r is None:
            raise NotFoundError(f"root {root_id} does not exist (it was freed, or never allocated)")
        return r

    # --- memslots and the MMU notifier (§6.1, §6.7) ---------------------------------------
    def free_slot(self, s: ms.Memslot) -> None:
        for pfn in list(s.pool_pages()):
            ms.release_pfn(self.mem, pfn)
        self.slots = [None if x is s else x for x in self.slots]

    def unmap_prepare(self, start: int, end: int) -> None:
        """Record the backing of every backed gfn of the range (cannot fail in Python;
        the C engine pre-allocates here so nothing fails later)."""
        for s in self.slots:
            if s is None or end <= s.base_gfn or s.end_gfn <= start:
                continue
            for g in range(max(start, s.base_gfn), min(end, s.end_gfn)):
                pfn = s.gfn_to_pfn(g)
                if pfn is not None:
                    s.set_backing(g, pfn)

    def notifier_begin(self, start: int, end: int) -> None:
        """kvm_mmu_invalidate_begin()/range_add(): concurrent ranges are unioned."""
        if not self.mmu_invalidate_in_progress:
            self.mmu_invalidate_start, self.mmu_invalidate_end = start, end
        else:
            self.mmu_invalidate_start = min(self.mmu_invalidate_start, start)
            self.mmu_invalidate_end = max(self.mmu_invalidate_end, end)
        self.mmu_invalidate_in_progress += 1

    def notifier_end(self) -> None:
        """kvm_mmu_invalidate_end(): faults that raced with the invalidation retry."""
        self.mmu_invalidate_seq += 1
        self.mmu_invalidate_in_progress -= 1

    def notifier_roots(self) -> int:
        return tdp_mmu.ROOTS_ALL if self.pol.notifier_zaps_invalid_roots else tdp_mmu.ROOTS_VALID

    def unmap_finish(self, start: int, end: int, flush: bool) -> None:
        """The end of invalidate_range_start (flush if a valid root changed, I1), the host
        freeing the pages, and invalidate_range_end."""
        if flush:
            cpu.kvm_flush_remote_tlbs(self)
        for s in self.slots:
            if s is None or end <= s.base_gfn or s.end_gfn <= start:
                continue
            for g in range(max(start, s.base_gfn), min(end, s.end_gfn)):
                pfn = s.gfn_to_pfn(g)
                if pfn is None:
                    continue
                s.set_backing(g, None)
                ms.release_pfn(self.mem, pfn)
        self.notifier_end()


# ======================================================================== stepped operations
@dataclass
class _StepOp:
    id: int
    kind: int
    a: int
    b: int
    c: int
    op: tdp_mmu.Op
    gen: object


# ======================================================================== public objects
class Root:
    """A TDP root; properties read live state (as :class:`tdpfast.vm.Root`)."""

    __slots__ = ("_vm", "id")

    def __init__(self, vm: "VM", root_id: int):
        self._vm = vm
        self.id = root_id

    def _info(self) -> tdp_mmu.Root:
        r = tdp_mmu.find_root(self._vm._k, self.id)
        if r is None:
            raise NotFoundError(f"root {self.id} does not exist (it was freed)")
        return r

    @property
    def hpa(self) -> int:
        return self._vm._k.mem.pfn(self._info().frame) << 12

    @property
    def level(self) -> int:
        return self._info().level

    @property
    def valid(self) -> bool:
        return not self._info().invalid

    @property
    def refcount(self) -> int:
        return self._info().refcount

    @property
    def alive(self) -> bool:
        return tdp_mmu.find_root(self._vm._k, self.id) is not None

    def __eq__(self, other) -> bool:
        return isinstance(other, Root) and other._vm is self._vm and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self._vm), self.id))

    def __repr__(self) -> str:
        if not self.alive:
            return f"Root(id={self.id}, freed)"
        return (f"Root(id={self.id}, hpa={self.hpa:#x}, level={self.level}, valid={self.valid}, "
                f"refcount={self.refcount})")


RootArg = Optional[Union[Root, int]]


class MMU:
    """The TDP MMU of one VM (``vm.mmu``)."""

    def __init__(self, vm: "VM"):
        self._vm = vm

    @property
    def _k(self) -> Kvm:
        return self._vm._k

    def _rid(self, root: RootArg) -> int:
        if root is None:
            return 0
        if isinstance(root, Root):
            if root._vm is not self._vm:
                raise InvalidArgumentError("root belongs to another VM")
            return root.id
        rid = _int("root", root, 0, 0xFFFFFFFF)
        if rid == 0:
            raise NotFoundError("root 0 does not exist")
        return rid

    # --- roots (§3) ---------------------------------------------------------------------------
    def alloc_root(self, *, as_id: int = 0, guest_mode: bool = False) -> Root:
        k = self._k
        as_id = _int("as_id", as_id, 0, 1)
        gm = int(bool(guest_mode))
        k.op_begin()
        root_id = tdp_mmu.get_vcpu_root(k, as_id, gm)
        if root_id is None:
            raise FramePoolExhausted("frame pool exhausted: no frame for a new root")
        k.user_refs[root_id] = k.user_refs.get(root_id, 0) + 1
        k.log("alloc_root", as_id, gm)
        k.op_end()
        return Root(self._vm, root_id)

    @property
    def roots(self) -> List[Root]:
        return [Root(self._vm, r.id) for r in reversed(self._k.roots)]

    def newest_root(self) -> Optional[Root]:
        for r in reversed(self._k.roots):
            if not r.invalid:
                return Root(self._vm, r.id)
        return None

    def put_root(self, root: Union[Root, int]) -> None:
        k = self._k
        rid = self._rid(root)
        k.op_begin()
        if rid == 0:
            raise NotFoundError("root 0 does not exist")
        r = k.resolve_root(rid)
        if k.user_refs.get(rid, 0) <= 0:
            raise InvalidStateError(f"root {rid}: double put: every reference taken with alloc_root() was already put")
        if r.refcount == 1 and not r.invalid and k.pol.root_lifetime == "preserve":
            raise InvalidStateError(f"putting root {rid} would drop the TDP MMU's own reference of a valid "
                                    "root (KVM_BUG_ON): invalidate it first")
        k.user_refs[rid] -= 1
        tdp_mmu.put_root(k, rid, shared=True)
        k.log("put_root", rid)
        k.op_end()

    def invalidate_all_roots(self) -> None:
        k = self._k
        k.op_begin()
        tdp_mmu.invalidate_all_roots(k)
        k.log("invalidate_all_roots")
        k.op_end()

    def zap_invalidated_roots(self) -> None:
        k = self._k
        k.op_begin()
        tdp_mmu.zap_invalidated_roots(k, shared=True)
        k.log("zap_invalidated_roots")
        k.op_end()

    def zap_all_fast(self) -> None:
        k = self._k
        k.op_begin()
        tdp_mmu.kvm_mmu_zap_all_fast(k)
        k.log("zap_all_fast")
        k.op_end()

    # --- mapping (the fault path without a vCPU) ----------------------------------------
    def _map_checks(self, r: tdp_mmu.Root, start: int, end: int, level: int) -> None:
        k = self._k
        span = pages_per_level(level)
        if start & (span - 1):
            raise InvalidArgumentError(f"gfn {start:#x} is not aligned to a level-{level} page")
        if end & (span - 1):
            raise InvalidArgumentError(f"end_gfn {end:#x} is not aligned to a level-{level} page")
        if r.invalid:
            raise InvalidStateError(f"root {r.id} is invalid: faults never map into an invalid root")
        for g in range(start, end, span):
            s = k.slot_of(g)
            if s is not None and s.deleting:
                raise InvalidStateError(f"gfn {g:#x} belongs to memslot {s.id}, which is being deleted")
            if k.mmu_invalidate_in_progress and g < k.mmu_invalidate_end and k.mmu_invalidate_start < g + span:
                raise InvalidStateError("an MMU-notifier invalidation is in progress there: faults retry")
            maxl = k.max_mapping_level(s, g) if s is not None else 1
            if level > maxl:
                raise InvalidArgumentError(f"level {level} is not possible at gfn {g:#x} (at most {maxl})")
        unbacked = 0
        for s in k.slots:
            if s is None or not s.dev or end <= s.base_gfn or s.end_gfn <= start:
                continue
            unbacked += sum(s.gfn_to_pfn(g) is None for g in range(max(start, s.base_gfn), min(end, s.end_gfn)))
        need = tdp_mmu.tables_needed(k, r, start, end, level) + unbacked
        if need > k.mem.available():
            raise FramePoolExhausted(f"frame pool exhausted: mapping needs up to {need} more frames")

    def _map_one(self, r: tdp_mmu.Root, gfn: int, level: int) -> bool:
        k = self._k
        for _ in range(4):
            s = k.slot_of(gfn)
            if s is not None and ms.fault_in_pfn(k.mem, s, gfn) is None:
                raise FramePoolExhausted("frame pool exhausted")
            ret, replaced = tdp_mmu.map_gfn(k, r, gfn, level, False, False, level)
            if ret == tdp_mmu.RET_PF_NOMEM:
                raise FramePoolExhausted("frame pool exhausted")
            if ret != tdp_mmu.RET_PF_RETRY:
                if ret == tdp_mmu.RET_PF_FIXED:
                    k.stats["pf_fixed"] += 1
                return replaced
        raise LivelockError(f"mapping gfn {gfn:#x} kept retrying")

    def _check_level(self, level: int) -> None:
        if not 1 <= level <= 3:
            raise InvalidArgumentError(f"level must be 1 (4K), 2 (2M) or 3 (1G), got {level}")

    def map(self, gfn: int, level: int = 1, root: RootArg = None) -> bool:
        """Map ``gfn`` at ``level`` as the fault path does; True when a huge leaf replaced a
        table."""
        k = self._k
        rid, gfn, level = self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        self._check_level(level)
        r = k.resolve_root(rid)
        self._map_checks(r, gfn, gfn + pages_per_level(level), level)
        replaced = self._map_one(r, gfn, level)
        k.log("map", rid, gfn, level)   # 0: the newest valid root
        k.op_end()
        return replaced

    def map_range(self, start_gfn: int, end_gfn: int, level: int = 1, root: RootArg = None) -> int:
        k = self._k
        rid = self._rid(root)
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        level = _int("level", level, 0, 99)
        k.op_begin()
        k.check_range(start, end)
        self._check_level(level)
        r = k.resolve_root(rid)
        self._map_checks(r, start, end, level)
        n = 0
        for g in range(start, end, pages_per_level(level)):
            self._map_one(r, g, level)
            n += 1
        k.log("map_range", rid, start, end, level)
        k.op_end()
        return n

    # --- zaps and the other writers ------------------------------------------------------
    def _range_op(self, name: str, start_gfn: int, end_gfn: int, body, *extra):
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        k.op_begin()
        k.check_range(start, end)
        result = body(start, end)
        k.log(name, start, end, *extra)
        k.op_end()
        return result

    def zap_gfn_range(self, start_gfn: int, end_gfn: int, shared: bool = False) -> bool:
        """kvm_tdp_mmu_zap_leafs() over the valid roots (§4.2); returns "flush needed"
        (never in shared mode: the atomic zap flushes by itself).  The caller flushes."""
        shared = bool(shared)
        return self._range_op("zap_gfn_range", start_gfn, end_gfn,
                              lambda s, e: tdp_mmu.zap_leafs(self._k, s, e, tdp_mmu.ROOTS_VALID, shared),
                              int(shared))

    def zap_root(self, root: Union[Root, int], shared: bool = False) -> None:
        k = self._k
        rid = self._rid(root)
        k.op_begin()
        if rid == 0:
            raise NotFoundError("root 0 does not exist")
        r = k.resolve_root(rid)
        r.refcount += 1
        tdp_mmu.zap_whole_root(k, r, bool(shared))
        tdp_mmu.put_root(k, rid, bool(shared))
        k.log("zap_root", rid, int(bool(shared)))
        k.op_end()

    def zap_sp(self, gfn: int, level: int, root: RootArg = None) -> bool:
        k = self._k
        rid, gfn, level = self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        r = k.resolve_root(rid)
        if not 1 <= level < r.level:
            raise InvalidArgumentError(f"level must name a non-root table: 1..{r.level - 1}, got {level}")
        f = r.frame
        for l in range(r.level, level, -1):
            f = spte_to_child_frame(k.mem, k.mem.table(f)[spte_index(gfn, l)], l)
            if f is None:
                raise NotFoundError(f"no level-{level} table maps gfn {gfn:#x} in root {r.id}")
        flush = tdp_mmu.tdp_mmu_zap_sp(k, f)
        k.log("zap_sp", r.id, gfn, level)
        k.op_end()
        return flush

    def write_protect_range(self, start_gfn: int, end_gfn: int) -> bool:
        return self._range_op("write_protect_range", start_gfn, end_gfn,
                              lambda s, e: tdp_mmu.write_protect(self._k, s, e, 1))

    def clear_dirty_range(self, start_gfn: int, end_gfn: int) -> bool:
        return self._range_op("clear_dirty_range", start_gfn, end_gfn,
                              lambda s, e: tdp_mmu.clear_dirty(self._k, s, e))

    def age(self, start_gfn: int, end_gfn: int) -> bool:
        return self._range_op("age", start_gfn, end_gfn, lambda s, e: tdp_mmu.age_gfn_range(self._k, s, e))

    def split_huge_pages(self, start_gfn: int, end_gfn: int, target_level: int = 1) -> None:
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        target = _int("target_level", target_level, 0, 99)
        k.op_begin()
        k.check_range(start, end)
        if target not in (1, 2):
            raise InvalidArgumentError(f"target_level must be 1 (4K) or 2 (2M), got {target}")
        need = k.stats["pages_2m"] * (target == 1) + k.stats["pages_1g"] * (513 if target == 1 else 1)
        if need > k.mem.available():
            raise FramePoolExhausted(f"frame pool exhausted: splitting may need {need} frames")
        if tdp_mmu.split_huge_pages(k, start, end, target):
            raise FramePoolExhausted("frame pool exhausted while splitting")   # partial, as KVM's -ENOMEM
        k.log("split_huge_pages", start, end, target)
        k.op_end()

    def recover_huge_pages(self, start_gfn: int, end_gfn: int) -> bool:
        def body(s, e):
            flush, (fs, fe) = tdp_mmu.recover_huge_pages(self._k, s, e)
            if flush:
                cpu.kvm_flush_remote_tlbs_range(self._k, fs, fe - fs)
            return flush
        return self._range_op("recover_huge_pages", start_gfn, end_gfn, body)

    def recover_nx_huge_pages(self, count: int = 0) -> int:
        k = self._k
        count = _int("count", count, 0, 1 << 30)
        k.op_begin()
        zapped = tdp_mmu.recover_nx_huge_pages(k, count)
        k.log("recover_nx_huge_pages", count)
        k.op_end()
        return zapped

    # --- inspection ------------------------------------------------------------------------
    def walk(self, gpa: int, access: str = "r", root: RootArg = None) -> WalkResult:
        """The hardware walk of a root for ``gpa`` (no side effects)."""
        k = self._k
        rid, gpa, acc = self._rid(root), _int("gpa", gpa), _access_code(access)
        if gpa >> k.cfg.maxphyaddr:
            raise InvalidArgumentError(f"gpa {gpa:#x} is beyond the guest physical address width")
        r = k.resolve_root(rid)

        def read(hpa: int) -> int:
            f = k.mem.frame_of(hpa >> 12)
            if f is None or k.mem.frames[f].state not in (hostmem.TABLE, hostmem.RCU):
                return 0
            return k.mem.table(f)[(hpa & 0xFFF) >> 3]

        w = page_walker.walk(read, k.hw, k.mem.pfn(r.frame) << 12, r.level, 15, gpa, acc)
        fault = {page_walker.OK: None, page_walker.VIOLATION: "violation", page_walker.MISCONFIG: "misconfig",
                 page_walker.NPF: "npf"}[w.status]
        return WalkResult(ok=w.status == page_walker.OK, hpa=w.hpa if w.status == page_walker.OK else None,
                          fault=fault, qualification=w.qualification if w.status == page_walker.VIOLATION else None,
                          error_code=w.error_code if w.status == page_walker.NPF else None, level=w.level,
                          refs=w.refs, ad_writes=tuple(w.ad_writes), entries=tuple(w.entries))

    def root_pointer(self, root: RootArg = None) -> int:
        k = self._k
        r = k.resolve_root(self._rid(root))
        if k.cfg.arch == "vmx":
            return cpu.cpu_eptp(k, r.frame)
        return k.mem.pfn(r.frame) << 12

    def tables(self, root: RootArg = None) -> Dict[int, bytes]:
        """Every table of a root, pre-order from the root, as {hpa: 4096 bytes}."""
        k = self._k
        r = k.resolve_root(self._rid(root))
        out: Dict[int, bytes] = {}

        def collect(f: int, level: int) -> None:
            entries = k.mem.table(f)
            out[k.mem.pfn(f) << 12] = struct.pack("<512Q", *entries)
            if level == 1:
                return
            for s in entries:
                c = spte_to_child_frame(k.mem, s, level)
                if c is not None:
                    collect(c, level - 1)

        collect(r.frame, r.level)
        return out

    def spte(self, gfn: int, level: int = 1, root: RootArg = None) -> int:
        k = self._k
        rid, gfn, level = self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99)
        k.check_gfn("gfn", gfn)
        r = k.resolve_root(rid)
        if not 1 <= level <= r.level:
            raise InvalidArgumentError(f"level must be 1..{r.level}, got {level}")
        f = r.frame
        for l in range(r.level, level - 1, -1):
            s = k.mem.table(f)[spte_index(gfn, l)]
            if l == level:
                return s
            f = spte_to_child_frame(k.mem, s, l)
            if f is None:
                raise NotFoundError(f"no level-{level} table on the path to gfn {gfn:#x}")
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def stats(self) -> Dict[str, int]:
        return self._vm.stats


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


# ======================================================================== the VM
class VM:
    """The reference VM: same constructor and methods as :class:`tdpfast.VM` (except
    ``digest``, ``trace`` and ``fuzz``, which describe the C engine's internals), plus
    ``quirks`` -- names from :data:`KNOWN_C_QUIRKS` to reproduce on purpose."""

    def __init__(self, arch: str = "vmx", levels: int = 4, seed: int = 0, *, vcpus: int = 1, pcpus: int = 1,
                 tlb: Optional[TLBConfig] = None, policy: Optional[Policy] = None, ad: bool = True,
                 mbec: bool = False, maxphyaddr: int = 46, hpa_base: int = 1 << 30,
                 frame_limit: Optional[int] = None, max_asid: int = 32767, min_asid: int = 1,
                 flush_by_asid: bool = True, trace: bool = False, record: bool = True,
                 costs: Optional[Dict[str, int]] = None, quirks: Iterable[str] = ()):
        if arch not in ("vmx", "svm"):
            raise InvalidArgumentError(f"arch must be 'vmx' or 'svm', got {arch!r}")
        tlb = TLBConfig.adversarial() if tlb is None else tlb
        policy = Policy.kvm() if policy is None else policy
        if not isinstance(tlb, TLBConfig):
            raise InvalidArgumentError(f"tlb must be a TLBConfig, got {type(tlb).__name__}")
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        quirks = tuple(quirks)
        for q in quirks:
            if q not in KNOWN_C_QUIRKS:
                raise InvalidArgumentError(f"unknown quirk {q!r}; quirks: {', '.join(KNOWN_C_QUIRKS)}")
        self._kwargs = dict(arch=arch, levels=levels, seed=seed, vcpus=vcpus, pcpus=pcpus, tlb=tlb,
                            policy=policy, ad=ad, mbec=mbec, maxphyaddr=maxphyaddr, hpa_base=hpa_base,
                            frame_limit=frame_limit, max_asid=max_asid, min_asid=min_asid,
                            flush_by_asid=flush_by_asid, trace=trace, record=record, costs=costs, quirks=quirks)
        cfg = SimpleNamespace(
            arch=arch, levels=_int("levels", levels, 0, 99), seed=_int("seed", seed),
            nvcpus=_int("vcpus", vcpus, 0, 1 << 20), npcpus=_int("pcpus", pcpus, 0, 1 << 20), ad=bool(ad),
            mbec=bool(mbec), maxphyaddr=_int("maxphyaddr", maxphyaddr, 0, 64), hpa_base=_int("hpa_base", hpa_base),
            frame_limit=0 if frame_limit is None else _int("frame_limit", frame_limit, 1, 1 << 26),
            max_asid=_int("max_asid", max_asid, 0, 0xFFFFFF), min_asid=_int("min_asid", min_asid, 0, 0xFFFFFF),
            flush_by_asid=bool(flush_by_asid), record=bool(record))
        all_costs = dict(DEFAULT_COSTS)
        for k, v in (costs or {}).items():
            if k not in all_costs:
                raise InvalidArgumentError(f"unknown cost {k!r}; costs: {', '.join(all_costs)}")
            all_costs[k] = _int(f"costs[{k}]", v)
        self._check_config(cfg, tlb, policy)
        self._k = Kvm(cfg, tlb, policy, all_costs, quirks)
        for p in range(cfg.npcpus):
            if tlb.junk:
                cpu.fill_junk(self._k, p, tlb.junk, 1 << 20)
        self.arch, self.levels, self.nvcpus, self.npcpus = arch, levels, vcpus, pcpus
        self.tlb_config = tlb
        self.mmu = MMU(self)

    @staticmethod
    def _check_config(cfg, tlb: TLBConfig, policy: Policy) -> None:
        """tdp_vm_create()'s checks."""
        if cfg.levels not in (4, 5):
            raise InvalidArgumentError(f"levels must be 4 or 5, got {cfg.levels}")
        if not 36 <= cfg.maxphyaddr <= 52:
            raise InvalidArgumentError(f"maxphyaddr must be between 36 and 52, got {cfg.maxphyaddr}")
        if cfg.levels == 4 and cfg.maxphyaddr > 48:
            raise InvalidArgumentError(f"maxphyaddr={cfg.maxphyaddr} needs levels=5")
        if not 1 <= cfg.nvcpus <= 4096 or not 1 <= cfg.npcpus <= 4096:
            raise InvalidArgumentError("vcpus and pcpus must be between 1 and 4096")
        if cfg.hpa_base & 0xFFF:
            raise InvalidArgumentError(f"hpa_base must be 4 KiB aligned, got {cfg.hpa_base:#x}")
        if cfg.hpa_base + HOST_SLOT_REGION_OFFSET + (1 << 30) > 1 << cfg.maxphyaddr:
            raise InvalidArgumentError("hpa_base leaves no room below MAXPHYADDR for guest memory")
        if cfg.arch == "svm" and not 1 <= cfg.min_asid <= cfg.max_asid <= 0xFFFFFF:
            raise InvalidArgumentError(f"asids: need 1 <= min_asid <= max_asid (got {cfg.min_asid}..{cfg.max_asid})")
        if tlb.mode not in ("setassoc", "adversarial") or tlb.replacement not in ("lru", "plru", "random"):
            raise InvalidArgumentError("tlb mode must be setassoc/adversarial, replacement lru/plru/random")
        for name in ("l1_4k", "l1_2m", "l1_1g", "l2", "l2_1g", "psc_pde", "psc_pdpte", "psc_pml4e", "psc_pml5e"):
            sets, ways = getattr(tlb, name)
            if not (0 <= sets <= 1 << 20 and 0 <= ways <= 128) or (sets > 0) != (ways > 0):
                raise InvalidArgumentError(f"tlb.{name}: sets must be 0..1048576 and ways 1..128")

    # --- configuration ---------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._k.pol

    @policy.setter
    def policy(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        self._k.pol = policy

    @property
    def quirks(self) -> frozenset:
        return self._k.quirks

    def fresh(self, **changes) -> "VM":
        kw = dict(self._kwargs)
        kw.update(changes)
        return VM(**kw)

    # --- memslots and host events (§6.1, §6.7) ---------------------------------------------
    def add_memslot(self, base_gfn: int, npages: int, *, readonly: bool = False, dirty_log: bool = False,
                    max_level: int = 3) -> Memslot:
        k = self._k
        base, npages = _int("base_gfn", base_gfn), _int("npages", npages)
        max_level = _int("max_level", max_level, 0, 99)
        flags = (ms.READONLY if readonly else 0) | (ms.DIRTY_LOG if dirty_log else 0)
        k.op_begin()
        if npages == 0:
            raise InvalidArgumentError("npages must be positive")
        k.check_range(base, base + npages)
        if not 1 <= max_level <= 3:
            raise InvalidArgumentError(f"max_level must be 1 (4K), 2 (2M) or 3 (1G), got {max_level}")
        for s in k.slots:
            if s is not None and base < s.end_gfn and s.base_gfn < base + npages:
                raise InvalidArgumentError(f"gfns {base:#x}..{base + npages:#x} overlap memslot {s.id}")
        # A 1 GiB-aligned host region with host pfn == gfn modulo 1 GiB.
        align = 1 << 18
        region = (k.host_next_region_pfn + align - 1) & ~(align - 1)
        host_base = region + (base & (align - 1))
        if host_base + npages > 1 << (k.cfg.maxphyaddr - 12):
            raise FramePoolExhausted("host physical address space exhausted")
        slot_id = max((s.id + 1 for s in k.slots if s is not None), default=0)
        slot = ms.Memslot(slot_id, base, npages, flags, max_level, host_base,
                          dirty=set() if flags & ms.DIRTY_LOG else None)
        if None in k.slots:
            k.slots[k.slots.index(None)] = slot
        else:
            k.slots.append(slot)
        k.host_next_region_pfn = host_base + npages
        k.memslots_gen += 1
        k.log("add_memslot", base, npages, flags, max_level)
        k.op_end()
        return self.memslot(slot_id)

    def memslot(self, slot_id: int) -> Memslot:
        s = self._k.slot_by_id(_int("slot", slot_id, 0, 1 << 30))
        return Memslot(s.id, s.base_gfn, s.npages, s.readonly, s.dirty_log, s.max_level, s.host_base_pfn)

    @property
    def memslots(self) -> List[Memslot]:
        return [self.memslot(s.id) for s in self._k.slots if s is not None]

    def _slot_id(self, slot: Union[Memslot, int]) -> int:
        return slot.id if isinstance(slot, Memslot) else _int("slot", slot, 0, 1 << 30)

    def delete_memslot(self, slot: Union[Memslot, int]) -> None:
        """kvm_arch_flush_shadow_memslot() (§3.6): the fast zap of everything -- or, with
        ``memslot_delete_zap_all=False``, only the slot's gfns with a flush (B18)."""
        k = self._k
        sid = self._slot_id(slot)
        k.op_begin()
        s = k.slot_by_id(sid)
        if s.deleting:
            raise InvalidStateError(f"memslot {sid} is already being deleted by a stepped operation")
        if k.pol.memslot_delete_zap_all:
            tdp_mmu.kvm_mmu_zap_all_fast(k)
        elif tdp_mmu.zap_leafs(k, s.base_gfn, s.end_gfn, tdp_mmu.ROOTS_ALL, False):
            cpu.kvm_flush_remote_tlbs_range(k, s.base_gfn, s.npages)
        k.free_slot(s)
        k.memslots_gen += 1
        k.log("delete_memslot", sid)
        k.op_end()

    def backing(self, gfn: int) -> Optional[int]:
        s = self._k.slot_of(_int("gfn", gfn))
        return s.gfn_to_pfn(gfn) if s is not None else None

    def host_unmap(self, start_gfn: int, end_gfn: int) -> None:
        """MMU-notifier invalidation (§6.1): zap every root's leaves in the range, flush
        before returning if a valid root changed, then the host frees the pages."""
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        k.op_begin()
        k.check_range(start, end)
        k.unmap_prepare(start, end)
        k.notifier_begin(start, end)
        flush = tdp_mmu.zap_leafs(k, start, end, k.notifier_roots(), False)
        k.unmap_finish(start, end, flush)
        k.log("host_unmap", start, end)
        k.op_end()

    def host_migrate(self, gfn: int) -> int:
        """Page migration: invalidate the gfn, move its page to a fresh pool frame."""
        k = self._k
        gfn = _int("gfn", gfn)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        s = k.slot_of(gfn)
        if s is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} is not in any memslot")
        old = s.gfn_to_pfn(gfn)
        if old is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} has no backing page to migrate")
        if k.mem.available() < 1:
            raise FramePoolExhausted(f"frame pool exhausted: no frame to migrate gfn {gfn:#x} to")
        s.set_backing(gfn, old)
        k.notifier_begin(gfn, gfn + 1)
        if tdp_mmu.zap_leafs(k, gfn, gfn + 1, k.notifier_roots(), False):
            cpu.kvm_flush_remote_tlbs(k)
        f = k.mem.alloc(hostmem.GUEST)
        k.mem.frames[f].owner_gfn = gfn
        s.set_backing(gfn, k.mem.pfn(f))
        ms.release_pfn(k.mem, old)
        k.notifier_end()
        k.log("host_migrate", gfn)
        k.op_end()
        return k.mem.pfn(f)

    def host_age(self, start_gfn: int, end_gfn: int) -> bool:
        """clear_flush_young: no flush on x86 (~v6.13, §6.1)."""
        k = self._k
        start, end = _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)
        k.op_begin()
        k.check_range(start, end)
        young = tdp_mmu.age_gfn_range(k, start, end)
        k.log("host_age", start, end)
        k.op_end()
        return young

    def set_dirty_logging(self, slot: Union[Memslot, int], enable: bool = True) -> None:
        """kvm_mmu_slot_apply_flags() (§6.2): enable = eager split (no flush),
        write-protect, then the memslot flush -- always since b64d740ea7dd (B14 flushes only
        if an SPTE changed); disable = recover huge pages, flushing if any changed."""
        k = self._k
        sid = self._slot_id(slot)
        enable = bool(enable)
        k.op_begin()
        s = k.slot_by_id(sid)
        if s.deleting:
            raise InvalidStateError(f"memslot {sid} is being deleted")
        if enable and not s.dirty_log:
            if k.pol.eager_split:
                need = (s.npages + 511) // 512 + 2
                avail = k.mem.available()
                if avail < need * max(len(k.roots), 1) and \
                        avail < k.stats["pages_2m"] + 512 * k.stats["pages_1g"] + 1:
                    raise FramePoolExhausted("frame pool exhausted: eager splitting needs more frames")
            s.dirty = set()
            s.flags |= ms.DIRTY_LOG
            if k.pol.eager_split:
                tdp_mmu.split_huge_pages(k, s.base_gfn, s.end_gfn, 1)
            changed = tdp_mmu.write_protect(k, s.base_gfn, s.end_gfn, 1)
            if k.pol.dirty_log_enable_flush == "always" or changed:
                cpu.kvm_flush_remote_tlbs_range(k, s.base_gfn, s.npages)
        elif not enable and s.dirty_log:
            s.flags &= ~ms.DIRTY_LOG
            s.dirty = None
            flush, (fs, fe) = tdp_mmu.recover_huge_pages(k, s.base_gfn, s.end_gfn)
            if flush:
                lo, hi = min(fs, s.base_gfn), max(fe, s.end_gfn)
                cpu.kvm_flush_remote_tlbs_range(k, lo, hi - lo)
        k.log("set_dirty_logging", sid, int(enable))
        k.op_end()

    def get_dirty_log(self, slot: Union[Memslot, int]) -> List[int]:
        """KVM_GET_DIRTY_LOG (§6.2): fetch-and-clear, re-protect each dirty page, flush the
        memslot if any was dirty -- before the bitmap is reported (I6)."""
        k = self._k
        sid = self._slot_id(slot)
        self.memslot(sid)
        k.op_begin()
        s = k.slot_by_id(sid)
        if not s.dirty_log:
            raise InvalidStateError(f"memslot {sid} does not have dirty logging enabled")
        dirty = sorted(s.dirty)
        s.dirty = set()
        for g in dirty:
            tdp_mmu.write_protect(k, g, g + 1, 1)
        if dirty:
            cpu.kvm_flush_remote_tlbs_range(k, s.base_gfn, s.npages)
        k.log("get_dirty_log", sid)
        k.op_end()
        return dirty

    def write_protect_gfn(self, gfn: int, enable: bool = True) -> None:
        """KVM's gfn write tracking (kvm_write_track_add_gfn): write-protect, flush if an
        SPTE changed; or release the gfn."""
        k = self._k
        gfn = _int("gfn", gfn)
        enable = bool(enable)
        k.op_begin()
        k.check_gfn("gfn", gfn)
        s = k.slot_of(gfn)
        if s is None:
            raise InvalidArgumentError(f"gfn {gfn:#x} is not in any memslot")
        if enable:
            s.wrtrack.add(gfn)
            if tdp_mmu.write_protect_gfn(k, gfn):
                cpu.kvm_flush_remote_tlbs(k)
        else:
            s.wrtrack.discard(gfn)
        k.log("write_protect_gfn", gfn, int(enable))
        k.op_end()

    # --- vCPUs (§5) -------------------------------------------------------------------------
    def vcpu_run(self, vcpu: int, pcpu: int) -> None:
        k = self._k
        vcpu, pcpu = _int("vcpu", vcpu, 0, 1 << 20), _int("pcpu", pcpu, 0, 1 << 20)
        k.op_begin()
        v = k.check_vcpu(vcpu)
        k.check_pcpu(pcpu)
        r = tdp_mmu.find_root(k, v.root_id)
        if (not v.root_id or (r is not None and r.invalid)) and k.mem.available() < 1:
            raise FramePoolExhausted(f"frame pool exhausted: no frame for vcpu {vcpu}'s root")
        cpu.vcpu_run(k, v, pcpu)
        k.log("vcpu_run", vcpu, pcpu)
        k.op_end()

    def vcpu_exit(self, vcpu: int) -> None:
        k = self._k
        vcpu = _int("vcpu", vcpu, 0, 1 << 20)
        k.op_begin()
        cpu.vcpu_exit(k, k.check_vcpu(vcpu))
        k.log("vcpu_exit", vcpu)
        k.op_end()

    def vcpu_request(self, vcpu: int, *requests: str) -> None:
        """kvm_make_request() + kick (the vCPU leaves guest mode)."""
        k = self._k
        bits = 0
        for r in requests:
            if r not in REQUESTS:
                raise InvalidArgumentError(f"unknown request {r!r}; requests: {', '.join(REQUESTS)}")
            bits |= REQUESTS[r]
        vcpu = _int("vcpu", vcpu, 0, 1 << 20)
        k.op_begin()
        v = k.check_vcpu(vcpu)
        v.requests |= bits
        if v.mode == cpu.IN_GUEST:
            v.mode = cpu.EXITING_GUEST
            k.stats["ipis"] += 1
            k.stats["vm_exits"] += 1
            k.cost("ipi")
            k.cost("vm_exit")
        k.log("vcpu_request", vcpu, bits)
        k.op_end()

    def vcpu_info(self, vcpu: int) -> dict:
        k = self._k
        v = k.check_vcpu(_int("vcpu", vcpu, 0, 1 << 20))
        return {"mode": _MODES[v.mode], "pcpu": None if v.pcpu < 0 else v.pcpu,
                "last_pcpu": None if v.vmcs_cpu < 0 else v.vmcs_cpu, "root": v.root_id or None,
                "requests": [n for n, b in REQUESTS.items() if v.requests & b], "asid": v.asid,
                "asid_generation": v.asid_generation, "vpid": v.vpid, "tlb_control": v.tlb_control}

    def pcpu_info(self, pcpu: int) -> dict:
        k = self._k
        p = k.check_pcpu(_int("pcpu", pcpu, 0, 1 << 20))
        return {"vcpu": None if p.vcpu < 0 else p.vcpu, "asid_generation": p.asid_generation,
                "next_asid": p.next_asid, "min_asid": p.min_asid, "max_asid": p.max_asid,
                "tlb_entries": len(p.tlb.tlb_entries()), "psc_entries": len(p.tlb.psc_entries())}

    def _check_access_args(self, vcpu: int, access: int) -> cpu.Vcpu:
        k = self._k
        v = k.check_vcpu(vcpu)
        if v.mode == cpu.OUTSIDE_GUEST:
            raise InvalidStateError(f"vcpu {vcpu} is not in guest mode: call vcpu_run({vcpu}, pcpu) first")
        if k.mem.available() < k.cfg.levels + 1:
            raise FramePoolExhausted(f"frame pool exhausted: a fault could need {k.cfg.levels + 1} frames")
        return v

    def _access_result(self, o: cpu.AccessOut) -> AccessResult:
        return AccessResult(outcome=("ok", "mmio", "livelock", "blocked")[o.outcome],
                            hpa=o.hpa if o.outcome == cpu.OUT_OK else None,
                            tlb={0: None, 1: "l1", 2: "l2"}[o.tlb_hit], faults=o.faults,
                            walk_refs=o.walk_refs,
                            violation=self._k.violations[o.violation - 1] if o.violation else None)

    def access(self, vcpu: int, gpa: int, access: str = "r") -> AccessResult:
        """One guest access: TLB, walk, fault path, and the checker."""
        k = self._k
        vcpu, gpa, acc = _int("vcpu", vcpu, 0, 1 << 20), _int("gpa", gpa), _access_code(access)
        k.op_begin()
        v = self._check_access_args(vcpu, acc)
        if gpa >> k.cfg.maxphyaddr:
            raise InvalidArgumentError(f"gpa {gpa:#x} is beyond the guest physical address width")
        out = cpu.access(k, v, gpa, acc)
        k.log("access", vcpu, gpa, acc)
        k.op_end()
        return self._access_result(out)

    def access_batch(self, vcpu: int, gpas: Sequence[int], access: Union[str, Sequence] = "r", *,
                     per_access: bool = False) -> BatchResult:
        """Many accesses; one event.  The batch stops (without an error) before an access
        that might need more frames than are left; an error in the middle stops it with
        what ran done and logged, then raises (as the C engine does)."""
        k = self._k
        try:
            g = [_int("gpas", x) for x in gpas]
        except InvalidArgumentError:
            raise InvalidArgumentError("gpas must be a 1-D buffer or sequence of unsigned 64-bit integers") from None
        default, accs = 0, None
        if isinstance(access, str):
            default = _access_code(access)
        else:
            accs = [_access_code(a) for a in access]
            if len(accs) != len(g):
                raise InvalidArgumentError(f"access has {len(accs)} kinds for {len(g)} gpas")
        vcpu = _int("vcpu", vcpu, 0, 1 << 20)
        k.op_begin()
        v = self._check_access_args(vcpu, default)
        for i, gpa in enumerate(g):
            if gpa >> k.cfg.maxphyaddr:
                raise InvalidArgumentError(f"gpas[{i}] = {gpa:#x} is beyond the guest physical address width")
        counts = [0] * 9   # ok, mmio, livelock, blocked, walked, l1, l2, faults, violations
        per: List[cpu.AccessOut] = []
        error: Optional[Exception] = None
        stopped: Optional[str] = None
        for i, gpa in enumerate(g):
            acc = accs[i] if accs is not None else default
            if k.mem.available() < k.cfg.levels + 1:
                stopped = f"frame pool exhausted: the batch stopped after {i} of {len(g)} accesses"
                break
            try:
                o = cpu.access(k, v, gpa, acc, i)
            except FramePoolExhausted as e:
                error = e
                break
            per.append(o)
            counts[o.outcome] += 1
            counts[4 + o.tlb_hit] += 1
            counts[7] += o.faults
            counts[8] += o.violation != 0
        if per:
            k.log("access_batch", vcpu, k.nblob, len(per),
                  batch=tuple((g[i], ACCESS_NAMES[accs[i] if accs is not None else default]) for i in range(len(per))))
        k.op_end()
        if error is not None:
            raise error
        cols = None
        if per_access and per:
            cols = {"outcome": [o.outcome for o in per], "hpa": [o.hpa for o in per],
                    "tlb": [o.tlb_hit for o in per], "faults": [o.faults for o in per],
                    "violation": [o.violation for o in per]}
        return BatchResult(accesses=len(per), ok=counts[0], mmio=counts[1], livelock=counts[2], blocked=counts[3],
                           walked=counts[4], l1_hits=counts[5], l2_hits=counts[6], faults=counts[7],
                           violations=counts[8], per_access=cols, requested=len(g), stopped=stopped)

    # --- flushes ---------------------------------------------------------------------------
    def flush_remote_tlbs(self) -> None:
        k = self._k
        k.op_begin()
        cpu.kvm_flush_remote_tlbs(k)
        k.log("flush_remote_tlbs")
        k.op_end()

    def flush_remote_tlbs_range(self, gfn: int, npages: int) -> None:
        k = self._k
        gfn, npages = _int("gfn", gfn), _int("npages", npages)
        k.op_begin()
        k.check_range(gfn, gfn + npages)
        cpu.kvm_flush_remote_tlbs_range(k, gfn, npages)
        k.log("flush_remote_tlbs_range", gfn, npages)
        k.op_end()

    def invept(self, pcpu: int, kind: str = "single", eptp: Optional[int] = None) -> None:
        """INVEPT on one pCPU (XT §3.2): single-context drops one EP4TA's mappings, global
        all of them."""
        k = self._k
        t = {"single": 1, "global": 2}.get(kind)
        if t is None:
            raise InvalidArgumentError(f"INVEPT kind must be 'single' or 'global', got {kind!r}")
        if t == 1 and eptp is None:
            raise InvalidArgumentError("INVEPT single-context needs eptp=")
        pcpu, eptp = _int("pcpu", pcpu, 0, 1 << 20), _int("eptp", eptp or 0)
        k.op_begin()
        if k.cfg.arch != "vmx":
            raise InvalidStateError("INVEPT exists on VMX only (this VM is svm)")
        p = k.check_pcpu(pcpu)
        if t == 1:
            # The EPTP must pass the VM-entry checks (XT §1.1).
            mt, pwl = eptp & 7, (eptp >> 3) & 7
            if mt not in (0, 6) or pwl != k.cfg.levels - 1 or eptp & 0xF00 or eptp >> k.cfg.maxphyaddr:
                raise InvalidArgumentError(f"INVEPT single-context: eptp {eptp:#x} fails the VM-entry checks")
            p.tlb.flush_ctx(ept_context((eptp & ((1 << 52) - 1)) >> 12))
            k.stats["invept_single"] += 1
        else:
            p.tlb.flush_all()
            k.stats["invept_global"] += 1
        k.log("invept", pcpu, t, eptp)
        k.op_end()

    def invvpid(self, pcpu: int, kind: str, vpid: int, gla: int = 0) -> None:
        """INVVPID never drops guest-physical mappings (XT §3.2): only counted."""
        k = self._k
        if kind not in _INVVPID_KINDS:
            raise InvalidArgumentError(f"INVVPID kind must be one of {_INVVPID_KINDS}, got {kind!r}")
        t = _INVVPID_KINDS.index(kind)
        pcpu, vpid, gla = _int("pcpu", pcpu, 0, 1 << 20), _int("vpid", vpid, 0, 0xFFFFFFFF), _int("gla", gla)
        k.op_begin()
        if k.cfg.arch != "vmx":
            raise InvalidStateError("INVVPID exists on VMX only (this VM is svm)")
        k.check_pcpu(pcpu)
        if vpid > 0xFFFF:
            raise InvalidArgumentError(f"vpid must fit in 16 bits, got {vpid}")
        if vpid == 0 and t != 2:
            raise InvalidArgumentError(f"INVVPID type {t} with vpid 0 fails (VMfailValid)")
        if t == 0:
            canon = gla & ((1 << 48) - 1)
            if canon & (1 << 47):
                canon |= U64 & ~((1 << 48) - 1)
            if canon != gla:
                raise InvalidArgumentError(f"INVVPID individual-address: gla {gla:#x} is not canonical")
        k.stats["invvpid"] += 1
        k.log("invvpid", pcpu, t, vpid, gla)
        k.op_end()

    def set_tlb_control(self, vcpu: int, value: int) -> None:
        k = self._k
        vcpu, value = _int("vcpu", vcpu, 0, 1 << 20), _int("value", value, 0, 255)
        k.op_begin()
        if k.cfg.arch != "svm":
            raise InvalidStateError("TLB_CONTROL exists on SVM only (this VM is vmx)")
        v = k.check_vcpu(vcpu)
        if value not in (0, 1, 3, 7):
            raise InvalidArgumentError(f"TLB_CONTROL must be 0, 1, 3 or 7, got {value}")
        v.tlb_control = value
        k.log("set_tlb_control", vcpu, value)
        k.op_end()

    def tlb_entries(self, pcpu: int) -> List[dict]:
        return self._k.check_pcpu(_int("pcpu", pcpu, 0, 1 << 20)).tlb.dump()

    def tlb_fill_junk(self, pcpu: int, count: int, max_gfn: int = 1 << 20) -> None:
        k = self._k
        pcpu, count = _int("pcpu", pcpu, 0, 1 << 20), _int("count", count, 0, 1 << 24)
        max_gfn = _int("max_gfn", max_gfn)
        k.op_begin()
        k.check_pcpu(pcpu)
        if not 1 <= max_gfn <= k.max_gfn:
            raise InvalidArgumentError(f"max_gfn must be 1..{k.max_gfn:#x}")
        cpu.fill_junk(k, pcpu, count, max_gfn)
        k.log("tlb_fill_junk", pcpu, count, max_gfn)
        k.op_end()

    def synchronize_rcu(self) -> None:
        """A grace period ends: tables freed with call_rcu() return to the pool (LIFO)."""
        k = self._k
        k.op_begin()
        k.mem.synchronize_rcu()
        k.stats["rcu_grace_periods"] = k.mem.grace_periods
        k.log("synchronize_rcu")

    # --- stepped operations ------------------------------------------------------------------
    def start_op(self, name: str, *args: int, yield_every: int = 16) -> Op:
        """Start a long operation that stops at each yield point (where KVM drops mmu_lock
        and leaves RCU) -- see :meth:`tdpfast.VM.start_op`."""
        k = self._k
        if name not in OPS:
            raise InvalidArgumentError(f"unknown operation {name!r}; operations: {', '.join(OPS)}")
        vals = [a.id if isinstance(a, (Memslot, Root)) else _int(f"{name} argument", a) for a in args]
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
                k.unmap_prepare(a, b)
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
        T = tdp_mmu
        if kind == 1:
            op = T.new_op(k, T.ZAP_LEAFS, T.ROOTS_VALID, a, b, c != 0)
        elif kind == 2:
            k.notifier_begin(a, b)
            op = T.new_op(k, T.ZAP_LEAFS, k.notifier_roots(), a, b, False)
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
        else:
            op = T.new_op(k, T.NX_RECOVER, T.ROOTS_ALL, 0, 0, False)
            op.nx_left = T.nx_recovery_count(k, a)
        op.yield_every = yield_every
        k.next_op_id += 1
        k.ops.append(_StepOp(k.next_op_id, kind, a, b, c, op, T.run_op(k, op)))
        k.log("start_op", kind, a, b, c, yield_every | k.next_op_id << 32)
        k.op_end()
        return Op(self, k.next_op_id, name)

    @property
    def ops(self) -> List[Op]:
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
            k.unmap_finish(o.a, o.b, flush)
            return int(flush)
        if o.kind == 4:
            s = next((s for s in k.slots if s is not None and s.id == o.a), None)
            if not k.pol.memslot_delete_zap_all and flush and s is not None:
                cpu.kvm_flush_remote_tlbs_range(k, s.base_gfn, s.npages)
            if s is not None:
                k.free_slot(s)
            k.memslots_gen += 1
            return 0
        if o.kind in (5, 6):
            # As their callers do: flush the range if an SPTE lost W or D.
            if op.result:
                cpu.kvm_flush_remote_tlbs_range(k, o.a, o.b - o.a)
            return int(op.result)
        if o.kind == 8:
            if flush:
                fs, fe = tdp_mmu.recover_flush_range(op, o.a, o.b)
                cpu.kvm_flush_remote_tlbs_range(k, fs, fe - fs)
            return int(flush)
        if o.kind == 9:
            return op.nx_done
        return 0

    # --- results -----------------------------------------------------------------------------
    @property
    def violations(self) -> List[Violation]:
        return list(self._k.violations)

    @property
    def stats(self) -> Dict[str, int]:
        return dict(self._k.stats)

    def reset_stats(self) -> None:
        k = self._k
        keep = {n: k.stats[n] for n in _GAUGES}
        k.stats = dict.fromkeys(STAT_NAMES, 0)
        k.stats.update(keep)
        k.mem.grace_periods = 0

    def frames(self) -> dict:
        return self._k.mem.info()

    @property
    def events(self) -> List[Event]:
        out = []
        for i, (op, raw, batch) in enumerate(self._k.events):
            args = raw[:EVENT_NARGS[op]]
            if op == "start_op":   # (kind, a, b, c, yield_every, op id)
                args = raw[:4] + (raw[4] & 0xFFFFFFFF, raw[4] >> 32)
            out.append(Event(i, op, args, batch, raw))
        return out

    def event_log(self) -> bytes:
        """The event log as bytes: per event ``<B5Q`` (op code, five arguments), then an
        access batch's (gpa, access) pairs as ``<QB`` -- byte-identical to tdpfast.VM's."""
        parts = []
        for op, raw, batch in self._k.events:
            parts.append(struct.pack("<B5Q", EVENT_OPS.index(op) + 1, *raw))
            if batch:
                parts.append(b"".join(struct.pack("<QB", g, ACCESS_NAMES.index(a)) for g, a in batch))
        return b"".join(parts)

    def replay(self, events: Iterable[Event]) -> None:
        for e in events:
            _replay_one(self, e)

    def replay_fast(self, events: Sequence[Event], *, stop_at_violation: bool = True) -> int:
        """Apply events (no access batches); events that fail are skipped, and stepped
        operations are matched to the ones the original run started.  Returns how many
        applied (tdpfast.VM.replay_fast does the same in one C call)."""
        evs = list(events)
        if any(e.op == "access_batch" for e in evs):
            raise InvalidArgumentError("replay_fast cannot replay access batches; use replay()")
        op_ids: Dict[int, int] = {}
        applied = 0
        for e in evs:
            raw = tuple(e.raw)
            try:
                if e.op == "start_op":
                    name = {v: n for n, v in OPS.items()}.get(raw[0])
                    if name is None:
                        raise InvalidArgumentError(f"unknown operation kind {raw[0]}")
                    op = self.start_op(name, raw[1], raw[2], raw[3], yield_every=raw[4] & 0xFFFFFFFF)
                    op_ids[raw[4] >> 32] = op.id
                elif e.op == "step_op":
                    if raw[0] not in op_ids:
                        raise NotFoundError(f"operation {raw[0]} was not started in this replay")
                    Op(self, op_ids[raw[0]], "?").step()
                else:
                    _replay_one(self, e)
                applied += 1
            except (InvalidArgumentError, InvalidStateError, NotFoundError, FramePoolExhausted, LivelockError):
                pass
            if stop_at_violation and self._k.violations:
                break
        return applied

    def __repr__(self) -> str:
        return (f"reference.VM(arch={self.arch!r}, levels={self.levels}, vcpus={self.nvcpus}, "
                f"pcpus={self.npcpus}, roots={len(self.mmu.roots)}, memslots={len(self.memslots)})")


def _replay_one(vm: VM, e: Event) -> None:
    a, op, m = e.args, e.op, vm.mmu
    calls = {
        "add_memslot": lambda: vm.add_memslot(a[0], a[1], readonly=bool(a[2] & 1), dirty_log=bool(a[2] & 2),
                                              max_level=a[3]),
        "delete_memslot": lambda: vm.delete_memslot(a[0]),
        "host_unmap": lambda: vm.host_unmap(a[0], a[1]),
        "host_migrate": lambda: vm.host_migrate(a[0]),
        "host_age": lambda: vm.host_age(a[0], a[1]),
        "set_dirty_logging": lambda: vm.set_dirty_logging(a[0], bool(a[1])),
        "get_dirty_log": lambda: vm.get_dirty_log(a[0]),
        "write_protect_gfn": lambda: vm.write_protect_gfn(a[0], bool(a[1])),
        "alloc_root": lambda: m.alloc_root(as_id=a[0], guest_mode=bool(a[1])),
        "put_root": lambda: m.put_root(a[0]),
        "invalidate_all_roots": m.invalidate_all_roots,
        "zap_invalidated_roots": m.zap_invalidated_roots,
        "zap_all_fast": m.zap_all_fast,
        "map": lambda: m.map(a[1], a[2], root=a[0] or None),
        "map_range": lambda: m.map_range(a[1], a[2], a[3], root=a[0] or None),
        "zap_gfn_range": lambda: m.zap_gfn_range(a[0], a[1], shared=bool(a[2])),
        "zap_root": lambda: m.zap_root(a[0], shared=bool(a[1])),
        "zap_sp": lambda: m.zap_sp(a[1], a[2], root=a[0]),
        "write_protect_range": lambda: m.write_protect_range(a[0], a[1]),
        "clear_dirty_range": lambda: m.clear_dirty_range(a[0], a[1]),
        "age": lambda: m.age(a[0], a[1]),
        "split_huge_pages": lambda: m.split_huge_pages(a[0], a[1], a[2]),
        "recover_huge_pages": lambda: m.recover_huge_pages(a[0], a[1]),
        "recover_nx_huge_pages": lambda: m.recover_nx_huge_pages(a[0]),
        "vcpu_run": lambda: vm.vcpu_run(a[0], a[1]),
        "vcpu_exit": lambda: vm.vcpu_exit(a[0]),
        "vcpu_request": lambda: vm.vcpu_request(a[0], *[n for n, b in REQUESTS.items() if a[1] & b]),
        "access": lambda: vm.access(a[0], a[1], ACCESS_NAMES[a[2]]),
        "access_batch": lambda: vm.access_batch(a[0], [g for g, _ in e.batch], [x for _, x in e.batch]),
        "flush_remote_tlbs": vm.flush_remote_tlbs,
        "flush_remote_tlbs_range": lambda: vm.flush_remote_tlbs_range(a[0], a[1]),
        "invept": lambda: vm.invept(a[0], "single" if a[1] == 1 else "global", a[2]),
        "invvpid": lambda: vm.invvpid(a[0], _INVVPID_KINDS[a[1]], a[2], a[3]),
        "set_tlb_control": lambda: vm.set_tlb_control(a[0], a[1]),
        "synchronize_rcu": vm.synchronize_rcu,
        "tlb_fill_junk": lambda: vm.tlb_fill_junk(a[0], a[1], a[2]),
        "start_op": lambda: vm.start_op({v: n for n, v in OPS.items()}[a[0]], a[1], a[2], a[3], yield_every=a[4]),
        "step_op": lambda: Op(vm, a[0], "?").step(),
    }
    if op not in calls:
        raise InvalidArgumentError(f"unknown event {op!r}")
    calls[op]()


__all__ = ["VM", "MMU", "Root", "Op", "Kvm", "KNOWN_C_QUIRKS", "STAT_NAMES", "EVENT_OPS", "REQUESTS", "OPS"]
