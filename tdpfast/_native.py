"""The compiled C core (``tdpfast._tdpfast``): ``ffi`` and ``lib``, and the error check."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

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


def c_names(query, codes: Iterable[int] = range(256)) -> Dict[int, str]:
    """{value: name} of a C enum, from its name query in csrc/names.c (NULL: not a value).
    Python reads C's numbers this way instead of retyping them."""
    out = {}
    for code in codes:
        p = query(code)
        if p != ffi.NULL:
            out[code] = ffi.string(p).decode()
    return out


def c_name_table(query, codes: Iterable[int] = range(256)) -> Tuple[str, ...]:
    """The names of an enum whose values are 0..n-1, as a tuple indexed by value."""
    names = c_names(query, codes)
    if sorted(names) != list(range(len(names))):
        raise ImportError(f"tdpfast: {names} is not a dense enum from 0")
    return tuple(names[i] for i in range(len(names)))


def stat_names():
    return [ffi.string(lib.tdp_stat_name(i)).decode() for i in range(lib.tdp_stat_count())]
