"""Growth curve: zap_gfn_range and map_range (populate) of 4K leaves from 4 MiB to 64 GiB of
guest memory. The cost per page should stay flat (linear total cost) and the resident memory
per mapped page is the bench's memory rows (``tdpfast bench``: RSS per mapped 4K page).

    pytest benches/bench_growth.py -p no:cacheprovider     # under pytest-benchmark
    python benches/bench_growth.py [--chart PNG]            # prints the table (README), and a chart
"""
import argparse
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


def chart(points, path: str) -> None:
    """Per-page cost against guest memory, both axes log: a flat line is a linear total cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [p[1] * 4096 for p in points]
    ax.plot(x, [p[2] for p in points], "o-", label="zap_gfn_range, ns per 4K leaf")
    ax.plot(x, [p[3] for p in points], "s-", label="map_range, ns per 4K page")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([p[0].upper().replace("M", " MiB").replace("G", " GiB") for p in points])
    ax.set_xlabel("guest memory mapped with 4K leaves")
    ax.set_ylabel("ns per page (best of 3, log)")
    ax.set_title("Zap and populate growth: flat per page = linear in size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Zap and map_range cost per 4K page from 4 MiB to 64 GiB.")
    ap.add_argument("--chart", metavar="PNG", help="also draw the curve into this PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    print("| guest memory | 4K leaves | zap ns/leaf | map_range ns/page (M pages/s) |")
    print("|---|---|---|---|")
    points = []
    for name, pages in SIZES:
        zc = bench.ZapCase(pages, 1)
        zt, _ = time_rounds(zc.run, zc.setup, 3)
        pc = PopulateCase(pages)
        pt, _ = time_rounds(pc.run, pc.setup, 3)
        points.append((name, pages, min(zt) / pages, min(pt) / pages))
        print(f"| {name.upper().replace('M', ' MiB').replace('G', ' GiB')} | {pages:,} | {min(zt) / pages:.2f} | "
              f"{min(pt) / pages:.1f} ({pages / (min(pt) / 1e9) / 1e6:.0f}) |", flush=True)
        del zc, pc
    if args.chart:
        chart(points, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
