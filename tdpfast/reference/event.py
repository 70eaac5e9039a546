"""The event log of the reference model and its replay (the C engine's counterpart is
csrc/event.c): every successful top-level operation is logged as its name and five words
(plus an access batch's pairs), in the vocabulary of :mod:`tdpfast.events` -- the same
records, and the same :meth:`EventLogApi.event_log` bytes, as :class:`tdpfast.VM`."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

from .. import events as vocabulary
from ..errors import (EventLogError, FramePoolExhausted, InvalidArgumentError, InvalidStateError,
                      LivelockError, NotFoundError, ReplayError)
from ..results import Event
from . import cpu, mmu


def _c_only(events) -> None:
    """Guest paging and nested L2 are in the C engine only: say so instead of failing later."""
    for i, e in enumerate(events):
        op = getattr(e, "op", None)
        if isinstance(op, str) and op.startswith(("guest_", "nested_")):
            raise InvalidArgumentError(f"events[{i}] {op}: the reference model has no guest paging or nested L2 "
                                       f"(they are in the C engine only)")


class KvmEventLog:
    """The recording side, mixed into :class:`tdpfast.reference.vm.Kvm` (which holds
    ``events``, ``nblob``, ``nlogged`` and ``cfg.record``)."""

    def log(self, op: str, *args: int, batch=None) -> None:
        self.nlogged += 1       # counted when not recording too: a violation's event index
        if self.cfg.record:
            self.events.append((op, tuple(args) + (0,) * (5 - len(args)), batch))
            if batch:
                self.nblob += 9 * len(batch)


class EventLogApi:
    """``vm.events``, ``vm.event_log()`` and replay; mixed into
    :class:`tdpfast.reference.vm.VM`."""

    @property
    def events(self) -> List[Event]:
        return [vocabulary.make_event(i, op, raw, batch) for i, (op, raw, batch) in enumerate(self._k.events)]

    def event_log(self) -> bytes:
        """The event log as bytes in the format of :mod:`tdpfast.events` (header, records,
        checksum) -- byte-identical to tdpfast.VM's."""
        return vocabulary.encode(self._k.events)

    def replay(self, events: Iterable[Event]) -> None:
        """As tdpfast.VM.replay: checked first, and the first failing event raises ReplayError."""
        events = list(events) if not isinstance(events, (list, tuple)) else events
        _c_only(events)
        vocabulary.replay(self, events, requests=cpu.REQUESTS, op_cls=mmu.Op)

    def replay_fast(self, events: Sequence[Event], *, stop_at_violation: bool = True,
                    skip_failing: bool = False) -> int:
        """Apply events (no access batches); stepped operations are matched to the ones the
        original run started.  The first failing event raises ReplayError, or is skipped
        with ``skip_failing=True``.  Returns how many applied (tdpfast.VM.replay_fast does
        the same in one C call)."""
        try:
            evs = [vocabulary.check_event(i, e) for i, e in enumerate(events)]
        except TypeError:
            raise EventLogError(f"events must be a sequence of tdpfast.Event, got {type(events).__name__}") from None
        if any(e.op == "access_batch" for e in evs):
            raise InvalidArgumentError("replay_fast cannot replay access batches; use replay()")
        _c_only(evs)
        op_ids: Dict[int, int] = {}
        applied = 0
        for i, e in enumerate(evs):
            raw = tuple(e.raw)
            try:
                if e.op == "start_op":
                    name = vocabulary.OP_NAMES.get(raw[0])
                    if name is None:
                        raise InvalidArgumentError(f"unknown operation kind {raw[0]}")
                    op = self.start_op(name, raw[1], raw[2], raw[3], yield_every=raw[4] & 0xFFFFFFFF)
                    op_ids[raw[4] >> 32] = op.id
                elif e.op == "step_op":
                    if raw[0] not in op_ids:
                        raise NotFoundError(f"operation {raw[0]} was not started in this replay")
                    mmu.Op(self, op_ids[raw[0]], "?").step()
                else:
                    vocabulary.replay_one(self, e, requests=cpu.REQUESTS, op_cls=mmu.Op)
                applied += 1
            except (InvalidArgumentError, InvalidStateError, NotFoundError, FramePoolExhausted, LivelockError) as exc:
                if not skip_failing:
                    raise ReplayError(f"events[{i}] {e.op} does not replay: {exc} (the {applied} event(s) before "
                                      f"it were applied)", i, applied) from exc
            if stop_at_violation and self._k.violations:
                break
        return applied
