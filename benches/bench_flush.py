"""INVEPT single-context and global as the TLB grows from 64 to 65,536 entries. The cost
must not grow with the TLB (the engine flushes by epoch); reported, never asserted.
One round = ``flush_calls`` flushes in a row after a refill; extra_info has ns/flush.
``flush_entries`` (the profile's TLB sizes) is parametrized in conftest.py."""
import pytest

from tdpfast import bench


def _flush(benchmark, sizes, entries, kind, raw):
    case = bench.FlushCase(entries, kind, raw=raw, calls=sizes.flush_calls)
    benchmark.pedantic(case.run, setup=case.setup, rounds=sizes.flush_rounds)
    benchmark.extra_info.update(entries=entries, calls_per_round=case.calls)
    if benchmark.stats:
        benchmark.extra_info["ns_per_flush"] = benchmark.stats.stats.min * 1e9 / case.calls


@pytest.mark.benchmark(group="flush-single")
def test_invept_single(benchmark, sizes, flush_entries):
    _flush(benchmark, sizes, flush_entries, "single", raw=False)


@pytest.mark.benchmark(group="flush-global")
def test_invept_global(benchmark, sizes, flush_entries):
    _flush(benchmark, sizes, flush_entries, "global", raw=False)


@pytest.mark.benchmark(group="flush-single-raw-cffi")
def test_invept_single_raw(benchmark, sizes, flush_entries):
    _flush(benchmark, sizes, flush_entries, "single", raw=True)
