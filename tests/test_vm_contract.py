"""The VM object's contract: lists are never truncated, arguments have strict types, a
frame pool too small to fault is refused, copies and pickles do not share the C model,
event recording is off by default (bounded memory), and every failure of a public call
is a TdpError that names the bad value."""
from __future__ import annotations

import copy
import pickle

import pytest

from tdpfast import (EventLogError, InvalidArgumentError, InvalidStateError, Policy, ReplayError, TdpError,
                     TLBConfig, VM)
from tdpfast._native import lib
from tdpfast.results import Event


def _busy_vm(**kw) -> VM:
    vm = VM(vcpus=2, pcpus=2, record=True, **kw)
    vm.add_memslot(0, 4096)
    vm.vcpu_run(0, 0)
    vm.vcpu_run(1, 1)
    for g in range(0, 4096, 37):
        vm.access(g % 2, g << 12, "rw"[g % 2])
    vm.access_batch(0, [g << 12 for g in range(100, 164)], "w")
    vm.host_unmap(100, 120)
    op = vm.start_op("kvm_zap_gfn_range", 0, 2048, yield_every=8)
    op.step()
    vm.vcpu_run(0, 1)
    op.finish()
    return vm


# ---------------------------------------------------------------- nothing truncated

def test_memslots_beyond_the_old_4096_limit_are_all_listed():
    vm = VM()
    for i in range(5000):
        vm.add_memslot(2 * i, 1)
    slots = vm.memslots
    assert len(slots) == 5000
    assert [s.base_gfn for s in slots] == [2 * i for i in range(5000)]
    assert repr(vm).endswith("memslots=5000)")


def test_stepped_operations_beyond_the_old_256_limit_are_all_listed():
    vm = VM()
    vm.add_memslot(0, 64)
    vm.mmu.alloc_root()
    ops = [vm.start_op("kvm_zap_gfn_range", 0, 64) for _ in range(2600)]   # 10x the old limit
    listed = vm.ops
    assert len(listed) == 2600
    assert [o.id for o in listed] == [o.id for o in ops]
    for o in ops[:100]:
        o.finish()
    assert len(vm.ops) == 2500


# ---------------------------------------------------------------- strict types

@pytest.mark.parametrize("flag", ["ad", "mbec", "flush_by_asid", "trace", "record"])
@pytest.mark.parametrize("value", ["no", 0, 1, None, "False"])
def test_constructor_flags_must_be_booleans(flag, value):
    with pytest.raises(InvalidArgumentError, match=f"{flag} must be True or False, got {value!r}"):
        VM(**{flag: value})


def test_a_string_does_not_turn_ad_on():
    with pytest.raises(InvalidArgumentError, match="ad must be True or False, got 'no'"):
        VM(ad="no")
    assert VM(ad=False).mmu is not None


@pytest.mark.parametrize("call", [
    lambda vm: vm.access(True, 0x1000),
    lambda vm: vm.access_batch(True, [0x1000]),
    lambda vm: vm.vcpu_run(False, 0),
    lambda vm: vm.vcpu_run(0, True),
    lambda vm: vm.mmu.map(True),
    lambda vm: vm.host_unmap(False, 3),
])
def test_booleans_are_not_ids_or_numbers(call):
    vm = VM(vcpus=2, pcpus=2)
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    vm.vcpu_run(1, 1)
    before = vm.digest()
    with pytest.raises(InvalidArgumentError, match="must be an integer, not a bool"):
        call(vm)
    assert vm.digest() == before


@pytest.mark.parametrize("call,flag", [
    (lambda vm: vm.add_memslot(600, 8, readonly="yes"), "readonly"),
    (lambda vm: vm.add_memslot(600, 8, dirty_log=1), "dirty_log"),
    (lambda vm: vm.set_dirty_logging(0, "off"), "enable"),
    (lambda vm: vm.write_protect_gfn(3, 0), "enable"),
    (lambda vm: vm.mmu.zap_gfn_range(0, 8, shared="no"), "shared"),
    (lambda vm: vm.mmu.alloc_root(guest_mode=1), "guest_mode"),
    (lambda vm: vm.access_batch(0, [0], per_access="yes"), "per_access"),
    (lambda vm: vm.replay_fast([], skip_failing="yes"), "skip_failing"),
])
def test_flags_of_calls_must_be_booleans(call, flag):
    vm = VM()
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    with pytest.raises(InvalidArgumentError, match=f"{flag} must be True or False"):
        call(vm)


@pytest.mark.parametrize("gpas,bad", [([2 ** 64], "gpas\\[0\\]"), ([0x1000, 0x2000, 2 ** 64], "gpas\\[2\\]"),
                                      ([0, -1], "gpas\\[1\\] must not be negative"),
                                      ([0, "x"], "gpas\\[1\\] must be an integer"),
                                      ([0, 1.5], "gpas\\[1\\] must be an integer")])
def test_access_batch_names_the_bad_element(gpas, bad):
    vm = VM()
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    with pytest.raises(InvalidArgumentError, match=bad):
        vm.access_batch(0, gpas)


def test_access_batch_names_the_bad_access_kind():
    vm = VM()
    vm.add_memslot(0, 512)
    vm.vcpu_run(0, 0)
    with pytest.raises(InvalidArgumentError, match=r"access\[1\] must be 'r', 'w', 'x' or 'xu'.*'q'"):
        vm.access_batch(0, [0, 0x1000], ["r", "q"])


# ---------------------------------------------------------------- frame_limit

def test_a_frame_limit_that_can_never_fault_is_refused_and_says_why():
    need = lib.tdp_fault_frames(4) + 1
    assert lib.tdp_fault_frames(4) == 5 and lib.tdp_fault_frames(5) == 6
    for limit in (1, 4, need - 1):
        with pytest.raises(InvalidArgumentError, match=f"frame_limit={limit} can never fault.*keeps 5 frames "
                                                       f"free.*frame_limit >= {need}"):
            VM(frame_limit=limit)
    with pytest.raises(InvalidArgumentError, match="levels=5 needs frame_limit >= 7"):
        VM(levels=5, maxphyaddr=52, frame_limit=6)
    vm = VM(frame_limit=need)                # the least that faults: one access maps a page
    vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    assert vm.access(0, 0x1000).faults == 1
    assert vm.frames()["limit"] == need


# ---------------------------------------------------------------- copies and pickles

@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_copies_replay_the_event_log_and_do_not_share_the_c_model(how):
    vm = _busy_vm(policy=Policy.kvm())
    vm.policy = Policy.named("no-flush-on-migrate")     # a change the event log does not hold
    vm.vcpu_run(1, 0)
    vm.reset_stats()                                    # neither does this
    vm.access(1, 0x5000)
    dup = {"pickle": lambda v: pickle.loads(pickle.dumps(v)), "deepcopy": copy.deepcopy,
           "copy": copy.copy}[how](vm)
    assert dup._h != vm._h and dup._lock is not vm._lock
    assert dup.digest() == vm.digest() and dup.stats == vm.stats and dup.events == vm.events
    assert dup.policy == vm.policy and dup.violations == vm.violations
    dup.host_unmap(0, 4096)                             # the copy moves on alone
    assert dup.digest() != vm.digest()
    assert vm.stats["accesses"] == 1


def test_a_vm_that_does_not_record_pickles_only_while_fresh():
    fresh = VM(arch="svm", vcpus=3, tlb=TLBConfig.preset("zen3"))
    again = pickle.loads(pickle.dumps(fresh))
    assert again.digest() == fresh.digest() and again.nvcpus == 3
    fresh.add_memslot(0, 8)
    for dup in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(InvalidStateError, match=r"record its event log.*VM\(\.\.\., record=True\)"):
            dup(fresh)


# ---------------------------------------------------------------- bounded memory by default

def test_recording_is_off_by_default_and_violations_keep_their_event_index():
    def run(**kw):
        vm = VM(policy=Policy.named("no-flush-on-migrate"), pcpus=2, **kw)
        vm.add_memslot(0, 512, max_level=1)
        vm.vcpu_run(0, 0)
        vm.access(0, 0x5000)
        vm.vcpu_run(0, 1)
        vm.host_unmap(5, 6)
        vm.vcpu_run(0, 0)
        vm.access_batch(0, [0x5000, 0x6000])
        return vm
    quiet, recorded = run(), run(record=True)
    assert quiet.events == [] and len(recorded.events) == 7
    assert quiet.violations == recorded.violations and quiet.violations[0].event == 6
    assert recorded.events[6].op == "access_batch"
    assert "record" in VM.__doc__ and "Off by default" in VM.__doc__


def test_the_vm_docstring_documents_every_constructor_parameter():
    import inspect
    params = [p for p in inspect.signature(VM.__init__).parameters if p != "self"]
    doc = VM.__doc__
    assert [p for p in params if f"``{p}``" not in doc] == []


# ---------------------------------------------------------------- every failure is a TdpError

@pytest.mark.parametrize("events", [None, 5, [1], [object()], ["access"], [None]])
@pytest.mark.parametrize("method", ["replay", "replay_fast"])
def test_replay_rejects_what_is_not_a_list_of_events(method, events):
    vm = VM(record=True)
    with pytest.raises(EventLogError):
        getattr(vm, method)(events)
    assert vm.events == []


@pytest.mark.parametrize("raw,msg", [
    ((2 ** 64, 0, 0, 0, 0), "five unsigned 64-bit words"),
    ((-1, 0, 0, 0, 0), "five unsigned 64-bit words"),
    ((1, 2), "five unsigned 64-bit words"),
    ((0, 1, 0, 7, 0), "words past its 3 argument"),
])
@pytest.mark.parametrize("method", ["replay", "replay_fast"])
def test_replay_rejects_malformed_events_naming_them(method, raw, msg):
    vm = VM(record=True)
    e = Event(0, "vcpu_exit" if len(raw) == 2 else "access", tuple(raw[:3]), None, raw)
    good = Event(0, "flush_remote_tlbs", (), None, (0,) * 5)
    with pytest.raises(EventLogError, match=r"events\[1\].*" + msg):
        getattr(vm, method)([good, e])
    assert vm.events == []              # checked before anything is applied


def test_unknown_event_names_and_inconsistent_args_are_event_log_errors():
    vm = VM(record=True)
    with pytest.raises(EventLogError, match=r"events\[0\]: unknown event 'explode'"):
        vm.replay([Event(0, "explode", (), None, (0,) * 5)])
    with pytest.raises(EventLogError, match="do not match its raw words"):
        vm.replay([Event(0, "vcpu_exit", (3,), None, (0,) * 5)])
    with pytest.raises(EventLogError, match="word 1 is 9"):
        vm.replay([Event(0, "invept", (0, 9, 0), None, (0, 9, 0, 0, 0))])


@pytest.mark.parametrize("method", ["replay", "replay_fast"])
def test_a_sequence_that_does_not_replay_is_an_error_not_a_different_run(method):
    src = _busy_vm()
    evs = [e for e in src.events if e.op != "access_batch"]
    target = src.fresh()
    getattr(target, method)(evs[:5])
    before = target.digest()
    with pytest.raises(ReplayError, match=r"events\[0\] add_memslot.*does not replay.*overlap") as ei:
        getattr(target, method)(evs)        # the memslot exists already
    assert isinstance(ei.value, TdpError) and ei.value.index == 0 and ei.value.applied == 0
    assert target.digest() == before
    # A later failure: the events before it stay applied.
    broken = evs[:8] + [Event(8, "delete_memslot", (77,), None, (77, 0, 0, 0, 0))] + evs[8:]
    third = src.fresh()
    with pytest.raises(ReplayError, match=r"events\[8\] delete_memslot.*memslot 77") as ei:
        getattr(third, method)(broken)
    assert ei.value.index == 8 and len(third.events) == 8


def test_the_shrinkers_lenient_replay_skips_failing_events():
    src = _busy_vm()
    evs = [e for e in src.events if e.op != "access_batch"]
    broken = evs[:8] + [Event(8, "delete_memslot", (77,), None, (77, 0, 0, 0, 0))] + evs[8:]
    vm = src.fresh()
    assert vm.replay_fast(broken, skip_failing=True, stop_at_violation=False) == len(evs)
    assert [(e.op, e.args) for e in vm.events] == [(e.op, e.args) for e in evs]


def test_access_batch_replay_that_stops_early_is_an_error():
    src = VM(record=True)
    src.add_memslot(0, 1 << 18, max_level=1)
    src.vcpu_run(0, 0)
    src.access_batch(0, [(i * 512) << 12 for i in range(10)])
    small = src.fresh(frame_limit=8)
    with pytest.raises(ReplayError, match=r"events\[2\] access_batch.*ran \d of its 10 accesses"):
        small.replay(src.events)


def test_fresh_names_an_unknown_parameter():
    vm = VM(vcpus=2)
    with pytest.raises(InvalidArgumentError, match="unknown VM parameter.*bogus"):
        vm.fresh(bogus=1)
    assert vm.fresh(seed=3).nvcpus == 2
