"""The public entry points of the reference VM that no other file owns (the C engine's
counterpart is csrc/api.c): ``vm.mmu`` (:class:`MMU`: roots, mapping, the zap family and
the other SPTE writers, inspection), :class:`Root`, and the vCPU, guest-access and flush
calls (:class:`VcpuApi`).  Every call checks its arguments first: a failed call changes
nothing, except where noted.

SDM section numbers are those of the 2016 edition of the Intel SDM Vol. 3C (titles are
given where numbers moved in later editions)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

from ..errors import (FramePoolExhausted, InvalidArgumentError, InvalidStateError, LivelockError,
                      NotFoundError)
from ..events import INVVPID_KINDS
from .._native import c_name_table, c_names, lib
from ..results import ACCESS_NAMES, OUTCOME_NAMES, AccessResult, BatchResult, WalkResult
from . import cpu, hostmem, memslot as ms, mmu, page_walker, tdp_mmu
from ._args import U64, _access_code, _int
from .spte import pages_per_level, spte_index
from .tdp_iter import spte_to_child_frame
from .tlb import ept_context

if TYPE_CHECKING:  # pragma: no cover
    from .vm import VM, Kvm

_MODES = c_name_table(lib.tdp_vcpu_mode_name)


class Root:
    """A TDP root; properties read live state (as :class:`tdpfast.Root`)."""

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
    def _k(self) -> "Kvm":
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

    # --- roots --------------------------------------------------------------------------------
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
        mmu.kvm_mmu_zap_all_fast(k)
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
        """kvm_tdp_mmu_zap_leafs() over the valid roots; returns "flush needed"
        (never in shared mode: the atomic zap flushes by itself).  The caller flushes."""
        shared = bool(shared)
        return self._range_op("zap_gfn_range", start_gfn, end_gfn,
                              lambda s, e: tdp_mmu.zap_leafs(self._k, s, e, tdp_mmu.ROOTS_VALID, shared),
                              int(shared))

    def kvm_zap_gfn_range(self, start_gfn: int, end_gfn: int, shared: bool = False) -> bool:
        """kvm_zap_gfn_range() as mmu.c's callers run it: the zap, then the ranged flush it owes."""
        flushed = self.zap_gfn_range(start_gfn, end_gfn, shared)
        if flushed:
            self._vm.flush_remote_tlbs_range(start_gfn, end_gfn - start_gfn)
        return flushed

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
            return tdp_mmu.recover_huge_pages(self._k, s, e)   # it flushes each root that changed
        return self._range_op("recover_huge_pages", start_gfn, end_gfn, body)

    def recover_nx_huge_pages(self, count: int = 0) -> int:
        k = self._k
        count = _int("count", count, 0, 1 << 30)
        k.op_begin()
        zapped = mmu.recover_nx_huge_pages(k, count)
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


class VcpuApi:
    """The vCPU, guest-access and flush calls of the reference VM; mixed into
    :class:`tdpfast.reference.vm.VM`."""

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
            if r not in cpu.REQUESTS:
                raise InvalidArgumentError(f"unknown request {r!r}; requests: {', '.join(cpu.REQUESTS)}")
            bits |= cpu.REQUESTS[r]
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
                "requests": [n for n, b in cpu.REQUESTS.items() if v.requests & b], "asid": v.asid,
                "asid_generation": v.asid_generation, "vpid": v.vpid, "tlb_control": v.tlb_control,
                "in_l2": False, "other_root": None,   # nested L2 and guest paging are not in the
                "guest_levels": 0, "guest_cr3": 0}    # reference model

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
        return AccessResult(outcome=OUTCOME_NAMES[o.outcome],
                            hpa=o.hpa if o.outcome == cpu.OUT_OK else None,
                            tlb={lib.TDP_TLB_WALKED: None, lib.TDP_TLB_HIT_L1: "l1", lib.TDP_TLB_HIT_L2: "l2"}[o.tlb_hit], faults=o.faults,
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
        counts = [0] * lib.TDP_BATCH_NCOUNTS   # enum tdp_batch_count
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
            counts[lib.TDP_BATCH_OK + o.outcome] += 1
            counts[lib.TDP_BATCH_WALKED + o.tlb_hit] += 1
            counts[lib.TDP_BATCH_FAULTS] += o.faults
            counts[lib.TDP_BATCH_VIOLATIONS] += o.violation != 0
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
        return BatchResult(accesses=len(per), ok=counts[lib.TDP_BATCH_OK], mmio=counts[lib.TDP_BATCH_MMIO],
                           livelock=counts[lib.TDP_BATCH_LIVELOCK], blocked=counts[lib.TDP_BATCH_BLOCKED],
                           walked=counts[lib.TDP_BATCH_WALKED], l1_hits=counts[lib.TDP_BATCH_L1_HITS],
                           l2_hits=counts[lib.TDP_BATCH_L2_HITS], faults=counts[lib.TDP_BATCH_FAULTS],
                           violations=counts[lib.TDP_BATCH_VIOLATIONS], per_access=cols, requested=len(g),
                           stopped=stopped)

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
        """INVEPT on one pCPU (Intel SDM Vol. 3C, "INVEPT" and 28.3.3.1 "Operations that
        Invalidate Cached Mappings"): single-context drops one EP4TA's mappings, global all
        of them."""
        k = self._k
        t = {name: t for t, name in c_names(lib.tdp_invept_type_name).items()}.get(kind)
        if t is None:
            raise InvalidArgumentError(f"INVEPT kind must be 'single' or 'global', got {kind!r}")
        if t == lib.TDP_INVEPT_SINGLE_CONTEXT and eptp is None:
            raise InvalidArgumentError("INVEPT single-context needs eptp=")
        pcpu, eptp = _int("pcpu", pcpu, 0, 1 << 20), _int("eptp", eptp or 0)
        k.op_begin()
        if k.cfg.arch != "vmx":
            raise InvalidStateError("INVEPT exists on VMX only (this VM is svm)")
        p = k.check_pcpu(pcpu)
        if t == lib.TDP_INVEPT_SINGLE_CONTEXT:
            # The EPTP must pass the VM-entry checks (SDM 26.2.1.1 "VM-Execution Control Fields").
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
        """INVVPID never drops guest-physical mappings (SDM 28.3.3.1): only counted."""
        k = self._k
        if kind not in INVVPID_KINDS:
            raise InvalidArgumentError(f"INVVPID kind must be one of {INVVPID_KINDS}, got {kind!r}")
        t = INVVPID_KINDS.index(kind)
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


__all__ = ["MMU", "Root", "RootArg", "VcpuApi"]
