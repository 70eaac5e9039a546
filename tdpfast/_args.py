"""Argument checks shared by the public API (:mod:`tdpfast.vm`, :mod:`tdpfast.mmu`,
:mod:`tdpfast.ops`): a bad argument raises InvalidArgumentError before any C call."""
from __future__ import annotations

import operator
from typing import Union

from .errors import InvalidArgumentError
from .results import ACCESS_NAMES


def _choice(name: str, value, options) -> None:
    """Reject a value that is not one of the (string) options, whatever its type."""
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def _access_code(access: Union[str, int]) -> int:
    if isinstance(access, str) and access in ACCESS_NAMES:
        return ACCESS_NAMES.index(access)
    if isinstance(access, int) and not isinstance(access, bool) and 0 <= access < 4:
        return access
    raise InvalidArgumentError(f"access must be 'r', 'w', 'x' or 'xu', got {access!r}")


def _int(name: str, v, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    """An integer in [lo, hi]: ints and integer-like objects (numpy integers), never a bool
    (``access(True, 0)`` must not mean vCPU 1)."""
    if isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be an integer, not a bool ({v!r})")
    if not isinstance(v, int):
        try:
            v = operator.index(v)
        except TypeError:
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
        if isinstance(v, bool):
            raise InvalidArgumentError(f"{name} must be an integer, not a bool ({v!r})")
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo:#x} and {hi:#x}, got {v:#x}" if v >= 0
                                   else f"{name} must not be negative, got {v}")
    return v


def _bool(name: str, v) -> bool:
    """A flag: only True or False (a string such as "no" is truthy and must not turn a switch on)."""
    if not isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {v!r}")
    return v
