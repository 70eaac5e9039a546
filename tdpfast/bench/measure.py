"""The timed measurement steps: zap, guest accesses, INVEPT, population and cold walks. Each
step is a generator of rows (so that an interrupted run keeps the rows measured so far):
first the engine rows, each next to its C limit, then the same cases on the reference
model at ``1/ref_scale`` of the size, attached to the rows already yielded."""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

from . import reference as ref
from .cases import (AccessCase, AccessLimitCase, FaultCase, FlushCase, MapRangeCase, PeerCacheCase, PopulateLimitCase,
                    WalkCase, WalkLimitCase, ZapCase, ZapLimitCase)
from .profiles import Sizes
from .timing import per_unit, spread, time_rounds

REF_FLUSH_MAX_ENTRIES = 4096     # filling a larger TLB in pure Python takes too long


def _best(sp: dict, better: str) -> float:
    return sp["min"] if better == "lower" else sp["max"]


def timing_row(rid: str, group: str, unit: str, samples: Sequence[float], *, better: str = "lower",
               limit_samples: Optional[Sequence[float]] = None, limit_kind: Optional[str] = None,
               extra: Optional[dict] = None, kind: str = "timing") -> dict:
    """A row of per-round ``samples`` in ``unit``; ``value`` is the best round, ``spread``
    the rounds' min/quartiles/max; ``limit`` the C limit loop's best on the same data."""
    sp = spread(samples)
    value = _best(sp, better)
    r = {"id": rid, "kind": kind, "group": group, "unit": unit, "better": better, "value": value,
         "spread": sp, "samples": [float(s) for s in samples], "limit": None, "limit_ratio": None,
         "reference": None, "extra": extra or {}}
    if limit_samples:
        lsp = spread(limit_samples)
        lv = _best(lsp, better)
        r["limit"] = {"kind": limit_kind, "value": lv, "spread": lsp}
        # "x slower than the limit" whichever way the unit points
        r["limit_ratio"] = value / lv if better == "lower" else lv / value
    return r


# ------------------------------------------------------------------------------------ zap

def _zap_cases(sz: Sizes):
    return [("zap.4k", sz.zap_4k_pages, 1), ("zap.2m", sz.zap_2m_pages, 2)]


def zap_ids(sz: Sizes) -> List[str]:
    return [c[0] for c in _zap_cases(sz)]


def measure_zap(sz: Sizes, progress) -> Iterator[dict]:
    rows = []
    for rid, pages, level in _zap_cases(sz):
        progress.case(rid)
        zc = ZapCase(pages, level)
        t, _ = time_rounds(zc.run, zc.setup, sz.zap_rounds)
        lc = ZapLimitCase(zc.leaves)
        lt, zapped = time_rounds(lc.run, lc.setup, max(3, sz.zap_rounds))
        if zapped != lc.ntables * 512:
            raise RuntimeError(f"limit zap cleared {zapped} entries, expected {lc.ntables * 512}")
        rows.append(timing_row(rid, "zap", "ns_per_leaf", per_unit(t, "ns_per_leaf", zc.leaves),
                               limit_samples=per_unit(lt, "ns_per_leaf", lc.leaves), limit_kind="c_clear_entries",
                               extra={"pages": pages, "level": level, "leaves": zc.leaves,
                                      "limit_tables": lc.ntables, "best_ms": min(t) / 1e6}))
        yield rows[-1]

    def on_reference(model):
        out = {}
        for rid, pages, level in _zap_cases(sz):
            p = max(pages // sz.ref_scale, 512 << (9 * (level - 1)))
            zc = ZapCase(p, level, vm_cls=model.VM)
            t, _ = time_rounds(zc.run, zc.setup, 1)
            out[rid] = (min(t) / zc.leaves, zc.leaves, "leaves")
        return out

    ref.attach(rows, ref.run_reference("zap", on_reference))


# ------------------------------------------------------------------------------------ access

def access_ids(sz: Sizes) -> List[str]:
    return [f"access.{s}" for s, _ in sz.access_ws]


def _peer(gpas) -> dict:
    """The same trace through pycachesim (an optional dependency, the ``bench`` extra): its
    best of 3 rounds and hit rate, or a note saying why it did not run."""
    if not PeerCacheCase.available():
        return {"name": "pycachesim", "m_accesses_per_s": None, "note": "not_installed"}
    pc = PeerCacheCase(gpas)
    pt, _ = time_rounds(pc.run, None, 3)
    return {"name": "pycachesim", "m_accesses_per_s": max(per_unit(pt, "m_accesses_per_s", pc.n)),
            "hit_rate": pc.hit_rate(), "interface": "CacheSimulator.loadstore"}


def measure_access(sz: Sizes, progress) -> Iterator[dict]:
    rows = []
    for suffix, ws in sz.access_ws:
        progress.case(f"access.{suffix}")
        ac = AccessCase(ws, sz.access_n)
        t, res = time_rounds(ac.run, None, sz.access_rounds)
        lc = AccessLimitCase(ac.gpas)
        lt, cnt = time_rounds(lc.run, None, max(3, sz.access_rounds))
        unit = "m_accesses_per_s"
        rows.append(timing_row(f"access.{suffix}", "access", unit, per_unit(t, unit, ac.n), better="higher",
                               limit_samples=per_unit(lt, unit, lc.n), limit_kind="c_setassoc_lookup",
                               extra={"working_set": ws, "accesses": ac.n, "hit_rate": res.hit_rate,
                                      "l1_hits": res.l1_hits, "l2_hits": res.l2_hits, "walked": res.walked,
                                      "faults": res.faults, "limit_hit_rate": (cnt[0] + cnt[1]) / lc.n,
                                      "peer": _peer(ac.gpas)}))
        peer = rows[-1]["extra"]["peer"]
        if peer.get("m_accesses_per_s"):
            peer["tdpfast_ratio"] = rows[-1]["value"] / peer["m_accesses_per_s"]
        yield rows[-1]

    def on_reference(model):
        out = {}
        for suffix, ws in sz.access_ws:
            n = max(sz.access_n // sz.ref_scale, 1000)
            ac = AccessCase(ws, n, vm_cls=model.VM)
            t, _ = time_rounds(ac.run, None, 1)
            out[f"access.{suffix}"] = (n / (min(t) / 1e9) / 1e6, n, "accesses")
        return out

    ref.attach(rows, ref.run_reference("access", on_reference))


# ------------------------------------------------------------------------------------ flush

def flush_ids(sz: Sizes) -> List[str]:
    return [f"flush.{k}.{e}" for e in sz.flush_entries for k in ("single", "global")]


def measure_flush(sz: Sizes, progress) -> Iterator[dict]:
    rows = []
    n = sz.flush_calls
    for e in sz.flush_entries:
        for kind in ("single", "global"):
            progress.case(f"flush.{kind}.{e}")
            fc = FlushCase(e, kind, calls=n)
            fc.setup()
            live = fc.live_entries()
            fc.run()
            after = fc.live_entries()
            t, _ = time_rounds(fc.run, fc.setup, sz.flush_rounds)
            raw = FlushCase(e, kind, raw=True, calls=n)
            rt, _ = time_rounds(raw.run, raw.setup, sz.flush_rounds)
            one = FlushCase(e, kind, raw=True, calls=1)
            ot, _ = time_rounds(one.run, one.setup, sz.flush_rounds)
            rsp = spread(per_unit(rt, "ns_per_flush", n))
            rows.append(timing_row(f"flush.{kind}.{e}", "flush", "ns_per_flush", per_unit(t, "ns_per_flush", n),
                                   kind="flush",
                                   extra={"entries": e, "invept": kind, "live_entries_before": live,
                                          "live_entries_after": after, "calls_per_round": n,
                                          "raw_c_call_ns": rsp["min"], "raw_c_call_median_ns": rsp["median"],
                                          "first_after_refill_ns": min(ot)}))
            yield rows[-1]

    def on_reference(model):
        out = {}
        for e in sz.flush_entries:
            if e > REF_FLUSH_MAX_ENTRIES:
                continue
            for kind in ("single", "global"):
                fc = FlushCase(e, kind, calls=20, vm_cls=model.VM)
                t, _ = time_rounds(fc.run, fc.setup, 2)
                out[f"flush.{kind}.{e}"] = (min(t) / fc.calls, e, "tlb_entries")
        return out

    ref.attach(rows, ref.run_reference("flush", on_reference))


# ------------------------------------------------------------------------------------ populate and walk

def populate_ids(sz: Sizes) -> List[str]:
    return ["populate.fault", "populate.map_range", "walk.cold"]


def measure_populate(sz: Sizes, progress) -> Iterator[dict]:
    rows = []
    progress.case("populate.fault")
    fc = FaultCase(sz.populate_pages)
    t, res = time_rounds(fc.run, fc.setup, sz.populate_rounds)
    faults = res.faults
    plc = PopulateLimitCase(sz.populate_pages)
    lt, used = time_rounds(plc.run, None, max(3, sz.populate_rounds))
    limit = per_unit(lt, "m_pages_per_s", sz.populate_pages)
    rows.append(timing_row("populate.fault", "populate", "m_faults_per_s", per_unit(t, "m_faults_per_s", faults),
                           better="higher", limit_samples=limit, limit_kind="c_radix_build",
                           extra={"pages": sz.populate_pages, "faults": faults, "limit_tables": used}))
    yield rows[-1]
    progress.case("populate.map_range")
    mc = MapRangeCase(sz.populate_pages)
    mt, mapped = time_rounds(mc.run, mc.setup, sz.populate_rounds)
    rows.append(timing_row("populate.map_range", "populate", "m_pages_per_s", per_unit(mt, "m_pages_per_s", mapped),
                           better="higher", limit_samples=limit, limit_kind="c_radix_build",
                           extra={"pages": sz.populate_pages, "mapped": mapped}))
    yield rows[-1]
    progress.case("walk.cold")
    wc = WalkCase(sz.walk_pages, sz.walk_n)
    wc.vm.reset_stats()
    wt, wres = time_rounds(wc.run, None, sz.walk_rounds)
    st = wc.vm.stats
    wl = WalkLimitCase(sz.walk_pages, wc.gfns)
    wlt, _ = time_rounds(wl.run, None, max(3, sz.walk_rounds))
    rows.append(timing_row("walk.cold", "walk", "m_walks_per_s", per_unit(wt, "m_walks_per_s", wres.walked),
                           better="higher", limit_samples=per_unit(wlt, "m_walks_per_s", wl.n),
                           limit_kind="c_pointer_chase",
                           extra={"pages": sz.walk_pages, "walks": wres.walked,
                                  "refs_per_walk": st["walk_refs"] / max(st["walks"], 1)}))
    yield rows[-1]

    def on_reference(model):
        out = {}
        p = max(sz.populate_pages // sz.ref_scale, 512)
        f = FaultCase(p, vm_cls=model.VM)
        t, r = time_rounds(f.run, f.setup, 1)
        out["populate.fault"] = (r.faults / (min(t) / 1e9) / 1e6, p, "pages")
        m = MapRangeCase(p, vm_cls=model.VM)
        t, n = time_rounds(m.run, m.setup, 1)
        out["populate.map_range"] = (n / (min(t) / 1e9) / 1e6, p, "pages")
        n = max(sz.walk_n // sz.ref_scale, 1000)
        w = WalkCase(min(sz.walk_pages, p), n, vm_cls=model.VM)
        t, r = time_rounds(w.run, None, 1)
        out["walk.cold"] = (r.walked / (min(t) / 1e9) / 1e6, n, "walks")
        return out

    ref.attach(rows, ref.run_reference("populate", on_reference))
