"""The event log's vocabulary, shared by :class:`tdpfast.VM`, the reference model
(:mod:`tdpfast.reference.event`) and anything that writes or replays event logs.

Every successful top-level operation is logged as one record: an operation code and five
64-bit words (``struct tdp_event`` in csrc/tdpfast.h), and for ``access_batch`` the
(gpa, access) pairs. :meth:`tdpfast.VM.event_log` serialises records as ``<B5Q`` (code,
words) followed by an access batch's pairs as ``<QB``; both VMs produce the same bytes.

The vocabulary (code -> name, number of logged words) comes from ONE place,
:func:`_load_vocabulary`; everything else here is derived from it. ``nargs`` is the
number of words the C replay (``replay_one`` in csrc/vm.c) reads back: ``start_op``
logs five -- ``kind, a, b, c`` and ``yield_every | op_id << 32`` -- which
:func:`decode_args` unpacks into six public arguments.
"""
from __future__ import annotations

import struct
from typing import Dict, Iterable, Optional, Sequence, Tuple

from ._native import c_name_table, c_names, ffi, lib
from .errors import InvalidArgumentError
from .results import ACCESS_NAMES, Event


def _load_vocabulary() -> Dict[int, Tuple[str, int]]:
    """{event code: (name, logged words)}, read from the C engine's one event table
    (csrc/events.def, through ``tdp_event_name``/``tdp_event_nargs``)."""
    table = {}
    for code in range(1, lib.tdp_event_kinds()):
        name = lib.tdp_event_name(code)
        if name != ffi.NULL:
            table[code] = (ffi.string(name).decode(), lib.tdp_event_nargs(code))
    return table


_VOCABULARY = _load_vocabulary()
#: Event code -> name.
EVENT_NAMES: Dict[int, str] = {code: name for code, (name, _) in _VOCABULARY.items()}
#: Event name -> code.
EVENT_CODES: Dict[str, int] = {name: code for code, name in EVENT_NAMES.items()}
#: Event name -> number of logged words the event uses.
EVENT_NARGS: Dict[str, int] = {name: nargs for name, nargs in _VOCABULARY.values()}

#: The stepped operations of ``VM.start_op`` and the kind each is logged with.
OPS: Dict[str, int] = {name: kind for kind, name in c_names(lib.tdp_op_kind_name).items()}
OP_NAMES: Dict[int, str] = {kind: name for name, kind in OPS.items()}

#: INVVPID types, by the number the event log records (Intel SDM Vol. 3C, "INVVPID").
INVVPID_KINDS: Tuple[str, ...] = c_name_table(lib.tdp_invvpid_type_name)


def decode_args(name: str, raw: Sequence[int]) -> Tuple[int, ...]:
    """The public arguments of an event from its five logged words."""
    if name == "start_op":   # (kind, a, b, c, yield_every, op id)
        return tuple(raw[:4]) + (raw[4] & 0xFFFFFFFF, raw[4] >> 32)
    return tuple(raw[:EVENT_NARGS[name]])


def make_event(index: int, name: str, raw: Sequence[int], batch=None) -> Event:
    return Event(index, name, decode_args(name, raw), batch, tuple(raw))


def encode(events: Iterable[Tuple[str, Sequence[int], Optional[Sequence[Tuple[int, str]]]]]) -> bytes:
    """The event-log bytes of (name, five words, batch or None) records."""
    parts = []
    for name, raw, batch in events:
        parts.append(struct.pack("<B5Q", EVENT_CODES[name], *raw))
        if batch:
            parts.append(b"".join(struct.pack("<QB", g, ACCESS_NAMES.index(a)) for g, a in batch))
    return b"".join(parts)


def replay_one(vm, e: Event, *, requests: Dict[str, int], op_cls) -> None:
    """Make the public API call that ``e`` records on ``vm`` (a :class:`tdpfast.VM` or a
    reference VM): ``requests`` is that VM's request-name table, ``op_cls`` its ``Op``.
    A ``step_op`` steps the operation with the recorded id: ids match in a fresh replay."""
    a, op, m = e.args, e.op, vm.mmu
    if op == "add_memslot":
        vm.add_memslot(a[0], a[1], readonly=bool(a[2] & 1), dirty_log=bool(a[2] & 2), max_level=a[3])
    elif op == "delete_memslot":
        vm.delete_memslot(a[0])
    elif op == "host_unmap":
        vm.host_unmap(a[0], a[1])
    elif op == "host_migrate":
        vm.host_migrate(a[0])
    elif op == "host_age":
        vm.host_age(a[0], a[1])
    elif op == "set_dirty_logging":
        vm.set_dirty_logging(a[0], bool(a[1]))
    elif op == "get_dirty_log":
        vm.get_dirty_log(a[0])
    elif op == "write_protect_gfn":
        vm.write_protect_gfn(a[0], bool(a[1]))
    elif op == "alloc_root":
        m.alloc_root(as_id=a[0], guest_mode=bool(a[1]))
    elif op == "put_root":
        m.put_root(a[0])
    elif op == "invalidate_all_roots":
        m.invalidate_all_roots()
    elif op == "zap_invalidated_roots":
        m.zap_invalidated_roots()
    elif op == "zap_all_fast":
        m.zap_all_fast()
    elif op == "map":
        m.map(a[1], a[2], root=a[0] or None)
    elif op == "map_range":
        m.map_range(a[1], a[2], a[3], root=a[0] or None)
    elif op == "zap_gfn_range":
        m.zap_gfn_range(a[0], a[1], shared=bool(a[2]))
    elif op == "zap_root":
        m.zap_root(a[0], shared=bool(a[1]))
    elif op == "zap_sp":
        m.zap_sp(a[1], a[2], root=a[0])
    elif op == "write_protect_range":
        m.write_protect_range(a[0], a[1])
    elif op == "clear_dirty_range":
        m.clear_dirty_range(a[0], a[1])
    elif op == "age":
        m.age(a[0], a[1])
    elif op == "split_huge_pages":
        m.split_huge_pages(a[0], a[1], a[2])
    elif op == "recover_huge_pages":
        m.recover_huge_pages(a[0], a[1])
    elif op == "recover_nx_huge_pages":
        m.recover_nx_huge_pages(a[0])
    elif op == "vcpu_run":
        vm.vcpu_run(a[0], a[1])
    elif op == "vcpu_exit":
        vm.vcpu_exit(a[0])
    elif op == "vcpu_request":
        vm.vcpu_request(a[0], *[k for k, b in requests.items() if a[1] & b])
    elif op == "access":
        vm.access(a[0], a[1], ACCESS_NAMES[a[2]])
    elif op == "access_batch":
        vm.access_batch(a[0], [g for g, _ in e.batch], [acc for _, acc in e.batch])
    elif op == "flush_remote_tlbs":
        vm.flush_remote_tlbs()
    elif op == "flush_remote_tlbs_range":
        vm.flush_remote_tlbs_range(a[0], a[1])
    elif op == "invept":
        vm.invept(a[0], ffi.string(lib.tdp_invept_type_name(a[1])).decode(), a[2])
    elif op == "invvpid":
        vm.invvpid(a[0], INVVPID_KINDS[a[1]], a[2], a[3])
    elif op == "set_tlb_control":
        vm.set_tlb_control(a[0], a[1])
    elif op == "synchronize_rcu":
        vm.synchronize_rcu()
    elif op == "tlb_fill_junk":
        vm.tlb_fill_junk(a[0], a[1], a[2])
    elif op == "start_op":
        vm.start_op(OP_NAMES[a[0]], a[1], a[2], a[3], yield_every=a[4])
    elif op == "step_op":
        op_cls(vm, a[0], "?").step()
    else:
        raise InvalidArgumentError(f"unknown event {op!r}")


__all__ = ["EVENT_NAMES", "EVENT_CODES", "EVENT_NARGS", "OPS", "OP_NAMES", "INVVPID_KINDS", "decode_args",
           "make_event", "encode", "replay_one"]
