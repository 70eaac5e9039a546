"""The VM: the thin Python face of the C model (one C handle, hot loops in C)."""
from __future__ import annotations

import array
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Union

from . import _native
from ._native import check, ffi, lib
from .errors import InvalidArgumentError, NotFoundError
from .policy import Policy
from .results import (ACCESS_NAMES, FRAME_STATES, VIOLATION_KINDS, AccessResult, BatchResult, Event,
                      Memslot, Violation, WalkResult)
from .tlbconfig import TLBConfig

_NO_PFN = (1 << 64) - 1
_ARCH = {"vmx": 0, "svm": 1}
_EVENT_OPS = [None, "add_memslot", "delete_memslot", "host_unmap", "host_migrate", "host_age",
              "set_dirty_logging", "get_dirty_log", "write_protect_gfn", "alloc_root", "put_root",
              "invalidate_all_roots", "zap_invalidated_roots", "zap_all_fast", "map", "map_range",
              "zap_gfn_range", "zap_root", "zap_sp", "write_protect_range", "clear_dirty_range", "age",
              "split_huge_pages", "recover_huge_pages", "recover_nx_huge_pages", "vcpu_run", "vcpu_exit",
              "vcpu_request", "access", "access_batch", "flush_remote_tlbs", "flush_remote_tlbs_range",
              "invept", "invvpid", "set_tlb_control", "synchronize_rcu", "tlb_fill_junk", "start_op", "step_op"]
_EVENT_NARGS = {"add_memslot": 4, "delete_memslot": 1, "host_unmap": 2, "host_migrate": 1, "host_age": 2,
                "set_dirty_logging": 2, "get_dirty_log": 1, "write_protect_gfn": 2, "alloc_root": 2,
                "put_root": 1, "invalidate_all_roots": 0, "zap_invalidated_roots": 0, "zap_all_fast": 0,
                "map": 3, "map_range": 4, "zap_gfn_range": 3, "zap_root": 2, "zap_sp": 3,
                "write_protect_range": 2, "clear_dirty_range": 2, "age": 2, "split_huge_pages": 3,
                "recover_huge_pages": 2, "recover_nx_huge_pages": 1, "vcpu_run": 2, "vcpu_exit": 1,
                "vcpu_request": 2, "access": 3, "access_batch": 1, "flush_remote_tlbs": 0,
                "flush_remote_tlbs_range": 2, "invept": 3, "invvpid": 4, "set_tlb_control": 2,
                "synchronize_rcu": 0, "tlb_fill_junk": 3, "start_op": 6, "step_op": 1}
OPS = {"zap_gfn_range": 1, "host_unmap": 2, "zap_invalidated_roots": 3, "delete_memslot": 4,
       "write_protect_range": 5, "clear_dirty_range": 6, "split_huge_pages": 7, "recover_huge_pages": 8,
       "recover_nx_huge_pages": 9}
_OP_NAMES = {v: k for k, v in OPS.items()}
REQUESTS = {"tlb_flush": 1, "tlb_flush_current": 2, "tlb_flush_guest": 4, "mmu_free_obsolete_roots": 8,
            "load_mmu_pgd": 16}
_MODES = ("outside_guest", "in_guest", "exiting_guest")


def _choice(name: str, value, options) -> None:
    """Reject a value that is not one of the (string) options, whatever its type."""
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def _access_code(access: Union[str, int]) -> int:
    if isinstance(access, str) and access in ACCESS_NAMES:
        return ACCESS_NAMES.index(access)
    if isinstance(access, int) and not isinstance(access, bool) and 0 <= access < 4:
        return access
    raise InvalidArgumentError(f"access must be 'r', 'w', 'x' or 'xu', got {access!r}")


def _int(name: str, v, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import operator
            v = operator.index(v)
        except TypeError:
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo:#x} and {hi:#x}, got {v:#x}" if v >= 0
                                   else f"{name} must not be negative, got {v}")
    return v


def walk_result_from_c(w) -> WalkResult:
    """Convert a ``struct tdp_walk_result`` (shared with :mod:`tdpfast.hw`)."""
    status = w.status
    fault = {0: None, 1: "violation", 2: "misconfig", 3: "npf"}[status]
    return WalkResult(
        ok=status == 0, hpa=w.hpa if status == 0 else None, fault=fault,
        qualification=w.qualification if status == 1 else None,
        error_code=w.error_code if status == 3 else None, level=w.level, refs=w.refs,
        ad_writes=tuple((w.ad_addr[i], w.ad_old[i], w.ad_new[i]) for i in range(w.nad)),
        entries=tuple(w.entries[i] for i in range(w.nentries)))


class Root:
    """A TDP root (``struct kvm_mmu_page`` of the top level). Properties read live state."""

    __slots__ = ("_vm", "id")

    def __init__(self, vm: "VM", root_id: int):
        self._vm = vm
        self.id = root_id

    def _info(self):
        for r in self._vm.mmu._root_infos():
            if r.id == self.id:
                return r
        raise NotFoundError(f"root {self.id} does not exist (it was freed)")

    @property
    def hpa(self) -> int:
        """Host physical address of the root table (VMX: the EP4TA)."""
        return self._info().hpa

    @property
    def level(self) -> int:
        return self._info().level

    @property
    def valid(self) -> bool:
        return bool(self._info().valid)

    @property
    def refcount(self) -> int:
        return self._info().refcount

    @property
    def alive(self) -> bool:
        """False once the root was freed."""
        return any(r.id == self.id for r in self._vm.mmu._root_infos())

    def __eq__(self, other) -> bool:
        return isinstance(other, Root) and other._vm is self._vm and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self._vm), self.id))

    def __repr__(self) -> str:
        try:
            i = self._info()
            return (f"Root(id={self.id}, hpa={i.hpa:#x}, level={i.level}, valid={bool(i.valid)}, "
                    f"refcount={i.refcount})")
        except NotFoundError:
            return f"Root(id={self.id}, freed)"


RootArg = Optional[Union[Root, int]]


class MMU:
    """KVM's TDP MMU of one VM (``vm.mmu``): roots, the fault path, the zap family."""

    def __init__(self, vm: "VM"):
        self._vm = vm

    @property
    def _h(self):
        return self._vm._h

    def _rid(self, root: RootArg) -> int:
        if root is None:
            return 0
        if isinstance(root, Root):
            if root._vm is not self._vm:
                raise InvalidArgumentError("root belongs to another VM")
            return root.id
        rid = _int("root", root, 0, 0xffffffff)
        if rid == 0:
            raise NotFoundError("root 0 does not exist")
        return rid

    def _root_infos(self):
        n = ffi.new("int *")
        lib.tdp_mmu_roots(self._h, ffi.NULL, 0, n)
        buf = ffi.new("struct tdp_root_info[]", max(n[0], 1))
        lib.tdp_mmu_roots(self._h, buf, n[0], n)
        return [buf[i] for i in range(n[0])]

    # ---------------------------------------------------------------- roots
    def alloc_root(self, *, as_id: int = 0, guest_mode: bool = False) -> Root:
        """Get a root for the role (reusing a valid one, as KVM does) and take a reference."""
        out = ffi.new("uint32_t *")
        check(self._h, lib.tdp_mmu_alloc_root(self._h, _int("as_id", as_id, 0, 1), int(bool(guest_mode)), out))
        return Root(self._vm, out[0])

    @property
    def roots(self) -> List[Root]:
        """Live roots, newest first (KVM's tdp_mmu_roots list order)."""
        return [Root(self._vm, r.id) for r in self._root_infos()]

    def newest_root(self) -> Optional[Root]:
        """The newest valid root, or None."""
        rid = lib.tdp_mmu_newest_root(self._h)
        return Root(self._vm, rid) if rid else None

    def put_root(self, root: Union[Root, int]) -> None:
        """Drop one reference (kvm_tdp_mmu_put_root). A root is freed through RCU at zero."""
        check(self._h, lib.tdp_mmu_put_root(self._h, self._rid(root)))

    def invalidate_all_roots(self) -> None:
        """Mark every valid root invalid and scheduled for zapping (no request to vCPUs)."""
        check(self._h, lib.tdp_mmu_invalidate_all_roots(self._h))

    def zap_invalidated_roots(self) -> None:
        """Zap every scheduled invalid root in full, without a TLB flush, and drop the MMU's reference."""
        check(self._h, lib.tdp_mmu_zap_invalidated_roots(self._h))

    def zap_all_fast(self) -> None:
        """kvm_mmu_zap_all_fast(): invalidate all roots, ask vCPUs to free them, zap them (memslot delete)."""
        check(self._h, lib.tdp_mmu_zap_all_fast(self._h))

    # ---------------------------------------------------------------- faults
    def map(self, gfn: int, level: int = 1, root: RootArg = None) -> bool:
        """Map ``gfn`` at ``level`` (1=4K, 2=2M, 3=1G) the way the fault path does.

        Returns True when a huge leaf replaced an existing table (the fault path then
        flushes that range). ``root=None`` means the newest valid root.
        """
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_map(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return bool(out[0])

    def map_range(self, start_gfn: int, end_gfn: int, level: int = 1, root: RootArg = None) -> int:
        """Map every level-sized page of [start_gfn, end_gfn) in one C call; returns the count."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_map_range(self._h, self._rid(root), _int("start_gfn", start_gfn),
                                             _int("end_gfn", end_gfn), _int("level", level, 0, 99), out))
        return out[0]

    # ---------------------------------------------------------------- zaps and other writers
    def zap_gfn_range(self, start_gfn: int, end_gfn: int, shared: bool = False) -> bool:
        """Zap the leaf SPTEs of [start, end) in every valid root (kvm_tdp_mmu_zap_leafs).

        Returns "flush needed", exactly as KVM: only when a valid root changed and never
        in shared mode (the atomic zap flushes for itself). The caller flushes.
        """
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_zap_gfn_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn),
                                                 int(bool(shared)), out))
        return bool(out[0])

    def zap_root(self, root: Union[Root, int], shared: bool = False) -> None:
        """Zap a whole root in passes by level (tdp_mmu_zap_root); never flushes."""
        check(self._h, lib.tdp_mmu_zap_root(self._h, self._rid(root), int(bool(shared))))

    def zap_sp(self, gfn: int, level: int, root: RootArg = None) -> bool:
        """Zap the level-``level`` table that maps ``gfn`` through its parent entry; returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_zap_sp(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return bool(out[0])

    def write_protect_range(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear W on the leaves of [start, end) in valid roots; returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_wrprot_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    def clear_dirty_range(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear D (A/D on) or W (A/D off) on the leaves of [start, end); returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_clear_dirty_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    def age(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear A or access-track the leaves of [start, end) (no flush); returns "young"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_age_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    def split_huge_pages(self, start_gfn: int, end_gfn: int, target_level: int = 1) -> None:
        """Eager split of the huge leaves of [start, end) down to ``target_level`` (no flush)."""
        check(self._h, lib.tdp_mmu_split_huge_pages(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn),
                                                    _int("target_level", target_level, 0, 99)))

    def recover_huge_pages(self, start_gfn: int, end_gfn: int) -> bool:
        """Install huge leaves over tables where now possible (v6.13+), flushing if any changed."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_recover_huge_pages(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    def recover_nx_huge_pages(self, count: int = 0) -> int:
        """One run of the NX-huge-page recovery worker; ``count=0`` uses ``nx_recovery_ratio``."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_recover_nx_huge_pages(self._h, _int("count", count, 0, 1 << 30), out))
        return out[0]

    # ---------------------------------------------------------------- inspection
    def walk(self, gpa: int, access: str = "r", root: RootArg = None) -> WalkResult:
        """Walk a root for ``gpa`` as the hardware would (without side effects)."""
        w = ffi.new("struct tdp_walk_result *")
        check(self._h, lib.tdp_mmu_walk(self._h, self._rid(root), _int("gpa", gpa), _access_code(access), w))
        return walk_result_from_c(w)

    def root_pointer(self, root: RootArg = None) -> int:
        """The EPTP (VMX) or nCR3 (SVM) value that loads this root."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_root_pointer(self._h, self._rid(root), out))
        return out[0]

    def tables(self, root: RootArg = None) -> Dict[int, bytes]:
        """Every table of a root as {host physical address: 4096 bytes} (a memory image)."""
        n = ffi.new("size_t *")
        rid = self._rid(root)
        check(self._h, lib.tdp_mmu_tables(self._h, rid, ffi.NULL, ffi.NULL, 0, n))
        cnt = n[0]
        addrs = ffi.new("uint64_t[]", cnt)
        data = ffi.new("uint8_t[]", cnt * 4096)
        check(self._h, lib.tdp_mmu_tables(self._h, rid, addrs, data, cnt, n))
        raw = ffi.buffer(data)[:]
        return {addrs[i]: raw[i * 4096:(i + 1) * 4096] for i in range(cnt)}

    def spte(self, gfn: int, level: int = 1, root: RootArg = None) -> int:
        """The raw SPTE at ``level`` on the path to ``gfn``."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_read_spte(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return out[0]

    @property
    def stats(self) -> Dict[str, int]:
        """Counters (same as ``vm.stats``)."""
        return self._vm.stats


class VM:
    """A VM with KVM's TDP MMU, vCPUs on physical CPUs with TLBs, and the checker.

    >>> vm = VM(arch="vmx", vcpus=2, pcpus=2)
    >>> slot = vm.add_memslot(0, 512)
    >>> vm.vcpu_run(0, 0); vm.access(0, 0x1000, "w").outcome
    'ok'
    """

    def __init__(self, arch: str = "vmx", levels: int = 4, seed: int = 0, *, vcpus: int = 1, pcpus: int = 1,
                 tlb: Optional[TLBConfig] = None, policy: Optional[Policy] = None, ad: bool = True,
                 mbec: bool = False, maxphyaddr: int = 46, hpa_base: int = 1 << 30,
                 frame_limit: Optional[int] = None, max_asid: int = 32767, min_asid: int = 1,
                 flush_by_asid: bool = True, trace: bool = False, record: bool = True,
                 costs: Optional[Dict[str, int]] = None):
        if not isinstance(arch, str) or arch not in _ARCH:
            raise InvalidArgumentError(f"arch must be 'vmx' or 'svm', got {arch!r}")
        tlb = TLBConfig.adversarial() if tlb is None else tlb
        policy = Policy.kvm() if policy is None else policy
        if not isinstance(tlb, TLBConfig):
            raise InvalidArgumentError(f"tlb must be a TLBConfig, got {type(tlb).__name__}")
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        self._kwargs = dict(arch=arch, levels=levels, seed=seed, vcpus=vcpus, pcpus=pcpus, tlb=tlb,
                            policy=policy, ad=ad, mbec=mbec, maxphyaddr=maxphyaddr, hpa_base=hpa_base,
                            frame_limit=frame_limit, max_asid=max_asid, min_asid=min_asid,
                            flush_by_asid=flush_by_asid, trace=trace, record=record, costs=costs)
        cfg = ffi.new("struct tdp_config *")
        lib.tdp_default_config(cfg)
        cfg.arch = _ARCH[arch]
        cfg.levels = _int("levels", levels, 0, 99)
        cfg.seed = _int("seed", seed)
        cfg.nvcpus = _int("vcpus", vcpus, 0, 1 << 20)
        cfg.npcpus = _int("pcpus", pcpus, 0, 1 << 20)
        cfg.ad = int(bool(ad))
        cfg.mbec = int(bool(mbec))
        cfg.maxphyaddr = _int("maxphyaddr", maxphyaddr, 0, 64)
        cfg.hpa_base = _int("hpa_base", hpa_base)
        cfg.frame_limit = 0 if frame_limit is None else _int("frame_limit", frame_limit, 1, 1 << 26)
        cfg.max_asid = _int("max_asid", max_asid, 0, 0xffffff)
        cfg.min_asid = _int("min_asid", min_asid, 0, 0xffffff)
        cfg.flush_by_asid = int(bool(flush_by_asid))
        cfg.trace = int(bool(trace))
        cfg.record = int(bool(record))
        c_costs = ffi.new("struct tdp_costs *")
        lib.tdp_default_costs(c_costs)
        for k, v in (costs or {}).items():
            if k not in dir(c_costs):
                raise InvalidArgumentError(f"unknown cost {k!r}; costs: {', '.join(dir(c_costs))}")
            setattr(c_costs, k, _int(f"costs[{k}]", v))
        out = ffi.new("tdp_vm **")
        err = ffi.new("char[]", 512)
        _native.check_buf(lib.tdp_vm_create(cfg, tlb._to_c(ffi), policy._to_c(ffi), c_costs, out, err, 512), err)
        self._h = ffi.gc(out[0], lib.tdp_vm_destroy)
        self.arch = arch
        self.levels = levels
        self.nvcpus = vcpus
        self.npcpus = pcpus
        self.tlb_config = tlb
        self._policy = policy
        self.mmu = MMU(self)

    # ---------------------------------------------------------------- configuration
    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        check(self._h, lib.tdp_set_policy(self._h, policy._to_c(ffi)))
        self._policy = policy

    def fresh(self, **changes) -> "VM":
        """A new VM with the same configuration (``changes`` override keyword arguments)."""
        kw = dict(self._kwargs)
        kw.update(changes)
        return VM(**kw)

    # ---------------------------------------------------------------- memslots and host events
    def add_memslot(self, base_gfn: int, npages: int, *, readonly: bool = False, dirty_log: bool = False,
                    max_level: int = 3) -> Memslot:
        """Back gfns [base_gfn, base_gfn + npages) with host memory; returns the slot."""
        out = ffi.new("int *")
        flags = (1 if readonly else 0) | (2 if dirty_log else 0)
        check(self._h, lib.tdp_memslot_add(self._h, _int("base_gfn", base_gfn), _int("npages", npages), flags,
                                           _int("max_level", max_level, 0, 99), out))
        return self.memslot(out[0])

    def memslot(self, slot_id: int) -> Memslot:
        info = ffi.new("struct tdp_memslot_info *")
        check(self._h, lib.tdp_memslot_info(self._h, _int("slot", slot_id, 0, 1 << 30), info))
        return Memslot(info.id, info.base_gfn, info.npages, bool(info.flags & 1), bool(info.flags & 2),
                       info.max_level, info.host_base_pfn)

    @property
    def memslots(self) -> List[Memslot]:
        n = ffi.new("int *")
        ids = ffi.new("int[]", 4096)
        lib.tdp_memslot_list(self._h, ids, 4096, n)
        return [self.memslot(ids[i]) for i in range(min(n[0], 4096))]

    def _slot_id(self, slot: Union[Memslot, int]) -> int:
        return slot.id if isinstance(slot, Memslot) else _int("slot", slot, 0, 1 << 30)

    def delete_memslot(self, slot: Union[Memslot, int]) -> None:
        """Delete a memslot: kvm_mmu_zap_all_fast() (or the B18 precise zap), then drop its pages."""
        check(self._h, lib.tdp_memslot_delete(self._h, self._slot_id(slot)))

    def backing(self, gfn: int) -> Optional[int]:
        """The host pfn backing ``gfn`` now (None: no memslot, or unmapped by the host)."""
        out = ffi.new("uint64_t *")
        lib.tdp_gfn_backing(self._h, _int("gfn", gfn), out)
        return None if out[0] == _NO_PFN else out[0]

    def host_unmap(self, start_gfn: int, end_gfn: int) -> None:
        """MMU-notifier invalidation of [start, end): zap every root, flush, then the host frees the pages."""
        check(self._h, lib.tdp_host_unmap(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)))

    def host_migrate(self, gfn: int) -> int:
        """Host page migration: the gfn's page moves to a new frame (returned) after an invalidation."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_host_migrate(self._h, _int("gfn", gfn), out))
        return out[0]

    def host_age(self, start_gfn: int, end_gfn: int) -> bool:
        """MMU-notifier clear_flush_young over [start, end) (no flush on x86, ~v6.13+)."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_host_age(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    def set_dirty_logging(self, slot: Union[Memslot, int], enable: bool = True) -> None:
        """Enable (split, write-protect, flush) or disable (recover huge pages) dirty logging."""
        check(self._h, lib.tdp_dirty_log_enable(self._h, self._slot_id(slot), int(bool(enable))))

    def get_dirty_log(self, slot: Union[Memslot, int]) -> List[int]:
        """KVM_GET_DIRTY_LOG: the dirty gfns since the last call; they are re-protected and flushed."""
        sid = self._slot_id(slot)
        info = self.memslot(sid)
        words = (info.npages + 63) // 64
        bm = ffi.new("uint64_t[]", max(words, 1))
        n = ffi.new("uint64_t *")
        check(self._h, lib.tdp_dirty_log_get(self._h, sid, bm, words, n))
        out = []
        for w in range(words):
            m = bm[w]
            while m:
                b = (m & -m).bit_length() - 1
                out.append(info.base_gfn + w * 64 + b)
                m &= m - 1
        return out

    def write_protect_gfn(self, gfn: int, enable: bool = True) -> None:
        """KVM's gfn write tracking: write-protect ``gfn`` (flushing if an SPTE changed) or release it."""
        check(self._h, lib.tdp_write_protect_gfn(self._h, _int("gfn", gfn), int(bool(enable))))

    # ---------------------------------------------------------------- vCPUs
    def vcpu_run(self, vcpu: int, pcpu: int) -> None:
        """Leave guest mode wherever the vCPU is, load it on ``pcpu``, service requests, enter the guest."""
        check(self._h, lib.tdp_vcpu_run(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("pcpu", pcpu, 0, 1 << 20)))

    def vcpu_exit(self, vcpu: int) -> None:
        """Leave guest mode (the vCPU stays loaded where it was)."""
        check(self._h, lib.tdp_vcpu_exit(self._h, _int("vcpu", vcpu, 0, 1 << 20)))

    def vcpu_request(self, vcpu: int, *requests: str) -> None:
        """kvm_make_request() of the named requests (kicks the vCPU out of guest mode)."""
        bits = 0
        for r in requests:
            if not isinstance(r, str) or r not in REQUESTS:
                raise InvalidArgumentError(f"unknown request {r!r}; requests: {', '.join(REQUESTS)}")
            bits |= REQUESTS[r]
        check(self._h, lib.tdp_vcpu_request(self._h, _int("vcpu", vcpu, 0, 1 << 20), bits))

    def vcpu_info(self, vcpu: int) -> dict:
        """Mode, placement, root, pending requests and (SVM) ASID of a vCPU."""
        i = ffi.new("struct tdp_vcpu_info *")
        check(self._h, lib.tdp_vcpu_info(self._h, _int("vcpu", vcpu, 0, 1 << 20), i))
        return {"mode": _MODES[i.mode], "pcpu": None if i.pcpu < 0 else i.pcpu,
                "last_pcpu": None if i.last_pcpu < 0 else i.last_pcpu, "root": i.root_id or None,
                "requests": [k for k, b in REQUESTS.items() if i.requests & b], "asid": i.asid,
                "asid_generation": i.asid_generation, "vpid": i.vpid, "tlb_control": i.tlb_control}

    def pcpu_info(self, pcpu: int) -> dict:
        """Who runs on a pCPU, its ASID allocator (SVM) and how many TLB/PSC entries are live."""
        i = ffi.new("struct tdp_pcpu_info *")
        check(self._h, lib.tdp_pcpu_info(self._h, _int("pcpu", pcpu, 0, 1 << 20), i))
        return {"vcpu": None if i.vcpu < 0 else i.vcpu, "asid_generation": i.asid_generation,
                "next_asid": i.next_asid, "min_asid": i.min_asid, "max_asid": i.max_asid,
                "tlb_entries": i.tlb_entries, "psc_entries": i.psc_entries}

    def access(self, vcpu: int, gpa: int, access: str = "r") -> AccessResult:
        """One guest access by a vCPU in guest mode: TLB, walk, fault path, and the checker."""
        out = ffi.new("struct tdp_access_result *")
        check(self._h, lib.tdp_access(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("gpa", gpa),
                                      _access_code(access), out))
        return self._access_result(out)

    def _access_result(self, o) -> AccessResult:
        v = self._violation_at(o.violation - 1) if o.violation else None
        return AccessResult(outcome=("ok", "mmio", "livelock", "blocked")[o.outcome], hpa=o.hpa if o.outcome == 0 else None,
                            tlb={0: None, 1: "l1", 2: "l2"}[o.tlb_hit], faults=o.faults, walk_refs=o.walk_refs,
                            violation=v)

    def access_batch(self, vcpu: int, gpas, access: Union[str, Sequence, object] = "r", *,
                     per_access: bool = False) -> BatchResult:
        """Many accesses in one C call. ``gpas``: any uint64 buffer (numpy array, array('Q')) or
        a sequence; ``access``: one kind for all, or a uint8 buffer / sequence of kinds (0 r, 1 w,
        2 x, 3 xu). With ``per_access=True`` the result carries per-access columns."""
        g = _u64_buffer("gpas", gpas)
        n = len(g)
        accs = ffi.NULL
        default = 0
        keep = None
        if isinstance(access, str):
            default = _access_code(access)
        else:
            keep = _u8_buffer("access", access)
            if len(keep) != n:
                raise InvalidArgumentError(f"access has {len(keep)} kinds for {n} gpas")
            accs = ffi.from_buffer("uint8_t[]", keep)
        per = ffi.new("struct tdp_access_result[]", n) if per_access and n else ffi.NULL
        counts = ffi.new("uint64_t[9]")
        done = ffi.new("size_t *")
        gbuf = ffi.from_buffer("uint64_t[]", g) if n else ffi.new("uint64_t[1]")
        try:
            check(self._h, lib.tdp_access_batch(self._h, _int("vcpu", vcpu, 0, 1 << 20), gbuf, accs, default, n,
                                                per, counts, done))
        finally:
            # Release the views now: a traceback cycle must not keep the caller's buffer exported.
            if n:
                ffi.release(gbuf)
            if accs != ffi.NULL:
                ffi.release(accs)
        got = done[0]
        stopped = None
        if got < n:
            stopped = ffi.string(lib.tdp_errmsg(self._h)).decode(errors="replace") or "stopped early"
        cols = None
        if per_access and got:
            cols = {"outcome": [per[i].outcome for i in range(got)], "hpa": [per[i].hpa for i in range(got)],
                    "tlb": [per[i].tlb_hit for i in range(got)], "faults": [per[i].faults for i in range(got)],
                    "violation": [per[i].violation for i in range(got)]}
        return BatchResult(accesses=got, ok=counts[0], mmio=counts[1], livelock=counts[2], blocked=counts[3],
                           walked=counts[4], l1_hits=counts[5], l2_hits=counts[6], faults=counts[7],
                           violations=counts[8], per_access=cols, requested=n, stopped=stopped)

    # ---------------------------------------------------------------- flushes
    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs(): KVM_REQ_TLB_FLUSH to every vCPU, IPIs to those in guest mode."""
        check(self._h, lib.tdp_flush_remote_tlbs(self._h))

    def flush_remote_tlbs_range(self, gfn: int, npages: int) -> None:
        """The ranged variant: precise with ``precise_range_flush``, else a full remote flush."""
        check(self._h, lib.tdp_flush_remote_tlbs_range(self._h, _int("gfn", gfn), _int("npages", npages)))

    def invept(self, pcpu: int, kind: str = "single", eptp: Optional[int] = None) -> None:
        """INVEPT on one pCPU: ``kind`` "single" (needs ``eptp``) or "global"."""
        _choice("INVEPT kind", kind, ("single", "global"))
        t = {"single": 1, "global": 2}[kind]
        if t == 1 and eptp is None:
            raise InvalidArgumentError("INVEPT single-context needs eptp=")
        check(self._h, lib.tdp_invept(self._h, _int("pcpu", pcpu, 0, 1 << 20), t, _int("eptp", eptp or 0)))

    def invvpid(self, pcpu: int, kind: str, vpid: int, gla: int = 0) -> None:
        """INVVPID: "individual", "single", "all" or "single_retaining_globals" (never drops
        guest-physical mappings)."""
        kinds = ("individual", "single", "all", "single_retaining_globals")
        _choice("INVVPID kind", kind, kinds)
        check(self._h, lib.tdp_invvpid(self._h, _int("pcpu", pcpu, 0, 1 << 20), kinds.index(kind),
                                       _int("vpid", vpid, 0, 0xffffffff), _int("gla", gla)))

    def set_tlb_control(self, vcpu: int, value: int) -> None:
        """SVM: the VMCB's TLB_CONTROL (0, 1, 3, 7) for the vCPU's next VMRUN."""
        check(self._h, lib.tdp_svm_set_tlb_control(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("value", value, 0, 255)))

    def tlb_entries(self, pcpu: int) -> List[dict]:
        """Live TLB and paging-structure-cache entries of a pCPU."""
        n = ffi.new("size_t *")
        p = _int("pcpu", pcpu, 0, 1 << 20)
        check(self._h, lib.tdp_tlb_dump(self._h, p, ffi.NULL, 0, n))
        buf = ffi.new("struct tdp_tlb_entry[]", max(n[0], 1))
        check(self._h, lib.tdp_tlb_dump(self._h, p, buf, n[0], n))
        return [{"kind": "psc" if e.kind else "tlb", "level": e.level, "tag": e.tag,
                 "gfn": e.vpn << (9 * (e.level - 1)), "pfn": e.pfn, "perms": e.perms, "dirty": bool(e.dirty),
                 "structure": ("l1", "l2", "psc", "store")[e.structure]} for e in (buf[i] for i in range(n[0]))]

    def tlb_fill_junk(self, pcpu: int, count: int, max_gfn: int = 1 << 20) -> None:
        """Leave ``count`` junk entries under arbitrary tags in a pCPU's TLB."""
        check(self._h, lib.tdp_tlb_fill_junk(self._h, _int("pcpu", pcpu, 0, 1 << 20), _int("count", count, 0, 1 << 24),
                                             _int("max_gfn", max_gfn)))

    # ---------------------------------------------------------------- stepped operations
    def start_op(self, name: str, *args: int, yield_every: int = 16) -> "Op":
        """Start a long operation that stops at each yield point (where KVM drops mmu_lock
        and leaves RCU), so that other operations can run before it resumes.

        Each is a whole KVM operation with its caller's flush contract (a zap or a
        write-protection flushes what it changed when it ends). ``name`` is one of:
        zap_gfn_range(start, end, shared=0), host_unmap(start, end),
        zap_invalidated_roots(), delete_memslot(slot), write_protect_range(start, end),
        clear_dirty_range(start, end), split_huge_pages(start, end, target_level),
        recover_huge_pages(start, end), recover_nx_huge_pages(count=0).
        ``yield_every`` is how many iterator steps pass between yield points.
        """
        _choice("operation", name, tuple(OPS))
        vals = [a.id if isinstance(a, (Memslot, Root)) else _int(f"{name} argument", a) for a in args]
        if len(vals) > 3:
            raise InvalidArgumentError(f"{name} takes at most 3 arguments, got {len(vals)}")
        vals += [0] * (3 - len(vals))
        out = ffi.new("uint32_t *")
        check(self._h, lib.tdp_op_start(self._h, OPS[name], vals[0], vals[1], vals[2],
                                        _int("yield_every", yield_every, 0, 1 << 30), out))
        return Op(self, out[0], name)

    @property
    def ops(self) -> List["Op"]:
        """Stepped operations that have not finished."""
        n = ffi.new("int *")
        ids = ffi.new("uint32_t[]", 256)
        lib.tdp_op_list(self._h, ids, 256, n)
        return [Op(self, ids[i], "?") for i in range(min(n[0], 256))]

    def synchronize_rcu(self) -> None:
        """End a grace period: page tables freed with call_rcu() return to the pool (LIFO)."""
        check(self._h, lib.tdp_synchronize_rcu(self._h))

    # ---------------------------------------------------------------- results
    @property
    def violations(self) -> List[Violation]:
        """Every violation the checker reported, oldest first."""
        n = lib.tdp_violation_count(self._h)
        buf = ffi.new("struct tdp_violation[]", max(n, 1))
        lib.tdp_violations(self._h, buf, n)
        return [self._violation(buf[i]) for i in range(n)]

    def _violation_at(self, i: int) -> Violation:
        n = lib.tdp_violation_count(self._h)
        buf = ffi.new("struct tdp_violation[]", max(n, 1))
        lib.tdp_violations(self._h, buf, n)
        return self._violation(buf[i])

    @staticmethod
    def _violation(v) -> Violation:
        return Violation(kind=VIOLATION_KINDS.get(v.kind, str(v.kind)), vcpu=v.vcpu, pcpu=v.pcpu, gpa=v.gpa,
                         tag=v.tag, stale_pfn=None if v.stale_pfn == _NO_PFN else v.stale_pfn,
                         expected_pfn=None if v.expected_pfn == _NO_PFN else v.expected_pfn, event=v.event,
                         access=ACCESS_NAMES[v.access], level=v.level,
                         frame_state=FRAME_STATES.get(v.frame_state, "?"), batch_index=v.batch_index)

    @property
    def stats(self) -> Dict[str, int]:
        """Counters in KVM's vocabulary (remote_tlb_flush, pages_4k, ...) and the model's."""
        names = _stat_names()
        out = ffi.new("uint64_t[]", len(names))
        lib.tdp_stats(self._h, out)
        return {n: out[i] for i, n in enumerate(names)}

    def reset_stats(self) -> None:
        """Zero the counters (gauges such as pages_4k are kept)."""
        lib.tdp_reset_stats(self._h)

    def frames(self) -> dict:
        """Frame pool usage: in_use, free, rcu_pending, limit."""
        out = ffi.new("uint64_t[4]")
        lib.tdp_hostmem_info(self._h, out)
        return {"in_use": out[0], "free": out[1], "rcu_pending": out[2], "limit": out[3]}

    def digest(self) -> int:
        """A 64-bit digest of the whole model state (tables, roots, slots, vCPUs, TLBs, counters)."""
        return lib.tdp_digest(self._h)

    @property
    def events(self) -> List[Event]:
        """The event log: every successful top-level operation, replayable with :meth:`replay`."""
        n = lib.tdp_event_count(self._h)
        buf = ffi.new("struct tdp_event[]", max(n, 1))
        lib.tdp_events(self._h, buf, 0, n)
        out = []
        for i in range(n):
            e = buf[i]
            name = _EVENT_OPS[e.op]
            nargs = _EVENT_NARGS[name]
            batch = None
            if name == "access_batch":
                cnt = e.a[2]
                g = ffi.new("uint64_t[]", max(cnt, 1))
                a = ffi.new("uint8_t[]", max(cnt, 1))
                lib.tdp_event_batch(self._h, i, g, a, cnt)
                batch = tuple((g[k], ACCESS_NAMES[a[k]]) for k in range(cnt))
            raw = tuple(e.a[k] for k in range(5))
            args = raw[:nargs]
            if name == "start_op":  # (kind, a, b, c, yield_every, op id)
                args = raw[:4] + (raw[4] & 0xFFFFFFFF, raw[4] >> 32)
            out.append(Event(i, name, args, batch, raw))
        return out

    def event_log(self) -> bytes:
        """The event log as bytes (byte-for-byte identical for the same seed and inputs)."""
        parts = []
        for e in self.events:
            parts.append(struct.pack("<B5Q", _EVENT_OPS.index(e.op), *e.raw))
            if e.batch:
                parts.append(b"".join(struct.pack("<QB", g, ACCESS_NAMES.index(a)) for g, a in e.batch))
        return b"".join(parts)

    def trace(self) -> List[tuple]:
        """The internal trace (``VM(trace=True)``): (kind, level, a, b, c) records."""
        n = lib.tdp_trace_count(self._h)
        buf = ffi.new("struct tdp_trace_rec[]", max(n, 1))
        lib.tdp_trace(self._h, buf, 0, n)
        kinds = {1: "spte_changed", 2: "remote_flush", 3: "range_flush", 4: "vendor_flush", 5: "root_alloc",
                 6: "root_put", 7: "root_free", 8: "fault", 9: "yield", 10: "ipi", 11: "new_asid"}
        return [(kinds.get(buf[i].kind, "?"), buf[i].level, buf[i].a, buf[i].b, buf[i].c) for i in range(n)]

    def replay(self, events: Iterable[Event]) -> None:
        """Apply an event log (from another VM of the same configuration, started fresh) to
        this fresh VM."""
        for e in events:
            _replay_one(self, e)

    def replay_fast(self, events: Sequence[Event], *, stop_at_violation: bool = True) -> int:
        """Apply events in one C call (no access batches); events that fail are skipped, and
        stepped operations are matched to the ones the original run started. Returns how
        many applied."""
        evs = list(events)
        buf = ffi.new("struct tdp_event[]", max(len(evs), 1))
        for i, e in enumerate(evs):
            if e.op == "access_batch":
                raise InvalidArgumentError("replay_fast cannot replay access batches; use replay()")
            buf[i].op = _EVENT_OPS.index(e.op)
            for k, w in enumerate(e.raw):
                buf[i].a[k] = w
        n = ffi.new("size_t *")
        check(self._h, lib.tdp_replay(self._h, buf, len(evs), int(stop_at_violation), n))
        return n[0]

    def __repr__(self) -> str:
        return (f"VM(arch={self.arch!r}, levels={self.levels}, vcpus={self.nvcpus}, pcpus={self.npcpus}, "
                f"roots={len(self.mmu.roots)}, memslots={len(self.memslots)})")


class Op:
    """A long operation in flight (see :meth:`VM.start_op`)."""

    def __init__(self, vm: VM, op_id: int, name: str):
        self._vm = vm
        self.id = op_id
        self.name = name
        self.done = False
        self.result: Optional[int] = None

    def step(self) -> bool:
        """Run to the next yield point (True once the operation has finished)."""
        if self.done:
            return True
        done = ffi.new("int *")
        res = ffi.new("int *")
        check(self._vm._h, lib.tdp_op_step(self._vm._h, self.id, done, res))
        if done[0]:
            self.done = True
            self.result = res[0]
        return self.done

    def finish(self) -> int:
        """Run to the end; returns the operation's result (e.g. whether a zap flushed)."""
        while not self.step():
            pass
        return self.result

    def __repr__(self) -> str:
        return f"Op(id={self.id}, {self.name}, done={self.done})"


_STAT_NAMES: List[str] = []


def _stat_names() -> List[str]:
    if not _STAT_NAMES:
        _STAT_NAMES.extend(_native.stat_names())
    return _STAT_NAMES


def _u64_buffer(name: str, obj):
    try:
        mv = memoryview(obj)
        if mv.itemsize == 8 and mv.format in ("Q", "L", "q", "l", "<Q", "=Q") and mv.ndim == 1 and mv.c_contiguous:
            if mv.format in ("q", "l") and any(x < 0 for x in mv):
                raise InvalidArgumentError(f"{name} must not hold negative addresses")
            return mv.cast("B").cast("Q")
    except TypeError:
        pass
    try:
        return memoryview(array.array("Q", obj))
    except (TypeError, OverflowError, ValueError):
        raise InvalidArgumentError(f"{name} must be a 1-D buffer or sequence of unsigned 64-bit integers") from None


def _u8_buffer(name: str, obj):
    try:
        mv = memoryview(obj)
        if mv.itemsize == 1 and mv.ndim == 1 and mv.c_contiguous:
            return mv.cast("B")
    except TypeError:
        pass
    try:
        return memoryview(array.array("B", [_access_code(a) for a in obj]))
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a string, or a sequence/buffer of access kinds") from None


def _replay_one(vm: VM, e: Event) -> None:
    a = e.args
    op = e.op
    m = vm.mmu
    if op == "add_memslot":
        vm.add_memslot(a[0], a[1], readonly=bool(a[2] & 1), dirty_log=bool(a[2] & 2), max_level=a[3])
    elif op == "delete_memslot":
        vm.delete_memslot(a[0])
    elif op == "host_unmap":
        vm.host_unmap(a[0], a[1])
    elif op == "host_migrate":
        vm.host_migrate(a[0])
    elif op == "host_age":
        vm.host_age(a[0], a[1])
    elif op == "set_dirty_logging":
        vm.set_dirty_logging(a[0], bool(a[1]))
    elif op == "get_dirty_log":
        vm.get_dirty_log(a[0])
    elif op == "write_protect_gfn":
        vm.write_protect_gfn(a[0], bool(a[1]))
    elif op == "alloc_root":
        m.alloc_root(as_id=a[0], guest_mode=bool(a[1]))
    elif op == "put_root":
        m.put_root(a[0])
    elif op == "invalidate_all_roots":
        m.invalidate_all_roots()
    elif op == "zap_invalidated_roots":
        m.zap_invalidated_roots()
    elif op == "zap_all_fast":
        m.zap_all_fast()
    elif op == "map":
        m.map(a[1], a[2], root=a[0] or None)
    elif op == "map_range":
        m.map_range(a[1], a[2], a[3], root=a[0] or None)
    elif op == "zap_gfn_range":
        m.zap_gfn_range(a[0], a[1], shared=bool(a[2]))
    elif op == "zap_root":
        m.zap_root(a[0], shared=bool(a[1]))
    elif op == "zap_sp":
        m.zap_sp(a[1], a[2], root=a[0])
    elif op == "write_protect_range":
        m.write_protect_range(a[0], a[1])
    elif op == "clear_dirty_range":
        m.clear_dirty_range(a[0], a[1])
    elif op == "age":
        m.age(a[0], a[1])
    elif op == "split_huge_pages":
        m.split_huge_pages(a[0], a[1], a[2])
    elif op == "recover_huge_pages":
        m.recover_huge_pages(a[0], a[1])
    elif op == "recover_nx_huge_pages":
        m.recover_nx_huge_pages(a[0])
    elif op == "vcpu_run":
        vm.vcpu_run(a[0], a[1])
    elif op == "vcpu_exit":
        vm.vcpu_exit(a[0])
    elif op == "vcpu_request":
        vm.vcpu_request(a[0], *[k for k, b in REQUESTS.items() if a[1] & b])
    elif op == "access":
        vm.access(a[0], a[1], ACCESS_NAMES[a[2]])
    elif op == "access_batch":
        vm.access_batch(a[0], [g for g, _ in e.batch], [acc for _, acc in e.batch])
    elif op == "flush_remote_tlbs":
        vm.flush_remote_tlbs()
    elif op == "flush_remote_tlbs_range":
        vm.flush_remote_tlbs_range(a[0], a[1])
    elif op == "invept":
        vm.invept(a[0], "single" if a[1] == 1 else "global", a[2])
    elif op == "invvpid":
        vm.invvpid(a[0], ("individual", "single", "all", "single_retaining_globals")[a[1]], a[2], a[3])
    elif op == "set_tlb_control":
        vm.set_tlb_control(a[0], a[1])
    elif op == "synchronize_rcu":
        vm.synchronize_rcu()
    elif op == "tlb_fill_junk":
        vm.tlb_fill_junk(a[0], a[1], a[2])
    elif op == "start_op":
        vm.start_op(_OP_NAMES[a[0]], a[1], a[2], a[3], yield_every=a[4])  # ids match in a fresh replay
    elif op == "step_op":
        Op(vm, a[0], "?").step()
    else:  # pragma: no cover - every op is listed above
        raise InvalidArgumentError(f"unknown event {op!r}")


__all__ = ["VM", "MMU", "Root", "Op", "REQUESTS", "OPS"]
