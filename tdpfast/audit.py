"""``tdpfast audit``: for every flush decision with a policy switch, run the explorer with
that flush removed (a budget per site and vendor) and say whether it is *load-bearing* (the
explorer found a violation without it: its kind, the shrunk reproducer's length, the
operations it took) or *not shown necessary* in the operations explored. The question of
the seed thread ("is this deferred flush safe?"), asked of every switchable flush at once.

``--mutants`` asks it of every flush site of the engine itself instead (the sites marked in
``csrc/flush_sites.def``, each removed in turn from the C engine under KVM's policy: the
engine's mutation test). A mutant the explorer catches is *killed*; the share killed on at
least one vendor is the mutation score.

The sites are run as units of :mod:`tdpfast.scheduler` (in-process, ``--jobs N`` or a Dask
cluster); each unit is deterministic by seed, so the table does not depend on where it ran.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import flush_sites, fuzz, jsondoc
from .errors import InvalidArgumentError
from .policy import Policy


@dataclass(frozen=True)
class Site:
    """A flush KVM performs, and the policy switches that remove it (plus what the explorer
    needs for the flush to matter at all, e.g. yielding iterators for a flush before a yield)."""

    name: str
    removed: Tuple[Tuple[str, Any], ...]
    where: str
    mutant: Optional[str] = None      # an engine flush site (flush_sites.py) removed instead
    archs: Tuple[str, ...] = ("vmx", "svm")   # the vendors whose code has the flush

    def policy(self) -> Policy:
        return Policy.kvm().replace(**dict(self.removed))


SITES: Tuple[Site, ...] = (
    Site("flush_on_root_load", (("flush_on_root_load", False),),
         "kvm_mmu_load(): flush the current context after loading a root (the deferred flush of db01416b22d9)"),
    Site("flush_on_migrate", (("flush_on_migrate", False),),
         "VMX: KVM_REQ_TLB_FLUSH when the VMCS was last loaded on another pCPU; SVM: a new ASID"),
    Site("shared_zap_flush", (("shared_zap_flush", False),),
         "tdp_mmu_zap_spte_atomic(): flush between freezing and clearing the SPTE (08f07c800e9d)"),
    Site("flush_before_yield", (("flush_before_yield", False), ("yield_every", 8)),
         "tdp_mmu_iter_cond_resched(): flush what is pending before dropping mmu_lock"),
    Site("remote_flush_all_contexts", (("remote_flush_all_contexts", False),),
         "KVM_REQ_TLB_FLUSH flushes every EPTP/VPID context, not only the current one (L2's too)"),
    Site("per_vmcb_asid", (("per_vmcb_asid", False),),
         "SVM: each VMCB keeps its ASID generation and last pCPU, so vmcb02 gets an ASID of its own (B22)",
         archs=("svm",)),
    Site("dirty_log_enable_flush", (("dirty_log_enable_flush", "if_changed"),),
         "enabling dirty logging flushes even when no SPTE changed (b64d740ea7dd)"),
    Site("zap_flush_across_roots", (("per_root_flush_reset", True), ("yield_every", 8)),
         "__kvm_tdp_mmu_zap_leafs(): the pending flush carries over to the next root (a835429cda91)"),
    Site("nx_recovery_flush", (("nx_recovery_flush_assign", True), ("nx_huge_pages", True)),
         "kvm_recover_nx_huge_pages(): flush |= zap_sp(), never overwritten (315f02c60d94)"),
    Site("map_huge_over_table_flush", (("map_huge_over_table_flush", False),),
         "the fault path flushes after a huge leaf replaces a table (1e203847aa92)"),
)
# The engine's own flush sites, each a mutant of the C engine under KVM's policy.
MUTANTS: Tuple[Site, ...] = tuple(Site(f.name, (), f"{f.where}: {f.what}", mutant=f.name, archs=f.archs)
                                  for f in flush_sites.SITES)
_BY_NAME = {s.name: s for s in SITES + MUTANTS}
assert len(_BY_NAME) == len(SITES) + len(MUTANTS), "a policy site and an engine flush site share a name"
ARCHS = ("vmx", "svm")


def audit_site(name: str, arch: str, seed: int, budget_s: float, max_ops: Optional[int], shrink_budget_s: float,
               invariants: bool) -> Dict[str, Any]:
    """One unit: the explorer on one vendor with one flush removed. Module level, picklable."""
    site = _BY_NAME[name]
    cfg = fuzz.FuzzConfig(policy=site.policy(), arch=arch, invariants=invariants, mutant=site.mutant)
    t0 = time.monotonic()
    finding, total = fuzz.run(cfg, seed=seed, budget_s=budget_s, max_ops=max_ops, shrink_budget_s=shrink_budget_s)
    row = {"site": name, "arch": arch, "removed": dict(site.removed), "mutant": site.mutant, "where": site.where,
           "verdict": "not_shown", "kind": None, "reproducer_events": None, "ops_to_find": None,
           "ops_explored": total, "vm_seed": None, "witness": None, "seconds": round(time.monotonic() - t0, 3)}
    if finding is not None:
        w = finding.witness
        # A policy site is load-bearing when the reproducer accuses the policy alone. A mutant
        # is killed when its reproducer violates on the mutant: KVM's engine may violate on the
        # shrunk sequence too when the removed flush is one the log records as its caller's
        # own step (zap_gfn_range's flush), which the witness shows.
        caught = w.policy_violates if site.mutant else w.verdict == "policy"
        row.update(verdict="load_bearing" if caught else "engine_or_caller",
                   kind=finding.violation.kind, reproducer_events=len(finding.minimal),
                   ops_to_find=finding.ops_explored, vm_seed=finding.seed, witness=w.as_dict())
    return row


def mutation_score(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Of the engine flush sites audited as mutants: how many the explorer killed on at
    least one vendor (``None`` when no mutant was audited)."""
    sites: Dict[str, bool] = {}
    for r in rows:
        if r["mutant"]:
            sites[r["site"]] = sites.get(r["site"], False) or r["verdict"] == "load_bearing"
    if not sites:
        return None
    return {"sites": len(sites), "killed": sum(sites.values()),
            "survived": sorted(n for n, k in sites.items() if not k)}


@dataclass
class AuditResult:
    rows: List[Dict[str, Any]]
    seconds: float
    scheduler: str
    interrupted: bool


def run(sites: List[Site], archs: List[str], sched, *, seed: int, budget_s: float, max_ops: Optional[int],
        shrink_budget_s: float, invariants: bool, progress=None) -> AuditResult:
    from .scheduler import Unit, drive

    todo = [Unit(f"{s.name}/{a}", audit_site, (s.name, a, seed, budget_s, max_ops, shrink_budget_s, invariants))
            for s in sites for a in archs if a in s.archs]
    pending = list(todo)
    done: Dict[str, Dict[str, Any]] = {}
    t0 = time.monotonic()

    def on_result(unit, res):
        done[unit.key] = res
        if progress:
            progress.show(f"audit: {len(done)}/{len(todo)} sites done, {time.monotonic() - t0:.0f}s", force=True)

    interrupted = False
    try:
        drive(sched, lambda: pending.pop(0) if pending else None, on_result)
    except KeyboardInterrupt:
        interrupted = True
    rows = [done[u.key] for u in todo if u.key in done]
    return AuditResult(rows, time.monotonic() - t0, type(sched).__name__, interrupted)


def document(res: AuditResult, args) -> dict:
    """The ``tdpfast audit --json`` document (docs/json/audit.md)."""
    doc = jsondoc.header("audit")
    doc.update(status="interrupted" if res.interrupted else "done",
               config={"archs": list(args.archs), "sites": [s.name for s in args.sites], "mutants": args.mutants,
                       "seed": args.seed,
                       "budget_s": args.budget, "max_ops": args.max_ops, "shrink_budget_s": args.shrink_budget,
                       "invariants": args.invariants},
               seconds=round(res.seconds, 3),
               summary={"runs": len(res.rows),
                        "load_bearing": sum(r["verdict"] == "load_bearing" for r in res.rows),
                        "not_shown": sum(r["verdict"] == "not_shown" for r in res.rows),
                        "engine_or_caller": sum(r["verdict"] == "engine_or_caller" for r in res.rows),
                        "mutation_score": mutation_score(res.rows)},
               results=res.rows)
    return doc


def table(rows: List[Dict[str, Any]], archs: List[str]) -> str:
    """The terminal (and README) table: one line per site, one column per vendor."""
    by = {(r["site"], r["arch"]): r for r in rows}

    def cell(r: Optional[Dict[str, Any]], name: str = "", arch: str = "") -> str:
        if r is None:
            site = _BY_NAME.get(name)
            if site is not None and arch not in site.archs:
                return f"n/a ({'/'.join(a.upper() for a in site.archs)} code only)"
            return "-"
        if r["verdict"] == "not_shown":
            return f"not shown necessary in {r['ops_explored']:,} ops"
        if r["verdict"] == "load_bearing":
            tag = "killed" if r["mutant"] else "load-bearing"
        else:
            tag = "engine/caller defect"
        return f"{tag}: {r['kind']} after {r['ops_to_find']:,} ops, {r['reproducer_events']}-event reproducer"

    names = [s.name for s in SITES + MUTANTS if any((s.name, a) in by for a in archs)]
    out = ["| flush site | " + " | ".join(a.upper() for a in archs) + " |", "|---" * (len(archs) + 1) + "|"]
    for n in names:
        out.append(f"| `{n}` | " + " | ".join(cell(by.get((n, a)), n, a) for a in archs) + " |")
    return "\n".join(out)


def _site(text: str) -> Site:
    if text not in _BY_NAME:
        raise argparse.ArgumentTypeError(f"unknown site {text!r}; policy sites: {', '.join(s.name for s in SITES)}; "
                                         f"engine flush sites (mutants): {', '.join(s.name for s in MUTANTS)}")
    return _BY_NAME[text]


def chart(rows: List[Dict[str, Any]], archs: List[str], path: str, title: str) -> None:
    """One bar per site and vendor: operations until the explorer found a violation without
    that flush (log scale); a site not shown necessary gets a hollow bar at the operations it
    ran. Needs matplotlib (pip install "tdpfast[bench]")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["site"] for r in rows))
    by = {(r["site"], r["arch"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) * len(archs) + 1.6))
    h = 0.8 / len(archs)
    colors = {"vmx": "#1f77b4", "svm": "#d62728"}
    for j, a in enumerate(archs):
        for i, n in enumerate(names):
            r = by.get((n, a))
            if r is None:
                continue
            y = i + (j - (len(archs) - 1) / 2) * h
            found = r["verdict"] == "load_bearing"
            x = r["ops_to_find"] if found else r["ops_explored"]
            ax.barh(y, max(x, 1), height=h * 0.9, color=colors.get(a, "gray") if found else "none",
                    edgecolor=colors.get(a, "gray"), hatch=None if found else "//",
                    label=f"{a.upper()}: found" if found else f"{a.upper()}: not shown in N ops")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("explorer operations until a violation (hollow: none in that many)")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(4, len(uniq)), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .cli import U64_MAX, _integer, _seconds

    au = subparsers.add_parser(
        "audit", help="remove each switchable flush in turn and say whether the explorer shows it necessary",
        description="For every flush decision with a policy switch (or those given with --site), run the "
        "explorer with that flush removed on each vendor for --budget seconds, and report it load-bearing "
        "(violation kind, shortest reproducer, operations to find) or not shown necessary in N operations. "
        "Exit status 0 when every run finished, 2 on usage errors, 130 on Ctrl-C (the finished runs are "
        "printed).")
    au.add_argument("--site", dest="sites", action="append", type=_site, metavar="NAME",
                    help="audit only this site (repeatable): a policy site "
                         f"({', '.join(s.name for s in SITES)}) or an engine flush site "
                         f"({', '.join(s.name for s in MUTANTS)})")
    au.add_argument("--mutants", action="store_true",
                    help="audit every flush site of the engine itself (csrc/flush_sites.def), each removed in "
                         "turn under KVM's policy, and report the mutation score")
    au.add_argument("--chart", metavar="FILE.png",
                    help="also draw the operations-to-find chart (needs matplotlib: pip install \"tdpfast[bench]\")")
    au.add_argument("--arch", choices=("vmx", "svm", "both"), default="both")
    au.add_argument("--budget", type=_seconds(zero_ok=False), default=10.0, metavar="SECONDS",
                    help="exploration time per site and vendor (default 10)")
    au.add_argument("--max-ops", type=_integer(1, U64_MAX), default=None, metavar="N",
                    help="stop each run after this many operations")
    au.add_argument("--seed", type=_integer(0, U64_MAX), default=0, metavar="N", help="first VM seed (default 0)")
    au.add_argument("--shrink-budget", type=_seconds(zero_ok=True), default=10.0, metavar="SECONDS",
                    help="time for shrinking each finding (default 10)")
    au.add_argument("--no-invariants", dest="invariants", action="store_false", default=True,
                    help="only the checker of guest accesses (the state invariants are on by default)")
    au.add_argument("--jobs", type=int, metavar="N", help="run on N local worker processes")
    au.add_argument("--scheduler", metavar="SPEC", help='a Dask cluster: "local:N" or tcp://HOST:PORT')
    au.add_argument("--json", action="store_true", help="machine-readable output (docs/json/audit.md)")
    au.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="show progress on stderr (default: when stderr is a terminal)")
    au.add_argument("--no-progress", dest="progress", action="store_false")
    au.set_defaults(func=cmd)
    return au


def cmd(args) -> int:
    from .cli import EXIT_INTERRUPTED, EXIT_OK, UsageError
    from .scheduler import ProgressLine, open_scheduler, parse_spec

    try:
        spec = parse_spec(args.jobs, args.scheduler)      # everything is checked before working
    except InvalidArgumentError as e:
        raise UsageError(str(e)) from None
    if args.sites and args.mutants:
        raise UsageError("give --site NAME ... or --mutants, not both")
    if args.chart:
        from .cli import check_output_file

        check_output_file(args.chart, "--chart")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError('--chart needs matplotlib: pip install "tdpfast[bench]"') from None
    args.sites = args.sites or list(MUTANTS if args.mutants else SITES)
    args.mutants = all(s.mutant for s in args.sites)
    args.archs = list(ARCHS) if args.arch == "both" else [args.arch]
    if not args.json:
        print(f"tdpfast audit: {len(args.sites)} flush site(s) x {len(args.archs)} vendor(s), budget "
              f"{args.budget:g}s each, seed {args.seed}, scheduler {spec}", file=sys.stderr)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        sched = open_scheduler(spec)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    line = ProgressLine(show)
    with sched:
        res = run(args.sites, args.archs, sched, seed=args.seed, budget_s=args.budget, max_ops=args.max_ops,
                  shrink_budget_s=args.shrink_budget, invariants=args.invariants, progress=line)
    line.done()
    if args.chart and res.rows:
        what = "engine flush sites removed (mutants)" if args.mutants else "policy flush switches removed"
        limit = (f"up to {args.max_ops:,} operations" if args.max_ops else f"{args.budget:g} s") + \
            " per site and vendor"
        chart(res.rows, args.archs, args.chart, f"tdpfast audit: {what}, {limit}")
    if args.json:
        print(json.dumps(document(res, args), indent=2))
    else:
        print(table(res.rows, args.archs))
        n = sum(r["verdict"] == "load_bearing" for r in res.rows)
        print(f"\n{'INTERRUPTED: ' if res.interrupted else ''}{n} of {len(res.rows)} runs "
              f"{'killed their mutant' if args.mutants else 'load-bearing'} ({res.seconds:.1f}s)")
        score = mutation_score(res.rows)
        if score:
            print(f"mutation score: {score['killed']} of {score['sites']} engine flush sites killed on at least "
                  f"one vendor" + (f"; survived: {', '.join(score['survived'])}" if score["survived"] else ""))
        if args.chart:
            print(f"chart: {args.chart}")
    return EXIT_INTERRUPTED if res.interrupted else EXIT_OK
