"""The plain-JSON forms shared by the commands' ``--json`` documents (schemas in docs/json/).

Every document is an object whose first keys are ``schema_version`` (an int, raised on any
incompatible change), ``command`` and ``tdpfast_version``; keys are identifiers and numbers
are numbers (addresses and pfns are integers, not hex strings).
"""
from __future__ import annotations

from typing import Optional

from .results import Event, Violation

SCHEMA_VERSION = 1


def header(command: str) -> dict:
    """The keys every ``--json`` document starts with."""
    from . import __version__

    return {"schema_version": SCHEMA_VERSION, "command": command, "tdpfast_version": __version__}


def violation(v: Optional[Violation]) -> Optional[dict]:
    """A :class:`Violation` as a JSON object (``None`` stays ``null``)."""
    if v is None:
        return None
    return {"kind": v.kind, "vcpu": v.vcpu, "pcpu": v.pcpu, "gpa": v.gpa, "tag": v.tag,
            "stale_pfn": v.stale_pfn, "expected_pfn": v.expected_pfn, "access": v.access,
            "level": v.level, "event": v.event, "frame_state": v.frame_state, "batch_index": v.batch_index,
            "root": v.root, "spte": v.spte}


def event(e: Event) -> dict:
    """An :class:`Event` of the event log: its index, operation name and raw arguments;
    ``batch`` holds an ``access_batch``'s [gpa, access] pairs and is ``null`` otherwise."""
    return {"index": e.index, "op": e.op, "args": list(e.args),
            "batch": [[g, a] for g, a in e.batch] if e.batch is not None else None}
