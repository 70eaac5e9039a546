"""The compiled C core (``tdpfast._tdpfast``): ``ffi`` and ``lib``, and the error check."""
from __future__ import annotations

from ._tdpfast import ffi, lib  # noqa: F401
from .errors import raise_for


def check(vm_handle, rc: int) -> int:
    """Turn a C return code into an exception carrying the VM's error message."""
    if rc < 0:
        raise_for(rc, ffi.string(lib.tdp_errmsg(vm_handle)).decode(errors="replace"))
    return rc


def check_buf(rc: int, buf) -> int:
    """The same for calls that write their message into ``buf``."""
    if rc < 0:
        raise_for(rc, ffi.string(buf).decode(errors="replace"))
    return rc


def stat_names():
    return [ffi.string(lib.tdp_stat_name(i)).decode() for i in range(lib.tdp_stat_count())]
