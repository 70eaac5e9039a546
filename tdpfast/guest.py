"""``vm.guest``: the guest's own paging -- its page tables in guest memory, each vCPU's
paging mode and CR3/PCID, guest-linear accesses through the two-dimensional walk
(every guest paging-structure reference translated through EPT/NPT), the combined TLB
entries they fill, and the guest's own TLB flushes (INVLPG, INVPCID, MOV to CR3).

The hypervisor's flushes act on the same entries: :meth:`tdpfast.VM.invvpid`,
:meth:`tdpfast.VM.invept` and SVM's TLB_CONTROL (:meth:`tdpfast.VM.set_tlb_control`)
drop combined mappings as the Intel SDM (Vol. 3C, "Operations that Invalidate Cached
Mappings") and the AMD APM (Vol. 2, 15.16 "TLB Control") say.

A minimal session::

    vm = tdpfast.VM()
    vm.add_memslot(0, 1 << 18)
    vm.vcpu_run(0, 0)
    g = vm.guest
    g.set_table_pool(0x3f000, 256)           # where the guest's tables live (guest-physical)
    cr3 = g.new_table()
    g.map(cr3, 0x7f0000000000, 0x5000)       # gva -> gpa, 4K, writable
    g.set_paging(0, levels=4)
    g.load_cr3(0, cr3)
    r = g.access(0, 0x7f0000000123, "w")     # the 2D walk: r.refs == 24 with every cache cold
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, NamedTuple, Optional, Sequence, Union

from ._args import _access_code, _bool, _choice, _int
from ._lock import locked
from ._native import check, ffi, lib
from .results import OUTCOME_NAMES, GuestAccessResult, GuestBatchResult

if TYPE_CHECKING:  # pragma: no cover
    from .vm import VM

#: INVPCID types by their code (Intel SDM Vol. 2A "INVPCID"): 0 individual address,
#: 1 single context, 2 all contexts including globals, 3 all contexts except globals.
INVPCID_KINDS = ("address", "single", "all", "all_except_globals")

_U64 = (1 << 64) - 1
_PERMS = ((1, "r"), (2, "w"), (4, "x"))


class GuestTranslation(NamedTuple):
    """What the guest's tables say for a gva (no caches, no EPT): :meth:`GuestPaging.translate`."""

    gpa: int
    level: int   # 1 4K, 2 2M, 3 1G
    perms: str   # "r", "rw", "rx", "rwx"


def _perm_text(p: int) -> str:
    return "".join(ch for bit, ch in _PERMS if p & bit)


class GuestPaging:
    """The guest's paging of one VM (``vm.guest``). Methods take the VM's lock."""

    __slots__ = ("_vm",)

    def __init__(self, vm: "VM"):
        self._vm = vm

    @property
    def _lock(self):
        return self._vm._lock

    @property
    def _h(self):
        return self._vm._h

    # ---------------------------------------------------------------- the guest's tables
    @locked
    def set_table_pool(self, start_gfn: int, npages: int) -> None:
        """Where :meth:`new_table` and :meth:`map` take guest page-table pages: the
        guest-physical pages ``[start_gfn, start_gfn + npages)`` (put them inside a memslot,
        or the walk's references to them are MMIO)."""
        check(self._h, lib.tdp_guest_set_pt_pool(self._h, _int("start_gfn", start_gfn), _int("npages", npages)))

    @locked
    def new_table(self) -> int:
        """An empty page-table page from the pool (a new top-level table for a CR3): its gfn."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_guest_new_table(self._h, out))
        return int(out[0])

    @locked
    def map(self, table: int, gva: int, gpa: int, *, level: int = 1, write: bool = True, nx: bool = False,
            global_page: bool = False, accessed: bool = False, dirty: bool = False, user: bool = False,
            levels: int = 4) -> None:
        """Map ``gva`` to ``gpa`` in the tables whose top is the gfn ``table`` (as the guest's
        kernel would: a plain write to its memory, no flush). Missing tables come from the
        pool; ``level`` 2 and 3 are 2M and 1G pages (``gva`` and ``gpa`` aligned). The call
        changes nothing when it fails (a huge page in the way, the pool used up)."""
        flags = 0
        for name, v, bit in (("write", write, lib.TDP_GPTE_WRITE), ("nx", nx, lib.TDP_GPTE_NX),
                             ("global_page", global_page, lib.TDP_GPTE_GLOBAL),
                             ("accessed", accessed, lib.TDP_GPTE_ACCESSED), ("dirty", dirty, lib.TDP_GPTE_DIRTY),
                             ("user", user, lib.TDP_GPTE_USER)):
            if _bool(name, v):
                flags |= bit
        check(self._h, lib.tdp_guest_map(self._h, _int("table", table), _int("levels", levels, 0, 8), _int("gva", gva),
                                         _int("gpa", gpa), _int("level", level, 0, 8), flags))

    @locked
    def unmap(self, table: int, gva: int, *, levels: int = 4) -> bool:
        """Clear the leaf that maps ``gva`` (no flush: that is the guest's to do). Whether
        one was present."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_guest_unmap(self._h, _int("table", table), _int("levels", levels, 0, 8),
                                           _int("gva", gva), out))
        return bool(out[0])

    @locked
    def write_pte(self, table: int, index: int, value: int) -> None:
        """Write one raw entry of a guest page-table page (any value: reserved bits too)."""
        check(self._h, lib.tdp_guest_write_pte(self._h, _int("table", table), _int("index", index, 0, 1 << 20),
                                               _int("value", value)))

    @locked
    def read_pte(self, table: int, index: int) -> int:
        """One raw entry of a guest page-table page (0 if never written)."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_guest_read_pte(self._h, _int("table", table), _int("index", index, 0, 1 << 20), out))
        return int(out[0])

    @locked
    def translate(self, table: int, gva: int, *, levels: int = 4) -> Optional[GuestTranslation]:
        """What the guest's tables say for ``gva`` now (no TLB, no EPT), or None."""
        gpa, level, perms = ffi.new("uint64_t *"), ffi.new("int *"), ffi.new("uint32_t *")
        r = lib.tdp_guest_translate(self._h, _int("table", table), _int("levels", levels, 0, 8), _int("gva", gva),
                                    gpa, level, perms)
        if r == lib.TDP_ENOENT:
            return None
        check(self._h, r)
        return GuestTranslation(int(gpa[0]), int(level[0]), _perm_text(perms[0]))

    # ---------------------------------------------------------------- a vCPU's paging
    @locked
    def set_paging(self, vcpu: int, levels: int = 4, *, pcide: bool = False) -> None:
        """Turn guest paging on (``levels`` 4 or 5) or off (0) for a vCPU in guest mode, with
        CR4.PCIDE; like a CR0/CR4 paging change it drops every combined entry of the current
        VPID (ASID on SVM), globals too."""
        check(self._h, lib.tdp_guest_set_paging(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("levels", levels, 0, 8),
                                                int(_bool("pcide", pcide))))

    @locked
    def load_cr3(self, vcpu: int, table: int, *, pcid: int = 0, noflush: bool = False) -> None:
        """MOV to CR3: the top table's gfn, the PCID (CR4.PCIDE=1) and bit 63 (``noflush``).
        Without ``noflush`` it drops the non-global entries of that PCID (PCID 0 when PCIDs are
        off) in the current VPID or ASID."""
        value = (_int("table", table, 0, (1 << 40) - 1) << 12) | _int("pcid", pcid, 0, 0xfff)
        check(self._h, lib.tdp_guest_load_cr3(self._h, _int("vcpu", vcpu, 0, 1 << 20),
                                              value | (int(_bool("noflush", noflush)) << 63)))

    @locked
    def access(self, vcpu: int, gva: int, access: str = "r") -> GuestAccessResult:
        """One guest-linear access: the combined TLB, else the 2D walk (each guest table
        reference and the final address through the guest-physical TLB, caches and EPT/NPT,
        with KVM's fault path and the checker), then a combined entry is filled."""
        o = ffi.new("struct tdp_guest_access_result *")
        check(self._h, lib.tdp_guest_access(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("gva", gva),
                                            _access_code(access), o))
        ok = o.outcome == lib.TDP_OUT_OK
        pf = o.outcome == lib.TDP_OUT_GUEST_PF
        return GuestAccessResult(
            outcome=OUTCOME_NAMES[o.outcome], gpa=None if pf else o.gpa, hpa=o.hpa if ok else None,
            tlb="combined" if o.tlb_hit else None, guest_level=o.guest_level, refs=o.refs, guest_refs=o.guest_refs,
            nested_refs=o.nested_refs, faults=o.faults, pf_error=o.pf_error if pf else None,
            stale_guest=bool(o.stale_guest),
            violation=self._vm._violation_at(o.violation - 1) if o.violation else None)

    @locked
    def access_batch(self, vcpu: int, gvas, access: Union[str, Sequence, object] = "r") -> GuestBatchResult:
        """Many guest-linear accesses in one C call: ``gvas`` any uint64 buffer (numpy array,
        array('Q')) or sequence, ``access`` one kind for all or a uint8 buffer / sequence of
        kinds (0 r, 1 w, 2 x, 3 xu). Every argument is checked before any access runs; a batch
        the frame pool cannot finish stops early (``stopped`` says why)."""
        from .vm import _batch_views

        counts = ffi.new("uint64_t[]", lib.TDP_GBATCH_NCOUNTS)
        done = ffi.new("size_t *")
        with _batch_views("gvas", gvas, access) as (n, gbuf, accs, default):
            check(self._h, lib.tdp_guest_access_batch(self._h, _int("vcpu", vcpu, 0, 1 << 20), gbuf, accs, default,
                                                      n, counts, done))
        got = done[0]
        stopped = (ffi.string(lib.tdp_errmsg(self._h)).decode(errors="replace") or "stopped early") if got < n else None
        return GuestBatchResult(
            accesses=got, ok=counts[lib.TDP_GBATCH_OK], guest_page_faults=counts[lib.TDP_GBATCH_GUEST_PF],
            other=counts[lib.TDP_GBATCH_OTHER], combined_hits=counts[lib.TDP_GBATCH_COMBINED_HITS],
            walked=counts[lib.TDP_GBATCH_WALKED], refs=counts[lib.TDP_GBATCH_REFS], faults=counts[lib.TDP_GBATCH_FAULTS],
            stale_guest=counts[lib.TDP_GBATCH_STALE_GUEST], violations=counts[lib.TDP_GBATCH_VIOLATIONS],
            requested=n, stopped=stopped)

    @locked
    def invlpg(self, vcpu: int, gva: int) -> None:
        """INVLPG: the page's entries for the current PCID and its global entries, in the
        current VPID/ASID, every EP4TA."""
        check(self._h, lib.tdp_guest_invlpg(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("gva", gva)))

    @locked
    def invpcid(self, vcpu: int, kind: str, pcid: int = 0, gva: int = 0) -> None:
        """INVPCID ``kind``: "address" (one page of ``pcid``, not globals), "single" (every
        non-global entry of ``pcid``), "all" (everything, globals too), "all_except_globals"."""
        _choice("INVPCID kind", kind, INVPCID_KINDS)
        check(self._h, lib.tdp_guest_invpcid(self._h, _int("vcpu", vcpu, 0, 1 << 20), INVPCID_KINDS.index(kind),
                                             _int("pcid", pcid, 0, 0xffffffff), _int("gva", gva)))

    @locked
    def pv_flush(self, vcpu: int) -> None:
        """The guest's paravirtual TLB flush of a preempted vCPU (not in guest mode): it sets
        KVM_VCPU_FLUSH_TLB in the vCPU's steal-time record and KVM turns that into
        ``KVM_REQ_TLB_FLUSH_GUEST`` at the vCPU's next entry. Once serviced, a combined entry
        filled before it that the guest's tables no longer give is KVM's to have flushed: the
        checker reports its use as ``stale_guest_translation``."""
        check(self._h, lib.tdp_guest_pv_flush(self._h, _int("vcpu", vcpu, 0, 1 << 20)))

    @locked
    def combined_entries(self, pcpu: int) -> List[dict]:
        """The live combined TLB entries of a pCPU: tag (``id`` = VPID or ASID, ``ep4ta``,
        ``pcid``), ``gva``, ``gpa``, ``hpa``, rights, ``global``, ``dirty``, ``guest_level``."""
        n = ffi.new("size_t *")
        p = _int("pcpu", pcpu, 0, 1 << 20)
        check(self._h, lib.tdp_combined_dump(self._h, p, ffi.NULL, 0, n))
        buf = ffi.new("struct tdp_combined_entry[]", max(n[0], 1))
        check(self._h, lib.tdp_combined_dump(self._h, p, buf, n[0], n))
        return [{"id": e.id, "ep4ta": e.ep4ta, "pcid": e.pcid, "gva": e.gva, "gpa": e.gpa, "hpa": e.hpa,
                 "perms": _perm_text(e.perms), "global": bool(e.is_global), "dirty": bool(e.dirty),
                 "guest_level": e.guest_level} for e in (buf[i] for i in range(n[0]))]


__all__ = ["GuestPaging", "GuestTranslation", "INVPCID_KINDS"]
