"""Smoke test of the benchmark suite (the package tdpfast/bench/, benches/): the suite runs end
to end at tiny sizes and writes every row it promises, in the documented JSON schema
(docs/json/bench.md). No timing is asserted anywhere: only that the measurements exist, the
counts the model must reproduce (published flushes), that the reference model measured every
row it is asked to (a broken reference model fails the run and these checks), the compare
logic on fixed numbers, Ctrl-C, and the progress rate limit (with a fake clock)."""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV

import tdpfast.bench.suite
import tdpfast.bench.workloads
import tdpfast.reference.model
from tdpfast import Policy, bench

ROOT = Path(__file__).resolve().parents[1]

# What a tiny run must contain (tdpfast.bench.PROFILES["tiny"]), written out literally so
# that a row silently dropped from the suite fails here.
TIMING_ROWS = ["zap.4k", "zap.2m", "access.hit100", "access.hit99", "access.hit90", "access.hit50",
               "populate.fault", "populate.map_range", "walk.cold"]
EXPLORER_ROWS = ["explorer.vmx", "explorer.svm"]
GUEST_ROWS = ["guest.walk2d", "guest.hit100", "guest.hit_mixed"]
MEMORY_ROWS = ["memory.8m", "memory.16m"]
FLUSH_ROWS = [f"flush.{k}.{e}" for e in (64, 256) for k in ("single", "global")]
WORKLOADS = ["boot", "notifier", "memslot", "dirty_log", "migration", "root_churn"]
PUBLISHED_ROWS = ["published.zap_collapsible", "published.recover", "published.recover_yield"]
IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
TOKEN = re.compile(r"^[A-Za-z0-9_.\-]+$")     # a row id, a policy name, a file name


def _parse(argv):
    parser = argparse.ArgumentParser(prog="tdpfast")
    bench.add_parser(parser.add_subparsers(dest="cmd"))
    return parser.parse_args(["bench"] + argv)


def _run(argv, capsys):
    rc = bench.run(_parse(["--profile", "tiny"] + argv))
    return rc, capsys.readouterr()


# ------------------------------------------------------------------------------ checks shared with the proof below

def check_timing_rows_measured(rows: dict, ids) -> None:
    """Every timed row has its value, its limit, its spread and a reference measurement."""
    for rid in ids:
        r = rows[rid]
        assert r["value"] > 0 and r["limit"]["value"] > 0 and r["limit_ratio"] > 0, rid
        sp = r["spread"]
        assert sp["min"] <= sp["q1"] <= sp["median"] <= sp["q3"] <= sp["max"] and sp["rounds"] == len(r["samples"])
        ref = r["reference"] or {}
        assert ref.get("status") == "ok" and ref["value"] > 0 and ref["speedup"] > 0, (rid, ref)


def check_cost_references(rows: dict, workloads) -> None:
    """Every workload ran on the reference model too (KVM's policy), with the same counts."""
    for w in workloads:
        ref = rows[f"cost.{w}.kvm"]["reference"] or {}
        assert ref.get("status") == "ok" and ref["counters_match"], (w, ref)


def check_clean(doc: dict) -> None:
    assert doc["status"] == "complete" and doc["errors"] == [], doc["errors"]


def check_schema(doc: dict) -> None:
    """The document follows docs/json/bench.md (version 1)."""
    top = {"schema_version": int, "tool": str, "status": str, "profile": str, "seed": int, "sizes": dict,
           "steps": list, "expected_rows": int, "machine": dict, "elapsed_s": float, "errors": list,
           "chart": (str, type(None)), "comparison": (dict, type(None)), "rows": list}
    assert set(doc) == set(top)
    for k, t in top.items():
        assert isinstance(doc[k], t), k
    assert doc["schema_version"] == bench.SCHEMA_VERSION == 1 and doc["tool"] == "tdpfast-bench"
    assert doc["status"] in ("complete", "interrupted", "error")
    assert set(doc["machine"]) == {"python", "platform", "cpu", "cpus", "git", "loadavg_start", "loadavg_end"}
    common = {"id", "kind", "group", "reference"}
    keys = {"timing": {"unit", "better", "value", "spread", "samples", "limit", "limit_ratio", "extra"},
            "memory": {"unit", "better", "value", "spread", "samples", "limit", "limit_ratio", "extra"},
            "flush": {"unit", "better", "value", "spread", "samples", "limit", "limit_ratio", "extra"},
            "cost": {"workload", "policy", "safe", "switches", "counters", "wall_ms"},
            "published": {"mode", "yield_every", "vcpus", "pages_per_vcpu", "published_flushes", "expected_flushes",
                          "flushes", "match", "counters", "disable_ms"}}
    for r in doc["rows"]:
        assert set(r) == common | keys[r["kind"]], r["id"]
        assert isinstance(r["id"], str) and TOKEN.match(r["id"])

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                assert IDENT.match(k), f"key {k!r} at {path}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for v in node:
                walk(v, path)
        elif isinstance(node, str) and not path.startswith(("$.machine", "$.errors", "$.comparison.against")):
            assert TOKEN.match(node), f"display string {node!r} at {path}"

    walk(doc, "$")


# ------------------------------------------------------------------------------ the tiny run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    assert bench.have_limits(), "tdpfast._bench_limits is not built: python tdpfast/_build.py"
    out = tmp_path_factory.mktemp("bench")
    args = _parse(["--quick", "--profile", "tiny", "--out", str(out)])
    assert bench.run(args) == 0
    with open(out / bench.JSON_NAME, encoding="utf-8") as f:
        return out, json.load(f)


def test_options_and_defaults():
    a = _parse([])
    assert (a.quick, a.json, a.out, a.compare, a.progress) == (False, False, "./bench-results", None, True)
    assert a.func is bench.run
    a = _parse(["--quick", "--json", "--out", "d", "--compare", "old.json", "--no-progress"])
    assert (a.quick, a.json, a.out, a.compare, a.progress) == (True, True, "d", "old.json", False)


@pytest.mark.slow
def test_every_expected_row_is_written_in_the_documented_schema(tiny_run):
    _, doc = tiny_run
    check_clean(doc)
    check_schema(doc)
    ids = [r["id"] for r in doc["rows"]]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    expected = (TIMING_ROWS + EXPLORER_ROWS + GUEST_ROWS + FLUSH_ROWS + MEMORY_ROWS + PUBLISHED_ROWS
                + [f"cost.{w}.{p}" for w in WORKLOADS for p in Policy.names()])
    missing = sorted(set(expected) - set(ids))
    assert not missing, f"rows missing from the JSON: {missing}"
    assert sorted(bench.expected_row_ids("tiny")) == sorted(ids) and doc["expected_rows"] == len(ids)
    assert doc["profile"] == "tiny" and doc["steps"] == [s.key for s in bench.STEPS]


@pytest.mark.slow
def test_rows_carry_their_measurements(tiny_run):
    _, doc = tiny_run
    rows = {r["id"]: r for r in doc["rows"]}
    check_timing_rows_measured(rows, TIMING_ROWS)
    for rid in GUEST_ROWS:      # guest paging: no limit, no reference; a cold 2D walk is 24 references
        r = rows[rid]
        assert r["value"] > 0 and r["limit"] is None and r["reference"] is None, rid
        assert r["extra"]["accesses"] > 0 and 0.0 <= r["extra"]["hit_rate"] <= 1.0, rid
    # (the one combined entry a TLB-less geometry keeps hits only a repeated page)
    assert rows["guest.walk2d"]["extra"]["refs_per_walk"] == 24.0 and rows["guest.walk2d"]["extra"]["hit_rate"] < 0.01
    assert rows["guest.hit100"]["extra"]["hit_rate"] == 1.0
    assert 0 < rows["guest.hit_mixed"]["extra"]["hit_rate"] < 1
    for rid in EXPLORER_ROWS:   # the explorer: operations of VM seeds 0, 1, ... per second; no limit, no reference
        r = rows[rid]
        assert r["value"] > 0 and r["limit"] is None and r["reference"] is None, rid
        assert r["extra"]["ops"] == bench.PROFILES["tiny"].explorer_ops and r["extra"]["invariants"] is True
    for rid in ("access.hit100", "access.hit99", "access.hit90", "access.hit50"):
        assert 0 < rows[rid]["extra"]["hit_rate"] <= 1
    # the four working sets give four different hit rates, highest first; the hot set
    # of 32 pages hits the L1 DTLB every time
    hr = [rows[f"access.{s}"]["extra"]["hit_rate"] for s in ("hit100", "hit99", "hit90", "hit50")]
    assert hr[0] == 1.0 and hr[0] > hr[1] > hr[2] > hr[3]
    assert rows["access.hit100"]["extra"]["l1_hits"] == rows["access.hit100"]["extra"]["accesses"]
    assert rows["walk.cold"]["extra"]["refs_per_walk"] == 4.0   # no PSC: every walk from the root
    for rid in FLUSH_ROWS:
        r = rows[rid]
        ex = r["extra"]
        assert ex["live_entries_before"] > 0 and ex["live_entries_after"] == 0, rid
        assert r["value"] > 0 and r["reference"]["status"] == "ok", rid
    for rid in MEMORY_ROWS:
        ex = rows[rid]["extra"]
        assert ex["leaves"] == ex["pages"] and ex["tables"] >= ex["pages"] // 512
    assert rows["memory.8m"]["reference"]["status"] == "ok"
    assert rows["memory.16m"]["reference"] == {"status": "not_measured"}


@pytest.mark.slow
def test_costs_rows(tiny_run):
    _, doc = tiny_run
    costs = [r for r in doc["rows"] if r["kind"] == "cost"]
    for r in costs:
        assert set(bench.COST_KEYS) <= set(r["counters"]), r["id"]
    check_cost_references({r["id"]: r for r in costs}, WORKLOADS)
    # deferring the flush (KVM) versus flushing on every root put: same work, more flushes
    c = {r["id"]: r["counters"] for r in costs}
    assert c["cost.root_churn.flush-on-put-root"]["remote_tlb_flush"] > c["cost.root_churn.kvm"]["remote_tlb_flush"]


@pytest.mark.slow
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
    for rid in PUBLISHED_ROWS:
        ref = rows[rid]["reference"]
        assert ref["status"] == "ok" and ref["counters_match"] and ref["flushes"] == ref["c_flushes"], rid


@pytest.mark.slow
def test_chart_compare_and_json_output(tiny_run, tmp_path, capsys):
    out, doc = tiny_run
    if importlib.util.find_spec("matplotlib"):
        assert (out / bench.CHART_NAME).stat().st_size > 0
        assert doc["chart"] == bench.CHART_NAME
    else:
        assert doc["chart"] is None
    text = bench.compare(doc, doc)
    assert "zap.4k" in text and "cost.boot.kvm" in text
    assert f"{len(doc['rows'])} rows compared: {len(doc['rows'])} no change beyond noise" in text
    capsys.readouterr()
    rc, cap = _run(["--only", "zap", "--json", "--out", str(tmp_path), "--compare", str(out / bench.JSON_NAME)],
                   capsys)
    assert rc == 0
    printed = json.loads(cap.out)
    check_schema(printed)
    assert sorted(r["id"] for r in printed["rows"]) == ["zap.2m", "zap.4k"]
    cmp = printed["comparison"]
    assert sorted(v["id"] for v in cmp["rows"]) == ["zap.2m", "zap.4k"] and "cost.boot.kvm" in cmp["only_old"]
    assert "[step 1/1]" in cap.err and "2/2 cases" in cap.err   # progress goes to stderr
    assert json.loads((tmp_path / bench.JSON_NAME).read_text()) == printed


@pytest.mark.slow
def test_pytest_benches_collect_and_run():
    """benches/ runs under pytest-benchmark (with timing disabled) at tiny sizes."""
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benches"), "-p", "no:cacheprovider", "-q",
                        "-o", "python_files=bench_*.py", "--benchmark-disable", "--tdpfast-profile", "tiny"],
                       cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout


# ------------------------------------------------------------------------------ a broken reference model

class _BrokenVM:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the reference model is broken")


def test_a_broken_reference_model_fails_the_run_and_the_smoke_checks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tdpfast.reference.model, "VM", _BrokenVM)
    monkeypatch.setattr(tdpfast.bench.workloads, "WORKLOADS", {"boot": tdpfast.bench.workloads.WORKLOADS["boot"]})
    monkeypatch.setattr(tdpfast.bench.workloads, "cost_policies", lambda: [("kvm", Policy.kvm())])
    rc, cap = _run(["--only", "zap", "--only", "costs", "--json", "--no-progress", "--out", str(tmp_path)], capsys)
    assert rc == 1
    doc = json.loads(cap.out)
    assert doc["status"] == "error"
    assert [(e["step"], e["source"], e["type"]) for e in doc["errors"]] == [
        ("zap", "reference_model", "RuntimeError"), ("costs", "reference_model", "RuntimeError")]
    assert "the reference model is broken" in doc["errors"][0]["traceback"]
    assert "error: reference_model in step zap: RuntimeError: the reference model is broken" in cap.err
    rows = {r["id"]: r for r in doc["rows"]}
    assert set(rows) == {"zap.4k", "zap.2m", "cost.boot.kvm"}    # the engine's rows are still measured
    # ... and every check the smoke tests make on the reference fails
    with pytest.raises(AssertionError):
        check_timing_rows_measured(rows, ["zap.4k"])
    with pytest.raises(AssertionError):
        check_cost_references(rows, ["boot"])
    with pytest.raises(AssertionError):
        check_clean(doc)


def test_an_engine_error_is_not_taken_for_a_reference_error(monkeypatch, tmp_path, capsys):
    """Only the reference model's failures are caught (and reported); the bench's own propagate."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("engine side")

    monkeypatch.setattr(tdpfast.bench.measure, "time_rounds", broken)
    with pytest.raises(ZeroDivisionError):
        bench.run(_parse(["--profile", "tiny", "--only", "zap", "--no-progress", "--out", str(tmp_path)]))


# ------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_writes_the_partial_result_and_exits_130(monkeypatch, tmp_path, capsys):
    def zap_then_ctrl_c(sz, progress):
        gen = tdpfast.bench.measure.measure_zap(sz, progress)
        yield next(gen)
        raise KeyboardInterrupt

    steps = tuple(s._replace(measure=zap_then_ctrl_c) if s.key == "zap" else s for s in bench.STEPS)
    monkeypatch.setattr(tdpfast.bench.suite, "STEPS", steps)
    rc, cap = _run(["--only", "zap", "--only", "access", "--json", "--no-progress", "--out", str(tmp_path)], capsys)
    assert rc == 130
    doc = json.loads(cap.out)
    check_schema(doc)
    assert doc["status"] == "interrupted" and [r["id"] for r in doc["rows"]] == ["zap.4k"]
    assert doc["expected_rows"] == 6 and doc["chart"] is None   # 2 zap rows, 4 access rows
    assert json.loads((tmp_path / bench.JSON_NAME).read_text()) == doc
    assert "interrupted: 1 of 6 rows measured" in cap.err
    rc, cap = _run(["--only", "zap", "--no-progress", "--out", str(tmp_path)], capsys)   # the tables too
    assert rc == 130 and "INTERRUPTED: 1 of 2 rows measured" in cap.out and "zap_gfn_range" in cap.out


# ------------------------------------------------------------------------------ compare

def _timed(rid, samples, better="lower"):
    return {"id": rid, "kind": "timing", "group": "g", "unit": "ns_per_leaf", "better": better,
            "value": min(samples), "spread": bench.spread(samples), "samples": samples, "limit": None,
            "limit_ratio": None, "reference": None, "extra": {}}


def _doc(rows):
    return {"schema_version": 1, "tool": "tdpfast-bench", "status": "complete", "profile": "tiny",
            "machine": {"git": "abc"}, "rows": rows}


def test_compare_reports_changes_only_beyond_the_noise():
    old = _doc([_timed("a", [10, 11, 12]), _timed("b", [10, 11, 12]), _timed("c", [10, 10.2, 10.4]),
                _timed("d", [10, 10.1, 10.2]), _timed("e", [100, 101, 102], better="higher"),
                {"id": "cost.x.kvm", "kind": "cost", "counters": {"cycles": 5, "ipis": 1}},
                {"id": "cost.y.kvm", "kind": "cost", "counters": {"cycles": 5, "ipis": 1}}])
    new = _doc([_timed("a", [11.5, 12.5, 13]),     # ranges overlap: noise
                _timed("b", [20, 21, 22]),         # twice as slow, far outside both ranges
                _timed("c", [10.6, 10.7, 10.8]),   # disjoint ranges but only +5%: under the 5% floor
                _timed("d", [8, 8.1, 8.2]),        # faster, beyond the noise
                _timed("e", [80, 81, 82], better="higher"),   # a rate that dropped: worse
                {"id": "cost.x.kvm", "kind": "cost", "counters": {"cycles": 5, "ipis": 1}},
                {"id": "cost.y.kvm", "kind": "cost", "counters": {"cycles": 5, "ipis": 2}},
                _timed("new_row", [1])])
    cmp = bench.compare_rows(new, old)
    verdicts = {v["id"]: v["verdict"] for v in cmp["rows"]}
    assert verdicts == {"a": "same", "b": "worse", "c": "same", "d": "better", "e": "worse",
                        "cost.x.kvm": "same", "cost.y.kvm": "counts_changed"}
    assert cmp["only_new"] == ["new_row"] and cmp["only_old"] == []
    assert cmp["summary"] == {"same": 3, "worse": 2, "better": 1, "counts_changed": 1}
    b = next(v for v in cmp["rows"] if v["id"] == "b")
    assert b["change"] == pytest.approx(10 / 11) and b["old_range"] == [10, 12] and b["new_range"] == [20, 22]
    text = bench.compare(new, old)
    assert "+90.9% WORSE" in text and "no change beyond noise" in text and "ipis 1->2" in text


@pytest.mark.parametrize("content,why", [
    ("[1, 2]", "a JSON list, not an object"),
    ('{"rows": []}', "no \"tool\""),
    ('{"schema": 1, "tool": "tdpfast bench", "rows": []}', "no \"tool\""),     # the unversioned format
    ('{"schema_version": 2, "tool": "tdpfast-bench", "rows": []}', "newer than this tdpfast reads"),
    ('{"schema_version": "1", "tool": "tdpfast-bench", "rows": []}', "not a positive integer"),
    ('{"schema_version": 1, "tool": "tdpfast-bench", "rows": [{"id": "zap.4k", "kind": "timing"}]}',
     "no per-round spread"),
    ("garbage {", "not JSON"),
    ("\xff\xfe", "not JSON"),
])
def test_compare_rejects_a_file_that_is_not_a_bench_result(content, why, tmp_path, capsys):
    f = tmp_path / "old.json"
    f.write_bytes(content.encode("latin-1"))
    out = tmp_path / "out"
    rc, cap = _run(["--out", str(out), "--compare", str(f)], capsys)
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tdpfast bench: --compare") and why in lines[0], cap.err
    assert not out.exists()                   # rejected before any work


def test_compare_file_errors(tmp_path, capsys):
    rc, cap = _run(["--out", str(tmp_path), "--compare", str(tmp_path / "nope.json")], capsys)
    assert rc == 2 and "cannot read --compare file" in cap.err and "nope.json" in cap.err


def test_out_directory_that_cannot_be_written_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, cap = _run(["--out", str(tmp_path / "file" / "sub")], capsys)
    assert rc == 2 and "cannot write to --out directory" in cap.err


# ------------------------------------------------------------------------------ progress

class _FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_redraws_at_most_four_times_a_second_and_names_the_case():
    clock, stream = _FakeClock(), io.StringIO()
    pr = bench.Progress(256, 1, stream=stream, tty=True, clock=clock)
    pr.step("flush", "flushes")
    for i in range(256):                      # 256 cases over 2 s, a tick at each (every 1/128 s)
        pr.case(f"flush.single.{i}")
        pr.tick()
        clock.t += 1 / 128
    assert pr.redraws == 8                    # 2 s at 4 redraws/s
    assert stream.getvalue().count("\r") == 8
    last = stream.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("[225/256] flush.single.224") and "step 1/1: flush" in last
    pr.finish()
    assert stream.getvalue().endswith("\r")   # the status line is cleared


def test_progress_off_a_terminal_writes_one_line_per_step():
    stream = io.StringIO()
    pr = bench.Progress(3, 1, stream=stream, tty=False, clock=_FakeClock())
    pr.step("zap", "zap of things")
    for i in range(3):
        pr.case(f"zap.{i}")
        assert not pr.tick()
    pr.step_done()
    pr.finish()
    assert stream.getvalue().splitlines() == ["[step 1/1] zap of things ...",
                                              "      zap: done in 0.0s, 3/3 cases, total 0.0s"]


# ------------------------------------------------------------------------------ the builders

@pytest.mark.parametrize("builder,header", [("tdpfast/_build.py", "csrc/tdpfast.h"),
                                            ("tdpfast/bench/_limits_build.py", "csrc/bench/limit_loops.h")])
def test_builders_fail_loudly_on_a_missing_header(builder, header, tmp_path):
    """A builder whose header is missing raises naming it (it used to skip it silently)."""
    (tmp_path / builder).parent.mkdir(parents=True)
    (tmp_path / builder).write_text((ROOT / builder).read_text())
    (tmp_path / "csrc" / "bench").mkdir(parents=True)
    r = subprocess.run([sys.executable, str(tmp_path / builder)], cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "FileNotFoundError" in r.stderr and str(tmp_path / header) in r.stderr and "is missing" in r.stderr
    assert not list(tmp_path.rglob("*.so"))


def test_access_rows_note_a_missing_pycachesim_peer(monkeypatch):
    """pycachesim is optional (the bench extra): without it the access rows carry a
    not-installed peer and the table says so, instead of failing or skipping the row."""
    import sys
    import numpy as np
    from tdpfast.bench.measure import _peer
    from tdpfast.bench.report import _timing_note
    monkeypatch.setitem(sys.modules, "cachesim", None)   # import cachesim -> ImportError
    peer = _peer(np.arange(64, dtype=np.uint64) << np.uint64(12))
    assert peer == {"name": "pycachesim", "m_accesses_per_s": None, "note": "not_installed"}
    note = _timing_note({"kind": "timing", "extra": {"hit_rate": 0.99, "limit_hit_rate": 0.99, "peer": peer}})
    assert "pycachesim" in note and "not installed" in note
