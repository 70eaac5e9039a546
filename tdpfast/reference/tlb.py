"""One physical CPU's TLB and paging-structure caches (PSC) for guest-physical mappings
(Intel SDM Vol. 3C 28.3 "Caching Translation Information", 2016 edition; AMD APM Vol. 2
15.16 "TLB Control"; geometries from CPUID, see :meth:`tdpfast.TLBConfig.preset`).

Entries are tagged by a *context*: the EP4TA of the EPT root on VMX, the ASID on SVM
(VPID/PCID do not tag guest-physical mappings).  A context key is an integer
``kind << 62 | value`` (kind 1: EP4TA pfn, kind 2: ASID); the tag reported in dumps and
violations is ``value``.

Two modes:

* ``adversarial``: never evicts -- an entry lives until an invalidation covers it, so a
  missing flush cannot hide behind an eviction (a CPU may drop any cached entry at any
  time, SDM 28.3.3.2, but must never keep one that a required invalidation covers).
* ``setassoc``: L1 arrays per page size, an L2 array shared by 4K and 2M, an L2 1G array,
  and one PSC array per entry level 2..5; each set-associative with LRU, tree-PLRU
  (bit-PLRU for non-power-of-two ways) or seeded-random replacement [MODEL CHOICE: the
  replacement policies are not documented].
  The set of a ``vpn`` is ``(vpn ^ (vpn >> 17)) % sets``; an L2 hit refills L1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

U64 = (1 << 64) - 1
KEY_VALUE = (1 << 62) - 1
LRU, PLRU, RANDOM = "lru", "plru", "random"


def ept_context(ep4ta_pfn: int) -> int:
    return (1 << 62) | ep4ta_pfn


def asid_context(asid: int) -> int:
    return (2 << 62) | asid


def vpn_of(gfn: int, level: int) -> int:
    return gfn >> (9 * (level - 1))


@dataclass(eq=False)
class Entry:
    ctx: int
    level: int      # page size (TLB) or level of the cached entry (PSC)
    vpn: int        # gfn >> 9*(level-1)
    pfn: int = 0    # TLB: first pfn of the page; PSC: the next table
    perms: int = 0
    dirty: bool = False
    gen: int = 0    # PSC: generation of the next table's frame when it was cached
    stamp: int = 0  # LRU

    def covers(self, start: int, end: int) -> bool:
        span = 1 << (9 * (self.level - 1))
        base = self.vpn * span
        return base < end and start < base + span


class _Array:
    """A set-associative array: ``sets`` rows of ``ways`` slots (None = invalid)."""

    def __init__(self, geometry: Tuple[int, int], structure: str):
        self.sets, self.ways = (int(x) for x in geometry)
        self.structure = structure
        self.rows: List[List[Optional[Entry]]] = [[None] * self.ways for _ in range(self.sets)]
        self.plru = [0] * self.sets

    def set_of(self, vpn: int) -> int:
        return (vpn ^ (vpn >> 17)) % self.sets

    def entries(self) -> Iterator[Entry]:
        for row in self.rows:
            for e in row:
                if e is not None:
                    yield e

    def kill_if(self, pred) -> None:
        for row in self.rows:
            for w, e in enumerate(row):
                if e is not None and pred(e):
                    row[w] = None


class TLB:
    def __init__(self, cfg, seed: int):
        self.adversarial = cfg.mode == "adversarial"
        self.repl = cfg.replacement
        self.rng = seed & U64 or 0x9E3779B97F4A7C15
        self.stamp = 0
        if self.adversarial:
            self.store: Dict[Tuple[int, int, int], Entry] = {}   # (ctx, level, vpn) -> entry
            self.pstore: Dict[Tuple[int, int, int], Entry] = {}
            return
        self.l1 = [_Array(cfg.l1_4k, "l1"), _Array(cfg.l1_2m, "l1"), _Array(cfg.l1_1g, "l1")]
        self.l2 = _Array(cfg.l2, "l2")
        self.l2_1g = _Array(cfg.l2_1g, "l2")
        self.psc = {2: _Array(cfg.psc_pde, "psc"), 3: _Array(cfg.psc_pdpte, "psc"),
                    4: _Array(cfg.psc_pml4e, "psc"), 5: _Array(cfg.psc_pml5e, "psc")}

    # ------------------------------------------------------------------ replacement
    def _l2_for(self, level: int) -> _Array:
        return self.l2_1g if level == 3 else self.l2

    def _touch(self, a: _Array, s: int, w: int) -> None:
        self.stamp += 1
        a.rows[s][w].stamp = self.stamp
        if self.repl != PLRU or a.ways == 1 or a.ways > 64:
            return
        if a.ways & (a.ways - 1) == 0:
            # tree-PLRU: point every node on the path away from way w (1: victim right).
            node, lo, hi = 1, 0, a.ways
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if w < mid:
                    a.plru[s] |= 1 << node
                    node, hi = node * 2, mid
                else:
                    a.plru[s] &= ~(1 << node)
                    node, lo = node * 2 + 1, mid
        else:
            # bit-PLRU (MRU bits): when every bit is set, keep only this one.
            a.plru[s] |= 1 << w
            full = (1 << a.ways) - 1
            if a.plru[s] & full == full:
                a.plru[s] = 1 << w

    def _xorshift(self) -> int:
        x = self.rng
        x ^= (x << 13) & U64
        x ^= x >> 7
        x ^= (x << 17) & U64
        self.rng = x
        return x

    def _victim(self, a: _Array, s: int) -> int:
        row = a.rows[s]
        for w in range(a.ways):
            if row[w] is None:
                return w
        if self.repl == RANDOM:
            return self._xorshift() % a.ways
        if self.repl == PLRU and 1 < a.ways <= 64:
            b = a.plru[s]
            if a.ways & (a.ways - 1) == 0:
                node, lo, hi = 1, 0, a.ways
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if b & (1 << node):
                        node, lo = node * 2 + 1, mid
                    else:
                        node, hi = node * 2, mid
                return lo
            for w in range(a.ways):
                if not b & (1 << w):
                    return w
        # LRU: the oldest stamp (the first of equals).
        return min(range(a.ways), key=lambda w: (row[w].stamp, w))

    def _find(self, a: _Array, ctx: int, vpn: int, level: int) -> Optional[Tuple[int, int]]:
        if not a.sets:
            return None
        s = a.set_of(vpn)
        for w, e in enumerate(a.rows[s]):
            if e is not None and e.vpn == vpn and e.level == level and e.ctx == ctx:
                return s, w
        return None

    def _fill_array(self, a: _Array, ctx: int, vpn: int, level: int) -> Optional[Entry]:
        if not a.sets:
            return None
        found = self._find(a, ctx, vpn, level)
        s, w = found if found else (a.set_of(vpn), None)
        if w is None:
            w = self._victim(a, s)
        a.rows[s][w] = Entry(ctx, level, vpn)
        self._touch(a, s, w)
        return a.rows[s][w]

    # ------------------------------------------------------------------ translations
    def lookup(self, ctx: int, gfn: int) -> Tuple[int, Optional[Entry]]:
        """(1, entry) for an L1 hit, (2, entry) for an L2 hit (refilled into L1), (0, None)."""
        if self.adversarial:
            for level in (1, 2, 3):
                e = self.store.get((ctx, level, vpn_of(gfn, level)))
                if e is not None:
                    return 1, e
            return 0, None
        for level in (1, 2, 3):
            a = self.l1[level - 1]
            found = self._find(a, ctx, vpn_of(gfn, level), level)
            if found:
                self._touch(a, *found)
                return 1, a.rows[found[0]][found[1]]
        for level in (1, 2, 3):
            a, vpn = self._l2_for(level), vpn_of(gfn, level)
            found = self._find(a, ctx, vpn, level)
            if found:
                self._touch(a, *found)
                e = a.rows[found[0]][found[1]]
                f = self._fill_array(self.l1[level - 1], ctx, vpn, level)
                if f is None:
                    return 2, e
                f.pfn, f.perms, f.dirty = e.pfn, e.perms, e.dirty
                return 2, f
        return 0, None

    def fill(self, ctx: int, gfn: int, level: int, pfn: int, perms: int, dirty: bool) -> None:
        vpn = vpn_of(gfn, level)
        if self.adversarial:
            self.store[(ctx, level, vpn)] = Entry(ctx, level, vpn, pfn, perms, dirty)
            return
        for a in (self.l1[level - 1], self._l2_for(level)):
            e = self._fill_array(a, ctx, vpn, level)
            if e is not None:
                e.pfn, e.perms, e.dirty = pfn, perms, dirty

    # ------------------------------------------------------------------ paging-structure caches
    def psc_lookup(self, ctx: int, gfn: int, top_level: int) -> Optional[Entry]:
        """The deepest cached entry for gfn (a PDE-cache hit skips the most levels)."""
        for level in range(2, top_level + 1):
            vpn = vpn_of(gfn, level)
            if self.adversarial:
                e = self.pstore.get((ctx, level, vpn))
                if e is not None:
                    return e
                continue
            a = self.psc[level]
            found = self._find(a, ctx, vpn, level)
            if found:
                self._touch(a, *found)
                return a.rows[found[0]][found[1]]
        return None

    def psc_fill(self, ctx: int, gfn: int, level: int, table_pfn: int, perms: int, gen: int) -> None:
        vpn = vpn_of(gfn, level)
        if self.adversarial:
            self.pstore[(ctx, level, vpn)] = Entry(ctx, level, vpn, table_pfn, perms, False, gen)
            return
        e = self._fill_array(self.psc[level], ctx, vpn, level)
        if e is not None:
            e.pfn, e.perms, e.gen, e.dirty = table_pfn, perms, gen, False

    # ------------------------------------------------------------------ invalidation
    def _kill(self, tlb_pred, psc_pred) -> None:
        if self.adversarial:
            for store, pred in ((self.store, tlb_pred), (self.pstore, psc_pred)):
                for k in [k for k, e in store.items() if pred(e)]:
                    del store[k]
            return
        for a in (*self.l1, self.l2, self.l2_1g):
            a.kill_if(tlb_pred)
        for a in self.psc.values():
            a.kill_if(psc_pred)

    def flush_ctx(self, ctx: int) -> None:
        """Everything tagged with one context (INVEPT single-context, TLB_CONTROL 3/7)."""
        self._kill(lambda e: e.ctx == ctx, lambda e: e.ctx == ctx)

    def flush_all(self) -> None:
        """Every context (INVEPT global, TLB_CONTROL 1)."""
        self._kill(lambda e: True, lambda e: True)

    def flush_range(self, gfn: int, npages: int) -> None:
        """A precise gfn-range invalidation (Hyper-V style: hyperv_flush_guest_mapping_range(),
        the only kvm_flush_remote_tlbs_range() that is not a full flush): every size of
        translation and every paging-structure-cache entry overlapping the range, in every
        context."""
        if npages == 0:
            return
        end = gfn + npages
        self._kill(lambda e: vpn_of(gfn, e.level) <= e.vpn <= vpn_of(end - 1, e.level),
                   lambda e: e.covers(gfn, end))

    def flush_gfn_ctx(self, ctx: int, gfn: int) -> None:
        """An EPT violation / #NPF drops the cached mappings that would translate the
        faulting GPA in the current context (SDM 28.3.3.1, "Operations that Invalidate Cached
        Mappings": EPT violations)."""
        for level in (1, 2, 3):
            key = (ctx, level, vpn_of(gfn, level))
            if self.adversarial:
                self.store.pop(key, None)
                continue
            for a in (self.l1[level - 1], self._l2_for(level)):
                found = self._find(a, ctx, key[2], level)
                if found:
                    a.rows[found[0]][found[1]] = None
        while True:
            e = self.psc_lookup(ctx, gfn, 5)
            if e is None:
                break
            self._drop_psc(e)

    def _drop_psc(self, e: Entry) -> None:
        if self.adversarial:
            del self.pstore[(e.ctx, e.level, e.vpn)]
        else:
            self.psc[e.level].kill_if(lambda x: x is e)

    # ------------------------------------------------------------------ inspection
    def _tlb_arrays(self):
        return [] if self.adversarial else [*self.l1, self.l2, self.l2_1g]

    def tlb_entries(self) -> List[Tuple[str, Entry]]:
        if self.adversarial:
            return [("store", e) for e in self.store.values()]
        return [(a.structure, e) for a in self._tlb_arrays() for e in a.entries()]

    def psc_entries(self) -> List[Tuple[str, Entry]]:
        if self.adversarial:
            return [("store", e) for e in self.pstore.values()]
        return [("psc", e) for a in self.psc.values() for e in a.entries()]

    def dump(self) -> List[dict]:
        def d(kind, structure, e):
            return {"kind": kind, "level": e.level, "tag": e.ctx & KEY_VALUE,
                    "gfn": e.vpn << (9 * (e.level - 1)), "pfn": e.pfn, "perms": e.perms,
                    "dirty": bool(e.dirty), "structure": structure}
        return ([d("tlb", s, e) for s, e in self.tlb_entries()] +
                [d("psc", s, e) for s, e in self.psc_entries()])
