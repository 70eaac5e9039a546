"""The per-VM lock: the one mechanism that makes a VM safe to share between threads.

cffi releases the GIL for every C call, so two threads calling into one VM would run
the engine concurrently (and a failing call's message, read back from ``tdp_errmsg()``,
could be another call's). Every public method or property that touches a VM's C state
is wrapped in :func:`locked`, which holds that VM's re-entrant lock (``vm._lock``, a
:class:`threading.RLock`) for the whole call: argument checks, the C call or calls
("size, then fill" pairs included), and the read of the error message after a failing
call. Separate VMs have separate locks and run in parallel. Objects that belong to a
VM (``vm.mmu``, :class:`~tdpfast.Root`, :class:`~tdpfast.Op`) expose the VM's lock as
their own ``_lock``; code outside a method (the fuzz explorer) takes ``with vm._lock:``.
"""
from __future__ import annotations

import functools


def locked(method):
    """Run ``method`` holding ``self._lock`` (the lock of the VM ``self`` belongs to)."""

    @functools.wraps(method)
    def call_locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    call_locked.__tdp_locked__ = True
    return call_locked


__all__ = ["locked"]
