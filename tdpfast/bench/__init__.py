"""``tdpfast bench``: how fast the model is, against what the machine could do at best.

Every timed measurement runs next to its *limit* in the same process and run: a plain C loop
(``csrc/bench/limit_loops.c``, the extension ``tdpfast._bench_limits``) doing the least work the
operation needs (clear the entries, look up a bare set-associative array, chase the table
pointers) on the same data sizes. The report gives the ratio engine / limit and engine /
pure-Python reference model. The modelled-cost tables (flushes, IPIs, misses, cycles of
workloads under each policy) are deterministic counts, not timings. ::

    tdpfast bench [--quick] [--json] [--out DIR] [--compare OLD.json]

Results go to ``DIR/tdpfast-bench.json`` (schema: docs/json/bench.md) and
``DIR/tdpfast-bench.png``; progress goes to stderr. Sizes and seeds are fixed, so two runs
do the same work (timings still vary: ``--compare`` reports a change only beyond the
spread between rounds).

Modules: ``profiles`` (sizes), ``timing`` (rounds and their spread), ``limits`` (the C limit
extension), ``cases`` (engine and limit cases), ``measure`` and ``memory`` (timed steps),
``workloads`` (modelled costs), ``published`` (published flush counts), ``reference`` (the
pure-Python model as a subject), ``progress``, ``suite``, ``report`` (tables, chart),
``compare``, ``cli``. The same cases drive ``benches/bench_*.py`` (pytest-benchmark).
"""
from ..policy import Policy
from ..vm import VM
from .cases import (AccessCase, AccessLimitCase, FaultCase, FlushCase, MapRangeCase, PopulateLimitCase, WalkCase,
                    WalkLimitCase, ZapCase, ZapLimitCase, flush_tlb_config, gpas_of, no_cache_tlb)
from .cli import CHART_NAME, JSON_NAME, add_parser, main, run
from .compare import NotABenchResult, compare, compare_rows, validate
from .limits import have_limits
from .memory import rss_child, rss_flat_child
from .profiles import PROFILES, SEED, Sizes
from .progress import Progress
from .published import PUBLISHED_FLUSHES, published_run
from .reference import ReferenceModelError, reference_model
from .report import chart, render
from .suite import SCHEMA_VERSION, STEPS, expected_row_ids, run_suite
from .timing import spread, time_rounds
from .workloads import COST_KEYS, SAFE_POLICIES, WORKLOADS, cost_policies, run_workload

__all__ = [
    "Policy", "VM", "AccessCase", "AccessLimitCase", "FaultCase", "FlushCase", "MapRangeCase", "PopulateLimitCase",
    "WalkCase", "WalkLimitCase", "ZapCase", "ZapLimitCase", "flush_tlb_config", "gpas_of", "no_cache_tlb",
    "CHART_NAME", "JSON_NAME", "add_parser", "main", "run", "NotABenchResult", "compare", "compare_rows", "validate",
    "have_limits", "rss_child", "rss_flat_child", "PROFILES", "SEED", "Sizes", "Progress", "PUBLISHED_FLUSHES", "published_run",
    "ReferenceModelError", "reference_model", "chart", "render", "SCHEMA_VERSION", "STEPS", "expected_row_ids",
    "run_suite", "spread", "time_rounds", "COST_KEYS", "SAFE_POLICIES", "WORKLOADS", "cost_policies", "run_workload",
]
