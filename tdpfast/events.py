"""The event log's vocabulary, shared by :class:`tdpfast.VM`, the reference model
(:mod:`tdpfast.reference.event`) and anything that writes or replays event logs.

Every successful top-level operation is logged as one record: an operation code and five
64-bit words (``struct tdp_event`` in csrc/tdpfast.h), and for ``access_batch`` the
(gpa, access) pairs. :meth:`tdpfast.VM.event_log` serialises a log as (all little-endian;
both VMs produce the same bytes, and :func:`read_event_log` reads them back)::

    header   8s magic b"TDPEVLOG", H format version (LOG_VERSION), H number of event codes,
             I CRC-32 of the vocabulary ("name/nargs" per code), Q number of records
    records  per record <B5Q (code, five words), then for access_batch its a[2] pairs <QB
    trailer  8 bytes: BLAKE2b-64 of header and records

The vocabulary (code -> name, number of logged words) comes from ONE place,
:func:`_load_vocabulary`; everything else here is derived from it. ``nargs`` is the
number of words the C replay (``replay_one`` in csrc/event.c) reads back: ``start_op``
logs five -- ``kind, a, b, c`` and ``yield_every | op_id << 32`` -- which
:func:`decode_args` unpacks into six public arguments.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ._native import c_name_table, c_names, ffi, lib
from .errors import EventLogError, FramePoolExhausted, InvalidArgumentError, ReplayError, TdpError
from .guest import INVPCID_KINDS
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


#: The event-log byte format (bump when the layout of header, records or trailer changes).
LOG_MAGIC = b"TDPEVLOG"
LOG_VERSION = 1
_HEADER = struct.Struct("<8sHHIQ")
_RECORD = struct.Struct("<B5Q")
_PAIR = struct.Struct("<QB")
_TRAILER = 8
_U64 = (1 << 64) - 1


def vocabulary_crc() -> int:
    """CRC-32 of the event vocabulary: a log written with other codes is refused."""
    text = ";".join(f"{code}:{name}/{EVENT_NARGS[name]}" for code, name in sorted(EVENT_NAMES.items()))
    return zlib.crc32(text.encode())


def _checksum(data) -> bytes:
    return hashlib.blake2b(data, digest_size=_TRAILER).digest()


def encode(events: Iterable[Tuple[str, Sequence[int], Optional[Sequence[Tuple[int, str]]]]]) -> bytes:
    """The event-log bytes of (name, five words, batch or None) records (format above)."""
    parts = [b""]
    n = 0
    for name, raw, batch in events:
        parts.append(_RECORD.pack(EVENT_CODES[name], *raw))
        if batch:
            parts.append(b"".join(_PAIR.pack(g, ACCESS_NAMES.index(a)) for g, a in batch))
        n += 1
    parts[0] = _HEADER.pack(LOG_MAGIC, LOG_VERSION, max(EVENT_NAMES) + 1, vocabulary_crc(), n)
    body = b"".join(parts)
    return body + _checksum(body)


def read_event_log(data: bytes) -> List[Event]:
    """The events of event-log bytes (:meth:`tdpfast.VM.event_log`), ready for
    :meth:`tdpfast.VM.replay`. Raises :class:`EventLogError` for anything that is not a
    complete, intact log of this vocabulary: not bytes, another format or version,
    truncated, corrupted (the checksum), unknown codes, trailing bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EventLogError(f"an event log is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size + _TRAILER:
        raise EventLogError(f"not an event log: {len(data)} bytes is shorter than the "
                            f"{_HEADER.size + _TRAILER}-byte header and checksum")
    magic, version, kinds, crc, count = _HEADER.unpack_from(data, 0)
    if magic != LOG_MAGIC:
        raise EventLogError(f"not an event log: starts with {magic!r}, expected {LOG_MAGIC!r}")
    if version != LOG_VERSION:
        raise EventLogError(f"event log format version {version} is not supported (this tdpfast reads "
                            f"version {LOG_VERSION})")
    if kinds != max(EVENT_NAMES) + 1 or crc != vocabulary_crc():
        raise EventLogError(f"the event log was written with another event vocabulary ({kinds} codes, "
                            f"CRC {crc:#010x}; this tdpfast has {max(EVENT_NAMES) + 1}, {vocabulary_crc():#010x})")
    body, trailer = data[:-_TRAILER], data[-_TRAILER:]
    if _checksum(body) != trailer:
        raise EventLogError(f"the event log is corrupted or truncated: its checksum does not match "
                            f"({len(data)} bytes, {count} records announced)")
    out: List[Event] = []
    pos = _HEADER.size
    for i in range(count):
        if pos + _RECORD.size > len(body):
            raise EventLogError(f"the event log is truncated: record {i} of {count} is missing")
        code, *raw = _RECORD.unpack_from(body, pos)
        pos += _RECORD.size
        name = EVENT_NAMES.get(code)
        if name is None:
            raise EventLogError(f"record {i}: unknown event code {code}")
        batch = None
        if name == "access_batch":
            cnt = raw[2]
            if cnt > (len(body) - pos) // _PAIR.size:
                raise EventLogError(f"record {i}: an access batch of {cnt} accesses runs past the end of the log")
            pairs = []
            for _ in range(cnt):
                g, a = _PAIR.unpack_from(body, pos)
                pos += _PAIR.size
                if a >= len(ACCESS_NAMES):
                    raise EventLogError(f"record {i}: access kind {a} (kinds are 0..{len(ACCESS_NAMES) - 1})")
                pairs.append((g, ACCESS_NAMES[a]))
            batch = tuple(pairs)
        out.append(make_event(i, name, tuple(raw), batch))
    if pos != len(body):
        raise EventLogError(f"the event log has {len(body) - pos} bytes after its {count} records")
    return out


#: Words that hold a flag or a choice: {event: ((word, allowed values), ...)}.
_WORD_VALUES = {
    "add_memslot": ((2, range(4)),), "set_dirty_logging": ((1, (0, 1)),), "write_protect_gfn": ((1, (0, 1)),),
    "alloc_root": ((0, (0, 1)), (1, (0, 1))), "zap_gfn_range": ((2, (0, 1)),), "zap_root": ((1, (0, 1)),),
    "access": ((2, range(len(ACCESS_NAMES))),), "invept": ((1, (1, 2)),),
    "invvpid": ((1, range(len(INVVPID_KINDS))),), "start_op": ((0, tuple(OP_NAMES)),),
}


def check_event(i: int, e) -> Event:
    """Reject what is not a replayable :class:`Event` (``i`` is its position, for the message)."""
    if not isinstance(e, Event):
        raise EventLogError(f"events[{i}] is not a tdpfast.Event, got {type(e).__name__}")
    if not isinstance(e.op, str) or e.op not in EVENT_CODES:
        raise EventLogError(f"events[{i}]: unknown event {e.op!r}")
    raw = e.raw
    if (not isinstance(raw, tuple) or len(raw) != 5
            or any(isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= _U64 for w in raw)):
        raise EventLogError(f"events[{i}] ({e.op}): raw must be five unsigned 64-bit words, got {raw!r}")
    if tuple(e.args) != decode_args(e.op, raw):
        raise EventLogError(f"events[{i}] ({e.op}): args {e.args!r} do not match its raw words")
    if e.op != "access_batch" and any(raw[EVENT_NARGS[e.op]:]):
        raise EventLogError(f"events[{i}] ({e.op}): words past its {EVENT_NARGS[e.op]} argument(s) must be 0, "
                            f"got {raw!r}")
    for k, allowed in _WORD_VALUES.get(e.op, ()):
        if raw[k] not in allowed:
            raise EventLogError(f"events[{i}] ({e.op}): word {k} is {raw[k]}, expected one of "
                                f"{', '.join(map(str, sorted(allowed)))}")
    if e.op == "access_batch":
        if not isinstance(e.batch, tuple) or len(e.batch) != raw[2]:
            raise EventLogError(f"events[{i}] (access_batch): needs a batch of {raw[2]} (gpa, access) pairs")
        for k, pair in enumerate(e.batch):
            if (not isinstance(pair, tuple) or len(pair) != 2 or isinstance(pair[0], bool)
                    or not isinstance(pair[0], int) or not 0 <= pair[0] <= _U64 or pair[1] not in ACCESS_NAMES):
                raise EventLogError(f"events[{i}] (access_batch): batch[{k}] = {pair!r} is not a (gpa, access) pair")
    elif e.batch is not None:
        raise EventLogError(f"events[{i}] ({e.op}): only access_batch carries a batch")
    return e


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
        "nested_enter": ("vm", lambda a, e: ((a[0],), {})),
        "nested_exit": ("vm", lambda a, e: ((a[0],), {})),
        "nested_invvpid": ("vm", lambda a, e: ((a[0], INVVPID_KINDS[a[1]], a[2], a[3]), {})),
        "guest_set_table_pool": ("guest", lambda a, e: ((a[0], a[1]), {})),
        "guest_new_table": ("guest", lambda a, e: ((), {})),
        "guest_map": ("guest", lambda a, e: ((a[0], a[2], a[3]), _guest_map_kwargs(a[1], a[4]))),
        "guest_unmap": ("guest", lambda a, e: ((a[0], a[2]), dict(levels=a[1]))),
        "guest_write_pte": ("guest", lambda a, e: ((a[0], a[1], a[2]), {})),
        "guest_set_paging": ("guest", lambda a, e: ((a[0], a[1]), dict(pcide=bool(a[2])))),
        "guest_load_cr3": ("guest", lambda a, e: ((a[0], (a[1] >> 12) & ((1 << 40) - 1)),
                                                   dict(pcid=a[1] & 0xfff, noflush=bool(a[1] >> 63)))),
        "guest_access": ("guest", lambda a, e: ((a[0], a[1], acc[a[2]]), {})),
        "guest_invlpg": ("guest", lambda a, e: ((a[0], a[1]), {})),
        "guest_invpcid": ("guest", lambda a, e: ((a[0], INVPCID_KINDS[a[1]], a[2], a[3]), {})),
        "guest_pv_flush": ("guest", lambda a, e: ((a[0],), {})),
    }


def _guest_map_kwargs(levels: int, packed: int) -> dict:
    flags = packed >> 8
    return dict(level=packed & 0xff, write=bool(flags & lib.TDP_GPTE_WRITE), nx=bool(flags & lib.TDP_GPTE_NX),
                global_page=bool(flags & lib.TDP_GPTE_GLOBAL), accessed=bool(flags & lib.TDP_GPTE_ACCESSED),
                dirty=bool(flags & lib.TDP_GPTE_DIRTY), user=bool(flags & lib.TDP_GPTE_USER), levels=levels)


def api_call(e: Event, requests: Dict[str, int]) -> Tuple[str, str, tuple, dict]:
    """(``"vm"``, ``"mmu"`` or ``"guest"``, method, args, kwargs): the public call that ``e`` records.
    ``step_op`` is not a call on the VM but on the operation it steps (see callers)."""
    entry = _api_table(requests).get(e.op)
    if entry is None:
        raise InvalidArgumentError(f"event {e.op!r} is not a call on the VM")
    target, make = entry
    args, kwargs = make(e.args, e)
    # vm.guest's methods drop the event name's "guest_" (guest_map -> vm.guest.map).
    return target, e.op[len("guest_"):] if target == "guest" else e.op, args, kwargs


def replay_one(vm, e: Event, *, requests: Dict[str, int], op_cls) -> None:
    """Make the public API call that ``e`` records on ``vm`` (a :class:`tdpfast.VM` or a
    reference VM): ``requests`` is that VM's request-name table, ``op_cls`` its ``Op``.
    A ``step_op`` steps the operation with the recorded id: ids match in a fresh replay."""
    if e.op == "step_op":
        op_cls(vm, e.args[0], "?").step()
        return
    target, method, args, kwargs = api_call(e, requests)
    r = getattr(getattr(vm, target) if target != "vm" else vm, method)(*args, **kwargs)
    if e.op == "access_batch" and r.accesses != len(e.batch):
        raise FramePoolExhausted(f"the batch ran {r.accesses} of its {len(e.batch)} accesses ({r.stopped})")


def _literal(x) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return hex(x) if x > 9 else str(x)
    return repr(x)


def call_text(e: Event, requests: Dict[str, int]) -> str:
    """The same call as Python source (``vm.mmu.map(0x40005, 1)``), for reproducers."""
    target, method, args, kwargs = api_call(e, requests)
    parts = [_literal(x) for x in args] + [f"{k}={_literal(v)}" for k, v in kwargs.items()]
    return f"{'vm' if target == 'vm' else 'vm.' + target}.{method}({', '.join(parts)})"


def replay(vm, events: Iterable[Event], *, requests: Dict[str, int], op_cls) -> None:
    """``vm.replay(events)`` of :class:`tdpfast.VM` and the reference VM: every event is
    checked first (:class:`EventLogError` for one that is not an event), then applied in
    order; the first that fails raises :class:`ReplayError` -- the events before it stay
    applied, the failing call itself changed nothing."""
    try:
        evs = [check_event(i, e) for i, e in enumerate(events)]
    except TypeError:
        raise EventLogError(f"events must be an iterable of tdpfast.Event, got {type(events).__name__}") from None
    for i, e in enumerate(evs):
        try:
            replay_one(vm, e, requests=requests, op_cls=op_cls)
        except TdpError as exc:
            raise ReplayError(f"events[{i}] {e.op}{e.args} does not replay: {exc} (the {i} event(s) before it "
                              f"were applied)", i, i) from exc


__all__ = ["EVENT_NAMES", "EVENT_CODES", "EVENT_NARGS", "OPS", "OP_NAMES", "INVVPID_KINDS", "LOG_MAGIC",
           "LOG_VERSION", "decode_args", "make_event", "encode", "read_event_log", "check_event", "api_call",
           "replay_one", "call_text", "replay"]
