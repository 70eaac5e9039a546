"""cffi builder for tdpfast's C engine (out-of-line API mode).

``setup.py`` names this file in ``cffi_modules``; it compiles every ``csrc/*.c`` into the
extension ``tdpfast._tdpfast`` and declares to cffi exactly what ``csrc/tdpfast.h``
declares (preprocessor lines stripped). A missing header is an error, never skipped.

The benchmark suite's limit loops (``csrc/bench/``) are not part of the engine: they are
the separate extension ``tdpfast._bench_limits`` (``tdpfast/bench/_limits_build.py``).

Build in place (the engine, then the benchmark limit loops, so that a source checkout can
run the whole test suite)::

    python tdpfast/_build.py [-v]
"""
import glob
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")

# The engine's one public header: everything the bindings see.
PUBLIC_HEADERS = ("tdpfast.h",)


def read_header(path: str) -> str:
    """The text of a header cffi must parse, without preprocessor lines; a missing header
    raises (a build that silently declared nothing would fail much later, at import)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tdpfast build: header {path} is missing; the C sources are incomplete "
                                "(a checkout or sdist without csrc/?)")
    with open(path, encoding="utf-8") as f:
        return "\n".join(ln for ln in f.read().splitlines() if not ln.lstrip().startswith("#"))


def compile_args() -> list:
    # Hidden visibility: calls between the engine's files bind directly, not through
    # the PLT (cffi's module entry point is exported explicitly).
    args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
            "-fno-strict-aliasing", "-fvisibility=hidden"]
    extra = os.environ.get("TDPFAST_CFLAGS")
    if extra:
        args += extra.split()
    return args


def link_args() -> list:
    return os.environ.get("TDPFAST_LDFLAGS", "").split()


def _sources(absolute: bool = False) -> list:
    found = sorted(glob.glob(os.path.join(CSRC, "*.c")))
    if not found:
        raise FileNotFoundError(f"tdpfast build: no C sources in {CSRC}")
    return found if absolute else [os.path.relpath(p, ROOT) for p in found]


def make_builder(absolute: bool = False) -> FFI:
    """The engine's builder; ``absolute`` paths for a build outside the source tree."""
    ffi = FFI()
    ffi.cdef("\n".join(read_header(os.path.join(CSRC, h)) for h in PUBLIC_HEADERS))
    ffi.set_source(
        "tdpfast._tdpfast",
        "".join(f'#include "{h}"\n' for h in PUBLIC_HEADERS),
        sources=_sources(absolute),
        include_dirs=[CSRC if absolute else os.path.relpath(CSRC, ROOT)],
        extra_compile_args=compile_args(),
        extra_link_args=link_args(),
    )
    return ffi


def build_in_place(builder: FFI, verbose: bool = False) -> str:
    """Compile ``builder`` (made with absolute paths) in a scratch directory and copy the
    extension next to the package. The scratch directory keeps setuptools from reading this
    project's pyproject.toml, whose metadata an older setuptools cannot parse."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tdpfast-build-") as scratch:
        built = builder.compile(tmpdir=scratch, verbose=verbose)
        dest = os.path.join(HERE, os.path.basename(built))
        # A new file renamed over the old one: a process that has the old extension
        # loaded keeps its (unlinked) copy instead of running code changed under it.
        shutil.copy2(built, dest + ".tmp")
        os.replace(dest + ".tmp", dest)
    return dest


ffibuilder = make_builder()

if __name__ == "__main__":  # build in place: python tdpfast/_build.py
    verbose = "-v" in sys.argv
    build_in_place(make_builder(absolute=True), verbose)
    import importlib.util

    # by path: importing the package tdpfast.bench would need the extension just built
    spec = importlib.util.spec_from_file_location("_limits_build", os.path.join(HERE, "bench", "_limits_build.py"))
    limits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(limits)
    build_in_place(limits.make_builder(absolute=True), verbose)
