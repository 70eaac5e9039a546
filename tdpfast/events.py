"""The event log's vocabulary, shared by :class:`tdpfast.VM`, the reference model
(:mod:`tdpfast.reference.event`) and anything that writes or replays event logs.

Every successful top-level operation is logged as one record: an operation code and five
64-bit words (``struct tdp_event`` in csrc/tdpfast.h), and for ``access_batch`` the
(gpa, access) pairs. :meth:`tdpfast.VM.event_log` serialises records as ``<B5Q`` (code,
words) followed by an access batch's pairs as ``<QB``; both VMs produce the same bytes.

The vocabulary (code -> name, number of logged words) comes from ONE place,
:func:`_load_vocabulary`; everything else here is derived from it. ``nargs`` is the
number of words the C replay (``replay_one`` in csrc/event.c) reads back: ``start_op``
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


#: How each event is made through the public API: (``"vm"`` or ``"mmu"``, method,
#: function of the event giving (args, kwargs)). One table serves :func:`replay_one`
#: (both VMs' ``replay``) and :func:`call_text` (the reproducer writer).
def _api_table(requests: Dict[str, int]):
    acc = ACCESS_NAMES
    invept = lambda t: ffi.string(lib.tdp_invept_type_name(t)).decode()  # noqa: E731
    return {
        "add_memslot": ("vm", lambda a, e: ((a[0], a[1]), dict(readonly=bool(a[2] & lib.TDP_SLOT_READONLY),
                                                                 dirty_log=bool(a[2] & lib.TDP_SLOT_DIRTY_LOG),
                                                                 max_level=a[3]))),
        "delete_memslot": ("vm", lambda a, e: ((a[0],), {})),
        "host_unmap": ("vm", lambda a, e: ((a[0], a[1]), {})),
        "host_migrate": ("vm", lambda a, e: ((a[0],), {})),
        "host_age": ("vm", lambda a, e: ((a[0], a[1]), {})),
        "set_dirty_logging": ("vm", lambda a, e: ((a[0], bool(a[1])), {})),
        "get_dirty_log": ("vm", lambda a, e: ((a[0],), {})),
        "write_protect_gfn": ("vm", lambda a, e: ((a[0], bool(a[1])), {})),
        "alloc_root": ("mmu", lambda a, e: ((), dict(as_id=a[0], guest_mode=bool(a[1])))),
        "put_root": ("mmu", lambda a, e: ((a[0],), {})),
        "invalidate_all_roots": ("mmu", lambda a, e: ((), {})),
        "zap_invalidated_roots": ("mmu", lambda a, e: ((), {})),
        "zap_all_fast": ("mmu", lambda a, e: ((), {})),
        "map": ("mmu", lambda a, e: ((a[1], a[2]), dict(root=a[0]) if a[0] else {})),
        "map_range": ("mmu", lambda a, e: ((a[1], a[2], a[3]), dict(root=a[0]) if a[0] else {})),
        "zap_gfn_range": ("mmu", lambda a, e: ((a[0], a[1]), dict(shared=bool(a[2])))),
        "zap_root": ("mmu", lambda a, e: ((a[0],), dict(shared=bool(a[1])))),
        "zap_sp": ("mmu", lambda a, e: ((a[1], a[2]), dict(root=a[0]))),
        "write_protect_range": ("mmu", lambda a, e: ((a[0], a[1]), {})),
        "clear_dirty_range": ("mmu", lambda a, e: ((a[0], a[1]), {})),
        "age": ("mmu", lambda a, e: ((a[0], a[1]), {})),
        "split_huge_pages": ("mmu", lambda a, e: ((a[0], a[1], a[2]), {})),
        "recover_huge_pages": ("mmu", lambda a, e: ((a[0], a[1]), {})),
        "recover_nx_huge_pages": ("mmu", lambda a, e: ((a[0],), {})),
        "vcpu_run": ("vm", lambda a, e: ((a[0], a[1]), {})),
        "vcpu_exit": ("vm", lambda a, e: ((a[0],), {})),
        "vcpu_request": ("vm", lambda a, e: ((a[0], *[k for k, b in requests.items() if a[1] & b]), {})),
        "access": ("vm", lambda a, e: ((a[0], a[1], acc[a[2]]), {})),
        "access_batch": ("vm", lambda a, e: ((a[0], [g for g, _ in e.batch], [x for _, x in e.batch]), {})),
        "flush_remote_tlbs": ("vm", lambda a, e: ((), {})),
        "flush_remote_tlbs_range": ("vm", lambda a, e: ((a[0], a[1]), {})),
        "invept": ("vm", lambda a, e: ((a[0], invept(a[1]), a[2]), {})),
        "invvpid": ("vm", lambda a, e: ((a[0], INVVPID_KINDS[a[1]], a[2], a[3]), {})),
        "set_tlb_control": ("vm", lambda a, e: ((a[0], a[1]), {})),
        "synchronize_rcu": ("vm", lambda a, e: ((), {})),
        "tlb_fill_junk": ("vm", lambda a, e: ((a[0], a[1], a[2]), {})),
        "start_op": ("vm", lambda a, e: ((OP_NAMES[a[0]], a[1], a[2], a[3]), dict(yield_every=a[4]))),
    }


def api_call(e: Event, requests: Dict[str, int]) -> Tuple[str, str, tuple, dict]:
    """(``"vm"`` or ``"mmu"``, method, args, kwargs): the public call that ``e`` records.
    ``step_op`` is not a call on the VM but on the operation it steps (see callers)."""
    entry = _api_table(requests).get(e.op)
    if entry is None:
        raise InvalidArgumentError(f"event {e.op!r} is not a call on the VM")
    target, make = entry
    args, kwargs = make(e.args, e)
    return target, e.op, args, kwargs


def replay_one(vm, e: Event, *, requests: Dict[str, int], op_cls) -> None:
    """Make the public API call that ``e`` records on ``vm`` (a :class:`tdpfast.VM` or a
    reference VM): ``requests`` is that VM's request-name table, ``op_cls`` its ``Op``.
    A ``step_op`` steps the operation with the recorded id: ids match in a fresh replay."""
    if e.op == "step_op":
        op_cls(vm, e.args[0], "?").step()
        return
    target, method, args, kwargs = api_call(e, requests)
    getattr(vm.mmu if target == "mmu" else vm, method)(*args, **kwargs)


def _literal(x) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return hex(x) if x > 9 else str(x)
    return repr(x)


def call_text(e: Event, requests: Dict[str, int]) -> str:
    """The same call as Python source (``vm.mmu.map(0x40005, 1)``), for reproducers."""
    target, method, args, kwargs = api_call(e, requests)
    parts = [_literal(x) for x in args] + [f"{k}={_literal(v)}" for k, v in kwargs.items()]
    return f"{'vm.mmu' if target == 'mmu' else 'vm'}.{method}({', '.join(parts)})"


__all__ = ["EVENT_NAMES", "EVENT_CODES", "EVENT_NARGS", "OPS", "OP_NAMES", "INVVPID_KINDS", "decode_args",
           "make_event", "encode", "api_call", "replay_one", "call_text"]
