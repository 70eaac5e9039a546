"""The suite: the measurement steps in order, and ``run_suite`` which runs them into the JSON
document (schema: docs/json/bench.md). Rows are collected as each step yields them, so an
interrupted run (Ctrl-C) returns what was measured so far; a failing reference model ends
its step and is recorded in ``errors``; anything else propagates."""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import time
from typing import Callable, List, NamedTuple, Optional, Sequence

# numpy's OpenBLAS threads spin after numpy calls and steal one of two cores from the timed
# C loops; nothing here uses BLAS. Only effective before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .explorer import explorer_ids, measure_explorer  # noqa: E402
from .guest import guest_ids, measure_guest  # noqa: E402
from .limits import BUILD_HINT, have_limits  # noqa: E402
from .measure import (access_ids, flush_ids, measure_access, measure_flush, measure_populate,  # noqa: E402
                      measure_zap, populate_ids, zap_ids)
from .memory import measure_memory, memory_ids  # noqa: E402
from .profiles import PROFILES, SEED  # noqa: E402
from .progress import Progress  # noqa: E402
from .published import measure_published, published_ids  # noqa: E402
from .reference import ReferenceModelError  # noqa: E402
from .workloads import cost_ids, measure_costs  # noqa: E402

SCHEMA_VERSION = 1
TOOL = "tdpfast-bench"


class Step(NamedTuple):
    key: str
    what: str
    measure: Callable      # (Sizes, Progress) -> iterator of rows
    ids: Callable          # (Sizes) -> the row ids the step writes


STEPS = (
    Step("zap", "zap of 4K and 2M leaves, vs a C clearing loop", measure_zap, zap_ids),
    Step("access", "guest accesses at 100/~99/90/50% TLB hit rates, vs a bare set-associative lookup", measure_access,
         access_ids),
    Step("flush", "INVEPT single/global cost as the TLB grows", measure_flush, flush_ids),
    Step("populate", "faults, map_range and cold walks per second, vs C tree build / pointer chase", measure_populate,
         populate_ids),
    Step("memory", "RSS per mapped 4K page (child processes)", measure_memory, memory_ids),
    Step("costs", "zap vs flush: modelled costs of workloads x policies", measure_costs, cost_ids),
    Step("published", "published counts: dirty-logging disable, 131,072 vs 76 flushes", measure_published,
         published_ids),
    Step("explorer", "the fuzz explorer's operations per second, every invariant on", measure_explorer,
         explorer_ids),
    Step("guest", "guest paging: cold 2D walks (24 references) and combined-TLB hits per second", measure_guest,
         guest_ids),
)
STEP_KEYS = tuple(s.key for s in STEPS)


def expected_row_ids(profile: str, only: Optional[Sequence[str]] = None) -> List[str]:
    """Ids of the rows a complete run of ``profile`` (and of the steps ``only``) produces."""
    sz = PROFILES[profile]
    return [rid for s in STEPS if not only or s.key in only for rid in s.ids(sz)]


def run_suite(profile: str = "full", only: Optional[Sequence[str]] = None, progress: bool = True,
              stream=None) -> dict:
    """Run the steps of ``profile`` (all, or those named in ``only``); returns the document.
    ``status`` is "complete", "interrupted" (Ctrl-C: the rows so far) or "error" (see
    ``errors``)."""
    if not have_limits():
        raise ImportError(BUILD_HINT)
    sz = PROFILES[profile]
    steps = [s for s in STEPS if not only or s.key in only]
    expected = [rid for s in steps for rid in s.ids(sz)]
    machine = machine_info()
    machine["loadavg_start"] = machine.pop("loadavg")
    doc = {"schema_version": SCHEMA_VERSION, "tool": TOOL, "status": "complete", "profile": profile,
           "seed": SEED, "sizes": dataclasses.asdict(sz), "steps": [s.key for s in steps],
           "expected_rows": len(expected), "machine": machine, "elapsed_s": 0.0, "errors": [], "chart": None,
           "comparison": None, "rows": []}
    rows = doc["rows"]
    pr = Progress(len(expected), len(steps), stream=stream, enabled=progress).start()
    t0 = time.perf_counter()
    try:
        for s in steps:
            pr.step(s.key, s.what)
            try:
                for row in s.measure(sz, pr):
                    rows.append(row)
            except ReferenceModelError as e:
                doc["errors"].append(dict(e.as_json(), traceback=e.traceback))
            pr.step_done()
    except KeyboardInterrupt:
        doc["status"] = "interrupted"
    finally:
        pr.finish()
    if doc["errors"] and doc["status"] == "complete":
        doc["status"] = "error"
    doc["elapsed_s"] = time.perf_counter() - t0
    doc["machine"]["loadavg_end"] = machine_info()["loadavg"]
    return doc


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
            "cpus": os.cpu_count(), "loadavg": None, "git": None}
    try:
        info["loadavg"] = list(os.getloadavg())   # other work on the machine skews the timings
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        info["git"] = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return info
