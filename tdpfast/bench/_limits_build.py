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


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "tdpfast._bench_limits",
    f'#include "{HEADER}"\n',
    sources=[os.path.relpath(_require(os.path.join(LIMITS_DIR, s)), ROOT) for s in SOURCES],
    include_dirs=[os.path.relpath(LIMITS_DIR, ROOT)],
    extra_compile_args=_compile_args(),
    extra_link_args=os.environ.get("TDPFAST_LDFLAGS", "").split(),
)


def build_in_place(verbose: bool = False) -> str:
    """Compile next to the sources: tdpfast/_bench_limits*.so. Returns its path."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        return ffibuilder.compile(tmpdir=".", verbose=verbose)
    finally:
        os.chdir(old)


if __name__ == "__main__":
    build_in_place(verbose="-v" in sys.argv)
