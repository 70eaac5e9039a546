"""The C engine next to the pure-Python reference model (tdpfast.reference.model) on the
same small cases."""
import pytest

from tdpfast import bench


def _small(sizes, n):
    return max(n // sizes.ref_scale, 512)


@pytest.mark.benchmark(group="ref-zap-4k")
@pytest.mark.parametrize("impl", ["c", "reference"])
def test_zap(benchmark, sizes, reference, impl):
    case = bench.ZapCase(_small(sizes, sizes.zap_4k_pages), 1, vm_cls=bench.VM if impl == "c" else reference.VM)
    benchmark.pedantic(case.run, setup=case.setup, rounds=1)


@pytest.mark.benchmark(group="ref-access-hit90")
@pytest.mark.parametrize("impl", ["c", "reference"])
def test_access(benchmark, sizes, reference, impl):
    ws = dict(sizes.access_ws)["hit90"]
    case = bench.AccessCase(ws, _small(sizes, sizes.access_n), vm_cls=bench.VM if impl == "c" else reference.VM)
    benchmark.pedantic(case.run, rounds=1)


@pytest.mark.benchmark(group="ref-faults")
@pytest.mark.parametrize("impl", ["c", "reference"])
def test_faults(benchmark, sizes, reference, impl):
    case = bench.FaultCase(_small(sizes, sizes.populate_pages), vm_cls=bench.VM if impl == "c" else reference.VM)
    benchmark.pedantic(case.run, setup=case.setup, rounds=1)
