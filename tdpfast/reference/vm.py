"""The reference VM's lifecycle (the C engine's counterpart is csrc/vm.c): its state
(:class:`Kvm`: ``struct kvm`` and the host), creation with the checks of
tdp_vm_create(), the operation bracket, the counters and the results.

The reference model is a pure-Python executable specification of KVM x86's TDP MMU, the
per-pCPU TLBs it must keep coherent, and the checker -- with the same public API as
:class:`tdpfast.VM`.  It shares no code with the C engine: only the result types
(``tdpfast.results``), the exceptions (``tdpfast.errors``), the configuration types
(``tdpfast.Policy``, ``tdpfast.TLBConfig``) and the event vocabulary (``tdpfast.events``).
It is slow and meant to be read; the files follow KVM's (arch/x86/kvm/) and the engine's:

* :mod:`.spte` -- SPTE encodings (mmu/spte.h, spte.c),
* :mod:`.hostmem` -- the frame pool with LIFO reuse and RCU-deferred frees,
* :mod:`.tdp_iter` -- the TDP iterator (mmu/tdp_iter.c),
* :mod:`.tdp_mmu` -- roots, zaps and the other SPTE writers, kvm_tdp_mmu_map() (mmu/tdp_mmu.c),
* :mod:`.mmu` -- the page-fault entry, kvm_mmu_zap_all_fast(), NX recovery and the
  callers' flush contracts of the stepped operations (mmu/mmu.c),
* :mod:`.mmu_notifier` -- host unmap, migration and aging (virt/kvm/kvm_main.c),
* :mod:`.memslot` -- the guest memory truth, dirty logging, write tracking,
* :mod:`.tlb` -- TLBs and paging-structure caches,
* :mod:`.page_walker` -- the hardware walk the TLBs are filled from,
* :mod:`.cpu` -- vCPUs, requests, vendor flushes and guest accesses (x86.c, vmx/vmx.c, svm/svm.c),
* :mod:`.checker` -- every violation decision,
* :mod:`.event` -- the event log and replay,
* :mod:`.api` -- ``vm.mmu`` and the vCPU, access and flush calls.

**Known deviations of the C engine** can be reproduced on request with
``VM(..., quirks=KNOWN_C_QUIRKS)`` (each one is described in :data:`KNOWN_C_QUIRKS`);
by default the reference follows KVM.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional

from ..errors import InvalidArgumentError, InvalidStateError, NotFoundError
from ..policy import Policy
from ..results import Violation
from ..tlbconfig import TLBConfig
from . import api, checker, cpu, hostmem, memslot as ms, page_walker, tdp_mmu
from ._args import U64, _int
from .api import VcpuApi
from .event import EventLogApi, KvmEventLog
from .memslot import MemslotApi
from .mmu import SteppedOps
from .mmu_notifier import NotifierApi
from .spte import Masks
from .tlb import TLB

if TYPE_CHECKING:  # pragma: no cover
    from .mmu import _StepOp

#: Deviations of the C engine from KVM's behaviour that the reference can reproduce on request.
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
    "rcu_grace_periods cycles "
    # guest paging (csrc/guest_paging.c): not in the reference model, so always 0 here
    "guest_accesses combined_hits combined_misses combined_fills guest_walk_refs "
    "guest_ad_updates guest_page_faults guest_stale_hits guest_flushes nested_entries nested_exits").split()
_GAUGES = ("pages_4k", "pages_2m", "pages_1g", "mmu_pages", "nx_lpage_splits")

#: Cycle costs.  [MODEL CHOICE] The flush costs are Dave Hansen's flush_tlb_mm_range()
#: cycle counts (linux-mm, 18 Feb 2014; the measurements behind x86's
#: tlb_single_page_flush_ceiling of 33): 2283 for a full flush, 1276 for one page.
DEFAULT_COSTS = {"spte_write": 20, "walk_ref": 40, "tlb_hit": 1, "tlb_miss": 10, "flush_current": 1276,
                 "flush_all": 2283, "flush_range_page": 150, "ipi": 6000, "vm_exit": 1000,
                 "vm_entry": 1000, "fault": 2000, "remote_flush": 3000}

HOST_SLOT_REGION_OFFSET = 1 << 38   # memslot regions start 256 GiB above the pool base


class Kvm(KvmEventLog):
    """Everything the model knows (struct kvm + the host): what the modules operate on."""

    def masks_for(self, policy: Policy) -> Masks:
        """The mask set for this VM's format under ``policy`` (ept_soft_ad: v6.13)."""
        if self.cfg.arch == "vmx":
            return Masks.for_ept(self.cfg.ad, policy.ept_soft_ad)
        return Masks.for_npt()

    def __init__(self, cfg: SimpleNamespace, tlbcfg: TLBConfig, policy: Policy, costs: Dict[str, int],
                 quirks: Iterable[str]):
        self.cfg, self.pol, self.costs = cfg, policy, costs
        self.quirks = frozenset(quirks)
        self.masks = self.masks_for(policy)
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
        self.nlogged = 0                              # events logged, recorded or not (cfg.record off)
        self.cur_event = 0
        self.inv_reported: set = set()                # state-invariant kinds already reported
        self.ops: List["_StepOp"] = []                # stepped operations in flight (.mmu)
        self.next_op_id = 0

    # --- small services the modules use ---------------------------------------------------
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

    # --- operation bracket ------------------------------------------------------------------
    def op_begin(self) -> None:
        self.cur_event = self.nlogged

    def op_end(self) -> None:
        if self.pol.rcu_gp_at_op_end:
            self.mem.synchronize_rcu()
        self.stats["rcu_grace_periods"] = self.mem.grace_periods

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


class VM(MemslotApi, NotifierApi, VcpuApi, SteppedOps, EventLogApi):
    """The reference VM: same constructor and methods as :class:`tdpfast.VM` (except
    ``digest``, ``trace`` and ``fuzz``, which describe the C engine's internals), plus
    ``quirks`` -- names from :data:`KNOWN_C_QUIRKS` to reproduce on purpose.

    The calls live with what they model: memslots, dirty logging and write tracking in
    :mod:`.memslot`, the host's calls in :mod:`.mmu_notifier`, ``vm.mmu`` and the vCPU,
    access and flush calls in :mod:`.api`, stepped operations in :mod:`.mmu`, the event
    log and replay in :mod:`.event`; this class holds the lifecycle and the results."""

    def __init__(self, arch: str = "vmx", levels: int = 4, seed: int = 0, *, vcpus: int = 1, pcpus: int = 1,
                 tlb: Optional[TLBConfig] = None, policy: Optional[Policy] = None, ad: bool = True,
                 mbec: bool = False, maxphyaddr: int = 46, hpa_base: int = 1 << 30,
                 frame_limit: Optional[int] = None, max_asid: int = 32767, min_asid: int = 1,
                 flush_by_asid: bool = True, trace: bool = False, record: bool = False,
                 costs: Optional[Dict[str, int]] = None, quirks: Iterable[str] = (), invariants=False,
                 bulk: bool = True, invariant_walk: str = "incremental", mutant: Optional[str] = None,
                 inject: Optional[str] = None):
        # ``bulk`` is the C engine's whole-table fast path, which gives the same results as the
        # per-SPTE path; the reference model has only the latter and takes the flag for parity.
        # So is ``invariant_walk`` (how the C engine walks the tables for their invariants,
        # which the reference model does not check).
        # ``mutant`` and ``inject`` change the C engine on purpose (its mutation test, an injected
        # bug): the specification has neither, and takes only their "none".
        if mutant is not None or inject is not None:
            raise InvalidArgumentError("the reference model is the engine as specified: it takes no mutant= "
                                       "or inject=")
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
                            flush_by_asid=flush_by_asid, trace=trace, record=record, costs=costs, quirks=quirks,
                            invariants=invariants)
        cfg = SimpleNamespace(
            arch=arch, levels=_int("levels", levels, 0, 99), seed=_int("seed", seed),
            nvcpus=_int("vcpus", vcpus, 0, 1 << 20), npcpus=_int("pcpus", pcpus, 0, 1 << 20), ad=bool(ad),
            mbec=bool(mbec), maxphyaddr=_int("maxphyaddr", maxphyaddr, 0, 64), hpa_base=_int("hpa_base", hpa_base),
            frame_limit=0 if frame_limit is None else _int("frame_limit", frame_limit, 1, 1 << 26),
            max_asid=_int("max_asid", max_asid, 0, 0xFFFFFF), min_asid=_int("min_asid", min_asid, 0, 0xFFFFFF),
            flush_by_asid=bool(flush_by_asid), record=bool(record),
            invariants=checker.invariants_mask(invariants))
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
        self.mmu = api.MMU(self)

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
        self._k.masks = self._k.masks_for(policy)  # the masks follow the release (ept_soft_ad)

    @property
    def quirks(self) -> frozenset:
        return self._k.quirks

    def fresh(self, **changes) -> "VM":
        kw = dict(self._kwargs)
        kw.update(changes)
        return VM(**kw)

    # --- results -------------------------------------------------------------------------------
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

    def __repr__(self) -> str:
        return (f"reference.VM(arch={self.arch!r}, levels={self.levels}, vcpus={self.nvcpus}, "
                f"pcpus={self.npcpus}, roots={len(self.mmu.roots)}, memslots={len(self.memslots)})")
