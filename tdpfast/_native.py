"""The compiled C core (``tdpfast._tdpfast``): ``ffi`` and ``lib``, and the error check."""
from __future__ import annotations

try:
    from ._tdpfast import ffi, lib  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != __package__ + "._tdpfast":
        raise
    # A source checkout whose C core was never compiled: say how to build it.
    raise ImportError("tdpfast's C core (tdpfast._tdpfast) is not built in this source tree: run "
                      "`pip install -e .` (or `python tdpfast/_build.py` to build it in place), "
                      "or install tdpfast with pip", name=e.name) from None
from .errors import raise_for  # noqa: E402


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
