"""`tdpfast sweep` (tdpfast/sweep.py, tdpfast/workload.py): grids from TOML/JSON/CLI lists,
validated before any work; deterministic counters per point; a 48-point sweep on a Dask
LocalCluster whose worker is killed midway keeps every point, writes the table and one
chart per metric, and a re-run skips every finished point."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV
from tdpfast import scheduler, sweep
from tdpfast.errors import InvalidArgumentError

pytestmark = pytest.mark.slow

GRID_TOML = """
policy   = ["kvm", "flush-on-put-root"]
tlb      = ["skylake", "zen3"]
workload = ["boot", "notifier", "migration"]
size     = [2048, 8192]
vcpus    = [2, 4]
"""
VARYING = ("wall_ms", "worker")          # the only columns that depend on where and when


def small_grid(**changes):
    spec = {"policy": ["kvm", "no-flush-on-migrate"], "tlb": "skylake", "workload": ["migration", "root_churn"],
            "size": 512, "vcpus": [1, 3], "pcpus": 2, "rounds": 8}
    spec.update(changes)
    return sweep.Grid.build(spec)


def test_a_grid_file_and_cli_lists_give_the_same_points(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text(GRID_TOML)
    js = tmp_path / "g.json"
    js.write_text(json.dumps(sweep.load_grid_file(str(toml))))
    a = sweep.Grid.build(sweep.load_grid_file(str(toml))).points()
    b = sweep.Grid.build(sweep.load_grid_file(str(js))).points()
    assert a == b and len(a) == 48 and len({p.key("e") for p in a}) == 48
    assert a[0].pcpus == 1 and [p for p in a if p.vcpus == 4][0].pcpus == 2      # default: half the vCPUs
    assert a[0].key("engine-1") != a[0].key("engine-2")                        # a new engine measures again
    from tdpfast.cli import build_parser
    args = build_parser().parse_args(["sweep", str(toml), "--vcpus", "8", "--pcpus", "3"])
    g = sweep.grid_from_args(args)
    assert len(g.points()) == 24 and {(p.vcpus, p.pcpus) for p in g.points()} == {(8, 3)}


@pytest.mark.parametrize("spec,word", [
    ({"policy": "nope"}, "unknown policy"),
    ({"tlb": "pentium"}, "unknown tlb"),
    ({"size": 100}, "size must be in"),
    ({"vcpus": []}, "empty"),
    ({"vcpus": "x"}, "integer"),
    ({"colour": "red"}, "unknown grid key"),
    ({"arch": "arm"}, "vmx or svm"),
])
def test_bad_grids_are_usage_errors(spec, word):
    with pytest.raises(InvalidArgumentError, match=word):
        small_grid(**spec)


def test_points_measure_the_same_counters_every_time_and_rerun_skips(tmp_path):
    g = small_grid()
    first = sweep.run(g, scheduler.InProcessScheduler(), str(tmp_path), charts=False)
    assert (first.ran, first.skipped, len(first.table)) == (8, 0, 8)
    again = sweep.run(g, scheduler.InProcessScheduler(), str(tmp_path / "other"), charts=False)
    cols = [c for c in first.table.columns if c not in VARYING]
    pd.testing.assert_frame_equal(first.table[cols], again.table[cols])
    t = first.table.set_index(["policy", "workload", "vcpus"])
    assert (t["violations"] == 0).loc["kvm"].all()
    assert (t.loc[("no-flush-on-migrate", "migration", 3), "violations"] > 0)   # 3 vCPUs migrate
    rerun = sweep.run(g, scheduler.InProcessScheduler(), str(tmp_path), charts=False)
    assert (rerun.ran, rerun.skipped) == (0, 8)
    pd.testing.assert_frame_equal(pd.read_parquet(first.table_path)[cols], rerun.table[cols])


def test_a_48_point_sweep_on_a_local_cluster_survives_a_killed_worker(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text(GRID_TOML)
    grid = sweep.Grid.build(sweep.load_grid_file(str(toml)))
    out = str(tmp_path / "out")
    killed = []
    with scheduler.DaskScheduler(n_workers=2) as sched:
        client = sched.client

        def kill_a_busy_worker(unit, row):
            if killed:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        res = sweep.run(grid, sched, out, on_result=kill_a_busy_worker)
    assert killed
    assert (res.points, res.ran, len(res.table), res.interrupted) == (48, 48, 48, False)
    assert res.table_path.endswith("sweep.parquet") and len(pd.read_parquet(res.table_path)) == 48
    assert sorted(os.path.basename(c) for c in res.charts) == sorted(f"{m}.png" for m in sweep.METRICS)
    assert all(os.path.getsize(c) > 1000 for c in res.charts)
    # The counters do not depend on the worker (nor on one being killed): four points again here.
    for _, row in res.table.iloc[::13].iterrows():
        p = sweep.Point(**{k: row[k] for k in sweep.Point.__dataclass_fields__})
        mine = sweep.measure(p)
        assert all(mine[k] == row[k] for k in mine if k not in VARYING), p
    # Re-running skips every finished point (and starts no workers for nothing).
    p = subprocess.run([sys.executable, "-m", "tdpfast", "sweep", str(toml), "--out", out, "--scheduler",
                        "local:2", "--json", "--no-progress"], capture_output=True, text=True, env=ENV,
                       cwd=SUBPROCESS_CWD, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (d["ran"], d["skipped"], d["finished"], d["schema_version"]) == (0, 48, 48, 1)


def test_cli_sweep_lists_csv_and_usage_errors(tmp_path):
    def run(*a):
        return subprocess.run([sys.executable, "-m", "tdpfast", "sweep", "--no-progress", *a], capture_output=True,
                              text=True, env=ENV, cwd=SUBPROCESS_CWD, timeout=120)

    out = str(tmp_path / "o")
    p = run("--policy", "kvm,precise-range", "--tlb", "zen4", "--workload", "memslot", "--size", "512",
            "--vcpus", "2", "--rounds", "1", "--format", "csv", "--no-charts", "--out", out, "--jobs", "2")
    assert p.returncode == 0, p.stderr
    assert "2 of 2 points finished" in p.stdout
    t = pd.read_csv(os.path.join(out, "sweep.csv"))
    assert sorted(t["policy"]) == ["kvm", "precise-range"] and (t["tlb"] == "zen4").all()
    p = run("--policy", "kvm,precise-range", "--tlb", "zen4", "--workload", "memslot", "--size", "512",
            "--vcpus", "2", "--rounds", "1", "--format", "csv", "--no-charts", "--out", out, "--jobs", "2")
    assert p.returncode == 0, p.stderr          # again: nothing to measure, and it says why
    assert "(0 measured now, 2 already done)" in p.stdout and "no workers started" in p.stdout
    for args, word in ((("--policy", "kvm"), "no 'tlb' axis"),
                       (("--policy", "kvm", "--tlb", "x", "--workload", "boot", "--size", "512", "--vcpus", "1"),
                        "unknown tlb"),
                       ((str(tmp_path / "missing.toml"),), "cannot read"),
                       ((str(tmp_path / "g.ini"),), "cannot read")):
        p = run(*args, "--out", out)
        assert p.returncode == 2 and word in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("workload", ["boot", "memslot", "notifier"])
def test_a_workload_at_8_vcpus_on_4_pcpus_counts_what_the_bench_cost_row_counts(workload):
    from tdpfast import bench
    from tdpfast.policy import Policy

    row = sweep.measure(sweep.Point("kvm", "skylake", workload, 1024, 8, 4, 2, bench.SEED, "vmx"))
    assert {k: row[k] for k in bench.COST_KEYS} == bench.run_workload(workload, Policy.kvm(), 1024, 2)


def test_ctrl_c_keeps_the_finished_points_and_a_rerun_does_the_rest(tmp_path):
    import re

    out = str(tmp_path / "o")
    args = [sys.executable, "-m", "tdpfast", "sweep", "--policy", "kvm", "--tlb", "skylake,zen2,zen3,zen4",
            "--workload", "boot,notifier", "--size", "4096,16384", "--vcpus", "2,4", "--rounds", "2",
            "--no-charts", "--out", out, "--json"]
    p = subprocess.Popen(args + ["--jobs", "2", "--progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=ENV, cwd=SUBPROCESS_CWD)
    seen = b""
    while not re.search(rb" [1-9][0-9]*/32 points", seen):      # some points are in
        chunk = os.read(p.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    p.send_signal(signal.SIGINT)
    stdout, _ = p.communicate(timeout=120)
    assert p.returncode == 130
    d = json.loads(stdout)
    assert d["interrupted"] is True and 1 <= d["finished"] == d["ran"] < 32
    assert len(os.listdir(os.path.join(out, "points"))) == d["finished"]
    rest = subprocess.run(args + ["--no-progress"], capture_output=True, text=True, env=ENV, cwd=SUBPROCESS_CWD,
                          timeout=300)
    r = json.loads(rest.stdout)
    assert (r["skipped"], r["ran"], r["finished"], r["interrupted"]) == (d["finished"], 32 - d["finished"], 32, False)
