"""The benchmark limit loops (``csrc/bench/limit_loops.c``), a separate extension from the engine:
``tdpfast._bench_limits``, built by ``tdpfast/bench/_limits_build.py``."""
from __future__ import annotations

BUILD_HINT = ("the benchmark limit loops (tdpfast._bench_limits) are not built: pip install -e . "
              "(or python tdpfast/bench/_limits_build.py)")


def have_limits() -> bool:
    """True when ``tdpfast._bench_limits`` can be imported."""
    try:
        load()
    except ImportError:
        return False
    return True


def load():
    """``(ffi, lib)`` of the limit loops; ImportError with what to do when not built."""
    try:
        from .._bench_limits import ffi, lib
    except ImportError as e:
        raise ImportError(BUILD_HINT) from e
    return ffi, lib
