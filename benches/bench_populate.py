"""Population (first-touch faults, map_range) and cold walks (no TLB, no paging-structure
caches), next to a C radix-tree build and a C 4-level pointer chase."""
import pytest

from tdpfast import bench


@pytest.mark.benchmark(group="populate")
def test_faults_engine(benchmark, sizes):
    case = bench.FaultCase(sizes.populate_pages)
    res = benchmark.pedantic(case.run, setup=case.setup, rounds=sizes.populate_rounds)
    benchmark.extra_info.update(faults=res.faults)


@pytest.mark.benchmark(group="populate")
def test_map_range_engine(benchmark, sizes):
    case = bench.MapRangeCase(sizes.populate_pages)
    mapped = benchmark.pedantic(case.run, setup=case.setup, rounds=sizes.populate_rounds)
    benchmark.extra_info.update(mapped=mapped)


@pytest.mark.benchmark(group="populate")
def test_populate_limit(benchmark, sizes):
    case = bench.PopulateLimitCase(sizes.populate_pages)
    tables = benchmark.pedantic(case.run, rounds=max(sizes.populate_rounds, 3))
    benchmark.extra_info.update(pages=sizes.populate_pages, tables=tables)


@pytest.mark.benchmark(group="walk-cold")
def test_walk_engine(benchmark, sizes):
    case = bench.WalkCase(sizes.walk_pages, sizes.walk_n)
    res = benchmark.pedantic(case.run, rounds=sizes.walk_rounds)
    benchmark.extra_info.update(walks=res.walked)


@pytest.mark.benchmark(group="walk-cold")
def test_walk_limit(benchmark, sizes):
    walk = bench.WalkCase(sizes.walk_pages, sizes.walk_n)
    case = bench.WalkLimitCase(sizes.walk_pages, walk.gfns)
    benchmark.pedantic(case.run, rounds=max(sizes.walk_rounds, 3))
    benchmark.extra_info.update(walks=case.n)
