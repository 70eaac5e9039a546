"""Smoke test of the benchmark suite (tdpfast/bench.py, benches/): the suite runs end to end
at tiny sizes and writes every row it promises. No timing is asserted anywhere: only that
the measurements exist, and the counts the model must reproduce (published flushes)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV

pytest.importorskip("numpy")

from tdpfast import Policy, bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# What a tiny run must contain (tdpfast.bench.PROFILES["tiny"]), written out literally so
# that a row silently dropped from the suite fails here.
TIMING_ROWS = ["zap.4k", "zap.2m", "access.hit99", "access.hit90", "access.hit50",
               "populate.fault", "populate.map_range", "walk.cold"]
MEMORY_ROWS = ["memory.8m", "memory.16m"]
FLUSH_ROWS = [f"flush.{k}.{e}" for e in (64, 256) for k in ("single", "global")]
WORKLOADS = ["boot", "notifier", "memslot", "dirty_log", "migration", "root_churn"]
PUBLISHED_ROWS = ["published.zap_collapsible", "published.recover", "published.recover_yield"]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="tdpfast")
    bench.add_parser(parser.add_subparsers(dest="cmd"))
    return parser.parse_args(["bench"] + argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not bench.have_limits():
        pytest.fail("csrc/limits.c is not compiled into the extension: python3 tdpfast/_build.py")
    out = tmp_path_factory.mktemp("bench")
    args = _parse(["--quick", "--profile", "tiny", "--out", str(out)])
    assert bench.run(args) == 0
    with open(out / bench.JSON_NAME, encoding="utf-8") as f:
        return out, json.load(f)


def test_options_and_defaults():
    a = _parse([])
    assert (a.quick, a.json, a.out, a.compare) == (False, False, "./bench-results", None)
    assert a.func is bench.run
    a = _parse(["--quick", "--json", "--out", "d", "--compare", "old.json"])
    assert (a.quick, a.json, a.out, a.compare) == (True, True, "d", "old.json")


def test_every_expected_row_is_written(tiny_run):
    _, doc = tiny_run
    ids = [r["id"] for r in doc["rows"]]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    policies = Policy.names()
    expected = (TIMING_ROWS + FLUSH_ROWS + MEMORY_ROWS + PUBLISHED_ROWS
                + [f"cost.{w}.{p}" for w in WORKLOADS for p in policies])
    missing = sorted(set(expected) - set(ids))
    assert not missing, f"rows missing from the JSON: {missing}"
    assert sorted(bench.expected_row_ids("tiny")) == sorted(ids)
    assert doc["schema"] == bench.SCHEMA and doc["profile"] == "tiny"


def test_rows_carry_their_measurements(tiny_run):
    _, doc = tiny_run
    rows = {r["id"]: r for r in doc["rows"]}
    for rid in TIMING_ROWS:
        r = rows[rid]
        assert r["value"] > 0 and r["limit"] > 0 and r["limit_ratio"] > 0, rid
        assert r["reference"]["status"] == "ok" or r["reference"]["status"].startswith(("missing", "error"))
    for rid in ("access.hit99", "access.hit90", "access.hit50"):
        assert 0 < rows[rid]["extra"]["hit_rate"] <= 1
    # the three working sets give three different hit rates, highest first
    hr = [rows[f"access.{s}"]["extra"]["hit_rate"] for s in ("hit99", "hit90", "hit50")]
    assert hr[0] > hr[1] > hr[2]
    assert rows["walk.cold"]["extra"]["refs_per_walk"] == 4.0   # no PSC: every walk from the root
    for rid in FLUSH_ROWS:
        ex = rows[rid]["extra"]
        assert ex["live_entries_before"] > 0 and ex["live_entries_after"] == 0, rid
    for rid in MEMORY_ROWS:
        ex = rows[rid]["extra"]
        assert ex["leaves"] == ex["pages"] and ex["tables"] >= ex["pages"] // 512


def test_costs_rows(tiny_run):
    _, doc = tiny_run
    costs = [r for r in doc["rows"] if r["kind"] == "cost"]
    for r in costs:
        assert set(bench.COST_KEYS) <= set(r["counters"]), r["id"]
    for w in WORKLOADS:   # the workload is also timed on the reference model (when there is one)
        ref = next(r for r in costs if r["id"] == f"cost.{w}.kvm")["reference"]
        assert ref["status"] == "ok" or ref["status"].startswith(("missing", "error")), ref
    # deferring the flush (KVM) versus flushing on every root put: same work, more flushes
    c = {r["id"]: r["counters"] for r in costs}
    assert c["cost.root_churn.flush-on-put-root"]["remote_tlb_flush"] > c["cost.root_churn.kvm"]["remote_tlb_flush"]


def test_published_counts_reproduced(tiny_run):
    _, doc = tiny_run
    rows = {r["id"]: r for r in doc["rows"]}
    sz = bench.PROFILES["tiny"]
    huge = sz.published_vcpus * sz.published_pages_per_vcpu // 512
    zc = rows["published.zap_collapsible"]
    assert zc["flushes"] == huge and zc["match"]              # one flush per collapsed huge page
    assert rows["published.recover"]["flushes"] == 1           # batched, no yield: one flush
    ry = rows["published.recover_yield"]
    assert ry["flushes"] == ry["counters"]["iter_yields"] + 1 and ry["match"]


def test_chart_and_compare_and_json_output(tiny_run, tmp_path, capsys):
    out, doc = tiny_run
    if importlib.util.find_spec("matplotlib"):
        assert (out / bench.CHART_NAME).stat().st_size > 0
        assert doc["chart"] == bench.CHART_NAME
    else:
        assert doc["chart"] is None
    text = bench.compare(doc, doc)
    assert "zap.4k" in text and "cost.boot.kvm" in text
    capsys.readouterr()
    args = _parse(["--profile", "tiny", "--only", "zap", "--json", "--out", str(tmp_path),
                   "--compare", str(out / bench.JSON_NAME)])
    assert bench.run(args) == 0
    cap = capsys.readouterr()
    printed = json.loads(cap.out)
    assert sorted(r["id"] for r in printed["rows"]) == ["zap.2m", "zap.4k"]
    assert "Compared with" in cap.err
    assert "[1/1]" in cap.err                                   # progress goes to stderr


def test_compare_file_errors(tmp_path, capsys):
    args = _parse(["--profile", "tiny", "--out", str(tmp_path), "--compare", str(tmp_path / "nope.json")])
    assert bench.run(args) == 2
    assert "cannot read --compare file" in capsys.readouterr().err


def test_pytest_benches_collect_and_run():
    """benches/ runs under pytest-benchmark (with timing disabled) at tiny sizes."""
    pytest.importorskip("pytest_benchmark")
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benches"), "-p", "no:cacheprovider", "-q",
                        "-o", "python_files=bench_*.py", "--benchmark-disable", "--tdpfast-profile", "tiny"],
                       cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
