"""Plain result objects returned by the API (frozen dataclasses, no behaviour)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ._native import c_name_table, c_names, lib

#: Access kinds by their C code (enum tdp_access): "r", "w", "x", "xu".
ACCESS_NAMES: Tuple[str, ...] = c_name_table(lib.tdp_access_name)
#: Violation kinds by their C code (enum tdp_violation_kind).
VIOLATION_KINDS: Dict[int, str] = c_names(lib.tdp_violation_kind_name)
#: Access outcomes by their C code (enum tdp_access_outcome): "ok", "mmio", "livelock", "blocked".
OUTCOME_NAMES: Tuple[str, ...] = c_name_table(lib.tdp_access_outcome_name)
#: What a stale frame is now (enum tdp_frame_state), in words for Violation.frame_state.
FRAME_STATES: Dict[int, str] = {
    lib.TDP_FRAME_UNUSED: "a memslot page the gfn no longer maps",
    lib.TDP_FRAME_CURRENT: "the gfn's current page",
    lib.TDP_FRAME_FREE: "free",
    lib.TDP_FRAME_TABLE: "page table",
    lib.TDP_FRAME_GUEST: "guest page",
    lib.TDP_FRAME_RCU: "waiting for RCU",
}


@dataclass(frozen=True)
class WalkResult:
    """What a hardware walk found: the host physical address or the fault."""

    ok: bool
    hpa: Optional[int]
    fault: Optional[str]              # "violation", "misconfig", "npf"
    qualification: Optional[int]      # EPT violation exit qualification
    error_code: Optional[int]         # #NPF EXITINFO1
    level: int                        # leaf level, or the level of the entry that ended the walk
    refs: int                         # paging-structure entries read
    ad_writes: Tuple[Tuple[int, int, int], ...]  # (entry address, old, new)
    entries: Tuple[int, ...]          # raw entries read, top first


@dataclass(frozen=True)
class Violation:
    """A guest access that used a translation it must no longer have."""

    kind: str            # use_after_free, stale_page_table, lost_dirty, stale_write, livelock
    vcpu: int
    pcpu: int
    gpa: int
    tag: int             # EP4TA pfn (VMX) or ASID (SVM)
    stale_pfn: Optional[int]
    expected_pfn: Optional[int]  # the gfn's backing now; None when it has none
    event: int           # index of the operation that exposed it (its place in vm.events when recording)
    access: str
    level: int
    frame_state: str     # what the stale frame is now
    batch_index: int = 0
    root: Optional[int] = None   # state invariants and host walks (vcpu -1): the root id; invariants: the SPTE
    spte: Optional[int] = None

    def __str__(self) -> str:
        if self.spte is not None:
            return (f"{self.kind}: root {self.root} gfn {self.gpa >> 12:#x} level {self.level} spte {self.spte:#x} "
                    f"[event {self.event}]")
        if self.vcpu == -1 and self.root is not None and self.kind == "livelock":
            return (f"{self.kind}: the TDP MMU's walk of root {self.root} kept yielding at gfn {self.gpa >> 12:#x} "
                    f"(level {self.level}) without getting past it [event {self.event}]")
        if self.vcpu == -1 and self.root is not None:
            return (f"{self.kind}: the TDP MMU's walk of root {self.root} at gfn {self.gpa >> 12:#x} went on in "
                    f"table frame {self.stale_pfn:#x} of level {self.level} entries, freed under it "
                    f"({self.frame_state} now) [event {self.event}]")
        if self.kind == "stale_guest_translation":
            return (f"{self.kind}: vcpu {self.vcpu} on pcpu {self.pcpu} {self.access} through a combined TLB entry "
                    f"(gpa {self.gpa:#x}, frame {self.stale_pfn:#x}, tag {self.tag:#x}) its guest tables no longer give, "
                    f"after KVM serviced the flush the guest asked for (KVM_REQ_TLB_FLUSH_GUEST): KVM owes that "
                    f"flush [event {self.event}]")
        if self.kind == "tlb_tag_alias":
            held = "the host's ASID 0" if self.tag == 0 else "an ASID another VMCB on that pCPU holds in this generation"
            return (f"{self.kind}: vcpu {self.vcpu} runs (VMRUN) on pcpu {self.pcpu} with ASID {self.tag}, {held}: "
                    f"two address spaces share its TLB entries [event {self.event}]")
        exp = "none" if self.expected_pfn is None else hex(self.expected_pfn)
        stale = "-" if self.stale_pfn is None else hex(self.stale_pfn)
        return (f"{self.kind}: vcpu {self.vcpu} on pcpu {self.pcpu} {self.access} gpa {self.gpa:#x} "
                f"via tag {self.tag:#x} -> frame {stale} ({self.frame_state}); the gfn's frame now: {exp} "
                f"[event {self.event}]")


@dataclass(frozen=True)
class AccessResult:
    """One guest access."""

    outcome: str          # "ok", "mmio" (emulated), "livelock", "blocked" (an invalidation is in progress)
    hpa: Optional[int]
    tlb: Optional[str]    # "l1", "l2", or None (walked)
    faults: int
    walk_refs: int
    violation: Optional[Violation]


@dataclass(frozen=True)
class GuestAccessResult:
    """One guest-linear access with guest paging on (:meth:`tdpfast.guest.GuestPaging.access`)."""

    outcome: str          # "ok", "guest_page_fault" (the guest's tables refused it), "mmio", "livelock", "blocked"
    gpa: Optional[int]    # the guest-physical address the guest's tables gave (None on a guest #PF)
    hpa: Optional[int]
    tlb: Optional[str]    # "combined" (a combined TLB entry) or None (the 2D walk)
    guest_level: int      # the guest page's level: 1 4K, 2 2M, 3 1G (0: none)
    refs: int             # memory references: guest entries read + nested (EPT/NPT) references
    guest_refs: int
    nested_refs: int
    faults: int           # EPT violations / #NPFs KVM took on the way
    pf_error: Optional[int]  # guest_page_fault: the #PF error code (P 1, W 2, RSVD 8, I/D 16)
    stale_guest: bool     # the TLB gave what the guest's tables no longer say: the guest owes a flush
    violation: Optional[Violation]


@dataclass(frozen=True)
class GuestBatchResult:
    """Counts over a batch of guest-linear accesses (:meth:`tdpfast.guest.GuestPaging.access_batch`)."""

    accesses: int          # how many ran (all unless ``stopped``)
    ok: int
    guest_page_faults: int
    other: int             # mmio, livelock or blocked (guest-physical outcomes on the way)
    combined_hits: int
    walked: int            # 2D walks
    refs: int              # memory references of those walks
    faults: int            # EPT violations / #NPFs KVM took
    stale_guest: int       # hits the guest's tables no longer give (the guest owes a flush)
    violations: int
    requested: int
    stopped: Optional[str] = None

    @property
    def hit_rate(self) -> float:
        """Combined-TLB hits per access."""
        return self.combined_hits / self.accesses if self.accesses else 0.0


@dataclass(frozen=True)
class BatchResult:
    """Counts over an access batch; ``per_access`` holds numpy-friendly columns when asked."""

    accesses: int
    ok: int
    mmio: int
    livelock: int
    blocked: int
    walked: int
    l1_hits: int
    l2_hits: int
    faults: int
    violations: int
    per_access: Optional[dict] = field(default=None, compare=False)
    requested: int = 0
    stopped: Optional[str] = None   # why the batch stopped early (frame pool exhausted), if it did

    @property
    def hit_rate(self) -> float:
        return (self.l1_hits + self.l2_hits) / self.accesses if self.accesses else 0.0


@dataclass(frozen=True)
class Memslot:
    """A memslot: ``npages`` gfns from ``base_gfn``, backed from host pfn ``host_base_pfn``."""

    id: int
    base_gfn: int
    npages: int
    readonly: bool
    dirty_log: bool
    max_level: int
    host_base_pfn: int


@dataclass(frozen=True)
class Event:
    """One top-level operation of the event log."""

    index: int
    op: str
    args: Tuple[int, ...]
    batch: Optional[Tuple[Tuple[int, str], ...]] = None  # access_batch: (gpa, access) pairs
    raw: Tuple[int, ...] = field(default=(), compare=False, repr=False)  # the five logged words

    def __str__(self) -> str:
        return f"{self.index:4d} {self.op}({', '.join(hex(a) if a > 9 else str(a) for a in self.args)})"


__all__ = ["WalkResult", "Violation", "AccessResult", "BatchResult", "Memslot", "Event",
           "ACCESS_NAMES", "GuestAccessResult", "GuestBatchResult", "VIOLATION_KINDS", "OUTCOME_NAMES", "FRAME_STATES"]
