"""The pure-Python reference model of tdpfast, as one import: ``tdpfast.reference.model.VM``
and the other public names.  The model itself is spread over the files that mirror KVM's
and the C engine's (see :mod:`tdpfast.reference.vm`)."""
from __future__ import annotations

from ..events import EVENT_NAMES, OPS
from .api import MMU, Root
from .cpu import REQUESTS
from .mmu import Op
from .vm import DEFAULT_COSTS, KNOWN_C_QUIRKS, STAT_NAMES, VM, Kvm

#: Event names in code order (code 1 first).
EVENT_OPS = [EVENT_NAMES[code] for code in sorted(EVENT_NAMES)]

__all__ = ["VM", "MMU", "Root", "Op", "Kvm", "KNOWN_C_QUIRKS", "STAT_NAMES", "EVENT_OPS", "REQUESTS", "OPS",
           "DEFAULT_COSTS"]
