"""TLB and paging-structure-cache geometry of every physical CPU."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

Array = Tuple[int, int]  # (sets, ways); (0, 0) = absent

_REPL = ("lru", "plru", "random")
PRESETS = ("skylake", "icelake", "goldencove", "zen2", "zen3", "zen4", "adversarial")


@dataclass(frozen=True)
class TLBConfig:
    """Per-pCPU TLB geometry: L1 DTLB per page size, the L2 STLB (4K and 2M), an L2 1G
    array, and paging-structure caches for PDE, PDPTE, PML4E and PML5E entries.

    ``mode="adversarial"`` never evicts: every translation the architecture allows stays
    until an invalidation covers it, so a missing flush cannot hide behind an eviction.
    """

    mode: str = "adversarial"
    replacement: str = "lru"
    l1_4k: Array = (0, 0)
    l1_2m: Array = (0, 0)
    l1_1g: Array = (0, 0)
    l2: Array = (0, 0)
    l2_1g: Array = (0, 0)
    psc_pde: Array = (1, 32)     # fully associative [MODEL CHOICE: Intel does not enumerate PSC sizes]
    psc_pdpte: Array = (1, 4)
    psc_pml4e: Array = (1, 2)
    psc_pml5e: Array = (1, 2)
    junk: int = 0
    """Junk entries under arbitrary tags left at boot ("another hypervisor could have")."""
    name: Optional[str] = None

    @classmethod
    def preset(cls, name: str, **changes) -> "TLBConfig":
        """Geometry of a real CPU (CPUID leaf 18H on Intel, Fn8000_0005/6/19 on AMD, as
        dumped by InstLatx64; Skylake: Intel Optimization Manual 248966, Table 2-15):
        skylake, icelake, goldencove, zen2, zen3, zen4; or "adversarial"."""
        from . import _native
        from .errors import InvalidArgumentError

        if name not in PRESETS:
            raise InvalidArgumentError(f"unknown TLB preset {name!r}; presets: {', '.join(PRESETS)}")
        c = _native.ffi.new("struct tdp_tlb_config *")
        _native.lib.tdp_tlb_preset(name.encode(), c)
        arr = lambda a: (a.sets, a.ways)  # noqa: E731
        cfg = cls(mode="adversarial" if c.mode else "setassoc", replacement=_REPL[c.repl],
                  l1_4k=arr(c.l1[0]), l1_2m=arr(c.l1[1]), l1_1g=arr(c.l1[2]), l2=arr(c.l2),
                  l2_1g=arr(c.l2_1g), psc_pde=arr(c.psc[2]), psc_pdpte=arr(c.psc[3]),
                  psc_pml4e=arr(c.psc[4]), psc_pml5e=arr(c.psc[5]), name=name)
        return cfg.replace(**changes) if changes else cfg

    @classmethod
    def adversarial(cls, junk: int = 0) -> "TLBConfig":
        """Never evict; optionally pre-fill with ``junk`` entries under arbitrary tags."""
        return cls(mode="adversarial", junk=junk, name="adversarial")

    def replace(self, **changes) -> "TLBConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def entries(self) -> int:
        """Translation entries (L1 + L2), 0 for the adversarial mode (unbounded)."""
        if self.mode == "adversarial":
            return 0
        return sum(s * w for s, w in (self.l1_4k, self.l1_2m, self.l1_1g, self.l2, self.l2_1g))

    def _to_c(self, ffi):
        from .errors import InvalidArgumentError

        if self.mode not in ("setassoc", "adversarial"):
            raise InvalidArgumentError(f"tlb mode must be 'setassoc' or 'adversarial', got {self.mode!r}")
        if self.replacement not in _REPL:
            raise InvalidArgumentError(f"tlb replacement must be one of {_REPL}, got {self.replacement!r}")
        c = ffi.new("struct tdp_tlb_config *")
        c.mode = 1 if self.mode == "adversarial" else 0
        c.repl = _REPL.index(self.replacement)

        def put(dst, name, val):
            try:
                sets, ways = (int(x) for x in val)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"tlb {name} must be (sets, ways), got {val!r}") from None
            if not (0 <= sets <= 1 << 20 and 0 <= ways <= 128):
                raise InvalidArgumentError(f"tlb {name}: sets must be 0..1048576 and ways 0..128, got {val!r}")
            dst.sets, dst.ways = sets, ways

        for i, n in enumerate(("l1_4k", "l1_2m", "l1_1g")):
            put(c.l1[i], n, getattr(self, n))
        put(c.l2, "l2", self.l2)
        put(c.l2_1g, "l2_1g", self.l2_1g)
        for lvl, n in ((2, "psc_pde"), (3, "psc_pdpte"), (4, "psc_pml4e"), (5, "psc_pml5e")):
            put(c.psc[lvl], n, getattr(self, n))
        if not isinstance(self.junk, int) or self.junk < 0 or self.junk > 1 << 24:
            raise InvalidArgumentError(f"tlb junk must be 0..16777216, got {self.junk!r}")
        c.junk = self.junk
        return c


__all__ = ["TLBConfig", "PRESETS"]
