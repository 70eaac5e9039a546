"""SPTE encodings for TDP (EPT and NPT) -- the reference model's ``mmu/spte.[ch]``.

Every function is pure: it takes the per-VM :class:`Masks` and 64-bit integers and
returns integers.  KVM's names are those of arch/x86/kvm/mmu/spte.h and spte.c; SDM
section numbers are those of the 2016 Intel SDM Vol. 3C; APM is AMD64 APM Vol. 2.
The era is v6.10+: SHADOW_NONPRESENT_VALUE is BIT(63), FROZEN_SPTE is 0x5a0 | BIT(63)
(REMOVED_SPTE was renamed FROZEN_SPTE in ~v6.12).
"""
from __future__ import annotations

from dataclasses import dataclass

U64 = (1 << 64) - 1

# --- KVM software conventions common to both formats (spte.h) ---------------------------
MMU_PRESENT = 1 << 11          # SPTE_MMU_PRESENT_MASK: "shadow-present"
W = 1 << 1                     # PT_WRITABLE_MASK (hardware W in EPT and NPT)
PS = 1 << 7                    # PT_PAGE_SIZE_MASK (huge leaf at levels 2 and 3)
PFN_MASK = 0x000FFFFFFFFFF000  # bits 51:12
SHADOW_NONPRESENT_VALUE = 1 << 63
FROZEN_SPTE = 0x5A0 | SHADOW_NONPRESENT_VALUE

# --- EPT (kvm_mmu_set_ept_masks(); SDM 28.2.2 EPT entry formats) ---------------------------
EPT_R, EPT_W, EPT_X = 1 << 0, 1 << 1, 1 << 2
EPT_MT_SHIFT = 3
EPT_IPAT = 1 << 6
EPT_A, EPT_D = 1 << 8, 1 << 9
EPT_XU = 1 << 10
EPT_SVE = 1 << 63
EPT_HOST_WRITABLE, EPT_MMU_WRITABLE = 1 << 57, 1 << 58
TDP_AD_SHIFT = 52              # bits 53:52: 0 A/D enabled, 1 disabled, 2 wrprot-only
TDP_AD_DISABLED = 1 << 52
ACC_TRACK_SAVED_SHIFT = 54     # access tracking saves R -> bit 54, X -> bit 56
MT_WB = 6

# --- NPT: ordinary long-mode entries (kvm_mmu_reset_all_pte_masks(); APM 15.25) -----------
NPT_P, NPT_W, NPT_U = 1 << 0, 1 << 1, 1 << 2
NPT_A, NPT_D = 1 << 5, 1 << 6
NPT_NX = 1 << 63
NPT_HOST_WRITABLE, NPT_MMU_WRITABLE = 1 << 9, 1 << 10

# KVM's ACC_* access bits handed to make_spte.
ACC_EXEC, ACC_WRITE, ACC_USER = 1, 2, 4
ACC_ALL = ACC_EXEC | ACC_WRITE | ACC_USER

# Permission bits of hardware walks and TLB entries: R | W<<1 | X<<2 | XU<<3.
PERM_R, PERM_W, PERM_X, PERM_XU = 1, 2, 4, 8
PERM_ALL = 15


def pages_per_level(level: int) -> int:
    """KVM_PAGES_PER_HPAGE(level): 4K gfns covered by one SPTE at ``level``."""
    return 1 << (9 * (level - 1))


def spte_index(gfn: int, level: int) -> int:
    """SPTE_INDEX: which of the 512 entries of a level-``level`` table maps ``gfn``."""
    return (gfn >> (9 * (level - 1))) & 511


def gfn_round_for_level(gfn: int, level: int) -> int:
    return gfn & ~(pages_per_level(level) - 1)


@dataclass(frozen=True)
class Masks:
    """The mask set KVM computes once at module load (``kvm_mmu_set_ept_masks`` for EPT,
    ``kvm_mmu_reset_all_pte_masks`` for NPT)."""

    ept: bool
    ad: bool           # A/D bits in use (NPT: always)
    present: int
    user: int
    x: int
    nx: int
    accessed: int
    dirty: int
    host_writable: int
    mmu_writable: int
    memtype: int
    acc_track: int     # bits cleared by access tracking (EPT: RWX; NPT: none)
    mmio_value: int
    mmio_mask: int
    soft_ad: bool = False  # EPT A/D off, yet A and D are software bits of every SPTE (v6.13)

    @classmethod
    def for_ept(cls, ad: bool, soft_ad: bool = False) -> "Masks":
        # kvm_mmu_set_ept_masks(): user = R, x = X, no nx; present = SVE (+R only without
        # exec-only support, and every CPU modelled has it); A/D with EPT A/D, and without
        # it as software bits since v6.13 (3835819fb1b3, 53510b912518: Policy.ept_soft_ad);
        # MMIO = W|X (misconfig).
        ad_bits = ad or soft_ad
        return cls(ept=True, ad=ad, soft_ad=soft_ad and not ad, present=EPT_SVE, user=EPT_R, x=EPT_X, nx=0,
                   accessed=EPT_A if ad_bits else 0, dirty=EPT_D if ad_bits else 0,
                   host_writable=EPT_HOST_WRITABLE, mmu_writable=EPT_MMU_WRITABLE,
                   memtype=(MT_WB << EPT_MT_SHIFT) | EPT_IPAT, acc_track=EPT_R | EPT_W | EPT_X,
                   mmio_value=EPT_W | EPT_X, mmio_mask=EPT_R | EPT_W | EPT_X | EPT_SVE)

    @classmethod
    def for_npt(cls) -> "Masks":
        # kvm_mmu_reset_all_pte_masks(): NPT always has hardware A/D; MMIO = reserved
        # bit 51 | P (#NPF with RSVD).
        return cls(ept=False, ad=True, present=NPT_P, user=NPT_U, x=0, nx=NPT_NX,
                   accessed=NPT_A, dirty=NPT_D, host_writable=NPT_HOST_WRITABLE,
                   mmu_writable=NPT_MMU_WRITABLE, memtype=0, acc_track=0,
                   mmio_value=(1 << 51) | NPT_P, mmio_mask=(1 << 51) | NPT_P)


# --- predicates (spte.h) ---------------------------------------------------------------------
def is_shadow_present_pte(s: int) -> bool:
    return bool(s & MMU_PRESENT)


def is_frozen_spte(s: int) -> bool:
    return s == FROZEN_SPTE


def is_large_pte(s: int) -> bool:
    return bool(s & PS)


def is_last_spte(s: int, level: int) -> bool:
    return level == 1 or is_large_pte(s)


def is_present_leaf(s: int, level: int) -> bool:
    return is_shadow_present_pte(s) and is_last_spte(s, level)


def spte_to_pfn(s: int) -> int:
    return (s & PFN_MASK) >> 12


def is_mmio_spte(m: Masks, s: int) -> bool:
    return (s & m.mmio_mask) == m.mmio_value and not is_shadow_present_pte(s)


def spte_ad_enabled(s: int) -> bool:
    return (s >> TDP_AD_SHIFT) & 3 == 0


def is_mmu_writable_spte(m: Masks, s: int) -> bool:
    return bool(s & m.mmu_writable)


def is_access_tracked_spte(m: Masks, s: int) -> bool:
    """An A/D-disabled shadow-present EPT SPTE whose RWX bits were stripped by aging
    (mark_spte_for_access_track())."""
    return m.ept and is_shadow_present_pte(s) and not spte_ad_enabled(s) and not (s & m.acc_track)


def spte_is_accessed(m: Masks, s: int) -> bool:
    """is_accessed_spte(): an AD-disabled SPTE is young unless access-tracked (<= v6.12);
    with software A/D (v6.13, 7971801b5618) the A bit says it."""
    if m.ept and not spte_ad_enabled(s) and not m.soft_ad:
        return not is_access_tracked_spte(m, s)
    return bool(s & m.accessed)


def is_access_allowed(m: Masks, s: int, write: bool, exec_: bool) -> bool:
    """is_access_allowed(): the SPTE already permits the fault's access (write: W; exec: X /
    not NX; read: present to the hardware, bit 0)."""
    if exec_:
        return bool(s & m.x) if m.ept else not s & m.nx
    if write:
        return bool(s & W)
    return bool(s & 1)


# --- builders ------------------------------------------------------------------------------
def make_leaf_spte(m: Masks, pfn: int, level: int, acc: int, host_writable: bool,
                   prefetch: bool = False) -> int:
    """make_spte() for a TDP leaf: present | memtype | permissions | pfn.

    A is set unless prefetching (A/D on); a read-only host mapping never yields W; a
    writable SPTE is also MMU-writable and gets D eagerly (A/D on)."""
    s = MMU_PRESENT | m.present | m.memtype
    if not m.ad:
        s |= TDP_AD_DISABLED
    ad = m.ad or m.soft_ad  # A and D from the masks (0 for AD-disabled SPTEs up to v6.12)
    if acc & ACC_USER:
        s |= m.user
    s |= m.x if acc & ACC_EXEC else m.nx
    if level > 1:
        s |= PS
    if ad and not prefetch:
        s |= m.accessed
    if host_writable:
        s |= m.host_writable
    else:
        acc &= ~ACC_WRITE
    if acc & ACC_WRITE:
        s |= W | m.mmu_writable
        if ad:
            s |= m.dirty
    return s | ((pfn << 12) & PFN_MASK)


def make_nonleaf_spte(m: Masks, table_pfn: int) -> int:
    """A pointer to a child table: present | W | U | X, and A eagerly so hardware never
    writes A in non-leaf entries (make_nonleaf_spte()); AD-disabled flavour without A/D."""
    s = MMU_PRESENT | m.present | W | m.user | m.x
    s |= m.accessed if m.ad else TDP_AD_DISABLED
    return s | ((table_pfn << 12) & PFN_MASK)


MMIO_GEN_MASK = (1 << 19) - 1


def make_mmio_spte(m: Masks, gfn: int, gen: int) -> int:
    """make_mmio_spte(): MMIO value | generation (bits 3-10 and 52-62) | gfn.
    No SHADOW_NONPRESENT_VALUE: for EPT that bit is SVE, which the MMIO mask covers
    (kvm_mmu_set_ept_masks())."""
    s = m.mmio_value
    s |= (gen & 0xFF) << 3
    s |= ((gen >> 8) & 0x7FF) << 52
    s |= (gfn << 12) & 0x0007FFFFFFFFF000
    return s


def mmio_spte_gen(s: int) -> int:
    """The 19 memslot-generation bits of an MMIO SPTE (get_mmio_spte_generation())."""
    return ((s >> 3) & 0xFF) | (((s >> 52) & 0x7FF) << 8)


def make_small_spte(huge: int, huge_level: int, index: int) -> int:
    """make_small_spte(): child ``index`` of a huge leaf, same attributes; PS is
    cleared at 4K."""
    child = huge_level - 1
    s = (huge & ~PFN_MASK) | ((huge & PFN_MASK) + ((index * pages_per_level(child)) << 12))
    if child == 1:
        s &= ~PS
    return s & U64


def make_huge_spte(small: int, level: int) -> int:
    """make_huge_spte(): a huge leaf at ``level`` from one of its children."""
    low = (pages_per_level(level) << 12) - 1
    return (small & ~(low & PFN_MASK)) | PS


def mark_spte_for_access_track(m: Masks, s: int) -> int:
    """Aging (kvm_tdp_mmu_age_gfn_range()): clear A (A/D on), or for AD-disabled EPT
    SPTEs save R and X at bits 54/56 and clear RWX (W is not saved: a write re-faults
    and fast_page_fault() grants it again)."""
    if not m.ept or spte_ad_enabled(s):
        return s & ~m.accessed
    if is_access_tracked_spte(m, s):
        return s
    saved = s & (EPT_R | EPT_X)
    return (s & ~(m.acc_track | m.accessed)) | (saved << ACC_TRACK_SAVED_SHIFT)


def restore_acc_track_spte(s: int) -> int:
    saved = (s >> ACC_TRACK_SAVED_SHIFT) & (EPT_R | EPT_X)
    return (s & ~((EPT_R | EPT_X) << ACC_TRACK_SAVED_SHIFT)) | saved


def make_spte_executable(m: Masks, s: int) -> int:
    """make_spte_executable(): X back (NX off) -- for an access-tracked SPTE in its
    saved bits."""
    tracked = is_access_tracked_spte(m, s)
    if tracked:
        s = restore_acc_track_spte(s)
    s = (s & ~m.nx) | m.x
    if tracked:
        s = mark_spte_for_access_track(m, s)
    return s


def spte_hw_perms(m: Masks, s: int) -> int:
    """What the hardware grants through one entry, as R|W<<1|X<<2|XU<<3."""
    if m.ept:
        return (s & 7) | (((s >> 10) & 1) << 3)
    if not (s & NPT_P) or not (s & NPT_U):
        return 0
    return PERM_R | (PERM_W if s & NPT_W else 0) | (0 if s & NPT_NX else PERM_X | PERM_XU)
