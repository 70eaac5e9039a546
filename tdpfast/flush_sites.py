"""The engine's flush sites: every TLB flush and flush flag on KVM's own path in the C
engine, as ``csrc/flush_sites.def`` lists them (names read from the binding).

A VM created with ``VM(mutant=NAME)`` is the engine with that one site removed, KVM's
policy otherwise unchanged: the engine's mutation test. ``tdpfast audit --mutants`` runs
the explorer on each mutant and reports which ones it catches (the mutation score);
``tdpfast fuzz --mutant NAME`` searches one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ._native import ffi, lib
from .errors import InvalidArgumentError


@dataclass(frozen=True)
class FlushSite:
    """One flush site: its id in the engine, name, the vendors whose code has it, the KVM
    function it models, and what it does."""

    id: int
    name: str
    archs: Tuple[str, ...]
    where: str
    what: str


def _read() -> Tuple[FlushSite, ...]:
    out = []
    for i in range(1, lib.tdp_flush_site_count() + 1):
        arch = ffi.string(lib.tdp_flush_site_arch(i)).decode()
        out.append(FlushSite(i, ffi.string(lib.tdp_flush_site_name(i)).decode(),
                             (arch,) if arch else ("vmx", "svm"),
                             ffi.string(lib.tdp_flush_site_where(i)).decode(),
                             ffi.string(lib.tdp_flush_site_what(i)).decode()))
    return tuple(out)


SITES: Tuple[FlushSite, ...] = _read()
BY_NAME: Dict[str, FlushSite] = {s.name: s for s in SITES}


def site_id(name: Optional[str]) -> int:
    """The engine's id of the flush site ``name`` (0 for None: no mutant)."""
    if name is None:
        return 0
    if not isinstance(name, str) or name not in BY_NAME:
        raise InvalidArgumentError(f"mutant must be one of the engine's flush sites ({', '.join(BY_NAME)}) "
                                   f"or None, got {name!r}")
    return BY_NAME[name].id
