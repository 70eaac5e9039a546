"""cffi builder for the benchmark suite's limit loops: ``csrc/bench/limit_loops.c`` becomes the
extension ``tdpfast._bench_limits``, separate from the engine (``tdpfast/_build.py``).

``setup.py`` names this file in ``cffi_modules`` next to the engine's builder. Build in
place (from anywhere)::

    python tdpfast/bench/_limits_build.py [-v]

This file imports nothing from tdpfast: cffi executes it on its own while building.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LIMITS_DIR = os.path.join(ROOT, "csrc", "bench")
HEADER = "limit_loops.h"   # not "limits.h": that would shadow <limits.h>
SOURCES = ("limit_loops.c",)


def _require(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tdpfast build: {path} is missing (the benchmark limit loops, csrc/bench/)")
    return path


def _cdef_text() -> str:
    with open(_require(os.path.join(LIMITS_DIR, HEADER)), encoding="utf-8") as f:
        return "\n".join(ln for ln in f.read().splitlines() if not ln.lstrip().startswith("#"))


def _compile_args() -> list:
    args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    return args + os.environ.get("TDPFAST_CFLAGS", "").split()


def make_builder(absolute: bool = False) -> FFI:
    """The limit loops' builder; ``absolute`` paths for a build outside the source tree."""
    rel = (lambda p: p) if absolute else (lambda p: os.path.relpath(p, ROOT))
    ffi = FFI()
    ffi.cdef(_cdef_text())
    ffi.set_source(
        "tdpfast._bench_limits",
        f'#include "{HEADER}"\n',
        sources=[rel(_require(os.path.join(LIMITS_DIR, s))) for s in SOURCES],
        include_dirs=[rel(LIMITS_DIR)],
        extra_compile_args=_compile_args(),
        extra_link_args=os.environ.get("TDPFAST_LDFLAGS", "").split(),
    )
    return ffi


ffibuilder = make_builder()


def build_in_place(verbose: bool = False) -> str:
    """Compile next to the sources: tdpfast/_bench_limits*.so. Returns its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_engine_build", os.path.join(os.path.dirname(HERE), "_build.py"))
    engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine)
    return engine.build_in_place(make_builder(absolute=True), verbose)


if __name__ == "__main__":
    build_in_place(verbose="-v" in sys.argv)
