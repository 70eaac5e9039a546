"""``vm.mmu``: KVM's TDP MMU API of one VM (arch/x86/kvm/mmu/tdp_mmu.c and the mmu.c entry
points that use it) -- roots, the fault path's mapping, the zap family and the other SPTE
writers, and read-only inspection of the tables."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Union

from ._args import _access_code, _bool, _int
from ._lock import locked
from ._native import c_names, check, ffi, lib
from .errors import InvalidArgumentError, NotFoundError
from .results import WalkResult

if TYPE_CHECKING:  # pragma: no cover
    from .vm import VM


#: Walk faults by status (enum tdp_walk_status); a walk that succeeded has none.
_WALK_FAULTS = {s: (None if s == lib.TDP_WALK_OK else name) for s, name in c_names(lib.tdp_walk_status_name).items()}


def walk_result_from_c(w) -> WalkResult:
    """Convert a ``struct tdp_walk_result`` (shared with :mod:`tdpfast.hw`)."""
    status = w.status
    ok = status == lib.TDP_WALK_OK
    return WalkResult(
        ok=ok, hpa=w.hpa if ok else None, fault=_WALK_FAULTS[status],
        qualification=w.qualification if status == lib.TDP_WALK_VIOLATION else None,
        error_code=w.error_code if status == lib.TDP_WALK_NPF else None, level=w.level, refs=w.refs,
        ad_writes=tuple((w.ad_addr[i], w.ad_old[i], w.ad_new[i]) for i in range(w.nad)),
        entries=tuple(w.entries[i] for i in range(w.nentries)))


class Root:
    """A TDP root (``struct kvm_mmu_page`` of the top level). Properties read live state."""

    __slots__ = ("_vm", "id")

    def __init__(self, vm: "VM", root_id: int):
        self._vm = vm
        self.id = root_id

    @property
    def _lock(self):
        return self._vm._lock

    @locked
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
    def guest_mode(self) -> bool:
        """role.guest_mode: the root of a vCPU running L2 (:meth:`tdpfast.VM.nested_enter`)."""
        return bool(self._info().guest_mode)

    @property
    def refcount(self) -> int:
        return self._info().refcount

    @property
    @locked
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
        self._lock = vm._lock

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

    @locked
    def _root_infos(self):
        n = ffi.new("int *")
        lib.tdp_mmu_roots(self._h, ffi.NULL, 0, n)
        buf = ffi.new("struct tdp_root_info[]", max(n[0], 1))
        lib.tdp_mmu_roots(self._h, buf, n[0], n)
        return [buf[i] for i in range(n[0])]

    # ---------------------------------------------------------------- roots
    @locked
    def alloc_root(self, *, as_id: int = 0, guest_mode: bool = False) -> Root:
        """Get a root for the role (reusing a valid one, as KVM does) and take a reference."""
        out = ffi.new("uint32_t *")
        check(self._h, lib.tdp_mmu_alloc_root(self._h, _int("as_id", as_id, 0, 1), int(_bool("guest_mode", guest_mode)),
                                               out))
        return Root(self._vm, out[0])

    @property
    @locked
    def roots(self) -> List[Root]:
        """Live roots, newest first (KVM's tdp_mmu_roots list order)."""
        return [Root(self._vm, r.id) for r in self._root_infos()]

    @locked
    def newest_root(self) -> Optional[Root]:
        """The newest valid root, or None."""
        rid = lib.tdp_mmu_newest_root(self._h)
        return Root(self._vm, rid) if rid else None

    @locked
    def put_root(self, root: Union[Root, int]) -> None:
        """Drop one reference (kvm_tdp_mmu_put_root). A root is freed through RCU at zero."""
        check(self._h, lib.tdp_mmu_put_root(self._h, self._rid(root)))

    @locked
    def invalidate_all_roots(self) -> None:
        """Mark every valid root invalid and scheduled for zapping (no request to vCPUs)."""
        check(self._h, lib.tdp_mmu_invalidate_all_roots(self._h))

    @locked
    def zap_invalidated_roots(self) -> None:
        """Zap every scheduled invalid root in full, without a TLB flush, and drop the MMU's reference."""
        check(self._h, lib.tdp_mmu_zap_invalidated_roots(self._h))

    @locked
    def zap_all_fast(self) -> None:
        """kvm_mmu_zap_all_fast(): invalidate all roots, ask vCPUs to free them, zap them (memslot delete)."""
        check(self._h, lib.tdp_mmu_zap_all_fast(self._h))

    # ---------------------------------------------------------------- faults
    @locked
    def map(self, gfn: int, level: int = 1, root: RootArg = None) -> bool:
        """Map ``gfn`` at ``level`` (1=4K, 2=2M, 3=1G) the way the fault path does.

        Returns True when a huge leaf replaced an existing table (the fault path then
        flushes that range). ``root=None`` means the newest valid root.
        """
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_map(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return bool(out[0])

    @locked
    def map_range(self, start_gfn: int, end_gfn: int, level: int = 1, root: RootArg = None) -> int:
        """Map every level-sized page of [start_gfn, end_gfn) in one C call; returns the count."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_map_range(self._h, self._rid(root), _int("start_gfn", start_gfn),
                                             _int("end_gfn", end_gfn), _int("level", level, 0, 99), out))
        return out[0]

    # ---------------------------------------------------------------- zaps and other writers
    @locked
    def zap_gfn_range(self, start_gfn: int, end_gfn: int, shared: bool = False) -> bool:
        """Zap the leaf SPTEs of [start, end) in every valid root (kvm_tdp_mmu_zap_leafs).

        Returns "flush needed", exactly as KVM: only when a valid root changed and never
        in shared mode (the atomic zap flushes for itself). The caller flushes.
        """
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_zap_gfn_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn),
                                                 int(_bool("shared", shared)), out))
        return bool(out[0])

    @locked
    def kvm_zap_gfn_range(self, start_gfn: int, end_gfn: int, shared: bool = False) -> bool:
        """kvm_zap_gfn_range() as its callers in mmu.c run it: :meth:`zap_gfn_range`, then
        the ranged remote flush it owes before dropping mmu_lock. Returns True when it
        flushed. Logged as those two steps (``zap_gfn_range``, ``flush_remote_tlbs_range``)."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_kvm_zap_gfn_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn),
                                                 int(_bool("shared", shared)), out))
        return bool(out[0])

    @locked
    def zap_root(self, root: Union[Root, int], shared: bool = False) -> None:
        """Zap a whole root in passes by level (tdp_mmu_zap_root); never flushes."""
        check(self._h, lib.tdp_mmu_zap_root(self._h, self._rid(root), int(_bool("shared", shared))))

    @locked
    def zap_sp(self, gfn: int, level: int, root: RootArg = None) -> bool:
        """Zap the level-``level`` table that maps ``gfn`` through its parent entry; returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_zap_sp(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return bool(out[0])

    @locked
    def write_protect_range(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear W on the leaves of [start, end) in valid roots; returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_wrprot_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    @locked
    def clear_dirty_range(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear D (A/D on) or W (A/D off) on the leaves of [start, end); returns "flush needed"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_clear_dirty_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    @locked
    def age(self, start_gfn: int, end_gfn: int) -> bool:
        """Clear A or access-track the leaves of [start, end) (no flush); returns "young"."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_age_range(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    @locked
    def split_huge_pages(self, start_gfn: int, end_gfn: int, target_level: int = 1) -> None:
        """Eager split of the huge leaves of [start, end) down to ``target_level`` (no flush)."""
        check(self._h, lib.tdp_mmu_split_huge_pages(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn),
                                                    _int("target_level", target_level, 0, 99)))

    @locked
    def recover_huge_pages(self, start_gfn: int, end_gfn: int) -> bool:
        """Install huge leaves over tables where now possible (v6.13+); each root that changed is
        flushed at the end of its walk. Returns True when a flush was done."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_recover_huge_pages(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    @locked
    def recover_nx_huge_pages(self, count: int = 0) -> int:
        """One run of the NX-huge-page recovery worker; ``count=0`` uses ``nx_recovery_ratio``."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_mmu_recover_nx_huge_pages(self._h, _int("count", count, 0, 1 << 30), out))
        return out[0]

    # ---------------------------------------------------------------- inspection
    @locked
    def walk(self, gpa: int, access: str = "r", root: RootArg = None) -> WalkResult:
        """Walk a root for ``gpa`` as the hardware would (without side effects)."""
        w = ffi.new("struct tdp_walk_result *")
        check(self._h, lib.tdp_mmu_walk(self._h, self._rid(root), _int("gpa", gpa), _access_code(access), w))
        return walk_result_from_c(w)

    @locked
    def root_pointer(self, root: RootArg = None) -> int:
        """The EPTP (VMX) or nCR3 (SVM) value that loads this root."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_root_pointer(self._h, self._rid(root), out))
        return out[0]

    @locked
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

    @locked
    def spte(self, gfn: int, level: int = 1, root: RootArg = None) -> int:
        """The raw SPTE at ``level`` on the path to ``gfn``."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_mmu_read_spte(self._h, self._rid(root), _int("gfn", gfn), _int("level", level, 0, 99), out))
        return out[0]

    @property
    def stats(self) -> Dict[str, int]:
        """Counters (same as ``vm.stats``)."""
        return self._vm.stats


__all__ = ["MMU", "Root", "RootArg", "walk_result_from_c"]
