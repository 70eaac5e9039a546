"""Report: the text tables and the PNG chart of a bench document. Every display string is
made here from the document's identifiers and numbers (the JSON carries none)."""
from __future__ import annotations

from typing import List, Optional

UNIT_TEXT = {"ns_per_leaf": "ns/leaf", "ns_per_flush": "ns/flush", "bytes_per_page": "bytes/page",
             "m_accesses_per_s": "M accesses/s", "m_faults_per_s": "M faults/s", "m_pages_per_s": "M pages/s",
             "m_walks_per_s": "M walks/s", "m_ops_per_s": "M ops/s", "cycles": "cycles", "flushes": "flushes"}
LIMIT_TEXT = {"c_clear_entries": "C loop clearing the entries of the same number of tables",
              "c_setassoc_lookup": "C bare set-associative lookup (hash + tag compare), same sets/ways",
              "c_radix_build": "C radix-tree build, one gfn at a time",
              "c_pointer_chase": "C 4-level pointer chase",
              "raw_page_tables": "raw page tables: 4 KiB per table (8 B per leaf)"}
PUBLISHED_TEXT = {
    "published.zap_collapsible": ("<= v6.12 zap collapsible (one flush per huge page)",
                                  "one self-flushing atomic zap per collapsed 2M region"),
    "published.recover": ("v6.13+ recover in place, no yield", "no need_resched: one flush at the end"),
    "published.recover_yield": ("v6.13+ recover in place, need_resched every {yield_every:,} iterator steps",
                                "flushes = yields + 1; yield_every chosen so that the walk yields 75 times"),
}
SOURCE = ('D. Matlack, "KVM: x86/mmu: Batch TLB flushes when zapping collapsible TDP MMU SPTEs", '
          "kvm@vger.kernel.org, 2024-08-05")


def unit_text(unit: str) -> str:
    return UNIT_TEXT.get(unit, unit)


def size_text(pages: int) -> str:
    gib = pages * 4096 / (1 << 30)
    return f"{gib:g} GiB" if gib >= 1 else f"{pages * 4 // 1024} MiB"


def title(r: dict) -> str:
    """The human name of a row, from its id and parameters."""
    ex, rid = r.get("extra", {}), r["id"]
    if rid.startswith("zap."):
        return (f"zap_gfn_range, {size_text(ex['pages'])} of {'4K' if ex['level'] == 1 else '2M'} leaves "
                f"({ex['leaves']:,})")
    if rid.startswith("access."):
        return f"access_batch, {ex['working_set']:,}-page working set, Skylake TLB"
    if rid == "populate.fault":
        return f"first-touch faults, {ex['pages']:,} 4K pages (access_batch)"
    if rid == "populate.map_range":
        return f"map_range, {ex['pages']:,} 4K pages"
    if rid == "walk.cold":
        return f"walks, no TLB/PSC, {ex['pages']:,} mapped 4K pages"
    if rid == "guest.walk2d":
        return f"2D walks (guest 4 x EPT 4), no TLB/PSC, {ex['pages']:,} guest pages"
    if rid.startswith("guest."):
        return f"guest.access_batch, {ex['pages']:,}-page guest working set, Skylake TLB"
    if rid.startswith("explorer."):
        return f"fuzz explorer, {ex['arch'].upper()}, KVM's policy, every invariant on"
    if rid.startswith("memory."):
        return f"RSS per mapped 4K page, {size_text(ex['pages'])}"
    if rid.startswith("flush."):
        return f"INVEPT {ex['invept']}, TLB of {ex['entries']:,} entries"
    if r["kind"] == "cost":
        return f"{r['workload']} / {r['policy']}"
    if r["kind"] == "published":
        return PUBLISHED_TEXT[rid][0].format(yield_every=r.get("yield_every") or 0)
    return rid


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def ref_cell(ref: Optional[dict]) -> str:
    """"123x" (C is 123 times faster / smaller than the reference), plus whether counts agree."""
    if not ref:
        return ""
    if ref.get("status") != "ok":
        return "-" if ref.get("status") == "not_measured" else str(ref.get("status"))
    cell = f"{ref['speedup']:.3g}x"
    if "counters_match" in ref:
        cell += ", counts agree" if ref["counters_match"] else ", COUNTS DIFFER"
    return cell


def _timing_note(r: dict) -> str:
    ex = r["extra"]
    if r.get("id", "").startswith("guest."):
        return (f"combined hits {ex['hit_rate']:.1%}, {ex['refs_per_walk']:.1f} refs/walk, "
                f"{ex['cycles_per_access']:,.0f} modelled cycles/access")
    if "hit_rate" in ex:
        note = f"hit {ex['hit_rate']:.1%} (limit {ex['limit_hit_rate']:.1%})"
        peer = ex.get("peer")
        if peer and peer.get("m_accesses_per_s"):
            note += (f"; pycachesim {peer['m_accesses_per_s']:.2f} M/s, hit {peer['hit_rate']:.1%}:"
                     f" tdpfast {peer['tdpfast_ratio']:.1f}x")
        elif peer:
            note += "; no pycachesim row: not installed (pip install pycachesim, or the bench extra)"
        return note
    if "refs_per_walk" in ex:
        return f"{ex['refs_per_walk']:.1f} refs/walk"
    if "best_ms" in ex:
        return f"{ex['best_ms']:.2f} ms total"
    if r["kind"] == "memory":
        return f"{ex['rss_growth'] / (1 << 20):,.0f} MiB RSS, {ex['raw_table_bytes'] / (1 << 20):,.0f} MiB tables"
    return ""


def _spread_cell(r: dict) -> str:
    sp = r.get("spread")
    if not sp or sp["rounds"] < 2:
        return "-"
    return f"{fmt(sp['min'])}-{fmt(sp['max'])} ({sp['rounds']})"


def render(doc: dict) -> str:
    rows = doc["rows"]
    m = doc["machine"]
    load = m.get("loadavg_end")
    parts = [f"tdpfast bench ({doc['profile']}), {m.get('cpu')}, {m.get('cpus')} CPUs, Python {m.get('python')}, "
             f"git {m.get('git')}, {doc['elapsed_s']:.0f} s" + (f", load average {load[0]:.1f}" if load else "")]
    if doc["status"] != "complete":
        parts.append(f"{doc['status'].upper()}: {len(rows)} of {doc['expected_rows']} rows measured")
    t = []
    for r in rows:
        if r["kind"] not in ("timing", "memory"):
            continue
        lim = r["limit"] or {}
        t.append([title(r), fmt(r["value"]), unit_text(r["unit"]), _spread_cell(r), fmt(lim.get("value")),
                  f"{r['limit_ratio']:.1f}x" if r["limit_ratio"] else "-", ref_cell(r.get("reference")),
                  _timing_note(r)])
    if t:
        parts.append(table(t, ["measurement", "best", "unit", "rounds min-max (n)", "limit", "vs limit", "C vs ref",
                               "notes"]))
    fl = [r for r in rows if r["kind"] == "flush"]
    if fl:
        by = {}
        for r in fl:
            by.setdefault(r["extra"]["entries"], {})[r["extra"]["invept"]] = r
        t = []
        for e, v in sorted(by.items()):
            s, g = v.get("single"), v.get("global")
            t.append([f"{e:,}", fmt((s or g)["extra"]["live_entries_before"]),
                      fmt(s and s["value"]), fmt(s and s["extra"]["raw_c_call_ns"]),
                      fmt(g and g["value"]), fmt(g and g["extra"]["raw_c_call_ns"]),
                      fmt(((s or {}).get("reference") or {}).get("value")), ref_cell((s or {}).get("reference"))])
        parts.append("\nFlush cost vs TLB size (ns per INVEPT; API = VM.invept, raw = the cffi call; ref = the "
                     "reference model's VM.invept):")
        parts.append(table(t, ["TLB entries", "live before", "single API", "single raw", "global API", "global raw",
                               "ref single", "C vs ref"]))
    cost = [r for r in rows if r["kind"] == "cost"]
    if cost:
        parts.append("\nZap vs flush, modelled costs (8 vCPUs / 4 pCPUs, Skylake TLBs; * = safe policy, "
                     "violations must be 0):")
        keys = ("remote_tlb_flush", "ipis", "tlb_misses", "walk_refs", "spte_writes", "cycles", "violations")
        t = [[r["workload"], r["policy"] + (" *" if r["safe"] else "")] + [fmt(r["counters"][k]) for k in keys]
             + [ref_cell(r.get("reference"))] for r in cost]
        parts.append(table(t, ["workload", "policy", "flushes", "IPIs", "TLB misses", "walk refs", "SPTE writes",
                               "cycles", "violations", "C vs ref"]))
        bad = [r for r in cost if r["safe"] and r["counters"]["violations"]]
        if bad:
            parts.append("WARNING: safe policies with violations: " + ", ".join(r["id"] for r in bad))
    pub = [r for r in rows if r["kind"] == "published"]
    if pub:
        p0 = pub[0]
        parts.append(f"\nPublished counts ({SOURCE}), dirty-logging disable, {p0['vcpus']} vCPUs x "
                     f"{p0['pages_per_vcpu'] * 4096 // (1 << 20):,} MiB on 2 MiB pages:")
        t = [[title(r), fmt(r["published_flushes"]), fmt(r["expected_flushes"]), fmt(r["flushes"]),
              fmt(r["counters"]["iter_yields"]), fmt(r["counters"]["cycles"]), "yes" if r["match"] else "NO",
              ref_cell(r.get("reference")), PUBLISHED_TEXT[r["id"]][1]] for r in pub]
        parts.append(table(t, ["variant", "published", "expected here", "flushes", "yields", "cycles", "match",
                               "ref (4 vCPUs x 16 MiB)", "note"]))
    for e in doc.get("errors", []):
        parts.append(f"\nERROR in step {e['step']} ({e['source']}): {e['type']}: {e['message']}")
    return "\n".join(parts)


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
        ax.text(r["limit_ratio"], i, f" {r['limit_ratio']:.1f}x  ({fmt(r['value'])} {unit_text(r['unit'])})",
                va="center", fontsize=7)
    ax = axes[0][1]
    fl = [r for r in rows if r["kind"] == "flush"]
    for kind, style in (("single", "o-"), ("global", "s-")):
        pts = sorted((r["extra"]["entries"], r["value"], r["extra"]["raw_c_call_ns"]) for r in fl
                     if r["extra"]["invept"] == kind)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"INVEPT {kind} (VM.invept)")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], style, alpha=0.5, label=f"INVEPT {kind} (raw cffi)")
    ref = sorted((r["extra"]["entries"], r["reference"]["value"]) for r in fl if r["extra"]["invept"] == "single"
                 and (r.get("reference") or {}).get("status") == "ok")
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
    for ax, key, name in ((axes[1][0], "remote_tlb_flush", "Remote TLB flushes (safe policies; 0 drawn at 0.5)"),
                          (axes[1][1], "cycles", "Modelled cycles (safe policies)")):
        w = 0.8 / max(len(pols), 1)
        for j, p in enumerate(pols):
            vals = [next((r["counters"][key] for r in cost if r["workload"] == wl and r["policy"] == p), 0)
                    for wl in wls]
            ax.bar([i + j * w for i in range(len(wls))], [max(v, 0.5) for v in vals], width=w, label=p)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(wls))])
        ax.set_xticklabels(wls, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(name)
        if pols:
            ax.legend(fontsize=7)
    pub = [r for r in rows if r["kind"] == "published"]
    if pub:
        txt = "; ".join(f"{r['id'].split('.')[1]}: {r['flushes']:,} flushes" for r in pub)
        fig.text(0.5, 0.005, f"Dirty-logging disable ({pub[0]['vcpus']} vCPUs): {txt}", ha="center", fontsize=9)
    fig.suptitle(f"tdpfast bench ({doc['profile']}) - {doc['machine'].get('cpu')} - git {doc['machine'].get('git')}")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
