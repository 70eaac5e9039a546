"""``tdpfast`` command line: ``tdpfast demo`` (the seed scenario), ``tdpfast policies``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2


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
        print(json.dumps({"reuse": [s.as_dict() for s in res["reuse"]],
                          "migration": [s.as_dict() for s in res["migration"]],
                          "costs": res["costs"]}, indent=2))
        return EXIT_OK
    print("tdpfast demo: the seed thread's argument (LKML, March 2022: \"[PATCH v4 03/30] KVM: x86/mmu:\n"
          "Formalize TDP MMU's (unintended?) deferred TLB flush logic\"). A root is torn down without a\n"
          "TLB flush; that is safe because every vCPU flushes when it loads a root and when it migrates.\n"
          "TLBs are adversarial (they never evict), so a missing flush cannot hide.\n")
    rows = []
    for s in res["reuse"] + res["migration"]:
        rows.append([s.name, s.arch, s.policy, str(len(s.violations)),
                     s.violations[0].split(":")[0] if s.violations else "-"])
    print(_table(rows, ["scenario", "arch", "policy", "violations", "kind"]))
    for s in res["reuse"] + res["migration"]:
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
            rows.append([arch, pol] + [f"{c[k]:,}" for k in keys])
    print(_table(rows, ["arch", "policy"] + keys))
    scen = res["reuse"] + res["migration"]
    kvm_clean = all(not s.violations for s in scen if s.policy == "kvm")
    broken = {(s.policy, s.arch) for s in scen if s.policy != "kvm" and s.violations}
    every_removal = all((s.policy, s.arch) in broken for s in scen if s.policy != "kvm")
    if kvm_clean and every_removal:
        print("\nVerdict: with KVM's policy no scenario reaches a stale translation; removing the flush on root\n"
              "load or on migration does, on both vendors.")
    else:
        print(f"\nVerdict: KVM's policy {'stays clean' if kvm_clean else 'REACHED A STALE TRANSLATION'}; "
              f"{len(broken)} of {sum(1 for s in scen if s.policy != 'kvm')} scenarios without a flush broke.")
    return EXIT_OK


def cmd_policies(args) -> int:
    from .policy import Policy

    items = [{"name": n, "description": Policy.describe(n), "switches": Policy.named(n).changed()}
             for n in Policy.names()]
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        for it in items:
            sw = ", ".join(f"{k}={v}" for k, v in it["switches"].items()) or "(KVM's defaults)"
            print(f"{it['name']:34s} {it['description']}\n{'':34s} {sw}")
    return EXIT_OK


def cmd_fuzz(args) -> int:
    from . import fuzz
    from .errors import InvalidArgumentError
    from .policy import Policy

    policy = Policy.named(args.policy)
    for item in args.set or []:
        if "=" not in item:
            raise InvalidArgumentError(f"--set takes SWITCH=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        policy = policy.set_switch(k.strip(), v.strip())
    if args.budget <= 0:
        raise InvalidArgumentError("--budget must be positive")
    cfg = fuzz.FuzzConfig(policy=policy, arch=args.arch, levels=args.levels, vcpus=args.vcpus,
                          pcpus=args.pcpus, ad=args.ad)
    # -- campaigns on many cores or a cluster (tdpfast/campaign.py) --------------------------
    from . import campaign

    if campaign.wanted(args):
        return campaign.cmd(args, cfg, args.policy, policy.changed())
    # ----------------------------------------------------------------------------------------
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    t0 = time.monotonic()

    def progress(total, elapsed):
        if show:
            rate = total / elapsed / 1e6 if elapsed else 0.0
            print(f"\r  explored {total:,} operations in {elapsed:5.1f}s ({rate:.2f} M ops/s)",
                  end="", file=sys.stderr, flush=True)

    if not args.json:
        print(f"tdpfast fuzz: policy {args.policy}{' with ' + ', '.join(args.set) if args.set else ''}, "
              f"{args.arch}, {args.levels}-level, budget {args.budget:g}s, seed {args.seed}", file=sys.stderr)
    finding, total = fuzz.run(cfg, seed=args.seed, budget_s=args.budget, max_ops=args.max_ops,
                              shrink_budget_s=args.shrink_budget, progress=progress)
    if show:
        print(file=sys.stderr)
    elapsed = time.monotonic() - t0
    if finding is None:
        if args.json:
            print(json.dumps({"violation": None, "ops_explored": total, "seconds": round(elapsed, 3),
                              "policy": args.policy, "switches": policy.changed()}, indent=2))
        else:
            print(f"no violation in {total:,} operations ({elapsed:.1f}s)")
        return EXIT_OK
    script = fuzz.reproducer(cfg, finding.seed, finding.minimal)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(script)
    if args.json:
        d = finding.as_dict()
        d.update(seconds=round(elapsed, 3), policy=args.policy, switches=policy.changed(), reproducer=script)
        print(json.dumps(d, indent=2))
        return EXIT_VIOLATION
    print(f"VIOLATION after {total:,} operations ({elapsed:.1f}s): {finding.violation}")
    print(f"\nminimal sequence ({len(finding.minimal)} of {len(finding.events)} events):")
    for e in finding.minimal:
        print("   ", e)
    print("\nreproducer" + (f" (written to {args.out})" if args.out else "") + ":\n")
    print(script)
    return EXIT_VIOLATION


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdpfast", description="A model of KVM x86's TDP MMU, its TLBs, and a "
                                "checker for stale translations.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="play the seed scenario on VMX and SVM and print what happened")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_demo)
    pol = sub.add_parser("policies", help="list the named policies (KVM, eras, historical bugs)")
    pol.add_argument("--json", action="store_true", help="machine-readable output")
    pol.set_defaults(func=cmd_policies)
    fz = sub.add_parser("fuzz", help="search random interleavings for a violation, shrink it, print a reproducer",
                        description="Run a seeded random explorer (in C) over faults, zaps, yields, root loads, "
                        "migrations, notifier invalidations, memslot changes and dirty logging; on the first "
                        "violation shrink the sequence and print a runnable reproducer. Exit status 1 when a "
                        "violation was found, 0 when the budget ran out clean, 2 on usage errors.")
    fz.add_argument("--policy", default="kvm", help="named policy (see `tdpfast policies`; default kvm)")
    fz.add_argument("--set", action="append", metavar="SWITCH=VALUE", help="flip a policy switch (repeatable)")
    fz.add_argument("--arch", choices=("vmx", "svm"), default="vmx")
    fz.add_argument("--levels", type=int, choices=(4, 5), default=4)
    fz.add_argument("--vcpus", type=int, default=2)
    fz.add_argument("--pcpus", type=int, default=3)
    fz.add_argument("--ad", dest="ad", action="store_true", default=None, help="EPT A/D on in every VM")
    fz.add_argument("--no-ad", dest="ad", action="store_false", help="EPT A/D off in every VM")
    fz.add_argument("--budget", type=float, default=10.0, metavar="SECONDS", help="exploration time (default 10)")
    fz.add_argument("--max-ops", type=int, default=None, help="stop after this many operations")
    fz.add_argument("--seed", type=int, default=0)
    fz.add_argument("--shrink-budget", type=float, default=30.0, metavar="SECONDS")
    fz.add_argument("--out", metavar="FILE", help="also write the reproducer to FILE")
    fz.add_argument("--json", action="store_true", help="machine-readable output")
    fz.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="show progress (default: when stderr is a terminal)")
    fz.add_argument("--no-progress", dest="progress", action="store_false")
    fz.set_defaults(func=cmd_fuzz)
    # -- campaigns and sweeps (tdpfast/campaign.py, tdpfast/sweep.py) --------------------------
    from . import campaign, sweep

    campaign.add_arguments(fz)
    sweep.add_parser(sub)
    # ----------------------------------------------------------------------------------------
    from . import bench

    bench.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .errors import TdpError

    try:
        return args.func(args)
    except TdpError as e:
        print(f"tdpfast: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `tdpfast demo | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
