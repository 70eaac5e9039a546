"""Profiles: the sizes, rounds and seed of a benchmark run (``full``, ``quick``, ``tiny``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

# Every random stream of the suite derives from this seed.
SEED = 20240805


@dataclass(frozen=True)
class Sizes:
    """Everything a profile decides. ``full`` is the real suite (minutes on 2 cores);
    ``quick`` keeps the 1 GiB / 64 GiB zaps and shrinks the rest (well under a minute);
    ``tiny`` is for the smoke test (seconds). Timed rows run at least 5 rounds in
    ``quick`` and ``full`` so that ``--compare`` sees the spread between rounds."""

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
    explorer_ops: int = 400_000  # explorer operations per timed round (per vendor)
    explorer_rounds: int = 3


# Working sets for the Skylake preset (L1 DTLB 16x4, STLB 128x12 = 1,536 4K entries):
# uniform accesses over W pages hit an LRU cache of C entries with probability ~C/W.
# hit100: 32 pages, two per L1 set, so every access hits the L1 DTLB.
ACCESS_WORKING_SETS = (("hit100", 32), ("hit99", 1552), ("hit90", 1707), ("hit50", 3072))

PROFILES: Dict[str, Sizes] = {
    "full": Sizes("full", zap_4k_pages=262144, zap_2m_pages=64 << 18, zap_rounds=21,
                  access_n=1_000_000, access_rounds=9, access_ws=ACCESS_WORKING_SETS,
                  flush_entries=(64, 256, 1024, 4096, 16384, 65536), flush_rounds=20, flush_calls=2000,
                  populate_pages=262144, populate_rounds=5, walk_pages=262144, walk_n=1_000_000,
                  walk_rounds=5, memory=(("1g", 262144), ("64g", 64 << 18)),
                  wl_pages=262144, wl_rounds=32, published_vcpus=64, published_pages_per_vcpu=1 << 20,
                  ref_scale=64, explorer_ops=2_000_000, explorer_rounds=5),
    "quick": Sizes("quick", zap_4k_pages=262144, zap_2m_pages=64 << 18, zap_rounds=7,
                   access_n=200_000, access_rounds=5, access_ws=ACCESS_WORKING_SETS,
                   flush_entries=(64, 256, 1024, 4096, 16384, 65536), flush_rounds=5, flush_calls=1000,
                   populate_pages=65536, populate_rounds=5, walk_pages=65536, walk_n=200_000,
                   walk_rounds=5, memory=(("1g", 262144), ("4g", 1 << 20)),
                   wl_pages=16384, wl_rounds=8, published_vcpus=64, published_pages_per_vcpu=16384,
                   ref_scale=64, explorer_ops=400_000, explorer_rounds=3),
    "tiny": Sizes("tiny", zap_4k_pages=4096, zap_2m_pages=64 << 9, zap_rounds=1,
                  access_n=4000, access_rounds=1, access_ws=ACCESS_WORKING_SETS,
                  flush_entries=(64, 256), flush_rounds=2, flush_calls=10,
                  populate_pages=2048, populate_rounds=1, walk_pages=2048, walk_n=4000,
                  walk_rounds=1, memory=(("8m", 2048), ("16m", 4096)),
                  wl_pages=2048, wl_rounds=2, published_vcpus=4, published_pages_per_vcpu=4096,
                  ref_scale=8, explorer_ops=8000, explorer_rounds=1),
}
