"""INVEPT single-context and global as the TLB grows from 64 to 65,536 entries. The cost
must not grow with the TLB (the engine flushes by epoch); reported, never asserted.
One round = ``flush_calls`` flushes in a row after a refill; extra_info has ns/flush."""
import pytest

from tdpfast import bench

ENTRIES = bench.PROFILES["full"].flush_entries


def _flush(benchmark, sizes, entries, kind, raw):
    if entries not in sizes.flush_entries:
        pytest.skip(f"{entries} entries is not in the {sizes.name} profile")
    case = bench.FlushCase(entries, kind, raw=raw, calls=sizes.flush_calls)
    benchmark.pedantic(case.run, setup=case.setup, rounds=sizes.flush_rounds)
    benchmark.extra_info.update(entries=entries, calls_per_round=case.calls)
    if benchmark.stats:
        benchmark.extra_info["ns_per_flush"] = benchmark.stats.stats.min * 1e9 / case.calls


@pytest.mark.benchmark(group="flush-single")
@pytest.mark.parametrize("entries", ENTRIES)
def test_invept_single(benchmark, sizes, entries):
    _flush(benchmark, sizes, entries, "single", raw=False)


@pytest.mark.benchmark(group="flush-global")
@pytest.mark.parametrize("entries", ENTRIES)
def test_invept_global(benchmark, sizes, entries):
    _flush(benchmark, sizes, entries, "global", raw=False)


@pytest.mark.benchmark(group="flush-single-raw-cffi")
@pytest.mark.parametrize("entries", ENTRIES)
def test_invept_single_raw(benchmark, sizes, entries):
    _flush(benchmark, sizes, entries, "single", raw=True)
