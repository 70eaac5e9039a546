"""Campaign scaling: operations the explorer gets through in the same time budget on one
job (this process), on ``--jobs 2`` (two local worker processes) and on ``--scheduler
local:2`` (a Dask LocalCluster of two single-threaded worker processes), under KVM's
policy (no violation ends the run early). Workers are started before the clock runs.

extra_info: ops, ops_per_s, workers that reported, budget_s, the 1-minute load average
after the row (other jobs sharing the cores), and ``vs_one_job`` (ops over the one-job
row's ops, when that row ran first in the same session). With two idle cores the
two-worker rows approach 2.0 (the driver and, for Dask, the scheduler share the cores).
"""
import os

import pytest

from tdpfast import campaign, fuzz, scheduler

BUDGET_S = {"tiny": 1.0, "quick": 5.0, "full": 20.0}


@pytest.fixture(scope="module")
def rows():
    return {}


@pytest.mark.benchmark(group="campaign")
@pytest.mark.parametrize("spec", ["inprocess", "processes:2", "local:2"],
                         ids=["one-job", "jobs-2", "dask-local-2"])
def test_campaign_scaling(benchmark, sizes, rows, spec):
    budget = BUDGET_S[sizes.name]
    cfg = fuzz.FuzzConfig()
    with scheduler.open_scheduler(spec) as sched:
        res = benchmark.pedantic(campaign.run, args=(cfg, sched), kwargs={"seed": 0, "budget_s": budget},
                                 rounds=1, iterations=1)
    assert res.findings == [] and res.ops > 0
    rows[spec] = res.ops
    benchmark.extra_info.update(ops=res.ops, ops_per_s=round(res.ops / res.seconds), workers=len(res.per_worker),
                                budget_s=budget, loadavg_1m=round(os.getloadavg()[0], 2))
    if "inprocess" in rows:
        benchmark.extra_info["vs_one_job"] = round(res.ops / rows["inprocess"], 2)
