"""Argument checks of the reference model's API (a bad argument raises
InvalidArgumentError before anything changes)."""
from __future__ import annotations

import operator

from ..errors import InvalidArgumentError
from ..results import ACCESS_NAMES

U64 = (1 << 64) - 1


def _int(name: str, v, lo: int = 0, hi: int = U64) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = operator.index(v)
        except TypeError:
            raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be between {lo:#x} and {hi:#x}, got {v}")
    return v


def _access_code(access) -> int:
    if isinstance(access, str) and access in ACCESS_NAMES:
        return ACCESS_NAMES.index(access)
    if isinstance(access, int) and not isinstance(access, bool) and 0 <= access < 4:
        return access
    raise InvalidArgumentError(f"access must be 'r', 'w', 'x' or 'xu', got {access!r}")
