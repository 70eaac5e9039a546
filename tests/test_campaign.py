"""Fuzz campaigns on many workers (tdpfast/campaign.py, tdpfast/scheduler.py): the VMs are
those a single machine runs, so a find replays with `tdpfast fuzz --seed S`; the first
violation reported is the lowest violating seed; --keep-going keeps each distinct finding
once; a worker killed mid-campaign (process pool or Dask) loses no finding; the CLI's JSON
has the local keys plus the campaign's; Ctrl-C prints the partial result."""
import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

import schema_check

from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV as ENV
from tdpfast import campaign, fuzz, scheduler
from tdpfast._native import check, ffi, lib
from tdpfast.errors import InvalidArgumentError
from tdpfast.policy import Policy

pytestmark = pytest.mark.slow

B5 = "B5-atomic-zap-no-flush"      # violations at 5 of the first 16 VM seeds, each shrinks in ms
CHUNK = fuzz.FuzzConfig().chunk
SEEDS = 24


def config(policy: str) -> fuzz.FuzzConfig:
    return fuzz.FuzzConfig(policy=Policy.named(policy))


def run_campaign(sched, policy=B5, seeds=SEEDS, keep_going=True, on_result=None, per_unit=3):
    return campaign.run(config(policy), sched, seed=0, budget_s=600, max_ops=seeds * CHUNK,
                        keep_going=keep_going, seeds_per_unit=per_unit, on_result=on_result)


def summary(res):
    """Everything a campaign found and did that must not depend on the workers."""
    return (res.ops, res.seeds_explored, res.coverage, res.interrupted,
            [(f["seed"], f["ops_in_seed"], f["signature"], f["occurrences"], f["minimal"]) for f in res.findings])


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "tdpfast", "fuzz", "--no-progress", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=SUBPROCESS_CWD)


@pytest.fixture(scope="module")
def reference():
    """The keep-going campaign over the first SEEDS VM seeds under B5, in this process."""
    res = run_campaign(scheduler.InProcessScheduler())
    assert res.findings and not res.interrupted
    return summary(res)


@pytest.fixture(scope="module")
def dask_sched():
    """A LocalCluster of 2 single-threaded worker processes on 127.0.0.1."""
    s = scheduler.DaskScheduler(n_workers=2)
    yield s
    s.close()


def violating_seeds(policy: str, seeds: int):
    cfg, out, hits = config(policy), ffi.new("uint64_t *"), []
    for s in range(seeds):
        vm = cfg.vm(s, record=False)
        check(vm._h, lib.tdp_fuzz(vm._h, s, cfg.chunk, out))
        if lib.tdp_violation_count(vm._h):
            hits.append(s)
    return hits


def test_a_clean_campaign_runs_exactly_the_vms_of_a_local_run():
    max_ops = 3 * CHUNK + 123
    cfg = config("kvm")
    res = campaign.run(cfg, scheduler.InProcessScheduler(), seed=7, budget_s=600, max_ops=max_ops,
                       seeds_per_unit=2)
    local_cov = fuzz.Coverage()
    _, _, local_total = fuzz.explore(cfg, seed=7, budget_s=600, max_ops=max_ops, coverage=local_cov)
    assert res.findings == [] and res.ops == local_total == max_ops
    assert res.seeds_explored == 4 and res.units_done == 2
    assert "remote_tlb_flush" in res.coverage and "violations" not in res.coverage
    # the units' coverage signatures add up to exactly those of the same VMs run locally
    assert res.signatures.count > 0 and res.signatures.bits == local_cov.bits


def test_the_first_violation_is_the_lowest_seed_and_replays_on_one_machine():
    cfg = config("no-flush-on-migrate")
    local, local_total = fuzz.run(cfg, seed=0, budget_s=600)
    with scheduler.ProcessScheduler(2) as sched:
        res = campaign.run(cfg, sched, seed=0, budget_s=600, keep_going=False, seeds_per_unit=1)
    f = res.finding
    assert len(res.findings) == 1
    assert f["seed"] == local.seed and f["ops_in_seed"] == local_total - (local.seed * CHUNK)
    assert f["minimal"] == local.as_dict()["minimal"]
    assert f["minimal_text"] == [str(e) for e in local.minimal]
    again, n = fuzz.run(cfg, seed=f["seed"], max_ops=f["ops_in_seed"], budget_s=600)
    assert n == f["ops_in_seed"] and again.violation.kind == f["violation"]["kind"]
    p = subprocess.run([sys.executable, "-c", f["reproducer"]], capture_output=True, text=True, env=ENV,
                       cwd=SUBPROCESS_CWD, timeout=60)
    assert p.returncode == 1 and f["violation"]["kind"] in p.stdout


def test_keep_going_keeps_each_kind_and_shrunk_signature_once(reference):
    ops, seeds, _, _, found = reference
    hits = violating_seeds(B5, SEEDS)
    assert seeds == SEEDS and len(hits) >= 5
    assert sum(occ for _, _, _, occ, _ in found) == len(hits)      # every violating VM is counted once
    sigs = [sig for _, _, sig, _, _ in found]
    assert len(set(sigs)) == len(sigs) < len(hits)                 # duplicates folded
    assert [s for s, _, _, _, _ in found] == sorted(s for s, _, _, _, _ in found)
    assert all(s in hits for s, _, _, _, _ in found)


def test_a_dask_campaign_finds_what_one_process_finds(dask_sched, reference):
    res = run_campaign(dask_sched)
    assert summary(res) == reference
    assert res.per_worker and all(w.startswith("tcp://127.0.0.1:") for w in res.per_worker)
    assert sum(p["ops"] for p in res.per_worker.values()) == res.ops


def test_a_dask_worker_killed_mid_campaign_loses_no_finding(dask_sched, reference):
    client = dask_sched.client
    killed = []

    def kill_a_busy_worker(unit, result):
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    res = run_campaign(dask_sched, on_result=kill_a_busy_worker)
    assert killed, "no worker was busy when the first result came"
    with pytest.raises(psutil.NoSuchProcess):         # the worker process is gone ...
        psutil.Process(killed[0]).wait(timeout=60)
        psutil.Process(killed[0])
    assert summary(res) == reference                 # ... and every finding and operation is there


def test_a_pool_worker_killed_mid_campaign_loses_no_finding(reference):
    with scheduler.ProcessScheduler(2) as sched:
        killed = []

        def kill_a_worker(unit, result):
            if not killed:
                pid = sched.pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        res = run_campaign(sched, on_result=kill_a_worker)
        assert killed[0] not in sched.pids()
    assert summary(res) == reference


def test_cli_campaign_json_has_the_local_keys_and_a_replay():
    local = cli("--policy", "no-flush-on-migrate", "--json")
    dist = cli("--policy", "no-flush-on-migrate", "--jobs", "2", "--json")
    assert local.returncode == dist.returncode == 1, dist.stderr
    ld, dd = json.loads(local.stdout), json.loads(dist.stdout)
    assert set(ld) <= set(dd)
    assert {"coverage", "findings", "campaign", "ops_in_seed", "replay"} <= set(dd)
    assert dd["campaign"]["workers"] >= 1 and dd["campaign"]["scheduler"] == "processes:2"
    assert (dd["vm_seed"], dd["violation"], dd["minimal"]) == (ld["vm_seed"], ld["violation"], ld["minimal"])
    assert dd["schema_version"] == ld["schema_version"] and dd["status"] == ld["status"] == "violation"
    schema_check.check(dd, "fuzz.schema.json")
    argv = dd["replay"].split()
    assert argv[:2] == ["tdpfast", "fuzz"]
    again = cli(*argv[2:], "--json")
    assert again.returncode == 1
    ad = json.loads(again.stdout)
    assert (ad["vm_seed"], ad["violation"], ad["ops_explored"]) == (dd["vm_seed"], dd["violation"], dd["ops_in_seed"])


def test_cli_clean_campaign_on_a_dask_scheduler_address(dask_sched):
    addr = dask_sched.client.scheduler.address
    p = cli("--scheduler", addr, "--max-ops", str(6 * CHUNK), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["violation"] is None and d["ops_explored"] == 6 * CHUNK
    assert d["campaign"]["scheduler"] == addr and d["findings"] == []
    assert sum(w["ops"] for w in d["campaign"]["per_worker"].values()) == 6 * CHUNK


@pytest.mark.parametrize("args,word", [
    (("--jobs", "0"), "--jobs"),
    (("--jobs", "2", "--scheduler", "local:2"), "not both"),
    (("--scheduler", "bogus"), "--scheduler"),
    (("--scheduler", "local:0"), "1..1024"),
])
def test_cli_campaign_usage_errors(args, word):
    p = cli(*args, "--budget", "1", timeout=120)
    assert p.returncode == 2 and word in p.stderr and "Traceback" not in p.stderr


def test_an_unreachable_scheduler_is_a_usage_error():
    with pytest.raises(InvalidArgumentError, match="cannot reach a Dask scheduler"):
        scheduler.DaskScheduler(address="tcp://127.0.0.1:1", connect_timeout=2)


def test_ctrl_c_cancels_the_campaign_and_prints_the_partial_result():
    p = subprocess.Popen([sys.executable, "-m", "tdpfast", "fuzz", "--jobs", "2", "--budget", "300", "--json",
                          "--progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         cwd=SUBPROCESS_CWD)
    seen = b""
    while not re.search(rb"[1-9][0-9]* units", seen):     # the workers have reported
        chunk = os.read(p.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130
    d = json.loads(out)
    assert d["campaign"]["interrupted"] is True and d["violation"] is None and d["ops_explored"] > 0
