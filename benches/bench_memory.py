"""Memory: RSS growth per mapped 4K page (measured in a child interpreter) against the raw
page tables (4 KiB per table). The timing is of the whole child; the numbers that matter
are in extra_info."""
import pytest

from tdpfast import bench


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("which", [0, 1])
def test_rss_per_page(benchmark, sizes, which):
    label, pages = sizes.memory[which]
    m = benchmark.pedantic(bench.rss_child, args=(pages,), rounds=1)
    grown = m["after"] - m["base"]
    benchmark.extra_info.update(label=label, pages=pages, leaves=m["leaves"], tables=m["tables"],
                                bytes_per_page=grown / m["leaves"], raw_bytes_per_page=m["tables"] * 4096 / m["leaves"])


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("record", [None, True], ids=["default", "record"])
def test_rss_stays_flat_over_ten_million_batched_accesses(benchmark, record):
    """10^7 guest accesses in batches of 10^4 on one VM: with the default settings (no
    event log) RSS stays within 10% of where it started; ``record=True`` keeps every
    access (9 bytes each) and grows, for comparison. Numbers in extra_info."""
    m = benchmark.pedantic(bench.rss_flat_child, kwargs={"total": 10 ** 7, "record": record}, rounds=1)
    growth = (m["max"] - m["base"]) / m["base"]
    benchmark.extra_info.update(accesses=m["accesses"], rss_base=m["base"], rss_end=m["end"], rss_max=m["max"],
                                growth=round(growth, 4), within_10_percent=growth <= 0.10)
