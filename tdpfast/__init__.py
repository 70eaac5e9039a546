"""tdpfast — a C-accelerated model of KVM x86's TDP MMU (EPT and NPT), the per-CPU
TLBs and paging-structure caches it must keep coherent, and a checker that notices a
guest using a translation it must no longer have.

>>> import tdpfast
>>> vm = tdpfast.VM(arch="vmx")
>>> vm.add_memslot(0, 262144).npages
262144
"""
from .errors import (EventLogError, FramePoolExhausted, InvalidArgumentError, InvalidStateError, LivelockError,
                     MalformedImageError, MissingPageError, NotFoundError, ReplayError, TdpError)
from .events import read_event_log
from .policy import Policy
from .results import AccessResult, BatchResult, Event, Memslot, Violation, WalkResult
from .tlbconfig import TLBConfig
from .vm import MMU, VM, Op, Root
from . import hw, spte  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "VM", "MMU", "Root", "Op", "Policy", "TLBConfig", "hw", "spte",
    "AccessResult", "BatchResult", "Event", "Memslot", "Violation", "WalkResult",
    "TdpError", "InvalidArgumentError", "InvalidStateError", "NotFoundError", "FramePoolExhausted",
    "MalformedImageError", "MissingPageError", "LivelockError", "EventLogError", "ReplayError", "read_event_log",
]
