"""Growth curve: zap_gfn_range and map_range (populate) of 4K leaves from 4 MiB to 64 GiB of
guest memory. The cost per page should stay flat (linear total cost) and the resident memory
per mapped page is the bench's memory rows (``tdpfast bench``: RSS per mapped 4K page).

    pytest benches/bench_growth.py -p no:cacheprovider     # under pytest-benchmark
    python benches/bench_growth.py                          # prints the table (README)
"""
import sys

import pytest

from tdpfast import bench
from tdpfast.bench.timing import time_rounds
from tdpfast.vm import VM

MIB = 256                                     # 4K pages per MiB
SIZES = [("4m", 4 * MIB), ("64m", 64 * MIB), ("1g", 1024 * MIB), ("16g", 16384 * MIB), ("64g", 65536 * MIB)]


class PopulateCase:
    """map_range of ``pages`` 4K pages into a fresh VM each round (the VM is built untimed)."""

    def __init__(self, pages: int):
        self.pages = pages

    def setup(self):
        vm = VM(record=False)
        vm.add_memslot(0, self.pages, max_level=1)
        vm.mmu.alloc_root()
        return vm

    def run(self, vm):
        return vm.mmu.map_range(0, self.pages)


def _capped(sizes, pages: int) -> int:
    """The tiny profile (the smoke run of benches/) caps every size at 4 MiB."""
    return min(pages, 4 * MIB) if sizes.name == "tiny" else pages


@pytest.mark.benchmark(group="growth-zap")
@pytest.mark.parametrize("name,pages", SIZES, ids=[s[0] for s in SIZES])
def test_zap_growth(benchmark, sizes, name, pages):
    case = bench.ZapCase(_capped(sizes, pages), 1)
    benchmark.pedantic(case.run, setup=case.setup, rounds=3)
    if benchmark.stats:
        benchmark.extra_info["ns_per_leaf"] = benchmark.stats.stats.min * 1e9 / case.leaves


@pytest.mark.benchmark(group="growth-populate")
@pytest.mark.parametrize("name,pages", SIZES, ids=[s[0] for s in SIZES])
def test_populate_growth(benchmark, sizes, name, pages):
    pages = _capped(sizes, pages)
    case = PopulateCase(pages)
    benchmark.pedantic(case.run, setup=lambda: ((case.setup(),), {}), rounds=3)
    if benchmark.stats:
        benchmark.extra_info["ns_per_page"] = benchmark.stats.stats.min * 1e9 / pages


def main() -> int:
    print("| guest memory | 4K leaves | zap ns/leaf | map_range ns/page (M pages/s) |")
    print("|---|---|---|---|")
    for name, pages in SIZES:
        zc = bench.ZapCase(pages, 1)
        zt, _ = time_rounds(zc.run, zc.setup, 3)
        pc = PopulateCase(pages)
        pt, _ = time_rounds(pc.run, pc.setup, 3)
        print(f"| {name.upper().replace('M', ' MiB').replace('G', ' GiB')} | {pages:,} | {min(zt) / pages:.2f} | "
              f"{min(pt) / pages:.1f} ({pages / (min(pt) / 1e9) / 1e6:.0f}) |")
        del zc, pc
    return 0


if __name__ == "__main__":
    sys.exit(main())
