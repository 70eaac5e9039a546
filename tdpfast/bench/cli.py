"""``tdpfast bench``: arguments, output files, exit codes.

Exit status: 0 the run completed; 1 it completed with errors (a failing reference model:
see the JSON's ``errors``); 2 usage (bad arguments, an unreadable or foreign --compare
file, an output directory that cannot be written, the limit loops not built); 130
interrupted (Ctrl-C): the rows measured so far are still printed and written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import List, Optional

from .compare import NotABenchResult, compare_rows, render_comparison, validate
from .limits import BUILD_HINT, have_limits
from .profiles import PROFILES
from .report import chart, render
from .suite import STEP_KEYS, run_suite

JSON_NAME = "tdpfast-bench.json"
CHART_NAME = "tdpfast-bench.png"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser("bench", help="measure the engine against C limit loops; write JSON and a chart",
                              description="Measure zap, access, flush, population, walk and memory costs "
                              "against plain-C limits, and modelled flush/zap costs of workloads under every "
                              "policy. Writes DIR/tdpfast-bench.json and DIR/tdpfast-bench.png. Exit status 0 "
                              "when the run completed, 1 when it completed with errors, 2 on usage errors, "
                              "130 when interrupted (the partial results are still written).")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under a minute)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the tables")
    p.add_argument("--out", metavar="DIR", default="./bench-results", help="output directory (default: %(default)s)")
    p.add_argument("--compare", metavar="FILE", help="a previous tdpfast-bench.json to compare with")
    p.add_argument("--progress", dest="progress", action="store_true", default=True,
                   help="show progress on stderr (default)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", choices=STEP_KEYS, help=argparse.SUPPRESS)
    p.set_defaults(func=run)
    return p


def _err(msg: str) -> None:
    print(f"tdpfast bench: {msg}", file=sys.stderr)


def _load_compare(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return validate(json.load(f))
    except OSError as e:
        raise NotABenchResult(f"cannot read --compare file: {e.strerror}: {path}") from None
    except ValueError as e:   # json.JSONDecodeError, UnicodeDecodeError, NotABenchResult
        if isinstance(e, NotABenchResult):
            raise NotABenchResult(f"--compare {path}: {e}") from None
        raise NotABenchResult(f"--compare {path}: not a tdpfast bench result (not JSON: {e})") from None


def _check_out_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass


def run(args) -> int:
    """Run the suite as ``args`` say; the exit status (see the module docstring)."""
    profile = getattr(args, "profile", None) or ("quick" if args.quick else "full")
    old = None
    if args.compare:
        try:
            old = _load_compare(args.compare)
        except NotABenchResult as e:
            _err(str(e))
            return EXIT_USAGE
    try:
        _check_out_dir(args.out)
    except OSError as e:
        _err(f"cannot write to --out directory {args.out}: {e.strerror or e}")
        return EXIT_USAGE
    if not have_limits():
        _err(BUILD_HINT)
        return EXIT_USAGE
    doc = run_suite(profile, only=getattr(args, "only", None), progress=getattr(args, "progress", True))
    jpath = os.path.join(args.out, JSON_NAME)
    cpath = os.path.join(args.out, CHART_NAME)
    why = chart(doc, cpath) if doc["status"] != "interrupted" else "the run was interrupted"
    doc["chart"] = None if why else CHART_NAME
    cmp = compare_rows(doc, old) if old is not None else None
    if cmp is not None:
        doc["comparison"] = dict(cmp, against=os.path.abspath(args.compare))
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(render(doc))
        if cmp is not None:
            print(render_comparison(cmp, old))
        print(f"\nwrote {jpath}" + (f" and {cpath}" if not why else f" (no chart: {why})"))
    for e in doc["errors"]:
        _err(f"error: {e['source']} in step {e['step']}: {e['type']}: {e['message']} (traceback in {jpath})")
    if doc["status"] == "interrupted":
        _err(f"interrupted: {len(doc['rows'])} of {doc['expected_rows']} rows measured, written to {jpath}")
        return EXIT_INTERRUPTED
    return EXIT_ERROR if doc["errors"] else EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tdpfast.bench`` (the same as ``tdpfast bench``)."""
    parser = argparse.ArgumentParser(prog="tdpfast")
    add_parser(parser.add_subparsers(dest="cmd"))
    return run(parser.parse_args(["bench"] + list(sys.argv[1:] if argv is None else argv)))
