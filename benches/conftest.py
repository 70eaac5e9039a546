"""pytest-benchmark suite of tdpfast: the cases of ``tdpfast bench`` (tdpfast/bench.py),
each engine measurement next to its C limit in the same benchmark group.

Run (from the project root, after ``python3 tdpfast/_build.py``)::

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


@pytest.fixture(scope="session")
def sizes(request):
    from tdpfast import bench

    if not bench.have_limits():
        pytest.fail("the C limit loops are not compiled in: run python3 tdpfast/_build.py")
    return bench.PROFILES[request.config.getoption("--tdpfast-profile")]


@pytest.fixture(scope="session")
def reference():
    """The pure-Python reference model's module, or skip."""
    from tdpfast import bench

    model = bench.reference_model()
    if model is None:
        pytest.skip("tdpfast.reference.model does not exist yet")
    return model
