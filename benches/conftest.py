"""pytest-benchmark suite of tdpfast: the cases of ``tdpfast bench`` (the package
tdpfast/bench/), each engine measurement next to its C limit in the same benchmark group.

Run (from the project root, after ``pip install -e .`` or ``python3 tdpfast/_build.py``,
which also builds the limit loops, tdpfast._bench_limits)::

    pytest benches/ -p no:cacheprovider -o python_files='bench_*.py'
    pytest benches/ -p no:cacheprovider --tdpfast-profile full       # the full sizes
    pytest benches/ -p no:cacheprovider --benchmark-disable --tdpfast-profile tiny   # smoke

Sizes come from ``tdpfast.bench.PROFILES`` (default "quick"; also TDPFAST_BENCH_PROFILE).
Files are named ``bench_*.py`` so the unit-test run (testpaths = tests) never picks them
up; this conftest collects them even without ``-o python_files=...``.
"""
import os

# Before numpy is imported anywhere: OpenBLAS worker threads spin and steal a core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import fnmatch  # noqa: E402

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--tdpfast-profile", choices=("tiny", "quick", "full"),
                     default=os.environ.get("TDPFAST_BENCH_PROFILE", "quick"),
                     help="sizes of the tdpfast benchmarks (tdpfast.bench.PROFILES; default quick)")


def pytest_collect_file(file_path, parent):
    """Collect benches/bench_*.py as test modules unless python_files already does."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None  # the python plugin collects it already (named on the command line, or matched)
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_generate_tests(metafunc):
    """``flush_entries``: the TLB sizes of the chosen profile (no skipped sizes)."""
    if "flush_entries" in metafunc.fixturenames:
        from tdpfast.bench import PROFILES

        metafunc.parametrize("flush_entries", PROFILES[metafunc.config.getoption("--tdpfast-profile")].flush_entries)


@pytest.fixture(scope="session")
def sizes(request):
    from tdpfast import bench

    if not bench.have_limits():
        pytest.fail(bench.limits.BUILD_HINT)
    return bench.PROFILES[request.config.getoption("--tdpfast-profile")]


@pytest.fixture(scope="session")
def reference():
    """The pure-Python reference model's module."""
    from tdpfast import bench

    return bench.reference_model()
