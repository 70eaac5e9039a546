"""Zap versus flush in modelled costs: every workload under every policy (deterministic
counters in extra_info: flushes, IPIs, TLB misses, walk refs, SPTE writes, cycles,
violations), and the published dirty-logging-disable counts (131,072 and 76 remote TLB
flushes, D. Matlack, "KVM: x86/mmu: Batch TLB flushes when zapping collapsible TDP MMU
SPTEs", kvm@vger.kernel.org, 2024-08-05; see tdpfast/bench/published.py)."""
import pytest

from tdpfast import bench

POLICIES = bench.cost_policies()


@pytest.mark.benchmark(group="costs")
@pytest.mark.parametrize("workload", list(bench.WORKLOADS))
@pytest.mark.parametrize("name,policy", POLICIES, ids=[n for n, _ in POLICIES])
def test_workload(benchmark, sizes, workload, name, policy):
    counters = benchmark.pedantic(bench.run_workload, args=(workload, policy, sizes.wl_pages, sizes.wl_rounds),
                                  rounds=1)
    benchmark.extra_info.update(counters)
    benchmark.extra_info["safe"] = name in bench.SAFE_POLICIES


@pytest.mark.benchmark(group="published")
@pytest.mark.parametrize("mode", ["zap_collapsible", "recover"])
def test_dirty_log_disable(benchmark, sizes, mode):
    counters = benchmark.pedantic(bench.published_run, args=(sizes, mode), rounds=1)
    benchmark.extra_info.update(counters)
