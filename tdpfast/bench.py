"""``tdpfast bench``: how fast the model is, against what the machine could do at best.

Every timed measurement runs next to its *limit* in the same process and run: a plain C
loop (``csrc/bench_limits.c``) doing the least work the operation needs (clear the entries,
look up a bare set-associative array, chase the table pointers) on the same data sizes.
The report gives the ratio engine / limit, and engine / pure-Python reference model when
``tdpfast.reference.model`` exists. The modelled-cost tables (flushes, IPIs, misses,
cycles of workloads under each policy) are deterministic counts, not timings.

The same cases drive ``benches/bench_*.py`` (pytest-benchmark); this module is the engine
of the ``bench`` subcommand::

    tdpfast bench [--quick] [--json] [--out DIR] [--compare OLD.json]

Results go to ``DIR/tdpfast-bench.json`` and ``DIR/tdpfast-bench.png``; progress goes to
stderr. Sizes and seeds are fixed, so two runs do the same work (timings still vary).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .policy import Policy
from .tlbconfig import TLBConfig
from .vm import VM

SCHEMA = 1
JSON_NAME = "tdpfast-bench.json"
CHART_NAME = "tdpfast-bench.png"
SEED = 20240805          # every random stream below derives from this
# numpy's OpenBLAS threads spin after numpy calls and steal one of two cores from the
# timed C loops; nothing here uses BLAS. Only effective before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
NONPRESENT = 1 << 63     # SHADOW_NONPRESENT_VALUE (spte.h), what a zap writes
REF_FLUSH_MAX_ENTRIES = 4096


# ---------------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Sizes:
    """Everything a profile decides. ``full`` is the real suite (~10 min on 2 cores);
    ``quick`` keeps the 1 GiB / 64 GiB zaps and shrinks the rest (<~60 s); ``tiny`` is
    for the smoke test (seconds)."""

    name: str
    zap_4k_pages: int            # zap row 1: this many 4K leaves
    zap_2m_pages: int            # zap row 2: this many 4K pages mapped with 2M leaves
    zap_rounds: int
    access_n: int                # accesses per timed batch
    access_rounds: int
    access_ws: Tuple[Tuple[str, int], ...]   # (row id suffix, working set in 4K pages)
    flush_entries: Tuple[int, ...]
    flush_rounds: int
    flush_calls: int             # flushes per timed round
    populate_pages: int
    populate_rounds: int
    walk_pages: int
    walk_n: int
    walk_rounds: int
    memory: Tuple[Tuple[str, int], ...]      # (row id suffix, 4K pages)
    wl_pages: int                # guest memory of the cost workloads
    wl_rounds: int
    published_vcpus: int
    published_pages_per_vcpu: int
    ref_scale: int               # divide sizes by this for the pure-Python reference


# Working sets for the Skylake preset (L1 DTLB 16x4, STLB 128x12 = 1,536 4K entries):
# uniform accesses over W pages hit an LRU cache of C entries with probability ~C/W.
_WS = (("hit99", 1552), ("hit90", 1707), ("hit50", 3072))

PROFILES: Dict[str, Sizes] = {
    "full": Sizes("full", zap_4k_pages=262144, zap_2m_pages=64 << 18, zap_rounds=21,
                  access_n=1_000_000, access_rounds=9, access_ws=_WS,
                  flush_entries=(64, 256, 1024, 4096, 16384, 65536), flush_rounds=20, flush_calls=2000,
                  populate_pages=262144, populate_rounds=5, walk_pages=262144, walk_n=1_000_000,
                  walk_rounds=5, memory=(("1g", 262144), ("64g", 64 << 18)),
                  wl_pages=262144, wl_rounds=32, published_vcpus=64, published_pages_per_vcpu=1 << 20,
                  ref_scale=64),
    "quick": Sizes("quick", zap_4k_pages=262144, zap_2m_pages=64 << 18, zap_rounds=5,
                   access_n=200_000, access_rounds=3, access_ws=_WS,
                   flush_entries=(64, 256, 1024, 4096, 16384, 65536), flush_rounds=5, flush_calls=1000,
                   populate_pages=65536, populate_rounds=2, walk_pages=65536, walk_n=200_000,
                   walk_rounds=2, memory=(("1g", 262144), ("4g", 1 << 20)),
                   wl_pages=16384, wl_rounds=8, published_vcpus=64, published_pages_per_vcpu=16384,
                   ref_scale=64),
    "tiny": Sizes("tiny", zap_4k_pages=4096, zap_2m_pages=64 << 9, zap_rounds=1,
                  access_n=4000, access_rounds=1, access_ws=_WS,
                  flush_entries=(64, 256), flush_rounds=2, flush_calls=10,
                  populate_pages=2048, populate_rounds=1, walk_pages=2048, walk_n=4000,
                  walk_rounds=1, memory=(("8m", 2048), ("16m", 4096)),
                  wl_pages=2048, wl_rounds=2, published_vcpus=4, published_pages_per_vcpu=4096,
                  ref_scale=8),
}


# ---------------------------------------------------------------------------------- plumbing

def _lib():
    from ._native import ffi, lib
    return ffi, lib


def have_limits() -> bool:
    """True when the C limit loops (csrc/bench_limits.c) are compiled in."""
    try:
        _, lib = _lib()
        return hasattr(lib, "tdp_limit_zap")
    except Exception:  # pragma: no cover - no extension at all
        return False


def reference_model():
    """``tdpfast.reference.model`` if it exists (another engineer is writing it), else None."""
    try:
        from .reference import model  # type: ignore[attr-defined]
    except Exception:
        return None
    return model if hasattr(model, "VM") else None


def _np():
    import numpy as np
    return np


def gpas_of(gfns) -> "object":
    """uint64 array of guest physical addresses for an iterable/array of gfns."""
    np = _np()
    return np.asarray(gfns, dtype=np.uint64) << np.uint64(12)


def time_rounds(run: Callable, setup: Optional[Callable] = None, rounds: int = 3) -> Tuple[List[int], object]:
    """Run ``setup()`` (untimed) then ``run(state)`` (timed) ``rounds`` times; ns per round."""
    times, out = [], None
    for _ in range(max(1, rounds)):
        gc.collect()
        state = setup() if setup else None
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            out = run(state)
            t1 = time.perf_counter_ns()
        finally:
            gc.enable()
        times.append(t1 - t0)
    return times, out


def _stats(times: Sequence[int]) -> Dict[str, float]:
    s = sorted(times)
    return {"min_ns": s[0], "median_ns": s[len(s) // 2], "rounds": len(s)}


# ---------------------------------------------------------------------------------- cases
# A case is setup()/run(state); benches/ hands the same pair to benchmark.pedantic().

class ZapCase:
    """vm.mmu.zap_gfn_range over ``pages`` mapped at ``level``; setup re-populates."""

    def __init__(self, pages: int, level: int = 1, vm_cls=VM):
        self.pages, self.level = pages, level
        self.vm = vm_cls(record=False)
        self.vm.add_memslot(0, pages, max_level=level)
        self.vm.mmu.alloc_root()
        self.leaves = pages >> (9 * (level - 1))

    def setup(self):
        self.vm.mmu.map_range(0, self.pages, level=self.level)

    def run(self, _state=None):
        return self.vm.mmu.zap_gfn_range(0, self.pages)


class ZapLimitCase:
    """The limit: clear ``leaves`` present 8-byte entries laid out as 512-entry tables."""

    def __init__(self, leaves: int):
        np = _np()
        self.ffi, self.lib = _lib()
        self.ntables = (leaves + 511) // 512
        self.leaves = leaves
        self.arr = np.zeros(self.ntables * 512, dtype=np.uint64)
        self.buf = self.ffi.from_buffer("uint64_t[]", self.arr)

    def setup(self):
        self.lib.tdp_limit_fill(self.buf, self.ntables)

    def run(self, _state=None):
        return self.lib.tdp_limit_zap(self.buf, self.ntables, NONPRESENT)


def skylake_geometry() -> Tuple[Tuple[int, int], Tuple[int, int]]:
    t = TLBConfig.preset("skylake")
    return t.l1_4k, t.l2


class AccessCase:
    """Uniform random reads over ``ws`` prefaulted 4K pages through the Skylake TLB."""

    def __init__(self, ws: int, n: int, seed: int = SEED, vm_cls=VM):
        np = _np()
        self.vm = vm_cls(record=False, tlb=TLBConfig.preset("skylake"), seed=seed)
        self.vm.add_memslot(0, max(ws, 512), max_level=1)
        self.vm.vcpu_run(0, 0)
        self.vm.access_batch(0, gpas_of(np.arange(ws)))            # fault everything in
        self.gpas = gpas_of(np.random.default_rng(seed + ws).integers(0, ws, n))
        self.vm.access_batch(0, self.gpas)                          # warm the TLB
        self.n = n

    def setup(self):
        return None

    def run(self, _state=None):
        return self.vm.access_batch(0, self.gpas)


class AccessLimitCase:
    """The limit: the same addresses through a bare L1+L2 set-associative LRU lookup."""

    def __init__(self, gpas):
        self.ffi, self.lib = _lib()
        (s1, w1), (s2, w2) = skylake_geometry()
        t = self.lib.tdp_limit_tlb_new(s1, w1, s2, w2)
        if t == self.ffi.NULL:
            raise MemoryError("tdp_limit_tlb_new")
        self.t = self.ffi.gc(t, self.lib.tdp_limit_tlb_free)
        self.gpas = gpas
        self.buf = self.ffi.from_buffer("uint64_t[]", gpas)
        self.n = len(gpas)
        self.run()                                                  # warm

    def setup(self):
        return None

    def run(self, _state=None):
        counts = self.ffi.new("uint64_t[3]")
        self.lib.tdp_limit_tlb_run(self.t, self.buf, self.n, counts)
        return tuple(counts)


def flush_tlb_config(entries: int) -> TLBConfig:
    """A set-associative TLB of ``entries`` 4K translations: 1/4 in a 4-way L1, 3/4 in a
    12-way L2 (Skylake's proportions), so the arrays grow with ``entries``."""
    l1 = max(entries // 4, 4)
    l2 = entries - l1
    return TLBConfig(mode="setassoc", l1_4k=(l1 // 4, 4), l2=(max(l2 // 12, 1), 12), name=f"setassoc-{entries}")


class FlushCase:
    """INVEPT single-context / global on a pCPU whose TLB was just filled: ``calls`` flushes
    in a row per round (the first one drops every entry; a flush that scanned the arrays
    would scan them every time, so the later ones cost the same), refilled between rounds.
    ``raw`` calls the cffi function directly instead of ``VM.invept``."""

    def __init__(self, entries: int, kind: str = "single", raw: bool = False, calls: int = 1000, vm_cls=VM):
        np = _np()
        self.ffi, self.lib = _lib()
        self.entries, self.kind, self.raw, self.calls = entries, kind, raw, calls
        self.vm = vm_cls(record=False, tlb=flush_tlb_config(entries))
        self.vm.add_memslot(0, 2 * entries + 512, max_level=1)
        self.vm.vcpu_run(0, 0)
        self.fill = gpas_of(np.arange(2 * entries))
        self.vm.access_batch(0, self.fill)
        self.eptp = self.vm.mmu.root_pointer()
        self.type = 1 if kind == "single" else 2

    def setup(self):
        self.vm.access_batch(0, self.fill)

    def run(self, _state=None):
        if self.raw:
            f, h, t, e = self.lib.tdp_invept, self.vm._h, self.type, self.eptp
            for _ in range(self.calls):
                f(h, 0, t, e)
        else:
            f, k, e = self.vm.invept, self.kind, (self.eptp if self.kind == "single" else None)
            for _ in range(self.calls):
                f(0, k, e)

    def live_entries(self) -> int:
        return self.vm.pcpu_info(0)["tlb_entries"]


class FaultCase:
    """First-touch writes to ``pages`` unmapped 4K pages: one EPT violation each."""

    def __init__(self, pages: int, vm_cls=VM):
        np = _np()
        self.pages, self.vm_cls = pages, vm_cls
        self.gpas = gpas_of(np.arange(pages))
        self.vm = None

    def setup(self):
        self.vm = None
        gc.collect()
        vm = self.vm_cls(record=False, tlb=TLBConfig.preset("skylake"))
        vm.add_memslot(0, self.pages, max_level=1)
        vm.vcpu_run(0, 0)
        self.vm = vm

    def run(self, _state=None):
        return self.vm.access_batch(0, self.gpas, "w")


class MapRangeCase:
    """vm.mmu.map_range over ``pages`` 4K pages of a fresh root."""

    def __init__(self, pages: int, vm_cls=VM):
        self.pages, self.vm_cls, self.vm = pages, vm_cls, None

    def setup(self):
        self.vm = None
        gc.collect()
        vm = self.vm_cls(record=False)
        vm.add_memslot(0, self.pages, max_level=1)
        vm.mmu.alloc_root()
        self.vm = vm

    def run(self, _state=None):
        return self.vm.mmu.map_range(0, self.pages)


def _tables_for(pages: int, levels: int = 4) -> int:
    n, span = 1, pages
    for _ in range(levels - 1):
        span = (span + 511) // 512
        n += span
    return n


class PopulateLimitCase:
    """The limit: build the same 4-level radix tree one gfn at a time in plain C."""

    def __init__(self, pages: int):
        np = _np()
        self.ffi, self.lib = _lib()
        self.pages = pages
        self.max_tables = _tables_for(pages)
        self.mem = np.zeros(self.max_tables * 512, dtype=np.uint64)
        self.buf = self.ffi.from_buffer("uint64_t[]", self.mem)

    def setup(self):
        return None

    def run(self, _state=None):
        return self.lib.tdp_limit_populate(self.buf, self.max_tables, 4, self.pages)


def no_cache_tlb() -> TLBConfig:
    """No TLB and no paging-structure caches: every access is a full 4-level walk."""
    return TLBConfig(mode="setassoc", psc_pde=(0, 0), psc_pdpte=(0, 0), psc_pml4e=(0, 0),
                     psc_pml5e=(0, 0), name="none")


class WalkCase:
    """Random reads over ``pages`` mapped 4K pages with cold (absent) TLB and PSCs."""

    def __init__(self, pages: int, n: int, seed: int = SEED, vm_cls=VM):
        np = _np()
        self.vm = vm_cls(record=False, tlb=no_cache_tlb())
        self.vm.add_memslot(0, pages, max_level=1)
        self.vm.vcpu_run(0, 0)
        self.vm.mmu.map_range(0, pages)
        self.gfns = np.random.default_rng(seed + 7).integers(0, pages, n).astype(np.uint64)
        self.gpas = gpas_of(self.gfns)
        self.n = n

    def setup(self):
        return None

    def run(self, _state=None):
        return self.vm.access_batch(0, self.gpas)


class WalkLimitCase:
    """The limit: 4 dependent loads per gfn through a plain radix tree."""

    def __init__(self, pages: int, gfns):
        self.pop = PopulateLimitCase(pages)
        self.pop.run()
        self.ffi, self.lib = self.pop.ffi, self.pop.lib
        self.gfns = gfns
        self.gbuf = self.ffi.from_buffer("uint64_t[]", gfns)
        self.n = len(gfns)

    def setup(self):
        return None

    def run(self, _state=None):
        return self.lib.tdp_limit_walk(self.pop.buf, 4, self.gbuf, self.n)


# ---------------------------------------------------------------------------------- rows

def _row(rid: str, group: str, title: str, unit: str, value: float, *, better: str = "lower",
         limit: Optional[float] = None, limit_what: str = "", times=None, extra=None, kind: str = "timing"):
    r = {"id": rid, "kind": kind, "group": group, "title": title, "unit": unit, "value": value,
         "better": better, "limit": limit, "limit_what": limit_what, "limit_ratio": None,
         "reference": None, "extra": extra or {}}
    if times is not None:
        r["timing"] = _stats(times)
    if limit:
        # "x slower than the limit" whichever way the unit points
        r["limit_ratio"] = value / limit if better == "lower" else limit / value
    return r


def _ref_entry(value: Optional[float], size: str, c_value: float, better: str, error: str = "") -> dict:
    if value is None:
        return {"status": error or "missing", "value": None, "size": size, "speedup": None}
    speed = (value / c_value) if better == "lower" else (c_value / value)
    return {"status": "ok", "value": value, "size": size, "speedup": speed}


def _with_reference(rows: List[dict], fn: Callable[[object], Dict[str, Tuple[float, str]]]):
    """Attach reference-model results: ``fn(model)`` returns {row id: (value, size text)}."""
    model = reference_model()
    if model is None:
        for r in rows:
            r["reference"] = _ref_entry(None, "", r["value"], r["better"], "missing: no tdpfast.reference.model")
        return
    try:
        got = fn(model)
        err = ""
    except Exception as e:  # the reference may not support every call yet
        got, err = {}, f"error: {type(e).__name__}: {e}"[:200]
    for r in rows:
        v = got.get(r["id"])
        r["reference"] = _ref_entry(v[0] if v else None, v[1] if v else "", r["value"], r["better"],
                                    err or "not measured on the reference")


def _size_text(pages: int) -> str:
    gib = pages * 4096 / (1 << 30)
    return f"{gib:g} GiB" if gib >= 1 else f"{pages * 4 // 1024} MiB"


# ---------------------------------------------------------------------------------- measurements

def measure_zap(sz: Sizes) -> List[dict]:
    rows = []
    cases = [("zap.4k", sz.zap_4k_pages, 1), ("zap.2m", sz.zap_2m_pages, 2)]
    for rid, pages, level in cases:
        zc = ZapCase(pages, level)
        t, _ = time_rounds(zc.run, zc.setup, sz.zap_rounds)
        lc = ZapLimitCase(zc.leaves)
        lt, zapped = time_rounds(lc.run, lc.setup, max(3, sz.zap_rounds))
        if zapped != lc.ntables * 512:
            raise RuntimeError(f"limit zap cleared {zapped} entries, expected {lc.ntables * 512}")
        rows.append(_row(rid, "zap", f"zap_gfn_range, {_size_text(pages)} of {'4K' if level == 1 else '2M'} leaves "
                         f"({zc.leaves:,})", "ns/leaf", min(t) / zc.leaves, times=t,
                         limit=min(lt) / lc.leaves, limit_what="C loop clearing the entries of "
                         f"{lc.ntables:,} tables", extra={"leaves": zc.leaves, "ms": min(t) / 1e6}))

    def ref(model):
        out = {}
        for rid, pages, level in cases:
            p = max(pages // sz.ref_scale, 512 << (9 * (level - 1)))
            zc = ZapCase(p, level, vm_cls=model.VM)
            t, _ = time_rounds(zc.run, zc.setup, 1)
            out[rid] = (min(t) / zc.leaves, f"{zc.leaves:,} leaves")
        return out

    _with_reference(rows, ref)
    return rows


def measure_access(sz: Sizes) -> List[dict]:
    rows = []
    for suffix, ws in sz.access_ws:
        ac = AccessCase(ws, sz.access_n)
        t, res = time_rounds(ac.run, None, sz.access_rounds)
        lc = AccessLimitCase(ac.gpas)
        lt, cnt = time_rounds(lc.run, None, max(3, sz.access_rounds))
        rate = ac.n / (min(t) / 1e9) / 1e6
        lrate = lc.n / (min(lt) / 1e9) / 1e6
        rows.append(_row(f"access.{suffix}", "access", f"access_batch, {ws:,}-page working set, Skylake TLB",
                         "M accesses/s", rate, better="higher", times=t, limit=lrate,
                         limit_what="C set-associative LRU lookup, same sets/ways",
                         extra={"hit_rate": res.hit_rate, "l1_hits": res.l1_hits, "l2_hits": res.l2_hits,
                                "walked": res.walked, "faults": res.faults, "working_set": ws,
                                "limit_hit_rate": (cnt[0] + cnt[1]) / lc.n}))

    def ref(model):
        out = {}
        for suffix, ws in sz.access_ws:
            n = max(sz.access_n // sz.ref_scale, 1000)
            ac = AccessCase(ws, n, vm_cls=model.VM)
            t, _ = time_rounds(ac.run, None, 1)
            out[f"access.{suffix}"] = (n / (min(t) / 1e9) / 1e6, f"{n:,} accesses")
        return out

    _with_reference(rows, ref)
    return rows


def measure_flush(sz: Sizes, progress=None) -> List[dict]:
    rows = []
    for e in sz.flush_entries:
        for kind in ("single", "global"):
            fc = FlushCase(e, kind, calls=sz.flush_calls)
            fc.setup()
            live = fc.live_entries()
            fc.run()
            after = fc.live_entries()
            t, _ = time_rounds(fc.run, fc.setup, sz.flush_rounds)
            raw = FlushCase(e, kind, raw=True, calls=sz.flush_calls)
            rt, _ = time_rounds(raw.run, raw.setup, sz.flush_rounds)
            one = FlushCase(e, kind, raw=True, calls=1)
            ot, _ = time_rounds(one.run, one.setup, sz.flush_rounds)
            n = sz.flush_calls
            rows.append(_row(f"flush.{kind}.{e}", "flush", f"INVEPT {kind}, TLB of {e:,} entries", "ns/flush",
                             min(t) / n, times=t, kind="flush",
                             extra={"entries": e, "live_entries_before": live, "live_entries_after": after,
                                    "calls_per_round": n, "raw_c_call_ns": min(rt) / n,
                                    "raw_c_call_median_ns": _stats(rt)["median_ns"] / n,
                                    "api_median_ns": _stats(t)["median_ns"] / n,
                                    "first_after_refill_ns": min(ot)}))
        if progress:
            progress.note(f"{e} entries")

    def ref(model):
        out = {}
        for e in sz.flush_entries:
            if e > REF_FLUSH_MAX_ENTRIES:
                continue   # filling a 64K-entry TLB in pure Python takes too long
            for kind in ("single", "global"):
                fc = FlushCase(e, kind, calls=20, vm_cls=model.VM)
                t, _ = time_rounds(fc.run, fc.setup, 2)
                out[f"flush.{kind}.{e}"] = (min(t) / fc.calls, f"{e:,} entries")
        return out

    _with_reference(rows, ref)
    return rows


def measure_populate(sz: Sizes) -> List[dict]:
    rows = []
    fc = FaultCase(sz.populate_pages)
    t, res = time_rounds(fc.run, fc.setup, sz.populate_rounds)
    faults = res.faults
    plc = PopulateLimitCase(sz.populate_pages)
    lt, used = time_rounds(plc.run, None, max(3, sz.populate_rounds))
    lrate = sz.populate_pages / (min(lt) / 1e9) / 1e6
    rows.append(_row("populate.fault", "populate", f"first-touch faults, {sz.populate_pages:,} 4K pages "
                     "(access_batch)", "M faults/s", faults / (min(t) / 1e9) / 1e6, better="higher", times=t,
                     limit=lrate, limit_what="C radix-tree build, one gfn at a time",
                     extra={"faults": faults, "tables": used}))
    mc = MapRangeCase(sz.populate_pages)
    mt, mapped = time_rounds(mc.run, mc.setup, sz.populate_rounds)
    rows.append(_row("populate.map_range", "populate", f"map_range, {sz.populate_pages:,} 4K pages",
                     "M pages/s", mapped / (min(mt) / 1e9) / 1e6, better="higher", times=mt, limit=lrate,
                     limit_what="C radix-tree build, one gfn at a time", extra={"mapped": mapped}))
    wc = WalkCase(sz.walk_pages, sz.walk_n)
    wc.vm.reset_stats()
    wt, wres = time_rounds(wc.run, None, sz.walk_rounds)
    st = wc.vm.stats
    wl = WalkLimitCase(sz.walk_pages, wc.gfns)
    wlt, _ = time_rounds(wl.run, None, max(3, sz.walk_rounds))
    rows.append(_row("walk.cold", "walk", f"walks, no TLB/PSC, {sz.walk_pages:,} mapped 4K pages",
                     "M walks/s", wres.walked / (min(wt) / 1e9) / 1e6, better="higher", times=wt,
                     limit=wl.n / (min(wlt) / 1e9) / 1e6, limit_what="C 4-level pointer chase",
                     extra={"walks": wres.walked, "refs_per_walk": st["walk_refs"] / max(st["walks"], 1)}))

    def ref(model):
        out = {}
        p = max(sz.populate_pages // sz.ref_scale, 512)
        f = FaultCase(p, vm_cls=model.VM)
        t, r = time_rounds(f.run, f.setup, 1)
        out["populate.fault"] = (r.faults / (min(t) / 1e9) / 1e6, f"{p:,} pages")
        m = MapRangeCase(p, vm_cls=model.VM)
        t, n = time_rounds(m.run, m.setup, 1)
        out["populate.map_range"] = (n / (min(t) / 1e9) / 1e6, f"{p:,} pages")
        n = max(sz.walk_n // sz.ref_scale, 1000)
        w = WalkCase(min(sz.walk_pages, p), n, vm_cls=model.VM)
        t, r = time_rounds(w.run, None, 1)
        out["walk.cold"] = (r.walked / (min(t) / 1e9) / 1e6, f"{n:,} walks")
        return out

    _with_reference(rows, ref)
    return rows


# ---- memory, in a child process so that runs do not pollute each other

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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ref = ("from tdpfast.reference import model; VMcls = model.VM" if reference else "VMcls = VM")
    code = _RSS_CHILD.format(root=root, pages=pages, level=level, ref=ref)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"RSS child failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_memory(sz: Sizes) -> List[dict]:
    rows = []
    for suffix, pages in sz.memory:
        m = rss_child(pages)
        grown = m["after"] - m["base"]
        raw = m["tables"] * 4096
        rows.append(_row(f"memory.{suffix}", "memory", f"RSS per mapped 4K page, {_size_text(pages)}", "bytes/page",
                         grown / m["leaves"], limit=raw / m["leaves"], kind="memory",
                         limit_what="raw page tables: 4 KiB per table (8 B per leaf)",
                         extra={"pages": pages, "leaves": m["leaves"], "tables": m["tables"],
                                "rss_growth": grown, "raw_table_bytes": raw}))

    def ref(model):
        out = {}
        for suffix, pages in sz.memory[:1]:
            p = max(pages // sz.ref_scale, min(pages, 65536))  # enough leaves for the RSS growth to show
            m = rss_child(p, reference=True)
            out[f"memory.{suffix}"] = ((m["after"] - m["base"]) / m["leaves"], f"{p:,} pages")
        return out

    _with_reference(rows, ref)
    return rows


# ---------------------------------------------------------------------------------- cost workloads
# Deterministic counters (no timing): each workload on a fresh VM per policy, 8 vCPUs on
# 4 pCPUs with Skylake TLBs, VMX. Where KVM's caller flushes (kvm_zap_gfn_range), the
# workload does what the caller does.

WL_VCPUS, WL_PCPUS = 8, 4
COST_KEYS = ("remote_tlb_flush", "remote_tlb_flush_requests", "ipis", "invept_single", "invept_global",
             "tlb_misses", "walk_refs", "spte_writes", "pf_taken", "cycles", "violations")
SAFE_POLICIES = ("kvm", "kvm-v5.17", "flush-on-put-root", "precise-range", "kvm-v6.12-zap-collapsible",
                 "flush-after-every-zap", "per-spte-flush", "removed-pt-flushes-itself")


def _wl_vm(policy: Policy, seed: int, vm_cls=VM) -> VM:
    return vm_cls(arch="vmx", vcpus=WL_VCPUS, pcpus=WL_PCPUS, tlb=TLBConfig.preset("skylake"),
                  policy=policy, seed=seed, record=False)


def _zap_and_flush(vm: VM, start: int, end: int) -> None:
    """kvm_zap_gfn_range(): zap leaves of valid roots, the caller flushes if needed."""
    if vm.mmu.zap_gfn_range(start, end):
        vm.flush_remote_tlbs()


def wl_boot(vm: VM, pages: int, rounds: int, rng) -> None:
    """Boot-like fault storm: firmware on vCPU 0 (with MTRR/CR0.CD zaps of all memory),
    then the APs come up (each programs MTRRs: zap + flush) and every vCPU writes its
    share of memory for the first time, round-robin; 4K backing (no THP), so every
    page faults."""
    np = _np()
    vm.add_memslot(0, pages, max_level=1)
    vm.vcpu_run(0, 0)
    low = gpas_of(np.arange(min(pages, 2048)))
    for _ in range(4):
        vm.access_batch(0, low, "w")
        _zap_and_flush(vm, 0, pages)
    for v in range(1, WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        _zap_and_flush(vm, 0, pages)
    share = pages // WL_VCPUS
    step = max(share // rounds, 1)
    for r in range(rounds):
        for v in range(WL_VCPUS):
            lo = v * share + r * step
            vm.vcpu_run(v, v % WL_PCPUS)    # 8 vCPUs share 4 pCPUs: (re-)enter before running
            vm.access_batch(v, gpas_of(np.arange(lo, min(lo + step, (v + 1) * share))), "w")


def _populate_all(vm: VM, pages: int) -> None:
    np = _np()
    share = pages // WL_VCPUS
    for v in range(WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        vm.access_batch(v, gpas_of(np.arange(v * share, (v + 1) * share)), "w")


def _random_touch(vm: VM, v: int, pages: int, n: int, rng, write_frac: float = 0.3) -> None:
    np = _np()
    g = gpas_of(rng.integers(0, pages, n))
    acc = (rng.random(n) < write_frac).astype(np.uint8)
    if not isinstance(vm, VM):
        acc = acc.tolist()  # the reference model's access_batch takes no uint8 buffer (yet)
    vm.access_batch(v, g, acc)


def wl_notifier(vm: VM, pages: int, rounds: int, rng) -> None:
    """MMU-notifier churn: THP-sized host_unmap()s and host_migrate()s (reclaim, NUMA
    balancing, compaction) while vCPUs keep touching memory."""
    vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    for i in range(rounds * 4):
        g = int(rng.integers(0, max(pages // 512, 1))) * 512
        vm.host_unmap(g, min(g + 512, pages))
        for _ in range(4):
            m = int(rng.integers(0, pages))
            if vm.backing(m) is not None:
                vm.host_migrate(m)
        v = i % WL_VCPUS
        vm.vcpu_run(v, v % WL_PCPUS)
        _random_touch(vm, v, pages, 512, rng)


def wl_memslot(vm: VM, pages: int, rounds: int, rng) -> None:
    """Memslot deletion: a small slot (a PCI BAR / VGA window) is deleted and re-added
    while the guest works; every deletion is kvm_mmu_zap_all_fast()."""
    vm.add_memslot(0, pages, max_level=2)
    bar = vm.add_memslot(pages, 256, max_level=1)
    _populate_all(vm, pages)
    for _ in range(rounds):
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 512, rng)
        vm.delete_memslot(bar)
        bar = vm.add_memslot(pages, 256, max_level=1)


def wl_dirty_log(vm: VM, pages: int, rounds: int, rng) -> None:
    """Dirty logging (live migration): enable (eager split, write-protect, flush), cycles
    of guest writes + GET_DIRTY_LOG, then disable (huge pages recovered)."""
    slot = vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    vm.set_dirty_logging(slot, True)
    for _ in range(rounds):
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 256, rng, write_frac=1.0)
        vm.get_dirty_log(slot)
    vm.set_dirty_logging(slot, False)
    for v in range(WL_VCPUS):
        vm.vcpu_run(v, v % WL_PCPUS)
        _random_touch(vm, v, pages, 256, rng)


def wl_migration(vm: VM, pages: int, rounds: int, rng) -> None:
    """Migration-heavy scheduling: 8 vCPUs placed on random pCPUs of 4 at every step, with
    an occasional notifier unmap so that stale entries left on old pCPUs would matter."""
    vm.add_memslot(0, pages, max_level=1)
    _populate_all(vm, pages)
    for i in range(rounds * 16):
        v = int(rng.integers(0, WL_VCPUS))
        vm.vcpu_run(v, int(rng.integers(0, WL_PCPUS)))
        _random_touch(vm, v, pages, 256, rng)
        if i % 8 == 7:
            g = int(rng.integers(0, max(pages // 64, 1))) * 64
            vm.host_unmap(g, min(g + 64, pages))


def wl_root_churn(vm: VM, pages: int, rounds: int, rng) -> None:
    """Root churn: kvm_mmu_zap_all_fast() without a memslot change (MMIO generation
    wrap, nx_huge_pages toggle) while the vCPUs keep running."""
    vm.add_memslot(0, pages, max_level=2)
    _populate_all(vm, pages)
    for _ in range(rounds):
        vm.mmu.zap_all_fast()
        for v in range(WL_VCPUS):
            vm.vcpu_run(v, v % WL_PCPUS)
            _random_touch(vm, v, pages, 512, rng)


WORKLOADS: Dict[str, Callable] = {
    "boot": wl_boot, "notifier": wl_notifier, "memslot": wl_memslot, "dirty_log": wl_dirty_log,
    "migration": wl_migration, "root_churn": wl_root_churn,
}


def cost_policies() -> List[Tuple[str, Policy]]:
    """Every named policy, plus one derived: every unlinked table flushes its own range
    (pre-v5.18 handle_removed_pt, without B6's wrong range)."""
    out = [(n, Policy.named(n)) for n in Policy.names()]
    out.append(("removed-pt-flushes-itself", Policy.kvm().replace(removed_pt_flush="table")))
    return out


def run_workload(name: str, policy: Policy, pages: int, rounds: int, seed: int = SEED, vm_cls=VM) -> Dict[str, int]:
    np = _np()
    vm = _wl_vm(policy, seed, vm_cls)
    WORKLOADS[name](vm, pages, rounds, np.random.default_rng(seed))
    st = vm.stats
    return {k: st[k] for k in COST_KEYS}


def measure_costs(sz: Sizes, progress=None) -> List[dict]:
    rows = []
    pols = cost_policies()
    model = reference_model()
    for wname in WORKLOADS:
        t0 = time.perf_counter()
        for pname, pol in pols:
            t1 = time.perf_counter_ns()
            c = run_workload(wname, pol, sz.wl_pages, sz.wl_rounds)
            wall = time.perf_counter_ns() - t1
            rows.append({"id": f"cost.{wname}.{pname}", "kind": "cost", "group": "cost", "workload": wname,
                         "policy": pname, "safe": pname in SAFE_POLICIES, "changed": pol.changed(),
                         "counters": {k: c[k] for k in COST_KEYS}, "title": f"{wname} / {pname}",
                         "wall_ms": wall / 1e6, "reference": None})
        rows[-len(pols)]["reference"] = _cost_reference(model, wname, sz)   # the "kvm" row
        if progress:
            progress.note(f"{wname}: {len(pols)} policies in {time.perf_counter() - t0:.1f}s")
    return rows


def _cost_reference(model, wname: str, sz: Sizes) -> dict:
    """The workload under KVM's policy at a smaller size on both implementations: the
    speedup, and whether the counters agree."""
    if model is None:
        return {"status": "missing: no tdpfast.reference.model", "speedup": None}
    pages, rounds = max(sz.wl_pages // sz.ref_scale, 2048), max(sz.wl_rounds // 4, 2)
    try:
        t0 = time.perf_counter_ns()
        c = run_workload(wname, Policy.kvm(), pages, rounds)
        t1 = time.perf_counter_ns()
        r = run_workload(wname, Policy.kvm(), pages, rounds, vm_cls=model.VM)
        t2 = time.perf_counter_ns()
    except Exception as e:
        return {"status": f"error: {type(e).__name__}: {e}"[:200], "speedup": None}
    differ = sorted(k for k in COST_KEYS if c[k] != r[k])
    return {"status": "ok", "size": f"{pages:,} pages x {rounds} rounds", "speedup": (t2 - t1) / max(t1 - t0, 1),
            "counters_match": not differ, "differ": {k: [c[k], r[k]] for k in differ}}


# ---------------------------------------------------------------------------------- published counts

def published_run(sz: Sizes, mode: Optional[str], yield_every: int = 0, vm_cls=VM) -> Dict[str, int]:
    """dirty_log_perf_test -s anonymous_hugetlb_2mb -v V -b B -e: populate at 2M, enable
    dirty logging (eager split to 4K), then disable it; counters of the disable only."""
    nv, per = sz.published_vcpus, sz.published_pages_per_vcpu
    pol = Policy.kvm() if mode is None else Policy.kvm().replace(huge_recovery=mode)
    vm = vm_cls(vcpus=nv, pcpus=nv, record=False, tlb=TLBConfig.preset("skylake"), policy=pol)
    npages = nv * per
    slot = vm.add_memslot(0, npages, max_level=2)
    for v in range(nv):
        vm.vcpu_run(v, v)
    vm.mmu.map_range(0, npages, level=2)
    vm.set_dirty_logging(slot, True)
    for v in range(nv):          # the vCPUs are back in the guest when logging is disabled
        vm.vcpu_run(v, v)
    if yield_every:
        vm.policy = vm.policy.replace(yield_every=yield_every)
    vm.reset_stats()
    t0 = time.perf_counter_ns()
    vm.set_dirty_logging(slot, False)
    dt = time.perf_counter_ns() - t0
    st = vm.stats
    out = {k: st[k] for k in ("remote_tlb_flush", "ipis", "iter_yields", "huge_pages_recovered", "cycles",
                              "spte_writes", "violations")}
    out["iter_steps"] = sum(st[f"iter_visited_l{i}"] for i in range(1, 6))
    out["huge_pages"] = npages // 512
    out["disable_ms"] = dt / 1e6
    return out


PUBLISHED_FLUSHES = {"zap_collapsible": 131072, "recover": 76}
TARGET_YIELDS = PUBLISHED_FLUSHES["recover"] - 1   # 76 = 75 yields + the final flush


def measure_published(sz: Sizes, progress=None) -> List[dict]:
    nv, per = sz.published_vcpus, sz.published_pages_per_vcpu
    scale = f"{nv} vCPUs x {per * 4096 // (1 << 20):,} MiB on 2 MiB pages"
    full_scale = nv == 64 and per == 1 << 20
    rows = []

    def row(rid, title, published, c, note=""):
        scaled = (published if full_scale or published is None or rid != "published.zap_collapsible"
                  else c["huge_pages"])
        rows.append({"id": rid, "kind": "published", "group": "published", "title": title, "scale": scale,
                     "published": published, "expected_at_this_scale": scaled, "counters": c,
                     "flushes": c.get("remote_tlb_flush") if c else None,
                     "match": (c is not None and scaled is not None and c["remote_tlb_flush"] == scaled),
                     "note": note})

    if "huge_recovery" not in Policy.__dataclass_fields__:
        base = published_run(sz, None)
        row("published.zap_collapsible", "<= v6.12 zap collapsible (one flush per huge page)", 131072, None,
            "MISSING policy switch huge_recovery: not measurable")
        row("published.recover", "v6.13+ recover in place, no yield", 76, base,
            "current engine behaviour (no huge_recovery switch)")
        row("published.recover_yield", "v6.13+ recover in place, need_resched every N steps", 76, None,
            "MISSING policy switch huge_recovery")
        return rows
    zc = published_run(sz, "zap_collapsible")
    if progress:
        progress.note(f"zap_collapsible: {zc['remote_tlb_flush']:,} flushes")
    row("published.zap_collapsible", "<= v6.12 zap collapsible (one flush per huge page)", 131072, zc,
        "one self-flushing atomic zap per collapsed 2M region")
    rec = published_run(sz, "recover")
    row("published.recover", "v6.13+ recover in place, no yield", 76, rec,
        "no need_resched: one flush at the end")
    rows[-1]["expected_at_this_scale"] = rec["iter_yields"] + 1
    rows[-1]["match"] = rec["remote_tlb_flush"] == rec["iter_yields"] + 1
    ye = max(1, rec["iter_steps"] // TARGET_YIELDS)
    recy = published_run(sz, "recover", yield_every=ye)
    recy["yield_every"] = ye
    row("published.recover_yield", f"v6.13+ recover in place, need_resched every {ye:,} iterator steps", 76, recy,
        f"flushes = yields + 1; yield_every chosen as steps // {TARGET_YIELDS}")
    rows[-1]["expected_at_this_scale"] = recy["iter_yields"] + 1
    rows[-1]["match"] = recy["remote_tlb_flush"] == recy["iter_yields"] + 1 and (
        not full_scale or recy["remote_tlb_flush"] == 76)
    _published_reference(rows, sz)
    return rows


def _published_reference(rows: List[dict], sz: Sizes) -> None:
    """The same three runs at 4 vCPUs x 16 MiB on both implementations: flush counts must agree."""
    model = reference_model()
    small = dataclasses.replace(sz, published_vcpus=4, published_pages_per_vcpu=4096)
    for r in rows:
        if model is None:
            r["reference"] = {"status": "missing: no tdpfast.reference.model", "speedup": None}
            continue
        mode = "zap_collapsible" if r["id"].endswith("zap_collapsible") else "recover"
        try:
            c = published_run(small, mode)
            ye = max(1, c["iter_steps"] // TARGET_YIELDS) if r["id"].endswith("_yield") else 0
            c = published_run(small, mode, ye)
            ref = published_run(small, mode, ye, vm_cls=model.VM)
        except Exception as e:
            r["reference"] = {"status": f"error: {type(e).__name__}: {e}"[:200], "speedup": None}
            continue
        r["reference"] = {"status": "ok", "size": "4 vCPUs x 16 MiB",
                          "speedup": ref["disable_ms"] / max(c["disable_ms"], 1e-6),
                          "flushes": ref["remote_tlb_flush"], "c_flushes": c["remote_tlb_flush"],
                          "counters_match": ref["remote_tlb_flush"] == c["remote_tlb_flush"]}


# ---------------------------------------------------------------------------------- suite

class Progress:
    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.i, self.stream, self.enabled = total, 0, stream or sys.stderr, enabled
        self.t0 = time.perf_counter()
        self.cur_t0 = self.t0

    def start(self, what: str):
        self.i += 1
        self.cur_t0 = time.perf_counter()
        self._say(f"[{self.i}/{self.total}] {what} ...")

    def note(self, what: str):
        self._say(f"      {what}")

    def done(self):
        now = time.perf_counter()
        self._say(f"      done in {now - self.cur_t0:.1f}s (total {now - self.t0:.1f}s)")

    def _say(self, s: str):
        if self.enabled:
            print(s, file=self.stream, flush=True)


STEPS: Tuple[Tuple[str, str, Callable], ...] = (
    ("zap", "zap of 4K and 2M leaves, vs a C clearing loop", measure_zap),
    ("access", "guest accesses at ~99/90/50% TLB hit rates, vs a bare set-associative lookup", measure_access),
    ("flush", "INVEPT single/global cost as the TLB grows", measure_flush),
    ("populate", "faults, map_range and cold walks per second, vs C tree build / pointer chase", measure_populate),
    ("memory", "RSS per mapped 4K page (child processes)", measure_memory),
    ("costs", "zap vs flush: modelled costs of workloads x policies", measure_costs),
    ("published", "published counts: dirty-logging disable, 131,072 vs 76 flushes", measure_published),
)


def run_suite(profile: str = "full", only: Optional[Sequence[str]] = None, progress: bool = True) -> dict:
    """Run the measurements of ``profile``; returns the JSON document."""
    sz = PROFILES[profile]
    steps = [s for s in STEPS if not only or s[0] in only]
    if not have_limits():
        raise RuntimeError("the C limit loops are not compiled in (csrc/bench_limits.c); rebuild: python3 tdpfast/_build.py")
    pr = Progress(len(steps), enabled=progress)
    load0 = machine_info().get("loadavg")
    rows: List[dict] = []
    t0 = time.perf_counter()
    for key, what, fn in steps:
        pr.start(what)
        takes_progress = fn in (measure_flush, measure_costs, measure_published)
        rows.extend(fn(sz, pr) if takes_progress else fn(sz))
        pr.done()
    machine = machine_info()
    machine["loadavg_start"], machine["loadavg_end"] = load0, machine.pop("loadavg", None)
    return {"schema": SCHEMA, "tool": "tdpfast bench", "profile": profile, "sizes": dataclasses.asdict(sz),
            "seed": SEED, "machine": machine, "reference_model": reference_model() is not None,
            "elapsed_s": time.perf_counter() - t0, "rows": rows}


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count()}
    try:
        info["loadavg"] = os.getloadavg()   # other work on the machine skews the timings
    except OSError:
        pass
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        info["git"] = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git"] = None
    return info


def expected_row_ids(profile: str) -> List[str]:
    """Ids of the rows a complete run of ``profile`` produces."""
    sz = PROFILES[profile]
    ids = ["zap.4k", "zap.2m"] + [f"access.{s}" for s, _ in sz.access_ws]
    ids += [f"flush.{k}.{e}" for e in sz.flush_entries for k in ("single", "global")]
    ids += ["populate.fault", "populate.map_range", "walk.cold"] + [f"memory.{s}" for s, _ in sz.memory]
    ids += [f"cost.{w}.{p}" for w in WORKLOADS for p, _ in cost_policies()]
    ids += ["published.zap_collapsible", "published.recover", "published.recover_yield"]
    return ids


# ---------------------------------------------------------------------------------- output

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def render(doc: dict) -> str:
    rows = doc["rows"]
    m = doc["machine"]
    load = m.get("loadavg_end")
    parts = [f"tdpfast bench ({doc['profile']}), {m.get('cpu')}, {m.get('cpus')} CPUs, Python {m.get('python')}, "
             f"git {m.get('git')}, {doc['elapsed_s']:.0f} s" + (f", load average {load[0]:.1f}" if load else "")]
    t = []
    for r in rows:
        if r["kind"] not in ("timing", "memory"):
            continue
        ex = r["extra"]
        note = ""
        if "hit_rate" in ex:
            note = f"hit {ex['hit_rate']:.1%} (limit {ex['limit_hit_rate']:.1%})"
        elif "refs_per_walk" in ex:
            note = f"{ex['refs_per_walk']:.1f} refs/walk"
        elif "ms" in ex:
            note = f"{ex['ms']:.2f} ms total"
        elif "tables" in ex and r["kind"] == "memory":
            note = f"{ex['rss_growth'] / (1 << 20):,.0f} MiB RSS, {ex['raw_table_bytes'] / (1 << 20):,.0f} MiB tables"
        t.append([r["title"], _fmt(r["value"]), r["unit"], _fmt(r["limit"]),
                  f"{r['limit_ratio']:.1f}x" if r["limit_ratio"] else "-", _ref_cell(r.get("reference")), note])
    parts.append(_table(t, ["measurement", "engine", "unit", "limit", "vs limit", "C vs ref", "notes"]))
    fl = [r for r in rows if r["kind"] == "flush"]
    if fl:
        by = {}
        for r in fl:
            by.setdefault(r["extra"]["entries"], {})[r["id"].split(".")[1]] = r
        t = [[f"{e:,}", _fmt(v["single"]["extra"]["live_entries_before"]), _fmt(v["single"]["value"]),
              _fmt(v["single"]["extra"]["raw_c_call_ns"]), _fmt(v["global"]["value"]),
              _fmt(v["global"]["extra"]["raw_c_call_ns"]), _fmt((v["single"]["reference"] or {}).get("value")),
              _ref_cell(v["single"]["reference"])] for e, v in sorted(by.items())]
        parts.append("\nFlush cost vs TLB size (ns per INVEPT; API = VM.invept, raw = the cffi call; ref = the "
                     "reference model's VM.invept):")
        parts.append(_table(t, ["TLB entries", "live before", "single API", "single raw", "global API", "global raw",
                                "ref single", "C vs ref"]))
    cost = [r for r in rows if r["kind"] == "cost"]
    if cost:
        parts.append("\nZap vs flush, modelled costs (8 vCPUs / 4 pCPUs, Skylake TLBs; * = safe policy, "
                     "violations must be 0):")
        keys = ("remote_tlb_flush", "ipis", "tlb_misses", "walk_refs", "spte_writes", "cycles", "violations")
        t = [[r["workload"], r["policy"] + (" *" if r["safe"] else "")] + [_fmt(r["counters"][k]) for k in keys]
             + [_ref_cell(r.get("reference"))] for r in cost]
        parts.append(_table(t, ["workload", "policy", "flushes", "IPIs", "TLB misses", "walk refs", "SPTE writes",
                                "cycles", "violations", "C vs ref"]))
        bad = [r for r in cost if r["safe"] and r["counters"]["violations"]]
        if bad:
            parts.append("WARNING: safe policies with violations: " + ", ".join(r["id"] for r in bad))
    pub = [r for r in rows if r["kind"] == "published"]
    if pub:
        parts.append(f"\nPublished counts (calibration.md 1.1), dirty-logging disable, {pub[0]['scale']}:")
        t = [[r["title"], _fmt(r["published"]), _fmt(r["expected_at_this_scale"]), _fmt(r["flushes"]),
              _fmt(r["counters"]["iter_yields"]) if r["counters"] else "-",
              _fmt(r["counters"]["cycles"]) if r["counters"] else "-",
              "yes" if r["match"] else "NO", _ref_cell(r.get("reference")), r["note"]] for r in pub]
        parts.append(_table(t, ["variant", "published", "expected here", "flushes", "yields", "cycles", "match",
                                "ref (4 vCPUs x 16 MiB)", "note"]))
    return "\n".join(parts)


def _ref_cell(ref: Optional[dict]) -> str:
    """"123x" (C is 123 times faster / smaller than the reference), plus whether counts agree."""
    if not ref:
        return ""
    if ref.get("speedup") is None:
        st = ref.get("status", "-")
        return "-" if st.startswith("not measured") else st.split(":")[0]
    cell = f"{ref['speedup']:.3g}x"
    if "counters_match" in ref:
        cell += ", counts agree" if ref["counters_match"] else ", COUNTS DIFFER"
    return cell


def _metric(r: dict) -> Tuple[Optional[float], str, str]:
    if r["kind"] in ("timing", "memory", "flush"):
        return r["value"], r["unit"], r["better"]
    if r["kind"] == "cost":
        return float(r["counters"]["cycles"]), "cycles", "lower"
    if r["kind"] == "published":
        return (float(r["flushes"]) if r["flushes"] is not None else None), "flushes", "lower"
    return None, "", "lower"


def compare(doc: dict, old: dict) -> str:
    """A table of every row present in both documents: old, new, change."""
    prev = {r["id"]: r for r in old.get("rows", [])}
    t = []
    for r in doc["rows"]:
        o = prev.get(r["id"])
        if not o:
            continue
        nv, unit, better = _metric(r)
        ov, _, _ = _metric(o)
        if nv is None or ov is None:
            continue
        ch = (nv - ov) / ov if ov else 0.0
        worse = ch > 0 if better == "lower" else ch < 0
        t.append([r["id"], _fmt(ov), _fmt(nv), unit, f"{ch:+.1%}" + (" worse" if worse and abs(ch) > 0.1 else "")])
    missing = sorted(set(prev) - {r["id"] for r in doc["rows"]})
    head = f"\nCompared with {old.get('profile')} run of {old.get('machine', {}).get('git')}:"
    out = head + "\n" + _table(t, ["row", "old", "new", "unit", "change"])
    if missing:
        out += "\nrows only in the old run: " + ", ".join(missing)
    return out


def chart(doc: dict, path: str) -> Optional[str]:
    """Write the PNG chart; returns None, or why it could not be written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'tdpfast[bench]')"
    rows = doc["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    ax = axes[0][0]
    tr = [r for r in rows if r.get("limit_ratio")]
    ax.barh([r["id"] for r in tr], [r["limit_ratio"] for r in tr], color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(1, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("times slower than the C limit (log)")
    ax.set_title("Engine vs physical limit")
    for i, r in enumerate(tr):
        ax.text(r["limit_ratio"], i, f" {r['limit_ratio']:.1f}x  ({_fmt(r['value'])} {r['unit']})", va="center",
                fontsize=7)
    ax = axes[0][1]
    fl = [r for r in rows if r["kind"] == "flush"]
    for kind, style in (("single", "o-"), ("global", "s-")):
        pts = sorted((r["extra"]["entries"], r["value"], r["extra"]["raw_c_call_ns"]) for r in fl
                     if r["id"].startswith(f"flush.{kind}."))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"INVEPT {kind} (VM.invept)")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], style, alpha=0.5, label=f"INVEPT {kind} (raw cffi)")
    ref = sorted((r["extra"]["entries"], r["reference"]["value"]) for r in fl if r["id"].startswith("flush.single.")
                 and (r.get("reference") or {}).get("value"))
    if ref:
        ax.plot([p[0] for p in ref], [p[1] for p in ref], "x--", color="gray", label="INVEPT single (reference model)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("TLB entries")
    ax.set_ylabel("ns per flush (best, log)")
    ax.set_title("Flush cost vs TLB size (must be flat)")
    if fl:
        ax.legend(fontsize=8)
    cost = [r for r in rows if r["kind"] == "cost" and r["safe"]]
    wls = list(dict.fromkeys(r["workload"] for r in cost))
    pols = list(dict.fromkeys(r["policy"] for r in cost))
    for ax, key, title in ((axes[1][0], "remote_tlb_flush", "Remote TLB flushes (safe policies; 0 drawn at 0.5)"),
                           (axes[1][1], "cycles", "Modelled cycles (safe policies)")):
        w = 0.8 / max(len(pols), 1)
        for j, p in enumerate(pols):
            vals = [next((r["counters"][key] for r in cost if r["workload"] == wl and r["policy"] == p), 0)
                    for wl in wls]
            ax.bar([i + j * w for i in range(len(wls))], [max(v, 0.5) for v in vals], width=w, label=p)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(wls))])
        ax.set_xticklabels(wls, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        if pols:
            ax.legend(fontsize=7)
    pub = [r for r in rows if r["kind"] == "published" and r["flushes"] is not None]
    if pub:
        txt = "; ".join(f"{r['id'].split('.')[1]}: {r['flushes']:,} flushes" for r in pub)
        fig.text(0.5, 0.005, f"Dirty-logging disable ({pub[0]['scale']}): {txt}", ha="center", fontsize=9)
    fig.suptitle(f"tdpfast bench ({doc['profile']}) - {doc['machine'].get('cpu')} - git {doc['machine'].get('git')}")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------- CLI

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on a ``parser.add_subparsers()`` object."""
    p = subparsers.add_parser("bench", help="measure the engine against C limit loops; write JSON and a chart",
                              description="Measure zap, access, flush, population, walk and memory costs "
                              "against plain-C limits, and modelled flush/zap costs of workloads under every "
                              "policy. Writes DIR/tdpfast-bench.json and DIR/tdpfast-bench.png.")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under a minute)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the tables")
    p.add_argument("--out", metavar="DIR", default="./bench-results", help="output directory (default: %(default)s)")
    p.add_argument("--compare", metavar="FILE", help="a previous tdpfast-bench.json to compare with")
    p.add_argument("--profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", choices=[s[0] for s in STEPS], help=argparse.SUPPRESS)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run the suite as ``args`` say; 0 on success, 2 on bad arguments."""
    profile = getattr(args, "profile", None) or ("quick" if args.quick else "full")
    old = None
    if args.compare:
        try:
            with open(args.compare, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            print(f"tdpfast bench: cannot read --compare file: {e}", file=sys.stderr)
            return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"tdpfast bench: cannot create --out directory: {e}", file=sys.stderr)
        return 2
    doc = run_suite(profile, only=getattr(args, "only", None))
    jpath = os.path.join(args.out, JSON_NAME)
    cpath = os.path.join(args.out, CHART_NAME)
    why = chart(doc, cpath)
    doc["chart"] = None if why else CHART_NAME
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(render(doc))
        if old is not None:
            print(compare(doc, old))
        print(f"\nwrote {jpath}" + (f" and {cpath}" if not why else f" (no chart: {why})"))
    if args.json and old is not None:
        print(compare(doc, old), file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tdpfast.bench`` (the same as ``tdpfast bench``)."""
    parser = argparse.ArgumentParser(prog="tdpfast")
    add_parser(parser.add_subparsers(dest="cmd"))
    return run(parser.parse_args(["bench"] + list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
