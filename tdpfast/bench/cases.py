"""The timed cases: each is ``setup()`` (untimed) / ``run(state)`` (timed), an engine case next
to its *limit* (a plain C loop from ``csrc/bench/limit_loops.c`` doing the least work the operation
needs on the same data). ``tdpfast bench`` and ``benches/`` (pytest-benchmark's
``benchmark.pedantic``) time the same pairs. Every engine case takes ``vm_cls`` so that the
same case runs on the pure-Python reference model (``tdpfast.reference.model.VM``)."""
from __future__ import annotations

import gc
from typing import Tuple

from ..tlbconfig import TLBConfig
from ..vm import VM
from .._native import lib as _engine
from ..spte import SHADOW_NONPRESENT_VALUE
from .limits import load as _limits
from .profiles import SEED


def numpy_module():
    import numpy as np
    return np


def gpas_of(gfns) -> "object":
    """uint64 array of guest physical addresses for an iterable/array of gfns."""
    np = numpy_module()
    return np.asarray(gfns, dtype=np.uint64) << np.uint64(12)


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
        np = numpy_module()
        self.ffi, self.lib = _limits()
        self.ntables = (leaves + 511) // 512
        self.leaves = leaves
        self.arr = np.zeros(self.ntables * 512, dtype=np.uint64)
        self.buf = self.ffi.from_buffer("uint64_t[]", self.arr)

    def setup(self):
        self.lib.tdp_limit_fill(self.buf, self.ntables)

    def run(self, _state=None):
        return self.lib.tdp_limit_zap(self.buf, self.ntables, SHADOW_NONPRESENT_VALUE)


def skylake_geometry() -> Tuple[Tuple[int, int], Tuple[int, int]]:
    t = TLBConfig.preset("skylake")
    return t.l1_4k, t.l2


class AccessCase:
    """Uniform random reads over ``ws`` prefaulted 4K pages through the Skylake TLB."""

    def __init__(self, ws: int, n: int, seed: int = SEED, vm_cls=VM):
        np = numpy_module()
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
    """The limit: the same addresses through a bare L1+L2 set-associative lookup (a hit is a
    set-index hash and a tag compare over the ways; FIFO fills on a miss)."""

    def __init__(self, gpas):
        self.ffi, self.lib = _limits()
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


class PeerCacheCase:
    """The peer: the same addresses through pycachesim (module ``cachesim``; optional, the
    ``bench`` extra) with the same geometry as the limit -- a Skylake L1 DTLB and STLB as
    two LRU cache levels with 4 KiB "lines", the L1 loading from and storing to the L2 --
    fed as one ``loadstore`` batch (pycachesim's fastest interface). pycachesim indexes
    sets by address modulo the set count, not with the engine's hash, so its hit rate is
    reported next to the engine's. ``PeerCacheCase.available()`` is False when pycachesim
    is not installed; the bench then notes the missing peer instead of timing it."""

    @staticmethod
    def available() -> bool:
        try:
            import cachesim  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(self, gpas):
        from cachesim import Cache, CacheSimulator, MainMemory
        (s1, w1), (s2, w2) = skylake_geometry()
        mem = MainMemory()
        l2 = Cache("STLB", s2, w2, 4096, "LRU")
        l1 = Cache("DTLB", s1, w1, 4096, "LRU", store_to=l2, load_from=l2)
        mem.load_to(l2)
        mem.store_from(l2)
        self.sim = CacheSimulator(l1, mem)
        self.trace = [((int(a),), ()) for a in gpas]   # built untimed
        self.n = len(self.trace)
        self.run()                                      # warm, as the engine and the limit are
        self.sim.reset_stats()

    def setup(self):
        return None

    def run(self, _state=None):
        self.sim.loadstore(self.trace)

    def hit_rate(self) -> float:
        st = list(self.sim.stats())
        loads = st[0]["LOAD_count"]
        return (st[0]["HIT_count"] + st[1]["HIT_count"]) / loads if loads else 0.0


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
        np = numpy_module()
        self.entries, self.kind, self.raw, self.calls = entries, kind, raw, calls
        self.vm = vm_cls(record=False, tlb=flush_tlb_config(entries))
        self.vm.add_memslot(0, 2 * entries + 512, max_level=1)
        self.vm.vcpu_run(0, 0)
        self.fill = gpas_of(np.arange(2 * entries))
        self.vm.access_batch(0, self.fill)
        self.eptp = self.vm.mmu.root_pointer()
        # the INVEPT type operand, which tdp_invept() takes as the instruction does
        self.type = _engine.TDP_INVEPT_SINGLE_CONTEXT if kind == "single" else _engine.TDP_INVEPT_GLOBAL

    def setup(self):
        self.vm.access_batch(0, self.fill)

    def run(self, _state=None):
        if self.raw:
            f, h, t, e = _engine.tdp_invept, self.vm._h, self.type, self.eptp
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
        np = numpy_module()
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
        np = numpy_module()
        self.ffi, self.lib = _limits()
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
        np = numpy_module()
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

