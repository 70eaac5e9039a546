"""Compare two bench documents row by row, reporting a change only beyond the measured noise.

Timed rows carry one value per round. A row has changed when the two runs' round ranges
[min, max] do not overlap *and* their medians differ by more than the noise threshold: the
larger of the two runs' relative ranges ((max - min) / median), and at least
``MIN_CHANGE``. A memory row is one measurement (its range is a point), so only the
``MIN_CHANGE`` threshold applies. Modelled counters (cost and published rows) are
deterministic: any difference is a change.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .report import fmt, table, unit_text
from .suite import SCHEMA_VERSION, TOOL

MIN_CHANGE = 0.05
KINDS = ("timing", "flush", "memory", "cost", "published")


class NotABenchResult(ValueError):
    """The document is not a bench result this version can read."""


def validate(doc) -> dict:
    """``doc`` if it is a bench result of a schema this version reads; else NotABenchResult
    saying why (one line)."""
    if not isinstance(doc, dict):
        raise NotABenchResult(f"not a tdpfast bench result (a JSON {type(doc).__name__}, not an object)")
    if doc.get("tool") != TOOL or "schema_version" not in doc:
        raise NotABenchResult("not a tdpfast bench result (no \"tool\": \"tdpfast-bench\" with a schema_version)")
    v = doc["schema_version"]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise NotABenchResult(f"not a tdpfast bench result (schema_version {v!r} is not a positive integer)")
    if v > SCHEMA_VERSION:
        raise NotABenchResult(f"bench result of schema_version {v}, newer than this tdpfast reads ({SCHEMA_VERSION})")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                             and r.get("kind") in KINDS for r in rows):
        raise NotABenchResult("not a tdpfast bench result (\"rows\" is not a list of rows with an id and a kind)")
    for r in rows:
        if r["kind"] in ("timing", "flush", "memory") and not _has_spread(r):
            raise NotABenchResult(f"bench result row {r['id']!r} has no per-round spread")
    return doc


def _has_spread(r: dict) -> bool:
    sp = r.get("spread")
    return isinstance(sp, dict) and all(isinstance(sp.get(k), (int, float)) for k in ("min", "median", "max"))


def _timed_verdict(new: dict, old: dict) -> dict:
    n, o = new["spread"], old["spread"]
    change = (n["median"] - o["median"]) / o["median"] if o["median"] else 0.0
    noise = max((o["max"] - o["min"]) / o["median"] if o["median"] else 0.0,
                (n["max"] - n["min"]) / n["median"] if n["median"] else 0.0, MIN_CHANGE)
    overlap = n["min"] <= o["max"] and o["min"] <= n["max"]
    out = {"id": new["id"], "unit": new["unit"], "old": o["median"], "new": n["median"], "change": change,
           "noise": noise, "old_range": [o["min"], o["max"]], "new_range": [n["min"], n["max"]]}
    if overlap or abs(change) <= noise:
        out["verdict"] = "same"
    else:
        lower_is_better = new["better"] == "lower"
        out["verdict"] = "better" if (change < 0) == lower_is_better else "worse"
    return out


def _counter_verdict(new: dict, old: dict) -> dict:
    nc, oc = new.get("counters") or {}, old.get("counters") or {}
    differ = sorted(k for k in set(nc) | set(oc) if nc.get(k) != oc.get(k))
    key = "cycles" if new["kind"] == "cost" else "remote_tlb_flush"
    out = {"id": new["id"], "unit": "cycles" if key == "cycles" else "flushes", "old": oc.get(key), "new": nc.get(key),
           "change": None, "noise": 0.0, "differ": {k: [oc.get(k), nc.get(k)] for k in differ}}
    if oc.get(key) and nc.get(key) is not None:
        out["change"] = (nc[key] - oc[key]) / oc[key]
    out["verdict"] = "counts_changed" if differ else "same"
    return out


def compare_rows(new: dict, old: dict) -> dict:
    """``{"rows": [per-row verdicts], "only_old": [...], "only_new": [...], "summary": {verdict: n}}``;
    a verdict is "same" (no change beyond noise), "better", "worse" or "counts_changed"."""
    prev = {r["id"]: r for r in old["rows"]}
    cur = {r["id"] for r in new["rows"]}
    out: List[dict] = []
    for r in new["rows"]:
        o = prev.get(r["id"])
        if o is None or o["kind"] != r["kind"]:
            continue
        out.append(_counter_verdict(r, o) if r["kind"] in ("cost", "published") else _timed_verdict(r, o))
    summary: Dict[str, int] = {}
    for v in out:
        summary[v["verdict"]] = summary.get(v["verdict"], 0) + 1
    return {"rows": out, "only_old": sorted(set(prev) - cur), "only_new": sorted(cur - set(prev)), "summary": summary}


VERDICT_TEXT = {"same": "no change beyond noise", "better": "better", "worse": "WORSE",
                "counts_changed": "COUNTS CHANGED"}


def _range(rg: Optional[Tuple[float, float]]) -> str:
    return "" if not rg else f"[{fmt(rg[0])}, {fmt(rg[1])}]"


def render_comparison(cmp: dict, old: dict) -> str:
    head = (f"\nCompared with the {old.get('profile')} run of git {(old.get('machine') or {}).get('git')} "
            f"(median of rounds; [min, max] of rounds; a change counts only when the ranges do not overlap "
            f"and the medians differ by more than the larger relative range, at least {MIN_CHANGE:.0%}; "
            f"modelled counters must match exactly):")
    t = []
    for v in cmp["rows"]:
        verdict = VERDICT_TEXT[v["verdict"]]
        if v["verdict"] in ("better", "worse"):
            verdict = f"{v['change']:+.1%} {verdict} (noise {v['noise']:.0%})"
        elif v["verdict"] == "counts_changed":
            verdict += ": " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in list(v["differ"].items())[:3])
        t.append([v["id"], fmt(v["old"]), _range(v.get("old_range")), fmt(v["new"]), _range(v.get("new_range")),
                  unit_text(v["unit"]), verdict])
    out = head + "\n" + table(t, ["row", "old", "old range", "new", "new range", "unit", "verdict"])
    s = cmp["summary"]
    out += "\n" + f"{len(cmp['rows'])} rows compared: " + ", ".join(
        f"{s.get(k, 0)} {VERDICT_TEXT[k].lower()}" for k in ("same", "better", "worse", "counts_changed"))
    if cmp["only_old"]:
        out += "\nrows only in the old run: " + ", ".join(cmp["only_old"])
    if cmp["only_new"]:
        out += "\nrows only in the new run: " + ", ".join(cmp["only_new"])
    return out


def compare(doc: dict, old: dict) -> str:
    """The comparison of ``doc`` with ``old`` as text (both validated)."""
    return render_comparison(compare_rows(validate(doc), validate(old)), old)
