"""Timing: run a case's ``setup()`` untimed and ``run()`` timed for a number of rounds, and
summarise the rounds (min, quartiles, median, max) so that a comparison can tell a change
from the noise between rounds."""
from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def time_rounds(run: Callable, setup: Optional[Callable] = None, rounds: int = 3) -> Tuple[List[int], object]:
    """Run ``setup()`` (untimed) then ``run(state)`` (timed) ``rounds`` times; ns per round
    and the last round's result. The garbage collector is off while a round is timed."""
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


def _quantile(s: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted, non-empty sequence."""
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(samples: Sequence[float]) -> Dict[str, float]:
    """``{"rounds", "min", "q1", "median", "q3", "max"}`` of per-round values."""
    s = sorted(samples)
    if not s:
        raise ValueError("spread of no samples")
    return {"rounds": len(s), "min": s[0], "q1": _quantile(s, 0.25), "median": _quantile(s, 0.5),
            "q3": _quantile(s, 0.75), "max": s[-1]}


def per_unit(times_ns: Sequence[int], unit: str, count: float) -> List[float]:
    """Per-round times in a row's unit: ``ns_per_*`` divides ns by ``count``; ``m_*_per_s``
    is ``count`` per round in millions per second."""
    if unit.startswith("ns_per_"):
        return [t / count for t in times_ns]
    if unit.startswith("m_") and unit.endswith("_per_s"):
        return [count / (t / 1e9) / 1e6 for t in times_ns]
    raise ValueError(f"no per-round conversion for unit {unit!r}")
