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
