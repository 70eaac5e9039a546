"""``tdpfast`` command line: ``demo`` (the seed scenario), ``policies``, ``fuzz``, ``audit``, ``bench``.

Every subcommand checks its arguments before it starts working: a bad number, seed or
output path ends it at once with a one-line message and exit status 2. Exit statuses:
0 done (nothing found), 1 a violation was found, 2 usage error, 130 interrupted (Ctrl-C).
``--json`` documents are versioned and described in docs/json/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from typing import List, Optional

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
U64_MAX = (1 << 64) - 1


class UsageError(Exception):
    """A bad argument found after parsing (a path, a policy switch): exit 2, one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (the usage stays behind --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seconds(*, zero_ok: bool):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
        if v < 0 or (v == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero_ok else 'more than 0'} "
                                             f"seconds, got {text!r}")
        return v
    return parse


def _flush_site_names() -> List[str]:
    from .flush_sites import SITES

    return [s.name for s in SITES]


def _integer(lo: int, hi: Optional[int] = None):
    """An integer in [lo, hi]; without ``hi`` the engine checks the upper bound (before any work)."""
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            top = "2**64 - 1" if hi == U64_MAX else hi
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text!r}" if hi is None
                                             else f"must be between {lo} and {top}, got {text!r}")
        return v
    return parse


def check_output_file(path: str, flag: str = "--out") -> None:
    """Raise :class:`UsageError` unless ``path`` can be written: its directory exists and
    takes a new file (tried, not guessed from permission bits), and it is not a directory."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UsageError(f"{flag} {path}: directory {d} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    if not existed:
        os.remove(path)


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) if str(c).replace(",", "").isdigit() else str(c).ljust(w)
                             for c, w in zip(r, widths)))
    return "\n".join(out)


def cmd_demo(args) -> int:
    from . import demo

    res = demo.run_all()
    if args.json:
        print(json.dumps(demo.document(res), indent=2))
        return EXIT_OK
    print("tdpfast demo: the seed thread's argument (LKML, March 2022: \"[PATCH v4 03/30] KVM: x86/mmu:\n"
          "Formalize TDP MMU's (unintended?) deferred TLB flush logic\"). A root is torn down without a\n"
          "TLB flush; that is safe because every vCPU flushes when it loads a root and when it migrates.\n"
          "TLBs are adversarial (they never evict), so a missing flush cannot hide.\n")
    rows = []
    for s in res["reuse"] + res["migration"] + res["nested"]:
        rows.append([s.name, s.arch, s.policy, str(len(s.violations)),
                     s.violations[0].kind if s.violations else "-"])
    print(_table(rows, ["scenario", "arch", "policy", "violations", "kind"]))
    for s in res["reuse"] + res["migration"] + res["nested"]:
        if not s.violations:
            continue
        print(f"\n{s.arch} / {s.policy} / {s.name}:\n  {s.violations[0]}\n  the events that led to it:")
        for e in s.events:
            print("   ", e)
    print("\nDeferred flush versus an eager flush on every root put (root churn: 4 vCPUs, 8 memslot updates):")
    keys = ["remote_tlb_flush", "ipis", "invept_single", "invept_global", "tlb_control_flush_asid",
            "tlb_misses", "cycles", "violations"]
    rows = []
    for arch, by_pol in res["costs"].items():
        for pol, c in by_pol.items():
            rows.append([arch, demo.COST_POLICIES[pol][1]] + [f"{c[k]:,}" for k in keys])
    print(_table(rows, ["arch", "policy"] + keys))
    v = demo.verdict(res)
    if v["kvm_clean"] and v["removals_broken"] == v["removals"]:
        print("\nVerdict: with KVM's policy no scenario reaches a stale translation; removing the flush on root\n"
              "load or on migration does, on both vendors, and so does a remote flush of only the current\n"
              "context while a vCPU that runs L2 is in L1 (VMX, B16).")
    else:
        print(f"\nVerdict: KVM's policy {'stays clean' if v['kvm_clean'] else 'REACHED A STALE TRANSLATION'}; "
              f"{v['removals_broken']} of {v['removals']} scenarios without a flush broke.")
    return EXIT_OK


def cmd_policies(args) -> int:
    from . import jsondoc
    from .policy import Policy

    items = [{"name": n, "description": Policy.describe(n), "switches": Policy.named(n).changed()}
             for n in Policy.names()]
    if args.json:
        doc = jsondoc.header("policies")
        doc["policies"] = items
        print(json.dumps(doc, indent=2))
    else:
        for it in items:
            sw = ", ".join(f"{k}={v}" for k, v in it["switches"].items()) or "(KVM's defaults)"
            print(f"{it['name']:34s} {it['description']}\n{'':34s} {sw}")
    return EXIT_OK


class _FuzzProgress:
    """The fuzz progress line: elapsed time against the budget, operations and their rate
    while exploring; time against the shrink budget and the sequence length while shrinking."""

    def __init__(self, args, stream, clock=time.monotonic):
        from .progress import ProgressLine

        self.args = args
        self.clock = clock
        self.line = ProgressLine(stream, clock=clock)
        self.replays = 0
        self.t_shrink: Optional[float] = None
        self.coverage = None   # the run's fuzz.Coverage, shown while exploring

    def explore(self, total: int, elapsed: float) -> None:
        from .progress import rate

        a = self.args

        def text() -> str:
            share = elapsed / a.budget
            ops = f"{total:,}"
            if a.max_ops:
                share = max(share, total / a.max_ops)
                ops += f"/{a.max_ops:,}"
            cov = f"  {self.coverage.count:,} signatures" if self.coverage is not None else ""
            return (f"{elapsed:6.1f}s/{a.budget:g}s {min(share, 1.0):4.0%}  {ops} ops  "
                    f"{rate(total, elapsed)}{cov}")
        self.line.update("exploring", text)

    def shrink(self, start: int, now: int) -> None:
        if self.t_shrink is None:
            self.t_shrink = self.clock()
        self.replays += 1
        elapsed = self.clock() - self.t_shrink
        self.line.update("shrinking", lambda: (f"{elapsed:6.1f}s/{self.args.shrink_budget:g}s  "
                                               f"{start:,} -> {now:,} events  {self.replays:,} replays"))

    def close(self) -> None:
        self.line.close()


def cmd_fuzz(args) -> int:
    from . import fuzz
    from .errors import InvalidArgumentError
    from .policy import Policy

    # Ctrl-C asks the run to stop at its next check (between explored VMs, between shrink
    # replays) and report what it has; a second Ctrl-C stops at once, without a result.
    stopping: List[bool] = []

    def on_sigint(signum, frame):
        if stopping:
            raise KeyboardInterrupt
        stopping.append(True)

    old = signal.signal(signal.SIGINT, on_sigint)
    bar = None
    try:
        # Everything is checked before the search starts.
        policy = Policy.named(args.policy)
        for item in args.set or []:
            if "=" not in item:
                raise UsageError(f"--set takes SWITCH=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            policy = policy.set_switch(k.strip(), v.strip())
        if args.out:
            check_output_file(args.out)
        cfg = fuzz.FuzzConfig(policy=policy, arch=args.arch, levels=args.levels, vcpus=args.vcpus,
                              pcpus=args.pcpus, ad=args.ad, invariants=args.invariants, mutant=args.mutant,
                              guided=args.guided)
        try:
            cfg.vm(args.seed, record=False)  # the VM shape (vCPU and pCPU counts) is one the engine takes
        except InvalidArgumentError as e:
            raise UsageError(str(e)) from None
        # -- campaigns on many cores or a cluster (tdpfast/campaign.py) ----------------------
        from . import campaign

        if campaign.wanted(args):
            if args.guided:
                raise UsageError("--guided runs in one process (not with --jobs, --scheduler or --keep-going)")
            signal.signal(signal.SIGINT, old)     # the campaign handles Ctrl-C itself
            return campaign.cmd(args, cfg, args.policy, policy.changed())
        # ------------------------------------------------------------------------------------
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        bar = _FuzzProgress(args, sys.stderr) if show else None
        if not args.json:
            print(f"tdpfast fuzz: policy {args.policy}{' with ' + ', '.join(args.set) if args.set else ''}, "
                  f"{args.arch}, {args.levels}-level, budget {args.budget:g}s, seed {args.seed}"
                  f"{'' if args.invariants else ', invariants off'}{', guided' if args.guided else ''}"
                  f"{f', mutant {args.mutant}' if args.mutant else ''}", file=sys.stderr)
        coverage = fuzz.Coverage()
        if bar:
            bar.coverage = coverage
        t0 = time.monotonic()
        finding, total = fuzz.run(cfg, seed=args.seed, budget_s=args.budget, max_ops=args.max_ops,
                                  shrink_budget_s=args.shrink_budget, stop=lambda: bool(stopping),
                                  progress=bar.explore if bar else None,
                                  shrink_progress=bar.shrink if bar else None, coverage=coverage)
    finally:
        signal.signal(signal.SIGINT, old)
        if bar:
            bar.close()
    elapsed = time.monotonic() - t0
    interrupted = bool(stopping)
    script = fuzz.reproducer(cfg, finding.seed, finding.minimal) if finding else None
    written = None
    if script is not None and args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(script)
            written = args.out
        except OSError as e:                 # checked before the search; the finding is still printed
            print(f"tdpfast fuzz: error: cannot write --out {args.out}: {e.strerror or e}", file=sys.stderr)
    code = EXIT_INTERRUPTED if interrupted else (EXIT_VIOLATION if finding else EXIT_OK)
    if args.json:
        doc = fuzz.document(cfg, policy_name=args.policy, seed=args.seed, budget_s=args.budget,
                            max_ops=args.max_ops, shrink_budget_s=args.shrink_budget, finding=finding,
                            ops_explored=total, seconds=elapsed, interrupted=interrupted,
                            reproducer=script, out=written, signatures=coverage.count)
        print(json.dumps(doc, indent=2))
        return code
    how = "interrupted" if interrupted else None
    if finding is None:
        print(f"{how + ': ' if how else ''}no violation in {total:,} operations ({elapsed:.1f}s; "
              f"{coverage.count:,} coverage signatures reached)")
        return code
    print(f"{how + ': ' if how else ''}VIOLATION after {total:,} operations ({elapsed:.1f}s; "
          f"{coverage.count:,} coverage signatures reached): {finding.violation}")
    state = "" if finding.shrink_complete else (", shrinking interrupted" if interrupted
                                                else ", shrink budget ran out")
    w = finding.witness
    if w is not None and w.verdict == "policy":
        print("witness: the sequence violates under the searched policy and not under KVM's (Policy.kvm())")
    elif w is not None:
        print(f"witness: NOT the policy's fault: the sequence {'also violates' if w.kvm_violates else 'is clean'} "
              f"under KVM's policy and {'violates' if w.policy_violates else 'is clean'} under the searched one "
              f"({w.verdict}: a defect of the engine or of a caller's flush)")
    print(f"\nminimal sequence ({len(finding.minimal)} of {finding.shrink_from} events{state}):")
    for e in finding.minimal:
        print("   ", e)
    print("\nreproducer" + (f" (written to {written})" if written else "") + ":\n")
    print(script)
    return code


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="tdpfast", description="A model of KVM x86's TDP MMU, its TLBs, and a checker for stale "
                "translations.", epilog="Exit status: 0 done, 1 a violation was found, 2 usage error, "
                "130 interrupted. --json documents are versioned (schema_version) and described in docs/json/.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="play the seed scenario on VMX and SVM and print what happened")
    d.add_argument("--json", action="store_true", help="machine-readable output (docs/json/demo.md)")
    d.set_defaults(func=cmd_demo)
    pol = sub.add_parser("policies", help="list the named policies (KVM, eras, historical bugs)")
    pol.add_argument("--json", action="store_true", help="machine-readable output (docs/json/policies.md)")
    pol.set_defaults(func=cmd_policies)
    fz = sub.add_parser("fuzz", help="search random interleavings for a violation, shrink it, print a reproducer",
                        description="Run a seeded random explorer (in C) over faults, zaps, yields, root loads, "
                        "migrations, notifier invalidations, memslot changes and dirty logging; on the first "
                        "violation shrink the sequence and print a runnable reproducer. Exit status 1 when a "
                        "violation was found, 0 when the budget ran out clean, 2 on usage errors, 130 when "
                        "interrupted (Ctrl-C: the partial result is printed, as JSON under --json).")
    fz.add_argument("--policy", default="kvm", help="named policy (see `tdpfast policies`; default kvm)")
    fz.add_argument("--set", action="append", metavar="SWITCH=VALUE", help="flip a policy switch (repeatable)")
    fz.add_argument("--arch", choices=("vmx", "svm"), default="vmx")
    fz.add_argument("--levels", type=int, choices=(4, 5), default=4)
    fz.add_argument("--vcpus", type=_integer(1), default=2, metavar="N")
    fz.add_argument("--pcpus", type=_integer(1), default=3, metavar="N")
    fz.add_argument("--ad", dest="ad", action="store_true", default=None, help="EPT A/D on in every VM")
    fz.add_argument("--no-ad", dest="ad", action="store_false", help="EPT A/D off in every VM")
    fz.add_argument("--invariants", dest="invariants", action="store_true", default=True,
                    help="check the state invariants (I1, I5, well-formed tables, I7) after every step (default)")
    fz.add_argument("--no-invariants", dest="invariants", action="store_false",
                    help="only the checker of guest accesses (faster; see README for the cost)")
    fz.add_argument("--mutant", metavar="SITE", choices=_flush_site_names(),
                    help="search the engine with this flush site removed (its mutation test; "
                         "`tdpfast audit --mutants` runs them all): " + ", ".join(_flush_site_names()))
    fz.add_argument("--guided", action="store_true",
                    help="coverage-guided: a VM that reaches new coverage signatures is run again with another "
                         "stream of operations (up to 16 per seed) before the next seed; one process only")
    fz.add_argument("--budget", type=_seconds(zero_ok=False), default=10.0, metavar="SECONDS",
                    help="exploration time (default 10)")
    fz.add_argument("--max-ops", type=_integer(1, U64_MAX), default=None, metavar="N",
                    help="stop after this many operations")
    fz.add_argument("--seed", type=_integer(0, U64_MAX), default=0, metavar="N",
                    help="first VM seed (default 0)")
    fz.add_argument("--shrink-budget", type=_seconds(zero_ok=True), default=30.0, metavar="SECONDS",
                    help="time for shrinking a finding (default 30; 0 keeps the recorded sequence)")
    fz.add_argument("--out", metavar="FILE", help="also write the reproducer to FILE (its directory must exist)")
    fz.add_argument("--json", action="store_true", help="machine-readable output (docs/json/fuzz.md)")
    fz.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="show progress on stderr (default: when stderr is a terminal)")
    fz.add_argument("--no-progress", dest="progress", action="store_false")
    fz.set_defaults(func=cmd_fuzz)
    # -- campaigns and sweeps (tdpfast/campaign.py, tdpfast/sweep.py) --------------------------
    from . import campaign, sweep

    campaign.add_arguments(fz)
    sweep.add_parser(sub)
    # ----------------------------------------------------------------------------------------
    from . import audit, bench

    audit.add_parser(sub)
    bench.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .errors import TdpError

    name = f"tdpfast {args.cmd}"
    try:
        return args.func(args)
    except (UsageError, TdpError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `tdpfast demo | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
