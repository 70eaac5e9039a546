"""Item 9: every bad input. For each one: the exception type (and the builtin it also
is), a message that names the bad argument or value, and a model left exactly as it
was (vm.digest(), vm.stats, the frame pool and the event log are unchanged).

csrc/tdpfast.h: "A failed call leaves the model exactly as it was."
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV

from tdpfast import (FramePoolExhausted, InvalidArgumentError, InvalidStateError, MalformedImageError,
                     MissingPageError, NotFoundError, Policy, TdpError, VM, hw)

GFN_LIMIT = 1 << (46 - 12)      # MAXPHYADDR 46: gfns below 0x400000000


def snapshot(vm):
    return vm.digest(), vm.stats, vm.frames(), len(vm.events), len(vm.violations)


def fails(vm, exc, needles, fn, *args, **kwargs):
    """Call fn, expect `exc`, check the message names every needle, and that the
    model did not change."""
    before = snapshot(vm)
    try:
        fn(*args, **kwargs)
    except exc as caught:
        e = caught
    else:
        pytest.fail(f"{fn.__name__ if hasattr(fn, '__name__') else fn} did not raise {exc.__name__}")
    # Drop the traceback: kept alive in a reference cycle, a failed access_batch's frame
    # crashes the garbage collector (see test_failed_access_batch_survives_garbage_collection).
    e.__traceback__ = None
    assert isinstance(e, TdpError)
    msg = str(e)
    for n in needles:
        assert n.lower() in msg.lower(), (n, msg)
    assert snapshot(vm) == before, msg
    return e


@pytest.fixture
def vm():
    v = VM(vcpus=2, pcpus=2)
    v.add_memslot(0, 4096)
    v.mmu.alloc_root()
    v.mmu.map_range(0, 1024, 1)
    v.mmu.map(1024, 2)
    v.vcpu_run(0, 0)
    v.access(0, 0x5000, "w")
    return v


def test_exception_hierarchy():
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, TdpError)
    assert issubclass(InvalidStateError, ValueError) and issubclass(InvalidStateError, TdpError)
    assert issubclass(NotFoundError, KeyError) and issubclass(NotFoundError, TdpError)
    assert issubclass(FramePoolExhausted, MemoryError) and issubclass(FramePoolExhausted, TdpError)
    assert issubclass(MalformedImageError, InvalidArgumentError)
    assert issubclass(MissingPageError, NotFoundError)
    # KeyError normally shows repr(); the message must read as plain text.
    assert str(NotFoundError("root 7 does not exist")) == "root 7 does not exist"


# --------------------------------------------------------------------------- gfn beyond the GPA width

@pytest.mark.parametrize("call", [
    lambda vm: vm.mmu.map(GFN_LIMIT, 1),
    lambda vm: vm.mmu.map_range(GFN_LIMIT - 8, GFN_LIMIT + 8, 1),
    lambda vm: vm.mmu.zap_gfn_range(GFN_LIMIT, GFN_LIMIT + 1),
    lambda vm: vm.mmu.write_protect_range(GFN_LIMIT, GFN_LIMIT + 1),
    lambda vm: vm.mmu.spte(GFN_LIMIT, 1),
    lambda vm: vm.host_unmap(GFN_LIMIT, GFN_LIMIT + 1),
    lambda vm: vm.host_migrate(GFN_LIMIT),
    lambda vm: vm.write_protect_gfn(GFN_LIMIT),
    lambda vm: vm.add_memslot(GFN_LIMIT, 1),
])
def test_gfn_beyond_the_gpa_width(vm, call):
    e = fails(vm, InvalidArgumentError, ["0x400000000", "MAXPHYADDR"], call, vm)
    assert isinstance(e, ValueError)


def test_range_end_beyond_the_gpa_width_names_the_end(vm):
    fails(vm, InvalidArgumentError, ["end_gfn", "0x400000008"], vm.mmu.map_range, GFN_LIMIT - 8, GFN_LIMIT + 8, 1)


@pytest.mark.parametrize("call", [
    lambda vm: vm.access(0, 1 << 46, "r"),
    lambda vm: vm.mmu.walk(1 << 46),
])
def test_gpa_beyond_the_gpa_width(vm, call):
    fails(vm, InvalidArgumentError, ["0x400000000000", "MAXPHYADDR"], call, vm)


def test_batch_gpa_beyond_the_gpa_width_names_its_position(vm):
    fails(vm, InvalidArgumentError, ["gpas[2]", "0x400000000000"], vm.access_batch, 0, [0, 0x1000, 1 << 46, 0x2000])


def test_five_level_vm_accepts_what_four_levels_reject():
    v = VM(levels=5, maxphyaddr=52)
    v.add_memslot((1 << 34) + 0x100, 16)
    v.mmu.alloc_root()
    v.mmu.map((1 << 34) + 0x100, 1)
    assert v.mmu.walk(((1 << 34) + 0x100) << 12).ok
    fails(v, InvalidArgumentError, ["0x10000000000"], v.mmu.map, 1 << 40, 1)


def test_negative_and_non_integer_arguments(vm):
    fails(vm, InvalidArgumentError, ["gfn", "-1"], vm.mmu.map, -1, 1)
    fails(vm, InvalidArgumentError, ["gfn", "'5'"], vm.mmu.map, "5", 1)
    fails(vm, InvalidArgumentError, ["start_gfn", "1.5"], vm.mmu.zap_gfn_range, 1.5, 8)


def test_empty_or_reversed_range(vm):
    fails(vm, InvalidArgumentError, ["end_gfn 0x8", "start_gfn 0x10"], vm.mmu.zap_gfn_range, 16, 8)
    fails(vm, InvalidArgumentError, ["end_gfn 0x10"], vm.host_unmap, 16, 16)
    fails(vm, InvalidArgumentError, ["npages"], vm.add_memslot, 8192, 0)


# --------------------------------------------------------------------------- misaligned huge mappings

def test_misaligned_huge_mappings(vm):
    fails(vm, InvalidArgumentError, ["gfn 0x1 ", "level-2", "2M"], vm.mmu.map, 1, 2)
    fails(vm, InvalidArgumentError, ["gfn 0x200 ", "level-3", "1G"], vm.mmu.map, 512, 3)
    fails(vm, InvalidArgumentError, ["end_gfn 0x801", "level-2"], vm.mmu.map_range, 1536, 2049, 2)


def test_huge_mapping_a_memslot_does_not_allow(vm):
    small = vm.add_memslot(8192, 512, max_level=1)
    assert small.max_level == 1
    fails(vm, InvalidArgumentError, ["level 2", "0x2000", "at most level 1"], vm.mmu.map, 8192, 2)
    # a 1G page at gfn 0 would cover gfns outside the 4096-page memslot
    fails(vm, InvalidArgumentError, ["level 3", "gfn 0x0"], vm.mmu.map, 0, 3)


# --------------------------------------------------------------------------- roots

def test_unknown_root(vm):
    for call in (lambda: vm.mmu.map(0, 1, root=99), lambda: vm.mmu.put_root(99), lambda: vm.mmu.zap_root(99),
                 lambda: vm.mmu.root_pointer(99), lambda: vm.mmu.tables(root=99),
                 lambda: vm.mmu.walk(0, root=99), lambda: vm.mmu.spte(0, 1, root=99)):
        e = fails(vm, NotFoundError, ["root 99"], call)
        assert isinstance(e, KeyError)
    fails(vm, NotFoundError, ["root 0"], vm.mmu.put_root, 0)


def test_root_of_another_vm(vm):
    other = VM()
    r = other.mmu.alloc_root()
    fails(vm, InvalidArgumentError, ["another VM"], vm.mmu.map, 0, 1, root=r)


def _freed_root(vm):
    root = vm.mmu.alloc_root(guest_mode=True)          # the caller's reference + the MMU's own
    vm.mmu.invalidate_all_roots()
    vm.mmu.zap_invalidated_roots()                     # drops the MMU's reference
    vm.mmu.put_root(root)                              # drops the caller's: freed
    assert not root.alive
    return root


def test_already_freed_root(vm):
    root = _freed_root(vm)
    name = f"root {root.id}"
    fails(vm, NotFoundError, [name], vm.mmu.put_root, root)
    fails(vm, NotFoundError, [name], vm.mmu.map, 0, 1, root=root)
    fails(vm, NotFoundError, [name], vm.mmu.zap_root, root)
    fails(vm, NotFoundError, [name], vm.mmu.walk, 0, "r", root)
    with pytest.raises(NotFoundError, match=name):
        root.hpa


def test_double_put_of_a_valid_root(vm):
    root = vm.mmu.alloc_root(as_id=1)
    assert root.refcount == 2
    vm.mmu.put_root(root)                              # the caller's reference
    # The second put would take the TDP MMU's own reference of a valid root (KVM_BUG_ON).
    e = fails(vm, InvalidStateError, [f"root {root.id}"], vm.mmu.put_root, root)
    assert isinstance(e, ValueError)
    assert root.alive and root.refcount == 1


def test_double_put_in_the_v5_17_lifetime():
    v = VM(policy=Policy.named("kvm-v5.17"))
    root = v.mmu.alloc_root()
    v.mmu.put_root(root)
    fails(v, NotFoundError, [f"root {root.id}"], v.mmu.put_root, root)


def test_put_of_a_root_a_vcpu_still_holds():
    v = VM()
    v.add_memslot(0, 4096)
    v.vcpu_run(0, 0)
    root = v.mmu.newest_root()
    assert v.vcpu_info(0)["root"] == root.id and root.refcount == 2   # the vCPU's and the MMU's
    v.vcpu_exit(0)
    v.mmu.invalidate_all_roots()
    v.mmu.zap_invalidated_roots()
    assert root.refcount == 1                          # vCPU 0's reference only
    fails(v, InvalidStateError, [f"root {root.id}"], v.mmu.put_root, root)
    assert root.alive


def test_a_put_of_a_reference_nobody_took_cannot_crash_the_engine():
    """vCPU 0 loaded the root (refcount 2: the vCPU's and the TDP MMU's). An extra
    put_root() drops a reference the caller never took; after invalidation the root
    would be freed under the running vCPU. The engine must refuse the put (it is a
    double put) and must never crash. Run in a subprocess: a crash is a segfault."""
    script = textwrap.dedent("""
        import json
        from tdpfast import VM, TdpError
        out = {}
        vm = VM()
        vm.add_memslot(0, 4096, max_level=1)
        vm.vcpu_run(0, 0)
        vm.access(0, 0x1000, "r")
        root = vm.mmu.newest_root()
        out["refcount"] = root.refcount
        try:
            vm.mmu.put_root(root)
            out["put"] = "ok"
        except TdpError as e:
            out["put"] = type(e).__name__
        vm.mmu.invalidate_all_roots()
        vm.mmu.zap_invalidated_roots()
        out["access"] = vm.access(0, 0x2000, "r").outcome
        print(json.dumps(out), flush=True)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"engine crashed (rc={p.returncode}): {p.stderr[-500:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["refcount"] == 2
    assert out["put"] == "InvalidStateError"
    # the invalid root is still loaded (no FREE_OBSOLETE_ROOTS request was made):
    # the fault retries, which the model reports as a livelock rather than crashing
    assert out["access"] in ("ok", "livelock")


# --------------------------------------------------------------------------- bad levels

def test_bad_levels(vm):
    fails(vm, InvalidArgumentError, ["level", "4"], vm.mmu.map, 0, 4)
    fails(vm, InvalidArgumentError, ["level", "0"], vm.mmu.map, 0, 0)
    fails(vm, InvalidArgumentError, ["level", "0x64"], vm.mmu.map, 0, 100)
    fails(vm, InvalidArgumentError, ["level", "got 5"], vm.mmu.map_range, 0, 512, 5)
    fails(vm, InvalidArgumentError, ["level", "got 6"], vm.mmu.spte, 0, 6)
    fails(vm, InvalidArgumentError, ["level", "got 4"], vm.mmu.zap_sp, 0, 4)
    fails(vm, InvalidArgumentError, ["target_level", "got 3"], vm.mmu.split_huge_pages, 0, 512, 3)
    fails(vm, InvalidArgumentError, ["max_level", "got 4"], vm.add_memslot, 8192, 512, max_level=4)


def test_zap_sp_of_a_table_that_is_not_there(vm):
    fails(vm, NotFoundError, ["level-1", "0x400"], vm.mmu.zap_sp, 1024, 1)   # gfn 1024 is a 2M leaf


def test_spte_below_a_huge_leaf(vm):
    fails(vm, NotFoundError, ["level-1", "0x401"], vm.mmu.spte, 1025, 1)


def test_bad_vm_configuration():
    with pytest.raises(InvalidArgumentError, match="levels must be 4 or 5, got 3"):
        VM(levels=3)
    with pytest.raises(InvalidArgumentError, match="maxphyaddr=52 needs levels=5"):
        VM(levels=4, maxphyaddr=52)
    with pytest.raises(InvalidArgumentError, match="arch must be 'vmx' or 'svm', got 'arm'"):
        VM(arch="arm")
    with pytest.raises(InvalidArgumentError, match="vcpus"):
        VM(vcpus=0)
    with pytest.raises(InvalidArgumentError, match="unknown policy switch 'flush_everything'"):
        Policy.kvm().replace(flush_everything=True)
    with pytest.raises(NotFoundError, match="no policy named 'B99'"):
        Policy.named("B99")


# --------------------------------------------------------------------------- bad access kinds

def test_bad_access_kinds(vm):
    fails(vm, InvalidArgumentError, ["access", "'q'"], vm.access, 0, 0x1000, "q")
    fails(vm, InvalidArgumentError, ["access", "'rw'"], vm.mmu.walk, 0x1000, "rw")
    fails(vm, InvalidArgumentError, ["access", "7"], vm.access, 0, 0x1000, 7)
    fails(vm, InvalidArgumentError, ["access", "'z'"], vm.access_batch, 0, [0x1000, 0x2000], ["r", "z"])
    fails(vm, InvalidArgumentError, ["accesses[1]", "9"], vm.access_batch, 0, [0x1000, 0x2000], bytes([0, 9]))
    fails(vm, InvalidArgumentError, ["1 kinds for 2 gpas"], vm.access_batch, 0, [0x1000, 0x2000], ["r"])
    with pytest.raises(InvalidArgumentError, match="'write'"):
        hw.walk(vm.mmu.tables(), vm.mmu.root_pointer(), 0x1000, "write")


def test_bad_vcpu_pcpu_request_and_vendor_operations(vm):
    fails(vm, InvalidArgumentError, ["vcpu", "got 5"], vm.vcpu_run, 5, 0)
    fails(vm, InvalidArgumentError, ["pcpu", "got 2"], vm.vcpu_run, 0, 2)
    fails(vm, InvalidArgumentError, ["unknown request 'flush_it'"], vm.vcpu_request, 0, "flush_it")
    fails(vm, InvalidStateError, ["vcpu 1", "not in guest mode"], vm.access, 1, 0x1000, "r")
    fails(vm, InvalidStateError, ["svm"], vm.set_tlb_control, 0, 3)
    fails(vm, InvalidArgumentError, ["INVEPT kind", "'local'"], vm.invept, 0, "local", 0)
    fails(vm, InvalidArgumentError, ["eptp"], vm.invept, 0, "single")
    bad_eptp = vm.mmu.root_pointer() & ~0x38 | (4 << 3)   # a 5-level walk length on a 4-level VM
    fails(vm, InvalidArgumentError, ["eptp", "page-walk length 5"], vm.invept, 0, "single", bad_eptp)
    fails(vm, InvalidArgumentError, ["INVVPID kind"], vm.invvpid, 0, "everything", 1)
    fails(vm, InvalidArgumentError, ["vpid 0"], vm.invvpid, 0, "single", 0)
    fails(vm, InvalidArgumentError, ["not canonical", "0x800000000000"], vm.invvpid, 0, "individual", 1,
          0x0000800000000000)
    fails(vm, NotFoundError, ["memslot 7"], vm.delete_memslot, 7)
    fails(vm, NotFoundError, ["memslot 7"], vm.set_dirty_logging, 7)
    fails(vm, InvalidStateError, ["memslot 0", "dirty logging"], vm.get_dirty_log, 0)
    fails(vm, InvalidArgumentError, ["overlap memslot 0"], vm.add_memslot, 100, 10)
    fails(vm, InvalidArgumentError, ["gfn 0x5000", "not in any memslot"], vm.write_protect_gfn, 0x5000)


def test_svm_rejects_vmx_instructions_and_reserved_tlb_control():
    v = VM(arch="svm")
    v.add_memslot(0, 512)
    v.vcpu_run(0, 0)
    fails(v, InvalidStateError, ["INVEPT", "vmx"], v.invept, 0, "global")
    fails(v, InvalidStateError, ["INVVPID"], v.invvpid, 0, "all", 0)
    fails(v, InvalidArgumentError, ["TLB_CONTROL", "got 2"], v.set_tlb_control, 0, 2)


# --------------------------------------------------------------------------- malformed memory images

def test_malformed_memory_images(vm):
    tables, pointer = vm.mmu.tables(), vm.mmu.root_pointer()
    page = next(iter(tables.values()))
    before = snapshot(vm)
    with pytest.raises(MalformedImageError, match="4097"):
        hw.walk({0x1001: page}, pointer, 0)
    with pytest.raises(MalformedImageError, match="must be 4096 bytes, got 12"):
        hw.walk({0x1000: b"short a page"}, pointer, 0)
    with pytest.raises(MalformedImageError, match="list"):
        hw.walk([page], pointer, 0)
    with pytest.raises(MalformedImageError, match="-4096"):
        hw.walk({-4096: page}, pointer, 0)
    assert issubclass(MalformedImageError, ValueError)
    assert snapshot(vm) == before


def test_memory_image_missing_a_table(vm):
    tables, pointer = vm.mmu.tables(), vm.mmu.root_pointer()
    root_hpa = vm.mmu.newest_root().hpa
    only_root = {root_hpa: tables[root_hpa]}
    with pytest.raises(MissingPageError) as info:
        hw.walk(only_root, pointer, 0x5000)
    assert isinstance(info.value, KeyError)
    assert "no page" in str(info.value) and "1 references" in str(info.value)
    # The same image is enough for an address whose walk ends at the root.
    assert hw.walk(only_root, pointer, 1 << 40).fault == "violation"


def test_bad_root_pointers_and_walk_parameters(vm):
    tables, pointer = vm.mmu.tables(), vm.mmu.root_pointer()
    with pytest.raises(InvalidArgumentError, match="memory type 3"):
        hw.walk(tables, pointer & ~7 | 3, 0)
    with pytest.raises(InvalidArgumentError, match="page-walk length 5 does not match levels=4"):
        hw.walk(tables, pointer & ~0x38 | 0x20, 0)
    with pytest.raises(InvalidArgumentError, match="reserved bits 11:8"):
        hw.walk(tables, pointer | 0x100, 0)
    with pytest.raises(InvalidArgumentError, match="MAXPHYADDR=46"):
        hw.walk(tables, pointer | (1 << 50), 0)
    with pytest.raises(InvalidArgumentError, match="fmt must be 'ept' or 'npt', got 'x86'"):
        hw.walk(tables, pointer, 0, fmt="x86")
    with pytest.raises(InvalidArgumentError, match="levels must be 4 or 5, got 6"):
        hw.walk(tables, pointer, 0, levels=6)
    with pytest.raises(InvalidArgumentError, match="gpa"):
        hw.walk(tables, pointer, -1)


# --------------------------------------------------------------------------- an exhausted frame pool

def test_frame_pool_exhausted_on_map_range():
    v = VM(frame_limit=8)
    v.add_memslot(0, 1 << 18, max_level=1)
    v.mmu.alloc_root()
    e = fails(v, FramePoolExhausted, ["frame pool exhausted", "frame_limit=8"], v.mmu.map_range, 0, 4096, 1)
    assert isinstance(e, MemoryError)
    v.mmu.map_range(0, 512 * 5, 1)                          # PDPT + PD + 5 PT: exactly 8 frames
    assert v.frames()["in_use"] == 8
    fails(v, FramePoolExhausted, ["frame pool exhausted", "0 available"], v.mmu.map, 512 * 5, 1)
    v.mmu.map(512 * 4 + 7, 1)                               # no new table needed: still fine
    assert v.stats["pages_4k"] == 512 * 5


def test_frame_pool_exhausted_on_alloc_root_and_vcpu_run():
    v = VM(frame_limit=6)                                   # the least a VM that can fault takes
    v.add_memslot(0, 512 * 3, max_level=1)
    root = v.mmu.alloc_root(guest_mode=True)                # 1 frame
    v.mmu.map_range(0, 512 * 3, 1, root=root)               # + PDPT + PD + 3 PT: all 6 in use
    fails(v, FramePoolExhausted, ["frame_limit=6"], v.mmu.alloc_root)
    fails(v, FramePoolExhausted, ["frame pool exhausted", "vcpu 0"], v.vcpu_run, 0, 0)


def test_frame_pool_exhausted_on_access_and_migrate():
    v = VM(frame_limit=9)
    v.add_memslot(0, 1 << 18, max_level=1)
    v.vcpu_run(0, 0)                                        # the root: 1 frame
    v.access(0, 0x1000, "r")                                # + PDPT + PD + PT = 4 in use, 5 available
    v.access(0, 512 << 12, "r")                             # + 1 PT: 4 available
    # a fault may need levels + 1 frames (tables and a fresh host page)
    fails(v, FramePoolExhausted, ["frame pool exhausted", "5 frames", "4 available"], v.access, 0, 1024 << 12, "r")
    v.mmu.map_range(1024, 3072, 1)                          # + 4 PT: 0 available
    assert v.frames()["in_use"] == 9
    fails(v, FramePoolExhausted, ["frame pool exhausted", "0x2"], v.host_migrate, 2)
    fails(v, FramePoolExhausted, ["frame pool exhausted"], v.access, 0, 0x3000, "r")


def test_frame_pool_exhausted_in_the_middle_of_an_access_batch():
    """A batch that runs out of frames is not a failed call: it stops before the access
    that might not get its frames, says so, and the event log holds exactly the accesses
    that ran, so a replay reaches the same state."""
    v = VM(frame_limit=20, record=True)
    v.add_memslot(0, 1 << 18, max_level=1)
    v.vcpu_run(0, 0)
    gpas = [(i * 512) << 12 for i in range(40)]             # one new page table per access
    res = v.access_batch(0, gpas, "r")
    assert res.requested == 40
    assert 0 < res.accesses < 40
    assert res.ok == res.accesses
    assert "frame pool exhausted" in res.stopped
    assert "stopped after %d of 40" % res.accesses in res.stopped
    batch = v.events[-1]
    assert batch.op == "access_batch" and len(batch.batch) == res.accesses
    again = v.fresh()
    again.replay(v.events)
    assert again.digest() == v.digest()
    # A batch that fits runs whole and says nothing.
    w = VM()
    w.add_memslot(0, 4096)
    w.vcpu_run(0, 0)
    full = w.access_batch(0, [g << 12 for g in range(64)], "r")
    assert full.accesses == full.requested == 64 and full.stopped is None


def test_failed_access_batch_survives_garbage_collection():
    """A failed access_batch whose exception ends up in a reference cycle (as with
    pytest.raises, or a fuzzer keeping its errors) must not crash the interpreter when
    the cycle is collected. Today the frame holds a memoryview that a cffi from_buffer
    still exports: "BufferError: memoryview has 1 exported buffer" in tp_clear, then a
    segfault. Run in a subprocess."""
    script = textwrap.dedent("""
        import gc
        from tdpfast import VM, InvalidArgumentError
        vm = VM()
        vm.add_memslot(0, 4096)
        vm.vcpu_run(0, 0)
        def attempt():
            try:
                vm.access_batch(0, [0x1000, 1 << 46])
            except InvalidArgumentError as e:
                err = e          # err -> traceback -> this frame -> err
        for _ in range(3):
            attempt()
        gc.collect()
        print("survived", flush=True)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=SUBPROCESS_CWD, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"rc={p.returncode}: {p.stderr[-400:]}"
    assert p.stdout.strip() == "survived"
    assert "BufferError" not in p.stderr


def test_frame_limit_above_the_pool_maximum():
    with pytest.raises(InvalidArgumentError, match="frame_limit"):
        VM(frame_limit=1 << 27)
