"""Guest accesses through vm.access_batch at 100%, ~99%, ~90% and ~50% TLB hit rates (Skylake
geometry), next to a bare set-associative lookup over the same addresses."""
import pytest

from tdpfast import bench

WS = dict(bench.PROFILES["quick"].access_ws)


def _engine(benchmark, sizes, ws):
    case = bench.AccessCase(ws, sizes.access_n)
    res = benchmark.pedantic(case.run, rounds=sizes.access_rounds)
    benchmark.extra_info.update(accesses=case.n, working_set=ws, hit_rate=res.hit_rate, walked=res.walked)
    return case


def _limit(benchmark, sizes, ws):
    case = bench.AccessCase(ws, sizes.access_n)   # for the identical address stream
    lim = bench.AccessLimitCase(case.gpas)
    l1, l2, miss = benchmark.pedantic(lim.run, rounds=max(sizes.access_rounds, 3))
    benchmark.extra_info.update(accesses=lim.n, working_set=ws, hit_rate=(l1 + l2) / lim.n)


@pytest.mark.benchmark(group="access-hit100")
def test_access_hit100_engine(benchmark, sizes):
    _engine(benchmark, sizes, WS["hit100"])


@pytest.mark.benchmark(group="access-hit100")
def test_access_hit100_limit(benchmark, sizes):
    _limit(benchmark, sizes, WS["hit100"])


@pytest.mark.benchmark(group="access-hit99")
def test_access_hit99_engine(benchmark, sizes):
    _engine(benchmark, sizes, WS["hit99"])


@pytest.mark.benchmark(group="access-hit99")
def test_access_hit99_limit(benchmark, sizes):
    _limit(benchmark, sizes, WS["hit99"])


@pytest.mark.benchmark(group="access-hit90")
def test_access_hit90_engine(benchmark, sizes):
    _engine(benchmark, sizes, WS["hit90"])


@pytest.mark.benchmark(group="access-hit90")
def test_access_hit90_limit(benchmark, sizes):
    _limit(benchmark, sizes, WS["hit90"])


@pytest.mark.benchmark(group="access-hit50")
def test_access_hit50_engine(benchmark, sizes):
    _engine(benchmark, sizes, WS["hit50"])


@pytest.mark.benchmark(group="access-hit50")
def test_access_hit50_limit(benchmark, sizes):
    _limit(benchmark, sizes, WS["hit50"])
