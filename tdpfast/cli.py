"""``tdpfast`` command line: ``tdpfast demo`` (the seed scenario), ``tdpfast policies``."""
from __future__ import annotations

import argparse
import json
import sys
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
    print("\nVerdict: with KVM's policy no scenario reaches a stale translation; removing the flush on root\n"
          "load or on migration does, on both vendors.")
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


if __name__ == "__main__":
    sys.exit(main())
