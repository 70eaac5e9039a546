"""Memory: RSS growth per mapped 4K page, each size measured in a fresh child interpreter (so
that runs do not pollute each other), against the raw page tables (4 KiB per table)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator, List

from . import reference as ref
from .measure import timing_row
from .profiles import Sizes

# the directory holding the tdpfast package: the child imports the same tdpfast
_PKG_HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_RSS_CHILD = r"""
import json, os, sys
sys.path.insert(0, {root!r})
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
import numpy  # imported before the baseline so both sides carry it
from tdpfast import VM, TLBConfig
{ref}
pages, level = {pages}, {level}
vm = VMcls(record=False, tlb=TLBConfig.preset('skylake'))
vm.add_memslot(0, pages, max_level=level)
vm.mmu.alloc_root()
base = rss()
vm.mmu.map_range(0, pages, level=level)
after = rss()
st = vm.stats
print(json.dumps({{'base': base, 'after': after, 'leaves': st['pages_4k'] + st['pages_2m'] + st['pages_1g'],
                  'tables': st['mmu_pages']}}))
"""


def rss_child(pages: int, level: int = 1, reference: bool = False, timeout: float = 600) -> dict:
    """Map ``pages`` in a fresh interpreter; RSS before/after map_range and the table count."""
    vm_cls = "from tdpfast.reference import model; VMcls = model.VM" if reference else "VMcls = VM"
    code = _RSS_CHILD.format(root=_PKG_HOME, pages=pages, level=level, ref=vm_cls)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"RSS child failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_FLAT_CHILD = r"""
import json, os, sys
sys.path.insert(0, {root!r})
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
import numpy
from tdpfast import VM
vm = VM({kwargs})
vm.add_memslot(0, 1 << 16)
vm.vcpu_run(0, 0)
rng = numpy.random.default_rng(0)
gpas = (rng.integers(0, 1 << 16, {batch}, dtype=numpy.uint64) << numpy.uint64(12)).astype(numpy.uint64)
vm.access_batch(0, gpas)                  # warm: tables and TLB are built before the baseline
base = rss()
samples = []
done = {batch}
while done < {total}:
    vm.access_batch(0, gpas)
    done += {batch}
    if done % ({total} // 10) < {batch}:
        samples.append(rss())
print(json.dumps({{'base': base, 'end': rss(), 'max': max(samples + [base]), 'accesses': done}}))
"""


def rss_flat_child(total: int = 10 ** 7, batch: int = 10_000, record=None, timeout: float = 900) -> dict:
    """RSS of a long-running VM in a fresh interpreter: ``total`` guest accesses in
    batches of ``batch`` with the default settings (``record=None``) or with an explicit
    ``record=``; returns the RSS after a warm-up batch (base), at the end, and the most
    seen in between."""
    kwargs = "" if record is None else f"record={bool(record)!r}"
    code = _FLAT_CHILD.format(root=_PKG_HOME, kwargs=kwargs, batch=batch, total=total)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"RSS child failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_ids(sz: Sizes) -> List[str]:
    return [f"memory.{s}" for s, _ in sz.memory]


def measure_memory(sz: Sizes, progress) -> Iterator[dict]:
    rows = []
    for suffix, pages in sz.memory:
        progress.case(f"memory.{suffix}")
        m = rss_child(pages)
        grown = m["after"] - m["base"]
        raw = m["tables"] * 4096
        rows.append(timing_row(f"memory.{suffix}", "memory", "bytes_per_page", [grown / m["leaves"]],
                               limit_samples=[raw / m["leaves"]], limit_kind="raw_page_tables", kind="memory",
                               extra={"pages": pages, "leaves": m["leaves"], "tables": m["tables"],
                                      "rss_growth": grown, "raw_table_bytes": raw}))
        yield rows[-1]

    def on_reference(model):
        out = {}
        for suffix, pages in sz.memory[:1]:
            p = max(pages // sz.ref_scale, min(pages, 65536))  # enough leaves for the RSS growth to show
            m = rss_child(p, reference=True)
            out[f"memory.{suffix}"] = ((m["after"] - m["base"]) / m["leaves"], p, "pages")
        return out

    ref.attach(rows, ref.run_reference("memory", on_reference))
