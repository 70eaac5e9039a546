"""State invariants the C checker (csrc/checker.c) can verify after every operation:
``VM(invariants=...)`` takes ``True`` (all), ``False``/``None`` (none, the default) or a
collection of names from :data:`NAMES`. Each broken invariant is reported once per VM as a
violation of its own kind (:data:`KINDS`), at the operation that broke it."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple, Union

from ._native import ffi, lib

# name -> bit, read from the binding (enum tdp_invariant): notifier (I1), memslot (I5),
# tables (well-formed tables, frozen SPTEs, leaf counters), roots (I7), dirty_log (I6).
NAMES: Dict[str, int] = {}
_bit = 1
while lib.tdp_invariant_name(_bit) != ffi.NULL:
    NAMES[ffi.string(lib.tdp_invariant_name(_bit)).decode()] = _bit
    _bit <<= 1
ALL = lib.TDP_INV_ALL

# The violation kinds of the state invariants (enum tdp_violation_kind, from the binding).
KINDS: Tuple[str, ...] = tuple(
    ffi.string(lib.tdp_violation_kind_name(k)).decode()
    for k in range(lib.TDP_V_NOTIFIER_RANGE_MAPPED, lib.TDP_V_UNLOGGED_WRITABLE + 1))

Spec = Union[bool, None, Iterable[str]]


def mask(spec: Spec) -> int:
    """The enum tdp_invariant mask for ``VM(invariants=spec)``."""
    from .errors import InvalidArgumentError

    if spec is None or spec is False:
        return 0
    if spec is True:
        return ALL
    if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
        raise InvalidArgumentError(f"invariants must be True, False or a collection of names "
                                   f"({', '.join(NAMES)}), got {spec!r}")
    m = 0
    for name in spec:
        if name not in NAMES:
            raise InvalidArgumentError(f"unknown invariant {name!r}; invariants: {', '.join(NAMES)}")
        m |= NAMES[name]
    return m


def names(m: int) -> Tuple[str, ...]:
    """The names of the invariants in mask ``m``."""
    return tuple(n for n, b in NAMES.items() if m & b)


__all__ = ["NAMES", "ALL", "KINDS", "mask", "names"]
