"""Decode any 64-bit (S)PTE value into named fields, for EPT or NPT, with KVM's software
bits (arch/x86/kvm/mmu/spte.h). KVM's constants come from the engine (tdp_spte_constants())."""
from __future__ import annotations

from typing import Dict, Union

from ._native import ffi, lib

_C = ffi.new("struct tdp_spte_constants *")
lib.tdp_spte_constants(_C)
MMU_PRESENT: int = _C.mmu_present
SHADOW_NONPRESENT_VALUE: int = _C.shadow_nonpresent
FROZEN_SPTE: int = _C.frozen
PFN_MASK: int = _C.pfn_mask
del _C
MEMTYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}

__all__ = ["decode", "MMU_PRESENT", "SHADOW_NONPRESENT_VALUE", "FROZEN_SPTE"]


def _bit(v: int, b: int) -> bool:
    return bool((v >> b) & 1)


def decode(value: int, fmt: str = "ept") -> Dict[str, Union[int, bool, str, None]]:
    """Named fields of ``value`` as an EPT (``fmt="ept"``) or NPT (``fmt="npt"``) entry.

    Hardware fields are decoded as a leaf would be; ``kind`` says what KVM would call
    it: "frozen", "mmio", "nonpresent", "shadow-present" (and "access-tracked").
    """
    from .errors import InvalidArgumentError

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise InvalidArgumentError(f"value must be a 64-bit unsigned integer, got {value!r}")
    if fmt not in ("ept", "npt"):
        raise InvalidArgumentError(f"fmt must be 'ept' or 'npt', got {fmt!r}")
    v = value
    d: Dict[str, Union[int, bool, str, None]] = {"value": v, "fmt": fmt}
    d["mmu_present"] = _bit(v, 11)
    d["pfn"] = (v & PFN_MASK) >> 12
    d["ps"] = _bit(v, 7)
    if fmt == "ept":
        d.update(r=_bit(v, 0), w=_bit(v, 1), x=_bit(v, 2), xu=_bit(v, 10),
                 memtype=MEMTYPES.get((v >> 3) & 7, f"reserved({(v >> 3) & 7})"), ipat=_bit(v, 6),
                 accessed=_bit(v, 8), dirty=_bit(v, 9), suppress_ve=_bit(v, 63),
                 host_writable=_bit(v, 57), mmu_writable=_bit(v, 58),
                 ad_type=("enabled", "disabled", "wrprot-only", "reserved")[(v >> 52) & 3],
                 saved_r=_bit(v, 54), saved_x=_bit(v, 56))
        hw_present = bool(v & 7)
        mmio = (v & 0x7) == 0x6 and not d["mmu_present"]
    else:
        d.update(p=_bit(v, 0), w=_bit(v, 1), u=_bit(v, 2), pwt=_bit(v, 3), pcd=_bit(v, 4),
                 accessed=_bit(v, 5), dirty=_bit(v, 6), g=_bit(v, 8), nx=_bit(v, 63),
                 host_writable=_bit(v, 9), mmu_writable=_bit(v, 10))
        hw_present = bool(v & 1)
        mmio = _bit(v, 51) and _bit(v, 0) and not d["mmu_present"]
    if v == FROZEN_SPTE:
        kind = "frozen"
    elif mmio:
        kind = "mmio"
        d["mmio_gen"] = ((v >> 3) & 0xFF) | (((v >> 52) & 0x7FF) << 8)
        d["mmio_gfn"] = (v & 0x0007FFFFFFFFF000) >> 12
    elif d["mmu_present"]:
        kind = "shadow-present"
        if fmt == "ept" and (v >> 52) & 3 == 1 and not (v & 7):
            kind = "access-tracked"
    else:
        kind = "nonpresent"
    d["kind"] = kind
    d["hw_present"] = hw_present
    return d
