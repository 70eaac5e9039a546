"""The search for missing-flush bugs behind ``tdpfast fuzz``: a seeded random explorer in C
(``tdp_fuzz``), then delta debugging of the failing event sequence down to a few steps,
and a runnable reproducer that uses only the public API."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from . import jsondoc
from .policy import Policy
from .results import Event, Violation
from .tlbconfig import TLBConfig
from .events import call_text
from .vm import REQUESTS, VM

_U64 = (1 << 64) - 1


@dataclass
class FuzzConfig:
    """What the explorer runs on: the policy, the VM shape, and the budget."""

    policy: Policy = field(default_factory=Policy.kvm)
    arch: str = "vmx"
    levels: int = 4
    vcpus: int = 2
    pcpus: int = 3
    ad: Optional[bool] = None     # None: EPT A/D on for even VM seeds, off for odd ones
    tlb: TLBConfig = field(default_factory=TLBConfig.adversarial)
    chunk: int = 4000             # operations per VM before a fresh one (short histories shrink well)
    invariants: bool = True       # check the state invariants (tdpfast/invariants.py) after every step
    mutant: Optional[str] = None  # the engine with this flush site removed (tdpfast/flush_sites.py)
    host_variety: bool = True     # every 4th VM (seeds 3, 7, ...): NX huge pages (VMX), 2 ASIDs per pCPU
    #                               (SVM); every 8th (7, 15, ...) also a small MAXPHYADDR (maxphyaddr_for)
    guided: bool = False          # coverage-guided: a VM that reached new signatures is run again
    #                               with another stream (explore_guided)

    def ad_for(self, seed: int) -> bool:
        return self.ad if self.ad is not None else seed % 2 == 0

    def _varied(self, seed: int) -> bool:
        return self.host_variety and seed % 4 == 3

    def policy_for(self, seed: int) -> Policy:
        """The policy VM ``seed`` runs: the searched one, with NX huge pages on in every 4th
        VMX VM (the iTLB-multihit mitigation KVM turns on by default on affected Intel CPUs,
        ``nx_huge_pages=auto``), so NX recovery runs under every policy."""
        if self.arch == "vmx" and self._varied(seed) and not self.policy.nx_huge_pages:
            return self.policy.replace(nx_huge_pages=True)
        return self.policy

    def max_asid_for(self, seed: int) -> int:
        """The highest ASID of VM ``seed``'s pCPUs: 2 in every 4th SVM VM, so the ASIDs of a
        pCPU run out and roll over (new_asid()) as vCPUs migrate; the architectural
        32767 otherwise."""
        return 2 if self.arch == "svm" and self._varied(seed) else 32767

    def maxphyaddr_for(self, seed: int) -> int:
        """The host's and guest's MAXPHYADDR in VM ``seed``: 46 with 4 levels, 52 with 5; in
        every 8th VM (seeds 7, 15, ...) a smaller one, so zaps, zap-all and teardown end below
        what the paging levels could map (KVM ends them at the host's MAXPHYADDR,
        ``kvm_mmu_max_gfn()``): 39 with 4 levels, and 46 with 5, where a PML5 entry
        (256 TiB) then reaches past the end of the space (the engine's host layout needs
        39 bits at least)."""
        small = self._varied(seed) and seed % 8 == 7
        if self.levels == 5:
            return 46 if small else 52
        return 39 if small else 46

    def vm(self, seed: int, record: bool) -> VM:
        return VM(arch=self.arch, levels=self.levels, seed=seed, vcpus=self.vcpus, pcpus=self.pcpus,
                  tlb=self.tlb, policy=self.policy_for(seed), ad=self.ad_for(seed),
                  maxphyaddr=self.maxphyaddr_for(seed), max_asid=self.max_asid_for(seed), record=record,
                  invariants=self.invariants, mutant=self.mutant)


@dataclass
class Finding:
    """A violation, the events that led to it, and the shrunk sequence."""

    seed: int
    violation: Violation
    events: List[Event]
    minimal: List[Event]
    ops_explored: int
    shrink_complete: bool = True      # False: cut short by the shrink budget or an interrupt
    shrink_seconds: float = 0.0
    shrink_replays: int = 0           # candidate sequences replayed while shrinking
    shrink_from: int = 0              # events up to the violation when shrinking began
    witness: Optional["Witness"] = None
    stream: int = 0                   # the explorer's stream of that VM seed (guided runs; 0 otherwise)

    def as_dict(self) -> dict:
        """Plain data in the forms of the ``fuzz --json`` document (docs/json/fuzz.md)."""
        return {"seed": self.seed, "stream": self.stream, "ops_explored": self.ops_explored,
                "violation": jsondoc.violation(self.violation), "events": len(self.events),
                "minimal": [jsondoc.event(e) for e in self.minimal],
                "witness": self.witness.as_dict() if self.witness else None}


@dataclass(frozen=True)
class Witness:
    """A reproducer replayed under the searched policy and under KVM's (``Policy.kvm()``):
    it accuses the policy only when it violates under the policy and not under KVM's.
    One that violates under both shows a defect of the engine or of a caller (a flush the
    caller owes, e.g. after ``zap_sp``), not of the policy; ``verdict`` says which
    ("policy", "engine_or_caller", or "not_reproduced" if the policy's replay is clean)."""

    policy_violates: bool
    kvm_violates: bool

    @property
    def verdict(self) -> str:
        if not self.policy_violates:
            return "not_reproduced"
        return "engine_or_caller" if self.kvm_violates else "policy"

    def as_dict(self) -> dict:
        return {"policy_violates": self.policy_violates, "kvm_violates": self.kvm_violates,
                "verdict": self.verdict}


def kvm_twin(cfg: FuzzConfig) -> FuzzConfig:
    """The same VM shape under KVM's policy on the engine as it is (no mutant): the other
    side of a differential witness."""
    return dataclasses.replace(cfg, policy=Policy.kvm(), mutant=None)


def witness(cfg: FuzzConfig, seed: int, events: Sequence[Event]) -> Witness:
    """Replay ``events`` under ``cfg``'s policy and under KVM's (see :class:`Witness`)."""
    return Witness(bool(replay(cfg, seed, events).violations),
                   bool(replay(kvm_twin(cfg), seed, events).violations))


class Coverage:
    """The explorer's coverage signatures reached so far, over any number of VMs: how much
    of the state space a search covered, beyond its operation count.

    A signature is one (explorer operation x SPTE transition x level x root invalid or
    not x a translation cached since the last remote flush or not), noted by the engine
    at every SPTE change (csrc/coverage.h); there are ``lib.TDP_COVERAGE_SIGNATURES``
    possible, many of them unreachable (a fault never unlinks a table at level 1)."""

    def __init__(self, bits: int = 0) -> None:
        self.bits = bits

    def add(self, bits: int) -> int:
        """Union ``bits`` in; returns how many signatures were new."""
        new = bits & ~self.bits
        self.bits |= bits
        return bin(new).count("1")

    @property
    def count(self) -> int:
        """How many distinct signatures were reached."""
        return bin(self.bits).count("1")

    def hex(self) -> str:
        """The bitmap as a hex string (how campaign units send it back)."""
        return format(self.bits, "x")


def explore(cfg: FuzzConfig, *, seed: int = 0, budget_s: float = 10.0, max_ops: Optional[int] = None,
            progress: Optional[Callable[[int, float], None]] = None,
            stop: Optional[Callable[[], bool]] = None, coverage: Optional[Coverage] = None) -> tuple:
    """Run the C explorer over fresh VMs (seed, seed+1, ... modulo 2**64) until a violation,
    the time budget, ``max_ops``, or ``stop()`` returning true (checked between VMs).
    Returns (vm_seed, ops_in_that_vm, total_ops) or (None, 0, total). Each explored VM's
    coverage signatures are added to ``coverage``, if given."""
    total = 0
    t0 = time.monotonic()
    s = seed
    while True:
        n = cfg.chunk if max_ops is None else min(cfg.chunk, max_ops - total)
        if n <= 0 or (stop is not None and stop()):
            return None, 0, total
        vm = cfg.vm(s, record=False)
        ran = vm._fuzz(s, n)
        total += ran
        if coverage is not None:
            coverage.add(vm._coverage_bits())
        if vm._violation_count():
            return s, ran, total
        elapsed = time.monotonic() - t0
        if progress:
            progress(total, elapsed)
        if elapsed >= budget_s:
            return None, 0, total
        s = (s + 1) & _U64


#: Guided exploration runs a VM seed's swarm settings in at most this many streams.
MAX_STREAMS = 16


def explore_guided(cfg: FuzzConfig, *, seed: int = 0, budget_s: float = 10.0, max_ops: Optional[int] = None,
                   progress: Optional[Callable[[int, float], None]] = None,
                   stop: Optional[Callable[[], bool]] = None, coverage: Optional[Coverage] = None) -> tuple:
    """Coverage-guided :func:`explore`: VMs favoured by the signatures they add. A VM (a seed's
    swarm settings and host, run as one stream of operations) that reached a signature no
    VM of this search had reached is followed at once by another stream of the same seed,
    up to ``MAX_STREAMS`` per seed; then the next fresh seed. Deterministic by seed.
    Returns (vm_seed, stream, ops_in_that_vm, total_ops) or (None, 0, 0, total)."""
    cov = coverage if coverage is not None else Coverage()
    total, t0, s, k = 0, time.monotonic(), seed, 0
    while True:
        n = cfg.chunk if max_ops is None else min(cfg.chunk, max_ops - total)
        if n <= 0 or (stop is not None and stop()):
            return None, 0, 0, total
        vm = cfg.vm(s, record=False)
        ran = vm._fuzz(s, n, k)
        total += ran
        new = cov.add(vm._coverage_bits())
        if vm._violation_count():
            return s, k, ran, total
        elapsed = time.monotonic() - t0
        if progress:
            progress(total, elapsed)
        if elapsed >= budget_s:
            return None, 0, 0, total
        if new and k + 1 < MAX_STREAMS:
            k += 1                      # favour this VM: another stream of its settings
        else:
            s, k = (s + 1) & _U64, 0


def record(cfg: FuzzConfig, vm_seed: int, nops: int, stream: int = 0) -> VM:
    """Re-run one VM of the explorer with the event log on (deterministic by seed and stream)."""
    vm = cfg.vm(vm_seed, record=True)
    vm._fuzz(vm_seed, nops, stream)
    return vm


def replay(cfg: FuzzConfig, seed: int, events: Sequence[Event]) -> VM:
    """Replay events on a fresh VM in C, skipping those that fail (after shrinking an event
    may lose its meaning); stepped operations are matched to the ones originally started."""
    vm = cfg.vm(seed, record=True)
    vm.replay_fast(events, skip_failing=True)
    return vm


def shrink(cfg: FuzzConfig, seed: int, events: List[Event], kind: str,
           progress: Optional[Callable[[int], None]] = None, deadline: Optional[float] = None,
           stop: Optional[Callable[[], bool]] = None) -> List[Event]:
    """Delta debugging (ddmin) over the event list: a 1-minimal list (no single event can
    go) that still ends in a violation of the same kind and, when the whole list does not
    violate under KVM's policy, still does not: so a candidate that drops a flush the
    caller owes (the remote flush after ``zap_sp``, say) fails under KVM's policy too and is
    refused, and the operation and its owed flush stay together. ``progress(len)`` is called with
    the current length before every candidate replay; at ``deadline`` (a time.monotonic()
    value) or when ``stop()`` is true the shortest failing list so far is returned."""
    return _shrink(cfg, seed, events, kind, progress, deadline, stop)[0]


def _shrink(cfg: FuzzConfig, seed: int, events: List[Event], kind: str,
            progress: Optional[Callable[[int], None]], deadline: Optional[float],
            stop: Optional[Callable[[], bool]]) -> tuple:
    """:func:`shrink`, also returning whether it ran to the end and how many replays it made."""
    replays = 0

    def cut() -> bool:
        return bool((deadline is not None and time.monotonic() > deadline) or (stop is not None and stop()))

    kvm = kvm_twin(cfg)
    differential = False

    def fails(evs: List[Event]) -> bool:
        nonlocal replays
        if progress:
            progress(len(cur))
        replays += 1
        vm = replay(cfg, seed, evs)
        v = vm.violations
        if not v or v[0].kind != kind:
            return False
        # Differential: the candidate must stay clean under KVM's policy.
        return not (differential and replay(kvm, seed, evs).violations)

    cur = list(events)
    complete = True
    # When the whole history violates under KVM's policy as well, no shrink can make it a
    # witness against the policy; it is shrunk as it is (and reported as such).
    differential = (cfg.policy, cfg.mutant) != (kvm.policy, kvm.mutant) and not replay(kvm, seed, cur).violations
    # Two cheap passes before ddmin, for long histories: cut a prefix (keeping the memslot
    # layout), then drop whole kinds of event; the last event (the violating access) stays.
    layout = ("add_memslot", "delete_memslot")
    lo, hi = 0, len(cur) - 1
    while lo < hi:
        if cut():
            complete = False
            break
        mid = (lo + hi + 1) // 2
        cand = [e for e in cur[:mid] if e.op in layout] + cur[mid:]
        if fails(cand):
            lo = mid
        else:
            hi = mid - 1
    if lo:
        cur = [e for e in cur[:lo] if e.op in layout] + cur[lo:]
    for op in sorted({e.op for e in cur[:-1]}):
        if not complete or cut():
            complete = False
            break
        cand = [e for e in cur[:-1] if e.op != op] + cur[-1:]
        if len(cand) < len(cur) and fails(cand):
            cur = cand
    n = 2
    while complete and len(cur) >= 2:
        if cut():
            complete = False
            break
        size = max(1, len(cur) // n)
        reduced = False
        for i in range(0, len(cur), size):
            if cut():
                complete = False
                break
            cand = cur[:i] + cur[i + size:]
            if cand and fails(cand):
                cur = cand
                n = max(n - 1, 2)
                reduced = True
                break
        if not complete:
            break
        if not reduced:
            if size == 1:
                break
            n = min(n * 2, len(cur))
    # Drop the events that no longer apply, then stop right after the violation.
    vm = cfg.vm(seed, record=True)
    vm.replay_fast(cur, skip_failing=True)
    kept = vm.events
    return (kept if kept and fails(kept) else cur), complete, replays


def reproducer(cfg: FuzzConfig, seed: int, events: Sequence[Event]) -> str:
    """A standalone Python script (public API only) that replays ``events``."""
    pol = cfg.policy_for(seed).changed()
    pol_txt = "Policy.kvm()" + (f".replace({', '.join(f'{k}={v!r}' for k, v in pol.items())})" if pol else "")
    asid = cfg.max_asid_for(seed)
    lines = ["# Reproducer written by `tdpfast fuzz`.",
             "from tdpfast import VM, Policy, TLBConfig", "",
             f"vm = VM(arch={cfg.arch!r}, levels={cfg.levels}, seed={seed}, vcpus={cfg.vcpus}, pcpus={cfg.pcpus}, "
             f"ad={cfg.ad_for(seed)}, maxphyaddr={cfg.maxphyaddr_for(seed)}, tlb=TLBConfig.adversarial(),"
             + (f" max_asid={asid}," if asid != 32767 else ""),
             f"        policy={pol_txt}{', invariants=True' if cfg.invariants else ''}"
             f"{f', mutant={cfg.mutant!r}' if cfg.mutant else ''})"]
    ops = {}
    k = 0
    for e in events:
        a = e.args
        if e.op == "start_op":
            k += 1
            ops[a[5]] = f"op{k}"
            lines.append(f"op{k} = " + call_text(e, REQUESTS))
        elif e.op == "step_op":
            name = ops.get(a[0])
            if name:
                lines.append(f"{name}.step()")
        else:
            lines.append(call_text(e, REQUESTS))
    lines += ["", "for v in vm.violations:", "    print(v)",
              "raise SystemExit(1 if vm.violations else 0)"]
    return "\n".join(lines) + "\n"


def run(cfg: FuzzConfig, *, seed: int = 0, budget_s: float = 10.0, max_ops: Optional[int] = None,
        shrink_budget_s: float = 30.0, progress: Optional[Callable[[int, float], None]] = None,
        stop: Optional[Callable[[], bool]] = None,
        shrink_progress: Optional[Callable[[int, int], None]] = None,
        coverage: Optional[Coverage] = None) -> tuple:
    """Explore, and on a violation record, shrink and return a :class:`Finding`.
    Returns (finding or None, total operations explored).

    ``progress(total_ops, elapsed_s)`` is called between explored VMs;
    ``shrink_progress(events_at_start, events_now)`` before every replay while shrinking.
    When ``stop()`` turns true the run ends early with what it has: no finding if the
    explorer was still searching, else the finding with the shortest sequence so far
    (``shrink_complete`` False). ``coverage`` collects the explored VMs' coverage signatures."""
    stream = 0
    if cfg.guided:
        vm_seed, stream, nops, total = explore_guided(cfg, seed=seed, budget_s=budget_s, max_ops=max_ops,
                                                      progress=progress, stop=stop, coverage=coverage)
    else:
        vm_seed, nops, total = explore(cfg, seed=seed, budget_s=budget_s, max_ops=max_ops, progress=progress,
                                       stop=stop, coverage=coverage)
    if vm_seed is None:
        return None, total
    vm = record(cfg, vm_seed, nops, stream)
    events = vm.events
    v = vm.violations[0]
    t0 = time.monotonic()
    deadline = t0 + shrink_budget_s
    start = events[:v.event + 1]
    minimal, complete, replays = _shrink(
        cfg, vm_seed, start, v.kind,
        (lambda n: shrink_progress(len(start), n)) if shrink_progress else None, deadline, stop)
    final = replay(cfg, vm_seed, minimal)
    fv = final.violations[0] if final.violations else v
    wit = Witness(bool(final.violations), bool(replay(kvm_twin(cfg), vm_seed, minimal).violations))
    return Finding(vm_seed, fv, events, minimal, total, complete, time.monotonic() - t0, replays,
                   len(start), wit, stream), total


def document(cfg: FuzzConfig, *, policy_name: str, seed: int, budget_s: float, max_ops: Optional[int],
             shrink_budget_s: float, finding: Optional[Finding], ops_explored: int, seconds: float,
             interrupted: bool, reproducer: Optional[str], out: Optional[str], signatures: int = 0) -> dict:
    """The ``tdpfast fuzz --json`` document (docs/json/fuzz.md): the same keys whether the
    run was clean, found a violation, or was interrupted."""
    doc = jsondoc.header("fuzz")
    doc.update(
        status="interrupted" if interrupted else ("violation" if finding else "clean"),
        policy=policy_name, switches=cfg.policy.changed(),
        config={"arch": cfg.arch, "levels": cfg.levels, "vcpus": cfg.vcpus, "pcpus": cfg.pcpus, "ad": cfg.ad,
                "invariants": cfg.invariants, "mutant": cfg.mutant, "guided": cfg.guided, "seed": seed,
                "budget_s": budget_s, "max_ops": max_ops, "shrink_budget_s": shrink_budget_s},
        ops_explored=ops_explored, seconds=round(seconds, 3),
        ops_per_second=round(ops_explored / seconds, 1) if seconds > 0 else 0.0,
        signatures=signatures,
        violation=jsondoc.violation(finding.violation) if finding else None,
        vm_seed=finding.seed if finding else None,
        vm_stream=finding.stream if finding else None,
        events_recorded=len(finding.events) if finding else None,
        minimal=[jsondoc.event(e) for e in finding.minimal] if finding else None,
        shrink={"complete": finding.shrink_complete, "seconds": round(finding.shrink_seconds, 3),
                "replays": finding.shrink_replays, "from_events": finding.shrink_from,
                "to_events": len(finding.minimal)} if finding else None,
        witness=finding.witness.as_dict() if finding and finding.witness else None,
        reproducer=reproducer, out=out)
    return doc
