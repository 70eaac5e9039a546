"""The public API called with random, mostly invalid arguments: never a crash, always a
typed tdpfast exception, and a rejected call leaves the model exactly as it was."""
import inspect

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdpfast
from tdpfast import TLBConfig, VM

JUNK = st.one_of(
    st.integers(-2**70, 2**70),
    st.integers(-3, 4100),
    st.sampled_from([0, 1, 2, 3, 5, 511, 512, 2**18, 2**34, 2**46, 2**63, 2**64 - 1]),
    st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4),
    st.sampled_from(["r", "w", "x", "xu", "rw", "single", "global", "all", "zap_gfn_range", "host_unmap"]),
    st.lists(st.integers(-5, 2**47), max_size=4), st.binary(max_size=16),
)

# Calls that may stop half-way by design (documented in csrc/tdpfast.h).
PARTIAL = {"access_batch", "split_huge_pages", "start_op"}


def api(vm):
    calls = {}
    for owner in (vm, vm.mmu):
        for name, fn in inspect.getmembers(owner, predicate=inspect.ismethod):
            if name.startswith("_") or name in ("fresh", "replay", "replay_fast", "trace", "event_log",
                                                 "digest", "reset_stats"):
                continue
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            calls[f"{'mmu.' if owner is vm.mmu else ''}{name}"] = (fn, len(params))
    return calls


def state(vm):
    return vm.digest(), tuple(sorted(vm.stats.items())), len(vm.events), len(vm.violations)


@given(st.data())
@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_random_calls_raise_typed_errors_and_change_nothing_when_rejected(data):
    vm = VM(vcpus=2, pcpus=2, tlb=TLBConfig.adversarial(), frame_limit=64, record=True)
    vm.add_memslot(0, 1024)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x1000, "w")
    calls = api(vm)
    names = sorted(calls)
    for _ in range(data.draw(st.integers(1, 12))):
        name = data.draw(st.sampled_from(names))
        fn, nargs = calls[name]
        args = [data.draw(JUNK) for _ in range(nargs)]
        before = state(vm)
        try:
            fn(*args)
        except tdpfast.TdpError:
            if name.split(".")[-1] not in PARTIAL:
                assert state(vm) == before, (name, args)
        except Exception as e:  # noqa: BLE001 - anything else is the bug this test hunts
            raise AssertionError(f"{name}{tuple(args)!r} raised {type(e).__name__}: {e}") from e
    vm.digest()  # the model is still consistent enough to hash every structure


IMAGES = st.one_of(
    st.dictionaries(st.one_of(st.integers(-1, 2**52).map(lambda a: a & ~0xFFF), st.integers(-5, 2**64 + 5),
                              st.text(max_size=2)),
                    st.one_of(st.binary(min_size=4096, max_size=4096), st.binary(max_size=8), st.none(),
                              st.integers()), max_size=4),
    st.none(), st.lists(st.integers(), max_size=3), st.text(max_size=3),
)


@given(IMAGES, JUNK, JUNK, JUNK, st.sampled_from(["ept", "npt", "x", 3]), JUNK, JUNK)
@settings(max_examples=500, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_hw_walk_and_decode_on_junk_raise_typed_errors(memory, rp, gpa, access, fmt, levels, maxphyaddr):
    for fn in (lambda: tdpfast.hw.walk(memory, rp, gpa, access, fmt=fmt, levels=levels, maxphyaddr=maxphyaddr),
               lambda: tdpfast.hw.walk(memory, rp, gpa, fmt=fmt),
               lambda: tdpfast.spte.decode(rp, fmt)):
        try:
            fn()
        except tdpfast.TdpError:
            pass
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"raised {type(e).__name__}: {e}") from e


@given(st.sampled_from(sorted(tdpfast.Policy.__dataclass_fields__)), JUNK)
@settings(max_examples=300, derandomize=True, deadline=None, database=None)
def test_policy_switches_reject_junk_with_typed_errors(switch, value):
    try:
        pol = tdpfast.Policy.kvm().replace(**{switch: value})
    except tdpfast.TdpError:
        return
    VM(policy=pol)  # whatever replace() accepted, the engine accepts
