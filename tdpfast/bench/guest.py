"""Guest paging's rates: two-dimensional walks with every cache cold (no TLB, no paging-structure
caches: a 4-level guest over 4-level EPT makes 24 references each, which the row checks), and
guest-linear accesses through the combined TLB of a Skylake geometry at a hot working set (all
hits) and a larger one (the combined array's capacity, 1,536 entries, is exceeded), each with its
measured hit rate and the cost model's cycles per access. Batches run in C
(``vm.guest.access_batch``). No limit loop (the plain pointer chase of ``walk.cold`` is the
nested dimension's), and no reference-model row (the reference model has no guest paging)."""
from __future__ import annotations

from typing import Iterator, List

from ..tlbconfig import TLBConfig
from ..vm import VM
from .cases import no_cache_tlb, numpy_module
from .measure import per_unit, timing_row
from .profiles import SEED, Sizes
from .timing import time_rounds

GVA = 0x7F0000000000
POOL = 1 << 17              # gfn of the guest's page-table pool (inside the memslot)


def _cases(sz: Sizes):
    pages = min(sz.walk_pages, 1 << 16)
    return [("guest.walk2d", pages, no_cache_tlb(), "m_walks_per_s"),
            ("guest.hit100", 32, TLBConfig.preset("skylake"), "m_accesses_per_s"),
            ("guest.hit_mixed", 4096, TLBConfig.preset("skylake"), "m_accesses_per_s")]


def guest_ids(sz: Sizes) -> List[str]:
    return [c[0] for c in _cases(sz)]


class GuestCase:
    """``n`` random guest-linear reads over ``pages`` mapped 4K guest pages (every guest table
    and page faulted in first), by vCPU 0 with 4-level guest paging."""

    def __init__(self, pages: int, n: int, tlb: TLBConfig, seed: int = SEED):
        np = numpy_module()
        self.vm = VM(record=False, tlb=tlb)
        self.vm.add_memslot(0, 1 << 18, max_level=1)
        self.vm.vcpu_run(0, 0)
        g = self.vm.guest
        g.set_table_pool(POOL, 1024)
        cr3 = g.new_table()
        for i in range(pages):
            g.map(cr3, GVA + (i << 12), i << 12, accessed=True)
        g.set_paging(0, 4)
        g.load_cr3(0, cr3)
        self.gvas = (np.random.default_rng(seed + 11).integers(0, pages, n).astype(np.uint64) << np.uint64(12)) \
            + np.uint64(GVA)
        self.all = (np.arange(pages, dtype=np.uint64) << np.uint64(12)) + np.uint64(GVA)
        self.vm.guest.access_batch(0, self.all)     # fault everything in (EPT and guest A bits)
        self.n = n

    def setup(self):
        return None

    def run(self, _state=None):
        return self.vm.guest.access_batch(0, self.gvas)


def measure_guest(sz: Sizes, progress) -> Iterator[dict]:
    for rid, pages, tlb, unit in _cases(sz):
        progress.case(rid)
        gc = GuestCase(pages, sz.walk_n if rid == "guest.walk2d" else sz.access_n, tlb)
        cycles0 = gc.vm.stats["cycles"]
        t, res = time_rounds(gc.run, gc.setup, sz.walk_rounds)
        rounds = len(t)
        if res.accesses != gc.n or res.ok != gc.n:
            raise RuntimeError(f"{rid}: {res.ok} of {gc.n} guest accesses ran ({res.stopped})")
        refs_per_walk = res.refs / res.walked if res.walked else 0.0
        if rid == "guest.walk2d" and refs_per_walk != 24.0:
            raise RuntimeError(f"a cold 4x4 2D walk made {refs_per_walk} references, not 24")
        yield timing_row(rid, "guest", unit, per_unit(t, unit, gc.n), better="higher",
                         extra={"pages": pages, "accesses": gc.n, "hit_rate": res.hit_rate, "walked": res.walked,
                                "refs_per_walk": refs_per_walk,
                                "cycles_per_access": (gc.vm.stats["cycles"] - cycles0) / (rounds * gc.n),
                                "tlb": tlb.name})
