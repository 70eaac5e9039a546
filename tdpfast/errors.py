"""The tdpfast exception hierarchy, and the one place C return codes become exceptions.

Every exception is a :class:`TdpError` and also the matching builtin, so callers can
catch ``ValueError`` / ``KeyError`` / ``MemoryError`` as usual.
"""
from __future__ import annotations


class TdpError(Exception):
    """Base class of every error tdpfast raises."""


class InvalidArgumentError(TdpError, ValueError):
    """An argument is out of range or inconsistent (the message names it)."""


class InvalidStateError(TdpError, ValueError):
    """The call is not allowed in the model's current state (e.g. a vCPU outside guest mode)."""


class NotFoundError(TdpError, KeyError):
    """An object (root, memslot, table) does not exist: never created, or already freed."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class FramePoolExhausted(TdpError, MemoryError):
    """The host frame pool (``frame_limit``) or host memory ran out; nothing was changed."""


class MalformedImageError(InvalidArgumentError):
    """A memory image is not a mapping of 4 KiB-aligned addresses to 4096-byte pages."""


class MissingPageError(NotFoundError):
    """A memory image lacks a page that the walk needs to read."""


class LivelockError(TdpError, RuntimeError):
    """An operation kept retrying without making progress."""


class EventLogError(TdpError, ValueError):
    """Event-log bytes that are not a complete, intact log of this event vocabulary
    (truncated, corrupted, another format or version), or an event that is not one."""


class ReplayError(TdpError, ValueError):
    """An event of a replayed sequence failed: the sequence does not replay on this VM.

    ``index`` is the failing event's position in the sequence and ``applied`` how many
    events before it were applied (they stay applied; the failing call itself changed
    nothing); the original error is ``__cause__``."""

    def __init__(self, message: str, index: int = -1, applied: int = 0):
        super().__init__(message)
        self.index = index
        self.applied = applied


# Each class by the name C gives its code (tdp_error_name(), csrc/names.c): the codes
# themselves are read from the binding, never retyped here.
_BY_NAME = {
    "invalid_argument": InvalidArgumentError,
    "not_found": NotFoundError,
    "no_memory": FramePoolExhausted,
    "invalid_state": InvalidStateError,
    "malformed_image": MalformedImageError,
    "missing_page": MissingPageError,
    "livelock": LivelockError,
}


def error_class(code: int) -> type:
    """The exception class of a negative C return code (``TdpError`` for an unknown one)."""
    from ._tdpfast import ffi, lib

    name = lib.tdp_error_name(code)
    return _BY_NAME.get(ffi.string(name).decode(), TdpError) if name != ffi.NULL else TdpError


def raise_for(code: int, message: str) -> None:
    """Raise the exception for a negative C return ``code`` (no-op for 0)."""
    if code == 0:
        return
    exc = error_class(code)
    raise exc(message or f"tdpfast error {code}")


__all__ = [
    "TdpError", "InvalidArgumentError", "InvalidStateError", "NotFoundError",
    "FramePoolExhausted", "MalformedImageError", "MissingPageError", "LivelockError", "EventLogError",
    "ReplayError", "raise_for",
]
