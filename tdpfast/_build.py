"""cffi builder for tdpfast's C core (out-of-line API mode).

``setup.py`` names this file in ``cffi_modules``; it compiles every ``csrc/*.c``
into the extension ``tdpfast._tdpfast`` and declares to cffi exactly what
``csrc/tdpfast.h`` declares (preprocessor lines stripped).
"""
import glob
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


# Headers the bindings see: the engine's one public header, and the benchmark suite's
# "physical limit" loops (bench_limits.c), which are not part of the engine.
PUBLIC_HEADERS = ("tdpfast.h", "bench_limits.h")


def _cdef_text() -> str:
    lines = []
    for name in PUBLIC_HEADERS:
        path = os.path.join(CSRC, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                lines += [ln for ln in f.read().splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def _compile_args() -> list:
    # Hidden visibility: calls between the engine's files bind directly, not through
    # the PLT (cffi's module entry point is exported explicitly).
    args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
            "-fno-strict-aliasing", "-fvisibility=hidden"]
    extra = os.environ.get("TDPFAST_CFLAGS")
    if extra:
        args += extra.split()
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "tdpfast._tdpfast",
    "".join(f'#include "{h}"\n' for h in PUBLIC_HEADERS if os.path.exists(os.path.join(CSRC, h))),
    sources=sorted(os.path.relpath(p, os.path.dirname(HERE)) for p in glob.glob(os.path.join(CSRC, "*.c"))),
    include_dirs=[os.path.relpath(CSRC, os.path.dirname(HERE))],
    extra_compile_args=_compile_args(),
    extra_link_args=os.environ.get("TDPFAST_LDFLAGS", "").split(),
)

if __name__ == "__main__":  # build in place: python tdpfast/_build.py
    os.chdir(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=".", verbose="-v" in sys.argv)
