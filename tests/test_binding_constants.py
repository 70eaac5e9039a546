"""Python reads every C constant from the binding: the event vocabulary, error codes,
request bits, outcomes, frame states, policy switches and their values. These tests fail if
the Python side and the C side disagree on any code, name or arity."""
import dataclasses
import pathlib
import re

import pytest

import tdpfast
from tdpfast import events, results
from tdpfast._native import c_names, ffi, lib
from tdpfast.errors import TdpError, error_class
from tdpfast.policy import _ENUMS, Policy
from tdpfast.reference import model as ref

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _c(p):
    return ffi.string(p).decode()


def test_every_event_code_name_and_arity_matches_the_c_table():
    n = lib.tdp_event_kinds()
    c_side = {code: (_c(lib.tdp_event_name(code)), lib.tdp_event_nargs(code))
              for code in range(1, n) if lib.tdp_event_name(code) != ffi.NULL}
    assert len(c_side) == n - 1 >= 38
    assert {c: (events.EVENT_NAMES[c], events.EVENT_NARGS[events.EVENT_NAMES[c]]) for c in events.EVENT_NAMES} == c_side
    assert all(events.EVENT_CODES[name] == code for code, (name, _) in c_side.items())
    assert lib.tdp_event_name(0) == ffi.NULL and lib.tdp_event_name(n) == ffi.NULL and lib.tdp_event_nargs(n) == -1
    # The reference model speaks the same vocabulary (it is the same table).
    assert ref.EVENT_OPS == [c_side[c][0] for c in sorted(c_side)]


def test_adding_an_event_touches_one_table():
    """The C event codes come from csrc/events.def alone: each EVENT() line there is one
    code, in order from 1, and the Python side has nothing else to edit."""
    lines = [ln for ln in (ROOT / "csrc" / "events.def").read_text().splitlines() if ln.startswith("EVENT(")]
    if not lines:
        pytest.fail("csrc/events.def has no EVENT() lines")
    names = [re.search(r'"([a-z0-9_]+)"', ln).group(1) for ln in lines]
    assert names == [events.EVENT_NAMES[c] for c in sorted(events.EVENT_NAMES)]
    py_sources = "\n".join(p.read_text() for p in (ROOT / "tdpfast").rglob("*.py"))
    assert '"set_dirty_logging", "get_dirty_log", "write_protect_gfn"' not in py_sources  # no retyped table


def test_an_event_log_written_by_python_replays_in_c_with_the_same_digest():
    vm = tdpfast.VM(vcpus=2, pcpus=2, seed=3, record=True)
    vm.add_memslot(0, 1024)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x3000, "w")
    vm.mmu.kvm_zap_gfn_range(0, 16)
    vm.invept(0, "global")
    vm.vcpu_request(0, "tlb_flush")
    again = vm.fresh()
    again.replay(vm.events)
    assert again.digest() == vm.digest() and again.event_log() == vm.event_log()
    assert [e.op for e in vm.events][-4:] == ["zap_gfn_range", "flush_remote_tlbs_range", "invept", "vcpu_request"]


def test_error_codes_map_to_their_classes_by_cs_names():
    codes = c_names(lib.tdp_error_name, range(-16, 1))
    assert codes[0] == "ok" and set(codes) == set(range(lib.TDP_ELIVELOCK, 1))
    classes = {code: error_class(code) for code in codes if code < 0}
    assert all(issubclass(c, TdpError) and c is not TdpError for c in classes.values())
    assert len(set(classes.values())) == len(classes)            # one class per code
    assert error_class(-99) is TdpError


def test_requests_outcomes_accesses_violations_and_frame_states_come_from_the_binding():
    assert tdpfast.vm.REQUESTS == {"tlb_flush": lib.TDP_REQ_TLB_FLUSH, "tlb_flush_current": lib.TDP_REQ_TLB_FLUSH_CURRENT,
                                   "tlb_flush_guest": lib.TDP_REQ_TLB_FLUSH_GUEST,
                                   "mmu_free_obsolete_roots": lib.TDP_REQ_MMU_FREE_OBSOLETE_ROOTS,
                                   "load_mmu_pgd": lib.TDP_REQ_LOAD_MMU_PGD}
    assert sum(tdpfast.vm.REQUESTS.values()) == lib.TDP_REQ_ALL
    assert results.OUTCOME_NAMES[lib.TDP_OUT_BLOCKED] == "blocked" and len(results.OUTCOME_NAMES) == 5
    assert results.OUTCOME_NAMES[lib.TDP_OUT_GUEST_PF] == "guest_page_fault"
    assert results.ACCESS_NAMES[lib.TDP_ACC_EXEC_USER] == "xu"
    assert results.VIOLATION_KINDS[lib.TDP_V_LOST_DIRTY] == "lost_dirty"
    assert set(results.FRAME_STATES) == set(c_names(lib.tdp_frame_state_name))
    assert events.OPS["kvm_zap_gfn_range"] == lib.TDP_OP_ZAP_GFN_RANGE
    assert events.INVVPID_KINDS.index("all") == lib.TDP_INVVPID_ALL_CONTEXT


def test_policy_switches_are_the_c_structs_fields_with_the_same_defaults():
    c_fields = {name for name, _ in ffi.typeof("struct tdp_policy").fields}
    py_fields = {f.name for f in dataclasses.fields(Policy)}
    assert py_fields == c_fields
    default = ffi.new("struct tdp_policy *")
    lib.tdp_default_policy(default)
    ours = Policy.kvm()._to_c(ffi)
    assert {f: getattr(ours, f) for f in c_fields} == {f: getattr(default, f) for f in c_fields}
    for switch, names in _ENUMS.items():
        assert names == tuple(_c(lib.tdp_policy_value_name(switch.encode(), v)) for v in range(len(names)))
        assert lib.tdp_policy_value_name(switch.encode(), len(names)) == ffi.NULL


def test_spte_constants_are_the_engines():
    from tdpfast import spte
    c = ffi.new("struct tdp_spte_constants *")
    lib.tdp_spte_constants(c)
    assert (spte.MMU_PRESENT, spte.SHADOW_NONPRESENT_VALUE, spte.FROZEN_SPTE, spte.PFN_MASK) == \
        (c.mmu_present, c.shadow_nonpresent, c.frozen, c.pfn_mask)
    assert spte.decode(spte.FROZEN_SPTE)["kind"] == "frozen"


def test_one_name_per_flush_contract():
    """vm.mmu.zap_gfn_range reports "flush needed" and never flushes; kvm_zap_gfn_range
    (and the stepped operation of that name) performs the flush its caller owes."""
    vm = tdpfast.VM(vcpus=1, pcpus=1)
    vm.add_memslot(0, 4096)
    vm.vcpu_run(0, 0)                    # loads a root (and a vCPU that must be flushed)
    vm.mmu.map_range(0, 64)
    before = vm.stats["remote_tlb_flush"]
    assert vm.mmu.zap_gfn_range(0, 32) is True and vm.stats["remote_tlb_flush"] == before
    vm.mmu.map_range(0, 64)
    assert vm.mmu.kvm_zap_gfn_range(0, 32) is True and vm.stats["remote_tlb_flush"] > before
    n = vm.stats["remote_tlb_flush"]
    vm.mmu.map_range(0, 64)
    op = vm.start_op("kvm_zap_gfn_range", 0, 32)
    assert op.finish() and vm.stats["remote_tlb_flush"] > n


def test_no_comment_cites_a_document_outside_the_repository():
    pat = re.compile(r"kvm-tdp-mmu\.md|x86-translation\.md|calibration\.md|\.\./shared|§")
    offenders = []
    for base in ("csrc", "tdpfast", "tests", "benches"):
        for p in (ROOT / base).rglob("*"):
            if p.suffix in (".c", ".h", ".def", ".py") and p.name != "test_binding_constants.py":
                for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if pat.search(line):
                        offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders[:20])
