"""Zap: vm.mmu.zap_gfn_range over 1 GiB of 4K leaves and 64 GiB of 2M leaves (quick and
full), re-populated before every round, next to a C loop clearing as many entries."""
import pytest

from tdpfast import bench


def _engine(benchmark, pages, level, rounds):
    case = bench.ZapCase(pages, level)
    benchmark.pedantic(case.run, setup=case.setup, rounds=rounds)
    benchmark.extra_info.update(leaves=case.leaves, pages=pages, level=level)
    if benchmark.stats:
        benchmark.extra_info["ns_per_leaf"] = benchmark.stats.stats.min * 1e9 / case.leaves


def _limit(benchmark, leaves, rounds):
    case = bench.ZapLimitCase(leaves)
    benchmark.pedantic(case.run, setup=case.setup, rounds=max(rounds, 3))
    benchmark.extra_info.update(leaves=leaves, tables=case.ntables)
    if benchmark.stats:
        benchmark.extra_info["ns_per_leaf"] = benchmark.stats.stats.min * 1e9 / leaves


@pytest.mark.benchmark(group="zap-4k")
def test_zap_4k_engine(benchmark, sizes):
    _engine(benchmark, sizes.zap_4k_pages, 1, sizes.zap_rounds)


@pytest.mark.benchmark(group="zap-4k")
def test_zap_4k_limit(benchmark, sizes):
    _limit(benchmark, sizes.zap_4k_pages, sizes.zap_rounds)


@pytest.mark.benchmark(group="zap-2m")
def test_zap_2m_engine(benchmark, sizes):
    _engine(benchmark, sizes.zap_2m_pages, 2, sizes.zap_rounds)


@pytest.mark.benchmark(group="zap-2m")
def test_zap_2m_limit(benchmark, sizes):
    _limit(benchmark, sizes.zap_2m_pages >> 9, sizes.zap_rounds)
