"""The hardware walker on an arbitrary memory image (EPT per the SDM, NPT per the APM).

A memory image is a mapping ``{host physical address: 4096 bytes}``, such as
``vm.mmu.tables()`` or a real page-table dump. The image is not modified: the A/D
updates a successful walk makes are returned in ``ad_writes``.
"""
from __future__ import annotations

from typing import Mapping

from ._native import check_buf, ffi, lib
from .errors import InvalidArgumentError, MalformedImageError
from .results import ACCESS_NAMES, WalkResult
from .vm import walk_result_from_c

__all__ = ["walk", "WalkResult", "eptp", "ncr3"]


def walk(memory: Mapping[int, bytes], root_pointer: int, gpa: int, access: str = "r", *, fmt: str = "ept",
         levels: int = 4, ad: bool = True, maxphyaddr: int = 46, exec_only: bool = True, user: bool = True,
         mbec: bool = False, paging_structure: bool = False) -> WalkResult:
    """Walk ``gpa`` from the EPTP (``fmt="ept"``) or nCR3 (``fmt="npt"``) ``root_pointer``.

    Returns a :class:`WalkResult`: ``hpa`` on success; otherwise ``fault`` is
    "violation" (with the exit ``qualification``), "misconfig", or "npf" (with the
    ``error_code``). ``access`` is "r", "w", "x", or "xu" (user-mode fetch, MBEC).
    ``paging_structure=True`` makes it a guest paging-structure access instead of the
    final translation. ``user`` is accepted for symmetry and does not change the walk.
    """
    if not isinstance(fmt, str) or fmt not in ("ept", "npt"):
        raise InvalidArgumentError(f"fmt must be 'ept' or 'npt', got {fmt!r}")
    if not isinstance(access, str) or access not in ACCESS_NAMES:
        raise InvalidArgumentError(f"access must be 'r', 'w', 'x' or 'xu', got {access!r}")
    for name, v in (("levels", levels), ("maxphyaddr", maxphyaddr), ("root_pointer", root_pointer), ("gpa", gpa)):
        _check_u64(name, v)
    for name, v in (("ad", ad), ("exec_only", exec_only), ("user", user), ("mbec", mbec),
                    ("paging_structure", paging_structure)):
        _check_bool(name, v)
    if not hasattr(memory, "items"):
        raise MalformedImageError(f"memory must be a mapping of address -> 4096 bytes, got {type(memory).__name__}")
    keys = []
    for k, page in memory.items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k >= 1 << 64 or k & 0xFFF:
            raise MalformedImageError(f"memory image key {k!r} is not a 4 KiB-aligned host physical address")
        where = f"memory image page {k:#x}"
        if not isinstance(page, (bytes, bytearray, memoryview)):
            raise MalformedImageError(f"{where} must be bytes, bytearray or memoryview, got {type(page).__name__}")
        size = page.nbytes if isinstance(page, memoryview) else len(page)
        if size != 4096:
            raise MalformedImageError(f"{where} must be 4096 bytes, got {size}")
        keys.append(k)
    keys.sort()
    n = len(keys)
    addrs = ffi.new("uint64_t[]", max(n, 1))
    data = ffi.new("uint8_t[]", max(n, 1) * 4096)
    for i, k in enumerate(keys):
        addrs[i] = k
        ffi.memmove(data + i * 4096, bytes(memory[k]), 4096)
    p = ffi.new("struct tdp_hw_params *")
    p.fmt = 0 if fmt == "ept" else 1
    p.levels = levels
    p.ad = int(ad)
    p.maxphyaddr = maxphyaddr
    p.exec_only = int(exec_only)
    p.mbec = int(mbec)
    p.paging_structure = int(paging_structure)
    out = ffi.new("struct tdp_walk_result *")
    err = ffi.new("char[]", 256)
    check_buf(lib.tdp_hw_walk(addrs, data, n, root_pointer, gpa, ACCESS_NAMES.index(access), p, out, err, 256), err)
    return walk_result_from_c(out)


def eptp(root_hpa: int, levels: int = 4, ad: bool = True, memtype: int = 6) -> int:
    """Build an EPTP the way KVM's construct_eptp() does."""
    _check_u64("root_hpa", root_hpa)
    if root_hpa & 0xFFF:
        raise InvalidArgumentError(f"root_hpa must be 4 KiB-aligned, got {root_hpa:#x}")
    if isinstance(levels, bool) or levels not in (4, 5):
        raise InvalidArgumentError(f"levels must be 4 or 5, got {levels!r}")
    _check_bool("ad", ad)
    if isinstance(memtype, bool) or memtype not in (0, 6):
        raise InvalidArgumentError(f"memtype must be 0 (UC) or 6 (WB), got {memtype!r}")
    return root_hpa | memtype | ((levels - 1) << 3) | ((1 if ad else 0) << 6)


def ncr3(root_hpa: int) -> int:
    """Build an nCR3 value (the root table address; PWT/PCD clear)."""
    _check_u64("root_hpa", root_hpa)
    if root_hpa & 0xFFF:
        raise InvalidArgumentError(f"root_hpa must be 4 KiB-aligned, got {root_hpa:#x}")
    return root_hpa


def _check_u64(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 64:
        raise InvalidArgumentError(f"{name} must be a non-negative 64-bit integer, got {v!r}")


def _check_bool(name: str, v) -> None:
    # No truthiness: ad="no" must not turn A/D on.
    if not isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {v!r}")
