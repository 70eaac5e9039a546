"""A fuzz campaign over many workers: ``tdpfast fuzz --jobs N`` or ``--scheduler ...``.

The explorer of :mod:`tdpfast.fuzz` runs fresh VMs with seeds ``seed, seed+1, ...``, each
for ``FuzzConfig.chunk`` operations (VM seed ``s`` runs ``tdp_fuzz(vm, s, ...)``). A
campaign hands out the same seeds in blocks (one unit = ``seeds_per_unit`` consecutive
VM seeds) to the workers of a :mod:`tdpfast.scheduler`, so every VM is the one a single
machine would run: a violation found at VM seed ``k`` after ``n`` of its operations is
found again by ``tdpfast fuzz --seed k`` after exactly ``n`` operations, on any machine.

The worker that finds a violation also shrinks it and writes the reproducer. The first
violation stops the campaign: no new blocks are handed out, blocks of higher seeds are
cancelled, blocks of lower seeds finish, and the lowest violating seed is reported - the
one a single machine running from the same seed would have found first. With
``keep_going`` every block runs, and the findings are kept once per violation kind and
shrunk signature (the operations of the minimal sequence).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from . import fuzz
from .scheduler import ProgressLine, Scheduler, Unit, current_worker, drive, open_scheduler, parse_spec

SEEDS_PER_UNIT = 32        # VM seeds per unit: ~0.1-0.3 s of exploration at 0.5-1 M ops/s
EXIT_OK, EXIT_VIOLATION, EXIT_INTERRUPTED = 0, 1, 130


def signature(kind: str, minimal) -> str:
    """What two findings share when they are the same bug: the violation kind and the
    operations of the shrunk sequence (without their arguments)."""
    return kind + ":" + ",".join(e.op for e in minimal)


def explore_seeds(cfg: fuzz.FuzzConfig, first: int, nseeds: int, last_ops: Optional[int], budget_s: float,
                  keep_going: bool, shrink_budget_s: float) -> Dict[str, Any]:
    """The work unit: VM seeds ``first .. first+nseeds-1`` of the explorer, each exactly as
    :func:`tdpfast.fuzz.explore` runs it (``cfg.chunk`` operations; ``last_ops`` for the
    last seed when the campaign's ``max_ops`` ends there), until ``budget_s`` runs out.
    A violation is shrunk here, on the worker that found it."""
    t0 = time.monotonic()
    ops, done, cover, findings = 0, 0, set(), []
    sigs = fuzz.Coverage()
    for s in range(first, first + nseeds):
        n = last_ops if (last_ops is not None and s == first + nseeds - 1) else cfg.chunk
        vm = cfg.vm(s, record=False)
        ran = vm._fuzz(s, n)
        ops += ran
        done += 1
        cover.update(k for k, v in vm.stats.items() if v)
        sigs.add(vm._coverage_bits())
        if vm._violation_count():
            findings.append(_shrunk(cfg, s, ran, shrink_budget_s))
            if not keep_going:
                break
        if time.monotonic() - t0 >= budget_s:
            break
    return {"worker": current_worker(), "first": first, "seeds_done": done, "ops": ops,
            "seconds": time.monotonic() - t0, "coverage": sorted(cover), "signatures": sigs.hex(),
            "findings": findings}


def _shrunk(cfg: fuzz.FuzzConfig, seed: int, nops: int, shrink_budget_s: float) -> Dict[str, Any]:
    # fuzz.run() explores VM `seed` again for its `nops` operations (the same VM, so the same
    # violation), records it, and shrinks; then the reproducer is written here as well.
    finding, _ = fuzz.run(cfg, seed=seed, budget_s=0.0, max_ops=nops, shrink_budget_s=shrink_budget_s)
    d = finding.as_dict()
    d.update(ops_in_seed=nops, reproducer=fuzz.reproducer(cfg, finding.seed, finding.minimal),
             signature=signature(finding.violation.kind, finding.minimal), worker=current_worker(),
             minimal_text=[str(e) for e in finding.minimal],
             shrink={"complete": finding.shrink_complete, "seconds": round(finding.shrink_seconds, 3),
                     "replays": finding.shrink_replays, "from_events": finding.shrink_from,
                     "to_events": len(finding.minimal)})
    return d


@dataclass
class CampaignResult:
    """What a campaign found and did; :meth:`as_json` is the ``--json`` document."""

    scheduler: str
    seed: int
    findings: List[dict] = field(default_factory=list)     # distinct, lowest seed first
    ops: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    seeds_explored: int = 0
    per_worker: Dict[str, dict] = field(default_factory=dict)
    coverage: List[str] = field(default_factory=list)
    signatures: fuzz.Coverage = field(default_factory=fuzz.Coverage)
    units_done: int = 0
    units_cancelled: int = 0
    units_retried: int = 0
    duplicates: int = 0
    keep_going: bool = False
    interrupted: bool = False

    @property
    def finding(self) -> Optional[dict]:
        return self.findings[0] if self.findings else None

    def campaign_fields(self) -> dict:
        workers = {w: dict(p, rate=round(p["ops"] / p["seconds"]) if p["seconds"] else 0)
                   for w, p in sorted(self.per_worker.items())}
        return {"scheduler": self.scheduler, "workers": len(workers), "per_worker": workers,
                "units": {"done": self.units_done, "cancelled": self.units_cancelled,
                          "retried": self.units_retried},
                "first_seed": self.seed, "seeds_explored": self.seeds_explored,
                "startup_seconds": round(self.startup_seconds, 3), "keep_going": self.keep_going,
                "duplicates": self.duplicates, "interrupted": self.interrupted}

    def as_json(self, cfg: fuzz.FuzzConfig, args, replay: Optional[str] = None,
                out: Optional[str] = None) -> dict:
        """The local ``tdpfast fuzz --json`` document (docs/json/fuzz.md, built by
        :func:`tdpfast.fuzz.document`; the first finding's fields at the top level), plus
        ``ops_in_seed`` and ``replay`` (null when clean), ``coverage``, ``findings`` (every
        distinct one) and ``campaign`` (scheduler, workers, per-worker rates, units)."""
        f = self.finding
        doc = fuzz.document(cfg, policy_name=args.policy, seed=args.seed, budget_s=args.budget,
                            max_ops=args.max_ops, shrink_budget_s=args.shrink_budget, finding=None,
                            ops_explored=self.ops, seconds=self.seconds, interrupted=self.interrupted,
                            reproducer=f["reproducer"] if f else None, out=out if f else None,
                            signatures=self.signatures.count)
        if f is not None:
            doc.update(status="interrupted" if self.interrupted else "violation", violation=f["violation"],
                       vm_seed=f["seed"], vm_stream=f.get("stream", 0), events_recorded=f["events"], minimal=f["minimal"], shrink=f["shrink"],
                       witness=f.get("witness"))
        doc.update(ops_in_seed=f["ops_in_seed"] if f else None, replay=replay, coverage=self.coverage,
                   findings=[_public(x) for x in self.findings], campaign=self.campaign_fields())
        return doc


def _public(f: dict) -> dict:
    return {k: f[k] for k in ("seed", "ops_in_seed", "violation", "events", "minimal", "signature", "worker",
                              "occurrences")}


def run(cfg: fuzz.FuzzConfig, sched: Scheduler, *, seed: int = 0, budget_s: float = 10.0,
        max_ops: Optional[int] = None, shrink_budget_s: float = 30.0, keep_going: bool = False,
        seeds_per_unit: int = SEEDS_PER_UNIT, progress: Optional[ProgressLine] = None,
        on_result: Optional[Callable[[Unit, dict], None]] = None) -> CampaignResult:
    """Explore VM seeds ``seed, seed+1, ...`` on ``sched``'s workers until a violation
    (every distinct one with ``keep_going``), ``budget_s`` seconds, or ``max_ops``
    operations (then exactly the VMs a single machine would run for ``max_ops``)."""
    res = CampaignResult(scheduler=sched.name, seed=seed, keep_going=keep_going)
    end = None if max_ops is None else seed + math.ceil(max_ops / cfg.chunk)
    last_ops = None if max_ops is None else max_ops - (end - seed - 1) * cfg.chunk
    state = {"next": seed, "stop": False}
    by_sig: Dict[str, dict] = {}
    t0 = time.monotonic()
    deadline = t0 + budget_s

    def next_unit() -> Optional[Unit]:
        left = deadline - time.monotonic()
        first = state["next"]
        if state["stop"] or left <= 0 or (end is not None and first >= end):
            return None
        n = seeds_per_unit if end is None else min(seeds_per_unit, end - first)
        state["next"] = first + n
        lo = last_ops if end is not None and first + n == end else None
        return Unit(f"seeds-{first}-{first + n - 1}", explore_seeds,
                    (cfg, first, n, lo, left, keep_going, shrink_budget_s))

    def take(unit: Unit, r: dict) -> None:
        res.units_done += 1
        res.ops += r["ops"]
        res.seeds_explored += r["seeds_done"]
        w = res.per_worker.setdefault(r["worker"], {"ops": 0, "seconds": 0.0, "units": 0})
        w["ops"] += r["ops"]
        w["seconds"] = round(w["seconds"] + r["seconds"], 3)
        w["units"] += 1
        res.coverage = sorted(set(res.coverage) | set(r["coverage"]))
        res.signatures.add(int(r["signatures"], 16))
        for f in r["findings"]:
            old = by_sig.get(f["signature"])
            if old is None or f["seed"] < old["seed"]:
                f["occurrences"] = 1 + (old["occurrences"] if old else 0)
                by_sig[f["signature"]] = f
            else:
                old["occurrences"] += 1
        if r["findings"] and not keep_going:
            # The lowest violating seed wins: lower blocks finish, higher ones go.
            low = min(f["seed"] for f in by_sig.values())
            state["stop"] = True
            higher = [u.key for u in sched.in_flight() if u.args[1] > low]
            res.units_cancelled += len(higher)
            sched.cancel(higher)
        if on_result:
            on_result(unit, r)

    def tick() -> None:
        if progress:
            el = time.monotonic() - t0
            progress.show(f"explored {res.ops:,} operations on {max(len(res.per_worker), 1)} worker(s) "
                          f"in {el:5.1f}s ({res.ops / el / 1e6 if el else 0:.2f} M ops/s), "
                          f"{res.units_done} units, {res.signatures.count:,} signatures, {len(by_sig)} finding(s)")

    try:
        drive(sched, next_unit, take, tick=tick)
    except KeyboardInterrupt:
        res.interrupted = True
    res.seconds = time.monotonic() - t0
    res.units_retried = sched.retried
    found = sorted(by_sig.values(), key=lambda f: (f["seed"], f["signature"]))
    res.duplicates = sum(f["occurrences"] - 1 for f in found)
    res.findings = found if keep_going else found[:1]
    if progress:
        tick()
        progress.done()
    return res


# ---------------------------------------------------------------------------------- command line

def add_arguments(fz: argparse.ArgumentParser) -> None:
    """The campaign options of ``tdpfast fuzz``."""
    g = fz.add_argument_group("campaigns on many cores or a cluster")
    g.add_argument("--jobs", type=int, metavar="N", help="run on N local worker processes")
    g.add_argument("--scheduler", metavar="SPEC",
                   help='a Dask cluster: "local:N" (a LocalCluster of N workers here) or tcp://HOST:PORT '
                        '(a running `dask scheduler`); needs pip install "tdpfast[dask]"')
    g.add_argument("--keep-going", action="store_true",
                   help="collect every distinct finding (by kind and shrunk signature) instead of "
                        "stopping at the first")


def wanted(args) -> bool:
    """True when ``tdpfast fuzz`` runs as a campaign (any of the campaign options given)."""
    return args.jobs is not None or args.scheduler is not None or args.keep_going


def replay_command(args, seed: int, nops: int) -> str:
    """The single-machine command line that finds the same violation again."""
    parts = ["tdpfast", "fuzz", "--policy", args.policy]
    for s in args.set or []:
        parts += ["--set", s]
    parts += ["--arch", args.arch, "--levels", str(args.levels), "--vcpus", str(args.vcpus),
              "--pcpus", str(args.pcpus)]
    if args.ad is not None:
        parts.append("--ad" if args.ad else "--no-ad")
    if not getattr(args, "invariants", True):
        parts.append("--no-invariants")
    if getattr(args, "mutant", None):
        parts += ["--mutant", args.mutant]
    parts += ["--seed", str(seed), "--max-ops", str(nops)]
    return " ".join(parts)


def cmd(args, cfg: fuzz.FuzzConfig, policy_name: str, switches: dict) -> int:
    """``tdpfast fuzz`` as a campaign: validated options in, exit status out."""
    spec = parse_spec(args.jobs, args.scheduler)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    t0 = time.monotonic()
    if not args.json:
        print(f"tdpfast fuzz: policy {policy_name}, {args.arch}, {args.levels}-level, budget {args.budget:g}s, "
              f"seeds from {args.seed}, scheduler {spec}", file=sys.stderr)
    try:
        sched = open_scheduler(spec)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    with sched:
        startup = time.monotonic() - t0
        res = run(cfg, sched, seed=args.seed, budget_s=args.budget, max_ops=args.max_ops,
                  shrink_budget_s=args.shrink_budget, keep_going=args.keep_going,
                  progress=ProgressLine(show))
    res.startup_seconds = startup
    f = res.finding
    replay = replay_command(args, f["seed"], f["ops_in_seed"]) if f else None
    if f and args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(f["reproducer"])
    status = EXIT_INTERRUPTED if res.interrupted else EXIT_VIOLATION if f else EXIT_OK
    if args.json:
        print(json.dumps(res.as_json(cfg, args, replay, args.out), indent=2))
        return status
    print(render(res, replay, args.out))
    return status


def render(res: CampaignResult, replay: Optional[str], out: Optional[str] = None) -> str:
    """The text report: the finding(s) and what every worker did."""
    lines = []
    head = (f"{res.ops:,} operations in {res.seconds:.1f}s on {len(res.per_worker)} worker(s) "
            f"({res.scheduler}; {res.seeds_explored:,} VM seeds from {res.seed})")
    if res.interrupted:
        lines.append(f"INTERRUPTED after {head}; partial result:")
    f = res.finding
    if f is None:
        lines.append(f"no violation in {head}")
    else:
        v = f["violation"]
        lines.append(f"VIOLATION at VM seed {f['seed']}, operation {f['ops_in_seed']:,} of that VM "
                     f"(campaign: {head}): {v['kind']} on vCPU {v['vcpu']} (pCPU {v['pcpu']}) at gpa "
                     f"{v['gpa']:#x}")
        lines.append(f"replay on one machine: {replay}")
        for i, g in enumerate(res.findings):
            if i:
                lines.append(f"\nfinding {i + 1}: VM seed {g['seed']}, operation {g['ops_in_seed']:,}: "
                             f"{g['violation']['kind']} ({g['occurrences']} occurrence(s))")
            lines.append(f"\nminimal sequence ({len(g['minimal'])} of {g['events']} events), found on "
                         f"{g['worker']}:")
            lines += ["    " + e for e in g["minimal_text"]]
        lines.append("\nreproducer" + (f" (written to {out})" if out else "") + ":\n")
        lines.append(f["reproducer"])
    rows = [f"  {w:28s} {p['units']:6d} {p['ops']:14,} {p['seconds']:8.1f} "
            f"{(p['ops'] / p['seconds'] / 1e6 if p['seconds'] else 0):8.2f}"
            for w, p in sorted(res.per_worker.items())]
    lines.append(f"  {'worker':28s} {'units':>6s} {'operations':>14s} {'busy s':>8s} {'M ops/s':>8s}")
    lines += rows
    lines.append(f"  units: {res.units_done} done, {res.units_cancelled} cancelled, {res.units_retried} re-run "
                 f"after a lost worker; coverage: {len(res.coverage)} counters reached, "
                 f"{res.signatures.count:,} signatures")
    return "\n".join(lines)
