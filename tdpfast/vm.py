"""The VM: the thin Python face of the C model (one C handle, hot loops in C). ``vm.mmu``
lives in :mod:`tdpfast.mmu`, ``vm.guest`` (the guest's own paging) in :mod:`tdpfast.guest`,
stepped operations in :mod:`tdpfast.ops`, the event vocabulary and replay in
:mod:`tdpfast.events`."""
from __future__ import annotations

import array
import contextlib
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Union

from . import _native, events as _events, flush_sites as _flush_sites, invariants as _invariants, ops as _ops
from ._args import _access_code, _bool, _choice, _int
from ._lock import locked
from ._native import c_name_table, c_names, check, ffi, lib
from .errors import InvalidArgumentError, InvalidStateError, ReplayError, TdpError
from .events import OPS
from .guest import GuestPaging
from .mmu import MMU, Root, walk_result_from_c  # noqa: F401  (walk_result_from_c: tdpfast.hw)
from .ops import Op
from .policy import Policy
from .results import (ACCESS_NAMES, FRAME_STATES, OUTCOME_NAMES, VIOLATION_KINDS, AccessResult, BatchResult,
                      Event, Memslot, Violation)
from .tlbconfig import TLBConfig

_NO_PFN = (1 << 64) - 1
_STATE_KINDS = range(lib.TDP_V_NOTIFIER_RANGE_MAPPED, lib.TDP_V_UNLOGGED_WRITABLE + 1)  # state invariants' kinds
_ARCH = {name: code for code, name in c_names(lib.tdp_arch_name).items()}
_INVARIANT_WALK = {"incremental": lib.TDP_INV_WALK_INCREMENTAL, "full": lib.TDP_INV_WALK_FULL,
                   "crosscheck": lib.TDP_INV_WALK_CROSSCHECK}
#: KVM requests by name -> request bit (enum tdp_request; read from the binding).
REQUESTS = {name: bit for bit, name in c_names(lib.tdp_request_name, (1 << i for i in range(32))).items()}
_MODES = c_name_table(lib.tdp_vcpu_mode_name)
_TLB_HIT = {lib.TDP_TLB_WALKED: None, lib.TDP_TLB_HIT_L1: "l1", lib.TDP_TLB_HIT_L2: "l2"}


class VM:
    """A VM with KVM's TDP MMU, vCPUs on physical CPUs with TLBs, and the checker.

    ``kernel="6.12"`` selects a KVM release's behaviour (``Policy.release()``; default: v6.13,
    ``tdpfast.policy.DEFAULT_RELEASE``); ``policy=`` gives every switch instead.

    >>> vm = VM(arch="vmx", vcpus=2, pcpus=2)
    >>> slot = vm.add_memslot(0, 512)
    >>> vm.vcpu_run(0, 0); vm.access(0, 0x1000, "w").outcome
    'ok'

    Parameters (all but the first three are keyword-only; flags must be ``True`` or ``False``):

    - ``arch``: ``"vmx"`` (Intel EPT, VPIDs, INVEPT) or ``"svm"`` (AMD NPT, ASIDs, TLB_CONTROL).
    - ``levels``: 4 or 5 paging levels of the TDP tables.
    - ``seed``: seeds every random choice (TLB replacement, junk entries); same seed and
      inputs give the same state, digest and event log.
    - ``vcpus``, ``pcpus``: numbers of vCPUs and physical CPUs (1..4096 each).
    - ``tlb``: a :class:`TLBConfig` for every pCPU (default ``TLBConfig.adversarial()``,
      which never evicts).
    - ``policy``: the flush :class:`Policy` (default ``Policy.kvm()``, KVM v6.13); can be
      changed later through ``vm.policy``.
    - ``kernel``: a KVM release (``"5.17"``, ``"6.6"``, ``"6.12"``, ``"6.13"``) instead of
      ``policy``: ``Policy.release(kernel)``.
    - ``ad``: EPT accessed/dirty flags (VMX; NPT always has them).
    - ``mbec``: EPT mode-based execute control (separate user/supervisor execute).
    - ``maxphyaddr``: host and guest physical-address width, 36..52 (above 48 needs levels=5).
    - ``hpa_base``: host physical address of the first frame of the page-table pool (4 KiB aligned).
    - ``frame_limit``: size of the host frame pool in 4 KiB frames (None: unlimited). Each
      access keeps ``levels + 1`` frames free for its fault and the root takes one, so
      smaller limits than ``levels + 2`` are refused (they could never fault).
    - ``max_asid``, ``min_asid``: SVM's ASID range per pCPU.
    - ``flush_by_asid``: SVM FlushByAsid (TLB_CONTROL 3) instead of a new ASID per flush.
    - ``trace``: keep the internal trace of flushes, zaps and fills (:meth:`trace`); grows
      with every operation.
    - ``record``: keep the event log (:attr:`events`, :meth:`event_log`, :meth:`replay`,
      pickling). **Off by default**, so a long-running VM uses constant memory: the log
      keeps every operation (41 bytes, plus 9 per access of a batch) and grows without
      bound. Violations carry their event's index either way.
    - ``costs``: overrides of the cycle cost model (``{"ipi": 6000, ...}``; ``vm.stats["cycles"]``).
    - ``invariants``: check KVM's state invariants after every operation and at yield points
      (``True``, ``False`` or a collection of names from ``tdpfast.invariants``), each
      breach a violation of its own kind; off by default (it costs about a quarter of the
      explorer's throughput), on in ``tdpfast fuzz``.
    - ``invariant_walk``: how the tables' and roots' invariants are checked, with the same
      verdicts: ``"incremental"`` (default: only the tables written or re-purposed since
      the last check are read again; anything wrong hands over to the full walk, which
      reports), ``"full"`` (every table from the roots each time: the specification), or
      ``"crosscheck"`` (both; a disagreement is an engine warning in :meth:`health`).
    - ``bulk``: let zaps and ``map_range`` process whole tables in one loop where nothing can
      observe the single steps (same tables, counters, costs and events); ``False`` keeps
      the per-SPTE paths only.
    - ``mutant``: the engine's mutation test: the name of one of the engine's flush sites
      (``tdpfast.flush_sites.SITES``, e.g. ``"yield"``) to remove, under whatever policy is
      given; ``None`` (the default) is the engine as it is.
    - ``inject``: a test hook that puts a memory-safety bug into the engine, to show it is
      reported rather than followed: ``"stale_iter"`` makes the TDP iterator go on after a
      yield from the tables it held instead of restarting from the root; a table freed
      meanwhile is reported as a ``use_after_free`` of that page-table page (no vCPU);
      ``"stale_fault"`` makes a ``page_fault`` operation's second half skip
      ``is_page_fault_stale()`` and map the host page its first half saw;
      ``"no_progress"`` lets the TDP iterator yield again where it last yielded (KVM
      before ed5e484b79e8): a walk that keeps yielding at one gfn is reported as a
      ``livelock`` of that root walk (no vCPU) and ends, instead of never returning.

    A VM is safe to share between threads: every call holds the VM's own lock while it
    touches the model (calls on one VM run one at a time; separate VMs run in parallel).
    ``pickle`` and ``copy.deepcopy`` work for a recording VM (its configuration and event
    log are replayed, and the digest checked); ``copy.copy`` is the same deep copy.
    """

    def __init__(self, arch: str = "vmx", levels: int = 4, seed: int = 0, *, vcpus: int = 1, pcpus: int = 1,
                 tlb: Optional[TLBConfig] = None, policy: Optional[Policy] = None, ad: bool = True,
                 mbec: bool = False, maxphyaddr: int = 46, hpa_base: int = 1 << 30,
                 frame_limit: Optional[int] = None, max_asid: int = 32767, min_asid: int = 1,
                 flush_by_asid: bool = True, trace: bool = False, record: bool = False,
                 costs: Optional[Dict[str, int]] = None, kernel: Optional[str] = None, bulk: bool = True,
                 invariants=False, invariant_walk: str = "incremental", mutant: Optional[str] = None,
                 inject: Optional[str] = None):
        self._lock = threading.RLock()
        self._unlogged: List[tuple] = []   # (event count, what) of state changes the log does not hold
        if not isinstance(arch, str) or arch not in _ARCH:
            raise InvalidArgumentError(f"arch must be 'vmx' or 'svm', got {arch!r}")
        for flag, value in (("ad", ad), ("mbec", mbec), ("flush_by_asid", flush_by_asid), ("trace", trace),
                            ("record", record), ("bulk", bulk)):
            _bool(flag, value)
        if invariant_walk not in _INVARIANT_WALK:
            raise InvalidArgumentError(f"invariant_walk must be one of {', '.join(map(repr, _INVARIANT_WALK))}, "
                                       f"got {invariant_walk!r}")
        if costs is not None and not isinstance(costs, dict):
            raise InvalidArgumentError(f"costs must be a dict of cost name to cycles, got {type(costs).__name__}")
        tlb = TLBConfig.adversarial() if tlb is None else tlb
        if kernel is not None:
            # A release is a set of policy switch values (Policy.release()); one or the other.
            if policy is not None:
                raise InvalidArgumentError("give kernel= or policy=, not both "
                                           "(Policy.release(kernel).replace(...) combines them)")
            policy = Policy.release(kernel)
        policy = Policy.kvm() if policy is None else policy
        if not isinstance(tlb, TLBConfig):
            raise InvalidArgumentError(f"tlb must be a TLBConfig, got {type(tlb).__name__}")
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        self._kwargs = dict(arch=arch, levels=levels, seed=seed, vcpus=vcpus, pcpus=pcpus, tlb=tlb,
                            policy=policy, ad=ad, mbec=mbec, maxphyaddr=maxphyaddr, hpa_base=hpa_base,
                            frame_limit=frame_limit, max_asid=max_asid, min_asid=min_asid,
                            flush_by_asid=flush_by_asid, trace=trace, record=record, costs=costs, bulk=bulk,
                            invariants=invariants, invariant_walk=invariant_walk, mutant=mutant, inject=inject)
        cfg = ffi.new("struct tdp_config *")
        lib.tdp_default_config(cfg)
        cfg.arch = _ARCH[arch]
        cfg.levels = _int("levels", levels, 0, 99)
        cfg.seed = _int("seed", seed)
        cfg.nvcpus = _int("vcpus", vcpus, 0, 1 << 20)
        cfg.npcpus = _int("pcpus", pcpus, 0, 1 << 20)
        cfg.ad = int(ad)
        cfg.mbec = int(mbec)
        cfg.maxphyaddr = _int("maxphyaddr", maxphyaddr, 0, 64)
        cfg.hpa_base = _int("hpa_base", hpa_base)
        cfg.frame_limit = 0 if frame_limit is None else _int("frame_limit", frame_limit, 1, 1 << 26)
        cfg.max_asid = _int("max_asid", max_asid, 0, 0xffffff)
        cfg.min_asid = _int("min_asid", min_asid, 0, 0xffffff)
        cfg.flush_by_asid = int(flush_by_asid)
        cfg.trace = int(trace)
        cfg.record = int(record)
        cfg.no_bulk = int(not bulk)   # bulk=False: the per-SPTE paths only (tests/test_bulk_paths.py)
        # State invariants (tdpfast/invariants.py): True, False, or a collection of names.
        cfg.invariants = _invariants.mask(invariants)
        cfg.invariant_walk = _INVARIANT_WALK[invariant_walk]
        # The engine's mutation test (tdpfast/flush_sites.py): one flush site removed.
        cfg.mutant = _flush_sites.site_id(mutant)
        if inject not in (None, "stale_iter", "stale_fault", "no_progress"):
            raise InvalidArgumentError(f"inject must be None, 'stale_iter', 'stale_fault' or 'no_progress', "
                                       f"got {inject!r}")
        cfg.stale_iter = int(inject == "stale_iter")
        cfg.stale_fault = int(inject == "stale_fault")
        cfg.no_progress = int(inject == "no_progress")
        c_costs = ffi.new("struct tdp_costs *")
        lib.tdp_default_costs(c_costs)
        for k, v in (costs or {}).items():
            if not isinstance(k, str) or k not in dir(c_costs):
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
        self.guest = GuestPaging(self)

    # ---------------------------------------------------------------- copies and pickling
    def __reduce__(self):
        """Pickle (and ``copy.deepcopy``) through the configuration and the event log: the
        copy replays the log on a fresh VM and must reach the same digest. A VM that does
        not record (``record=False``, the default) can be pickled only while nothing has
        happened to it."""
        with self._lock:
            kwargs = dict(self._kwargs)
            if kwargs["record"]:
                if lib.tdp_dropped_records(self._h):
                    raise InvalidStateError("cannot copy or pickle this VM: its event log lost records "
                                            "(out of host memory), so it no longer reproduces the state")
                log = self.event_log()
            elif self.digest() == self.fresh().digest() and not self._unlogged:
                log = None
            else:
                raise InvalidStateError("cannot copy or pickle a VM that does not record its event log once "
                                        "it has run operations: create it with VM(..., record=True)")
            return (_restore, (kwargs, log, list(self._unlogged), self.digest()))

    def __copy__(self) -> "VM":
        """A shallow copy would share the C model: ``copy.copy`` makes the deep copy."""
        return _restore(*self.__reduce__()[1])

    def __deepcopy__(self, memo) -> "VM":
        return _restore(*self.__reduce__()[1])

    # ---------------------------------------------------------------- configuration
    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    @locked
    def policy(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy, got {type(policy).__name__}")
        check(self._h, lib.tdp_set_policy(self._h, policy._to_c(ffi)))
        self._policy = policy
        self._unlogged.append((lib.tdp_event_count(self._h), "policy", policy))

    def fresh(self, **changes) -> "VM":
        """A new VM with the same configuration (``changes`` override keyword arguments)."""
        kw = dict(self._kwargs)
        unknown = sorted(set(changes) - set(kw))
        if unknown:
            raise InvalidArgumentError(f"fresh(): unknown VM parameter(s) {', '.join(unknown)}; parameters: "
                                       f"{', '.join(kw)}")
        kw.update(changes)
        return VM(**kw)

    # ---------------------------------------------------------------- memslots and host events
    @locked
    def add_memslot(self, base_gfn: int, npages: int, *, readonly: bool = False, dirty_log: bool = False,
                    max_level: int = 3) -> Memslot:
        """Back gfns [base_gfn, base_gfn + npages) with host memory; returns the slot."""
        out = ffi.new("int *")
        flags = ((lib.TDP_SLOT_READONLY if _bool("readonly", readonly) else 0)
                 | (lib.TDP_SLOT_DIRTY_LOG if _bool("dirty_log", dirty_log) else 0))
        check(self._h, lib.tdp_memslot_add(self._h, _int("base_gfn", base_gfn), _int("npages", npages), flags,
                                           _int("max_level", max_level, 0, 99), out))
        return self.memslot(out[0])

    @locked
    def memslot(self, slot_id: int) -> Memslot:
        info = ffi.new("struct tdp_memslot_info *")
        check(self._h, lib.tdp_memslot_info(self._h, _int("slot", slot_id, 0, 1 << 30), info))
        return Memslot(info.id, info.base_gfn, info.npages, bool(info.flags & lib.TDP_SLOT_READONLY),
                       bool(info.flags & lib.TDP_SLOT_DIRTY_LOG),
                       info.max_level, info.host_base_pfn)

    @property
    @locked
    def memslots(self) -> List[Memslot]:
        """Every memslot, by id (the list is sized by the engine: never truncated)."""
        n = ffi.new("int *")
        lib.tdp_memslot_list(self._h, ffi.NULL, 0, n)
        while True:
            cap = n[0]
            ids = ffi.new("int[]", max(cap, 1))
            lib.tdp_memslot_list(self._h, ids, cap, n)
            if n[0] <= cap:
                return [self.memslot(ids[i]) for i in range(n[0])]

    def _slot_id(self, slot: Union[Memslot, int]) -> int:
        return slot.id if isinstance(slot, Memslot) else _int("slot", slot, 0, 1 << 30)

    @locked
    def delete_memslot(self, slot: Union[Memslot, int]) -> None:
        """Delete a memslot: kvm_mmu_zap_all_fast() (or the B18 precise zap), then drop its pages."""
        check(self._h, lib.tdp_memslot_delete(self._h, self._slot_id(slot)))

    @locked
    def backing(self, gfn: int) -> Optional[int]:
        """The host pfn backing ``gfn`` now (None: no memslot, or unmapped by the host)."""
        out = ffi.new("uint64_t *")
        lib.tdp_gfn_backing(self._h, _int("gfn", gfn), out)
        return None if out[0] == _NO_PFN else out[0]

    @locked
    def host_unmap(self, start_gfn: int, end_gfn: int) -> None:
        """MMU-notifier invalidation of [start, end): zap every root, flush, then the host frees the pages."""
        check(self._h, lib.tdp_host_unmap(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn)))

    @locked
    def host_migrate(self, gfn: int) -> int:
        """Host page migration: the gfn's page moves to a new frame (returned) after an invalidation."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_host_migrate(self._h, _int("gfn", gfn), out))
        return out[0]

    @locked
    def host_age(self, start_gfn: int, end_gfn: int) -> bool:
        """MMU-notifier clear_flush_young over [start, end) (no flush on x86, ~v6.13+)."""
        out = ffi.new("int *")
        check(self._h, lib.tdp_host_age(self._h, _int("start_gfn", start_gfn), _int("end_gfn", end_gfn), out))
        return bool(out[0])

    @locked
    def set_dirty_logging(self, slot: Union[Memslot, int], enable: bool = True) -> None:
        """Enable (split, write-protect, flush) or disable (recover huge pages) dirty logging."""
        check(self._h, lib.tdp_dirty_log_enable(self._h, self._slot_id(slot), int(_bool("enable", enable))))

    @locked
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

    @locked
    def write_protect_gfn(self, gfn: int, enable: bool = True) -> None:
        """KVM's gfn write tracking: write-protect ``gfn`` (flushing if an SPTE changed) or release it."""
        check(self._h, lib.tdp_write_protect_gfn(self._h, _int("gfn", gfn), int(_bool("enable", enable))))

    # ---------------------------------------------------------------- vCPUs
    @locked
    def vcpu_run(self, vcpu: int, pcpu: int) -> None:
        """Leave guest mode wherever the vCPU is, load it on ``pcpu``, service requests, enter the guest."""
        check(self._h, lib.tdp_vcpu_run(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("pcpu", pcpu, 0, 1 << 20)))

    @locked
    def vcpu_exit(self, vcpu: int) -> None:
        """Leave guest mode (the vCPU stays loaded where it was)."""
        check(self._h, lib.tdp_vcpu_exit(self._h, _int("vcpu", vcpu, 0, 1 << 20)))

    @locked
    def vcpu_request(self, vcpu: int, *requests: str) -> None:
        """kvm_make_request() of the named requests (kicks the vCPU out of guest mode)."""
        bits = 0
        for r in requests:
            if not isinstance(r, str) or r not in REQUESTS:
                raise InvalidArgumentError(f"unknown request {r!r}; requests: {', '.join(REQUESTS)}")
            bits |= REQUESTS[r]
        check(self._h, lib.tdp_vcpu_request(self._h, _int("vcpu", vcpu, 0, 1 << 20), bits))

    @locked
    def nested_enter(self, vcpu: int) -> None:
        """Nested VM-entry: the vCPU (in guest mode) runs L2, with L2's own TDP root
        (role.guest_mode) and TLB tag (VPID02 / vmcb02's ASID), after KVM's nested TLB-flush
        rule (L1 runs L2 without nested EPT/NPT)."""
        check(self._h, lib.tdp_nested_enter(self._h, _int("vcpu", vcpu, 0, 1 << 20)))

    @locked
    def nested_invvpid(self, vcpu: int, kind: str, vpid: int, gla: int = 0) -> None:
        """L1 (the vCPU runs L1) executes INVVPID for its L2 (``kind`` as :meth:`invvpid`, ``vpid``
        the vmcs12 VPID it names): KVM emulates it on VPID02, on the vCPU's pCPU
        (``handle_invvpid()``)."""
        kinds = _events.INVVPID_KINDS
        _choice("INVVPID kind", kind, kinds)
        check(self._h, lib.tdp_nested_invvpid(self._h, _int("vcpu", vcpu, 0, 1 << 20), kinds.index(kind),
                                              _int("vpid", vpid, 0, 0xffffffff), _int("gla", gla)))

    @locked
    def nested_exit(self, vcpu: int) -> None:
        """Nested VM-exit: the vCPU goes back to L1's root and tag."""
        check(self._h, lib.tdp_nested_exit(self._h, _int("vcpu", vcpu, 0, 1 << 20)))

    @locked
    def vcpu_info(self, vcpu: int) -> dict:
        """Mode, placement, root, pending requests and (SVM) ASID of a vCPU."""
        i = ffi.new("struct tdp_vcpu_info *")
        check(self._h, lib.tdp_vcpu_info(self._h, _int("vcpu", vcpu, 0, 1 << 20), i))
        return {"mode": _MODES[i.mode], "pcpu": None if i.pcpu < 0 else i.pcpu,
                "last_pcpu": None if i.last_pcpu < 0 else i.last_pcpu, "root": i.root_id or None,
                "requests": [k for k, b in REQUESTS.items() if i.requests & b], "asid": i.asid,
                "asid_generation": i.asid_generation, "vpid": i.vpid, "tlb_control": i.tlb_control,
                "in_l2": bool(i.in_l2), "other_root": i.l2_root_id or None, "guest_levels": i.guest_levels,
                "guest_cr3": i.guest_cr3}

    @locked
    def pcpu_info(self, pcpu: int) -> dict:
        """Who runs on a pCPU, its ASID allocator (SVM) and how many TLB/PSC entries are live."""
        i = ffi.new("struct tdp_pcpu_info *")
        check(self._h, lib.tdp_pcpu_info(self._h, _int("pcpu", pcpu, 0, 1 << 20), i))
        return {"vcpu": None if i.vcpu < 0 else i.vcpu, "asid_generation": i.asid_generation,
                "next_asid": i.next_asid, "min_asid": i.min_asid, "max_asid": i.max_asid,
                "tlb_entries": i.tlb_entries, "psc_entries": i.psc_entries}

    @locked
    def access(self, vcpu: int, gpa: int, access: str = "r") -> AccessResult:
        """One guest access by a vCPU in guest mode: TLB, walk, fault path, and the checker."""
        out = ffi.new("struct tdp_access_result *")
        check(self._h, lib.tdp_access(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("gpa", gpa),
                                      _access_code(access), out))
        return self._access_result(out)

    def _access_result(self, o) -> AccessResult:
        v = self._violation_at(o.violation - 1) if o.violation else None
        return AccessResult(outcome=OUTCOME_NAMES[o.outcome], hpa=o.hpa if o.outcome == lib.TDP_OUT_OK else None,
                            tlb=_TLB_HIT[o.tlb_hit], faults=o.faults, walk_refs=o.walk_refs,
                            violation=v)

    @locked
    def access_batch(self, vcpu: int, gpas, access: Union[str, Sequence, object] = "r", *,
                     per_access: bool = False) -> BatchResult:
        """Many accesses in one C call. ``gpas``: any uint64 buffer (numpy array, array('Q')) or
        a sequence; ``access``: one kind for all, or a uint8 buffer / sequence of kinds (0 r, 1 w,
        2 x, 3 xu). With ``per_access=True`` the result carries per-access columns."""
        _bool("per_access", per_access)
        counts = ffi.new("uint64_t[]", lib.TDP_BATCH_NCOUNTS)
        done = ffi.new("size_t *")
        with _batch_views("gpas", gpas, access) as (n, gbuf, accs, default):
            per = ffi.new("struct tdp_access_result[]", n) if per_access and n else ffi.NULL
            check(self._h, lib.tdp_access_batch(self._h, _int("vcpu", vcpu, 0, 1 << 20), gbuf, accs, default, n,
                                                per, counts, done))
        got = done[0]
        stopped = None
        if got < n:
            stopped = ffi.string(lib.tdp_errmsg(self._h)).decode(errors="replace") or "stopped early"
        cols = None
        if per_access and got:
            cols = {"outcome": [per[i].outcome for i in range(got)], "hpa": [per[i].hpa for i in range(got)],
                    "tlb": [per[i].tlb_hit for i in range(got)], "faults": [per[i].faults for i in range(got)],
                    "violation": [per[i].violation for i in range(got)]}
        return BatchResult(accesses=got, ok=counts[lib.TDP_BATCH_OK], mmio=counts[lib.TDP_BATCH_MMIO],
                           livelock=counts[lib.TDP_BATCH_LIVELOCK], blocked=counts[lib.TDP_BATCH_BLOCKED],
                           walked=counts[lib.TDP_BATCH_WALKED], l1_hits=counts[lib.TDP_BATCH_L1_HITS],
                           l2_hits=counts[lib.TDP_BATCH_L2_HITS], faults=counts[lib.TDP_BATCH_FAULTS],
                           violations=counts[lib.TDP_BATCH_VIOLATIONS], per_access=cols, requested=n,
                           stopped=stopped)

    # ---------------------------------------------------------------- flushes
    @locked
    def flush_remote_tlbs(self) -> None:
        """kvm_flush_remote_tlbs(): KVM_REQ_TLB_FLUSH to every vCPU, IPIs to those in guest mode."""
        check(self._h, lib.tdp_flush_remote_tlbs(self._h))

    @locked
    def flush_remote_tlbs_range(self, gfn: int, npages: int) -> None:
        """The ranged variant: precise with ``precise_range_flush``, else a full remote flush."""
        check(self._h, lib.tdp_flush_remote_tlbs_range(self._h, _int("gfn", gfn), _int("npages", npages)))

    @locked
    def invept(self, pcpu: int, kind: str = "single", eptp: Optional[int] = None) -> None:
        """INVEPT on one pCPU: ``kind`` "single" (needs ``eptp``) or "global"."""
        types = {name: t for t, name in c_names(lib.tdp_invept_type_name).items()}
        _choice("INVEPT kind", kind, tuple(types))
        t = types[kind]
        if t == lib.TDP_INVEPT_SINGLE_CONTEXT and eptp is None:
            raise InvalidArgumentError("INVEPT single-context needs eptp=")
        check(self._h, lib.tdp_invept(self._h, _int("pcpu", pcpu, 0, 1 << 20), t, _int("eptp", eptp or 0)))

    @locked
    def invvpid(self, pcpu: int, kind: str, vpid: int, gla: int = 0) -> None:
        """INVVPID: "individual", "single", "all" or "single_retaining_globals" (never drops
        guest-physical mappings)."""
        kinds = _events.INVVPID_KINDS
        _choice("INVVPID kind", kind, kinds)
        check(self._h, lib.tdp_invvpid(self._h, _int("pcpu", pcpu, 0, 1 << 20), kinds.index(kind),
                                       _int("vpid", vpid, 0, 0xffffffff), _int("gla", gla)))

    @locked
    def set_tlb_control(self, vcpu: int, value: int) -> None:
        """SVM: the VMCB's TLB_CONTROL (0, 1, 3, 7) for the vCPU's next VMRUN."""
        check(self._h, lib.tdp_svm_set_tlb_control(self._h, _int("vcpu", vcpu, 0, 1 << 20), _int("value", value, 0, 255)))

    @locked
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

    @locked
    def tlb_fill_junk(self, pcpu: int, count: int, max_gfn: int = 1 << 20) -> None:
        """Leave ``count`` junk entries under arbitrary tags in a pCPU's TLB."""
        check(self._h, lib.tdp_tlb_fill_junk(self._h, _int("pcpu", pcpu, 0, 1 << 20), _int("count", count, 0, 1 << 24),
                                             _int("max_gfn", max_gfn)))

    # ---------------------------------------------------------------- stepped operations
    @locked
    def start_op(self, name: str, *args: int, yield_every: int = 16) -> Op:
        """Start a long operation that stops at each yield point (where KVM drops mmu_lock
        and leaves RCU), so that other operations can run before it resumes.

        Each is a whole KVM operation with its caller's flush contract (a zap or a
        write-protection flushes what it changed when it ends). ``name`` is one of:
        zap_gfn_range(start, end, shared=0), host_unmap(start, end),
        zap_invalidated_roots(), delete_memslot(slot), write_protect_range(start, end),
        clear_dirty_range(start, end), split_huge_pages(start, end, target_level),
        recover_huge_pages(start, end), recover_nx_huge_pages(count=0), and
        page_fault(vcpu, gfn, access) -- a fault in two halves, as KVM lets other CPUs in
        between them: the host page is looked up at the start (after reading
        mmu_invalidate_seq), and the first step maps it under mmu_lock unless the fault went
        stale meanwhile (the vCPU's root invalidated, or an invalidation of gfn ran), when it
        retries; ``access`` is 0 read, 1 write, 2 exec, 3 user exec; the result is KVM's
        RET_PF_* (0 fixed, 1 spurious, 2 retry, 3 emulate, 4 no memory, 5 blocked).
        ``yield_every`` is how many iterator steps pass between yield points.
        """
        return _ops.start(self, name, args, yield_every)

    @property
    @locked
    def ops(self) -> List[Op]:
        """Stepped operations that have not finished."""
        return _ops.in_flight(self)

    @locked
    def synchronize_rcu(self) -> None:
        """End a grace period: page tables freed with call_rcu() return to the pool (LIFO)."""
        check(self._h, lib.tdp_synchronize_rcu(self._h))

    # ---------------------------------------------------------------- results
    @property
    @locked
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
                         frame_state=FRAME_STATES.get(v.frame_state, "?"), batch_index=v.batch_index,
                         # state invariants, and a TDP MMU walk that found a table freed under it
                         root=v.root if v.kind in _STATE_KINDS or (v.vcpu == -1 and v.root) else None,
                         spte=v.spte if v.kind in _STATE_KINDS else None)

    @property
    @locked
    def stats(self) -> Dict[str, int]:
        """Counters in KVM's vocabulary (remote_tlb_flush, pages_4k, ...) and the model's."""
        names = _stat_names()
        out = ffi.new("uint64_t[]", len(names))
        lib.tdp_stats(self._h, out)
        return {n: out[i] for i, n in enumerate(names)}

    @locked
    def reset_stats(self) -> None:
        """Zero the counters (gauges such as pages_4k are kept)."""
        lib.tdp_reset_stats(self._h)
        self._unlogged.append((lib.tdp_event_count(self._h), "reset_stats", None))

    @locked
    def frames(self) -> dict:
        """Frame pool usage: in_use, free, rcu_pending, limit."""
        out = ffi.new("uint64_t[4]")
        lib.tdp_hostmem_info(self._h, out)
        return {"in_use": out[0], "free": out[1], "rcu_pending": out[2], "limit": out[3]}

    @locked
    def digest(self) -> int:
        """A 64-bit digest of the whole model state (tables, roots, slots, vCPUs, TLBs, counters)."""
        return lib.tdp_digest(self._h)

    @property
    @locked
    def events(self) -> List[Event]:
        """The event log: every successful top-level operation, replayable with :meth:`replay`."""
        n = lib.tdp_event_count(self._h)
        buf = ffi.new("struct tdp_event[]", max(n, 1))
        lib.tdp_events(self._h, buf, 0, n)
        out = []
        for i in range(n):
            e = buf[i]
            name = _events.EVENT_NAMES[e.op]
            batch = None
            if name == "access_batch":
                cnt = e.a[2]
                g = ffi.new("uint64_t[]", max(cnt, 1))
                a = ffi.new("uint8_t[]", max(cnt, 1))
                lib.tdp_event_batch(self._h, i, g, a, cnt)
                batch = tuple((g[k], ACCESS_NAMES[a[k]]) for k in range(cnt))
            out.append(_events.make_event(i, name, tuple(e.a[k] for k in range(5)), batch))
        return out

    @locked
    def health(self) -> Dict[str, Union[int, str]]:
        """The model's own health: ``warnings`` counts states it must never reach (KVM's
        WARN_ON(); ``warning`` describes the first), ``dropped_records`` events, violations or
        trace records that could not be stored (the call after such a drop fails)."""
        return {"warnings": lib.tdp_warn_count(self._h),
                "warning": ffi.string(lib.tdp_warn_message(self._h)).decode(errors="replace"),
                "dropped_records": lib.tdp_dropped_records(self._h)}

    @locked
    def event_log(self) -> bytes:
        """The event log as bytes (byte-for-byte identical for the same seed and inputs)."""
        return _events.encode((e.op, e.raw, e.batch) for e in self.events)

    @locked
    def trace(self) -> List[tuple]:
        """The internal trace (``VM(trace=True)``): (kind, level, a, b, c) records."""
        n = lib.tdp_trace_count(self._h)
        buf = ffi.new("struct tdp_trace_rec[]", max(n, 1))
        lib.tdp_trace(self._h, buf, 0, n)
        kinds = c_names(lib.tdp_trace_kind_name)
        return [(kinds.get(buf[i].kind, "?"), buf[i].level, buf[i].a, buf[i].b, buf[i].c) for i in range(n)]

    @locked
    def replay(self, events: Iterable[Event]) -> None:
        """Apply an event log (``vm.events`` or :func:`tdpfast.read_event_log` of
        ``event_log()`` bytes, from a VM of the same configuration started fresh) to this
        fresh VM, holding the VM's lock throughout.

        Every event is checked before any is applied (:class:`~tdpfast.EventLogError`).
        The sequence must replay as it ran: the first event whose call fails raises
        :class:`~tdpfast.ReplayError` (``.index``, the original error as ``__cause__``);
        the events before it stay applied and the failing call changed nothing."""
        _events.replay(self, events, requests=REQUESTS, op_cls=Op)

    @locked
    def replay_fast(self, events: Sequence[Event], *, stop_at_violation: bool = True,
                    skip_failing: bool = False) -> int:
        """Apply events in one C call (no access batches); stepped operations are matched to
        the ones the original run started. Returns how many applied.

        By default the first event that fails raises :class:`~tdpfast.ReplayError` (as
        :meth:`replay`). ``skip_failing=True`` skips failing events instead -- the fuzz
        shrinker's lenient replay, where a candidate sequence may have lost an event
        another one needs. ``stop_at_violation`` stops after the first violation."""
        _bool("stop_at_violation", stop_at_violation)
        _bool("skip_failing", skip_failing)
        try:
            evs = [_events.check_event(i, e) for i, e in enumerate(events)]
        except TypeError:
            raise _events.EventLogError(f"events must be a sequence of tdpfast.Event, got {type(events).__name__}") from None
        buf = ffi.new("struct tdp_event[]", max(len(evs), 1))
        for i, e in enumerate(evs):
            if e.op == "access_batch":
                raise InvalidArgumentError(f"replay_fast cannot replay access batches (events[{i}]); use replay()")
            buf[i].op = _events.EVENT_CODES[e.op]
            for k, w in enumerate(e.raw):
                buf[i].a[k] = w
        n = ffi.new("size_t *")
        flags = (lib.TDP_REPLAY_STOP_AT_VIOLATION if stop_at_violation else 0) | \
                (lib.TDP_REPLAY_SKIP_FAILING if skip_failing else 0)
        try:
            check(self._h, lib.tdp_replay(self._h, buf, len(evs), flags, n))
        except TdpError as exc:
            raise ReplayError(str(exc), n[0], n[0]) from exc
        return n[0]

    @locked
    def _fuzz(self, seed: int, max_ops: int, stream: int = 0) -> int:
        """Run the C explorer (``tdp_fuzz_stream``; stream 0 is ``tdp_fuzz``) on this VM;
        returns the operations it ran."""
        out = ffi.new("uint64_t *")
        check(self._h, lib.tdp_fuzz_stream(self._h, _int("seed", seed), _int("stream", stream),
                                           _int("max_ops", max_ops), out))
        return out[0]

    @locked
    def _coverage_bits(self) -> int:
        """The explorer's coverage signatures this VM reached (``tdp_fuzz_coverage``), as an
        int whose bit i is signature i (:class:`tdpfast.fuzz.Coverage` unions them)."""
        words = ffi.new("uint64_t[]", lib.TDP_COVERAGE_WORDS)
        count = ffi.new("uint64_t *")
        check(self._h, lib.tdp_fuzz_coverage(self._h, words, lib.TDP_COVERAGE_WORDS, count))
        return int.from_bytes(ffi.buffer(words), "little")

    @locked
    def _violation_count(self) -> int:
        return lib.tdp_violation_count(self._h)

    def __repr__(self) -> str:
        with self._lock:
            return self._repr()

    def _repr(self) -> str:
        return (f"VM(arch={self.arch!r}, levels={self.levels}, vcpus={self.nvcpus}, pcpus={self.npcpus}, "
                f"roots={len(self.mmu.roots)}, memslots={len(self.memslots)})")


def _restore(kwargs: dict, log: Optional[bytes], unlogged: list, digest: int) -> "VM":
    """Unpickle a VM (:meth:`VM.__reduce__`): replay its log (and the unlogged policy
    changes and counter resets at the points they happened) on a fresh VM."""
    vm = VM(**kwargs)
    events = _events.read_event_log(log) if log is not None else []
    done = 0
    with vm._lock:
        for at, what, value in unlogged:
            vm.replay(events[done:at])
            done = at
            if what == "policy":
                vm.policy = value
            else:
                vm.reset_stats()
        vm.replay(events[done:])
        if vm.digest() != digest:
            raise InvalidStateError(f"the copy of the VM did not reach the original's state (digest "
                                    f"{vm.digest():#x}, expected {digest:#x})")
    return vm


_STAT_NAMES: List[str] = []


def _stat_names() -> List[str]:
    if not _STAT_NAMES:
        _STAT_NAMES.extend(_native.stat_names())
    return _STAT_NAMES


@contextlib.contextmanager
def _batch_views(what: str, addrs, access):
    """The C views of an access batch: (count, the uint64 addresses, the uint8 kinds or NULL,
    the kind for all when ``access`` is one string). The views are released on the way out,
    so that a traceback cycle cannot keep the caller's buffers exported."""
    g = _u64_buffer(what, addrs)
    n = len(g)
    accs, default, keep = ffi.NULL, 0, None
    if isinstance(access, str):
        default = _access_code(access)
    else:
        keep = _u8_buffer("access", access)
        if len(keep) != n:
            raise InvalidArgumentError(f"access has {len(keep)} kinds for {n} {what}")
        accs = ffi.from_buffer("uint8_t[]", keep)
    gbuf = ffi.from_buffer("uint64_t[]", g) if n else ffi.new("uint64_t[1]")
    try:
        yield n, gbuf, accs, default
    finally:
        if n:
            ffi.release(gbuf)
        if accs != ffi.NULL:
            ffi.release(accs)


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
        pass
    try:
        items = list(obj)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a 1-D buffer or sequence of unsigned 64-bit integers, "
                                   f"got {type(obj).__name__}") from None
    for i, x in enumerate(items):
        _int(f"{name}[{i}]", x)
    return memoryview(array.array("Q", items))


def _u8_buffer(name: str, obj):
    try:
        mv = memoryview(obj)
        if mv.itemsize == 1 and mv.ndim == 1 and mv.c_contiguous:
            return mv.cast("B")
    except TypeError:
        pass
    try:
        items = list(obj)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a string, or a sequence/buffer of access kinds") from None
    codes = []
    for i, a in enumerate(items):
        try:
            codes.append(_access_code(a))
        except InvalidArgumentError:
            raise InvalidArgumentError(f"{name}[{i}] must be 'r', 'w', 'x' or 'xu' (or 0..3), got {a!r}") from None
    return memoryview(array.array("B", codes))


__all__ = ["VM", "MMU", "Root", "Op", "REQUESTS", "OPS"]
