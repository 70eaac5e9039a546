"""Pure-Python reference walker for x86 two-dimensional paging (the nested dimension).

This module is the executable specification of the guest-physical -> host-physical walk
done by the CPU under Intel EPT and AMD NPT (4- and 5-level), and the differential oracle
for the C walker behind ``tdpfast.hw.walk``.  It depends on the standard library only and
favours readability over speed: every rule names its source.

Source shorthands used in the comments:

* ``SDM n.m`` -- Intel SDM Vol. 3C, 2016 edition: 24.6.11 "Extended-Page-Table Pointer
  (EPTP)", 26.2.1.1 VM-entry checks, 27.2.1 exit qualifications, 28.2 "The Extended Page
  Table Mechanism (EPT)" (28.2.2 translation and entry formats, 28.2.3 EPT-induced VM
  exits: misconfigurations, violations and their prioritization, 28.2.4 accessed and
  dirty flags), 28.3 "Caching Translation Information".  (Chapter 28 became chapter 29
  in the 2022-23 editions.)
* ``APM n.m`` -- AMD64 APM Vol. 2 (pub. 24593): 5.3-5.4 long-mode page translation and
  entry fields, 15.25 "Nested Paging" (15.25.3 enabling and nCR3, 15.25.5 the nested
  walk, 15.25.6 #NPF and fault ordering).
* ``Linux``   -- ``arch/x86/kvm/mmu/mmu.c`` (``__reset_rsvds_bits_mask[_ept]``).
* ``MODEL``   -- a simulator choice where the architecture is silent or where the
  walk is a simplification (each one is explained where it is made).

The walker only *reads* ``memory``.  A/D-flag updates that the CPU would perform are
reported in ``WalkResult.ad_writes`` as ``(entry_hpa, old, new)`` triples, in walk order;
the caller decides whether to apply them.

Memory image: a ``Mapping[int, bytes]`` from a 4-KiB-aligned host physical address to the
4096 bytes of that page (512 little-endian 8-byte entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "WalkResult",
    "walk",
    "gpa_index",
    "gpa_indices",
    "decode_eptp",
    "decode_ncr3",
    "validate_memory",
]


def _bit(n: int) -> int:
    return 1 << n


def _bits(hi: int, lo: int) -> int:
    """Mask of bits hi..lo inclusive (empty if hi < lo)."""
    if hi < lo:
        return 0
    return ((1 << (hi - lo + 1)) - 1) << lo


PAGE_SIZE = 4096
ENTRY_SIZE = 8
ENTRIES_PER_TABLE = 512

# The architectural physical-address limit: table addresses live in bits 51:12 and
# bits 63:52 of an entry address are zero (SDM 28.2.2).
MAX_MAXPHYADDR = 52
# MODEL: the narrowest MAXPHYADDR accepted.  Every CPU with EPT or NPT reports >= 36.
MIN_MAXPHYADDR = 36
ADDR_51_12 = _bits(51, 12)

# Lowest GPA bit of the index for each level (SDM 28.2.2): PML5 56:48, PML4 47:39,
# PDPT 38:30, PD 29:21, PT 20:12.  NPT uses the same long-mode layout (APM 5.3).
LEVEL_SHIFT = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}
# Page-offset width of a leaf at a given level: 4 KiB, 2 MiB, 1 GiB (SDM 28.2.2).
LEAF_SHIFT = {1: 12, 2: 21, 3: 30}

ACCESSES = ("r", "w", "x", "xu")

# ---------------------------------------------------------------------------- EPT bits
# EPTP (SDM 24.6.11).
EPTP_MEMTYPE_MASK = _bits(2, 0)
EPTP_MEMTYPES_OK = (0, 6)  # UC, WB
EPTP_PWL_SHIFT = 3
EPTP_PWL_MASK = _bits(5, 3)
EPTP_AD = _bit(6)
EPTP_SSS = _bit(7)  # supervisor-shadow-stack enable in newer SDMs: ignored here
EPTP_RSVD_LOW = _bits(11, 8)

# EPT entries (SDM 28.2.2).
EPT_R = _bit(0)
EPT_W = _bit(1)
EPT_X = _bit(2)  # with MBEC: execute for supervisor-mode linear addresses (XS)
EPT_PS = _bit(7)
EPT_A = _bit(8)
EPT_D = _bit(9)
EPT_XU = _bit(10)  # with MBEC only: execute for user-mode linear addresses
EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = _bits(5, 3)
EPT_BAD_MEMTYPES = (2, 3, 7)  # SDM 28.2.3.1: a leaf memory type of 2, 3 or 7

# EPT-violation exit qualification (SDM 27.2.1, "Exit Qualification for EPT Violations").
QUAL_READ = _bit(0)
QUAL_WRITE = _bit(1)
QUAL_FETCH = _bit(2)
QUAL_READABLE = _bit(3)
QUAL_WRITABLE = _bit(4)
QUAL_EXECUTABLE = _bit(5)  # XS with MBEC
QUAL_USER_EXEC = _bit(6)  # XU, MBEC only
QUAL_GLA_VALID = _bit(7)
QUAL_GLA_TRANSLATION = _bit(8)  # 1: final translation, 0: guest paging-structure access

# ---------------------------------------------------------------------------- NPT bits
# nCR3 has the CR3 format: base 51:12, PWT bit 3, PCD bit 4 (APM 15.25.3).
NCR3_PWT = _bit(3)
NCR3_PCD = _bit(4)

# NPT entries are ordinary long-mode entries (APM 5.4, 15.25).
NPT_P = _bit(0)
NPT_RW = _bit(1)
NPT_US = _bit(2)
NPT_A = _bit(5)
NPT_D = _bit(6)
NPT_PS = _bit(7)
NPT_BIT8 = _bit(8)  # G in leaves; reserved in some non-leaf entries on AMD
NPT_NX = _bit(63)

# #NPF error code = EXITINFO1 (APM 15.25.6; Linux PFERR_*).
PFERR_PRESENT = _bit(0)
PFERR_WRITE = _bit(1)
PFERR_USER = _bit(2)
PFERR_RSVD = _bit(3)
PFERR_FETCH = _bit(4)
PFERR_GUEST_FINAL = _bit(32)
PFERR_GUEST_PAGE = _bit(33)

# AMD reserves bit 8 of non-leaf entries only at the PML4E (and PML5E) level.  KVM's 2014
# reserved-bit masks also reserved it in the non-leaf PDPE, but Linux
# commit "KVM: x86: bit 8 of non-leaf PDPEs is not reserved" (Bonzini, 2020) removed it:
# "AMD ignores it in PDEs and PDPEs, but reserves it in PML4Es"; current Linux still applies
# nonleaf_bit8_rsvd to the PML5E.  MODEL: follow current Linux.  Set this to True to get
# the older KVM behaviour.
NPT_PDPE_BIT8_RESERVED = False


# ---------------------------------------------------------------------------- result
@dataclass(frozen=True)
class WalkResult:
    """Outcome of one nested walk.  Field names are shared with ``tdpfast.hw.walk``."""

    ok: bool
    hpa: int | None
    fault: str | None  # None, "violation", "misconfig" (EPT) or "npf" (NPT)
    qualification: int | None  # EPT violation only
    error_code: int | None  # NPT #NPF only
    level: int  # leaf level (1/2/3) on success, else level of the faulting entry
    refs: int  # number of paging-structure entries read
    ad_writes: tuple[tuple[int, int, int], ...]  # (entry_hpa, old, new), walk order
    entries: tuple[int, ...]  # raw entries read, top level first


# ---------------------------------------------------------------------------- helpers
def gpa_index(gpa: int, level: int) -> int:
    """The 9-bit table index that ``gpa`` selects at ``level`` (SDM 28.2.2)."""
    return (gpa >> LEVEL_SHIFT[level]) & (ENTRIES_PER_TABLE - 1)


def gpa_indices(gpa: int, levels: int) -> tuple[int, ...]:
    """Indices for every level of a ``levels``-deep walk, root first (SDM 28.2.2)."""
    return tuple(gpa_index(gpa, level) for level in range(levels, 0, -1))


def validate_memory(memory: Mapping[int, bytes]) -> None:
    """Reject a malformed memory image with ValueError (naming the offending key).

    MODEL: the whole image is checked up front, before any entry is read, so that a
    malformed image is reported whether or not the walk would have reached the page.
    Keys must be non-negative, 4096-aligned ints (``bool`` is not accepted); values must
    be ``bytes`` or ``bytearray`` of exactly 4096 bytes.
    """
    if not isinstance(memory, Mapping):
        raise TypeError(f"memory must be a Mapping[int, bytes], got {type(memory).__name__}")
    for key, page in memory.items():
        if not isinstance(key, int) or isinstance(key, bool):
            raise ValueError(f"memory image key {key!r} is not an int")
        if key < 0 or key % PAGE_SIZE:
            raise ValueError(f"memory image key {key:#x} is not a 4096-aligned address")
        if not isinstance(page, (bytes, bytearray)) or len(page) != PAGE_SIZE:
            raise ValueError(f"memory image page at key {key:#x} is not exactly 4096 bytes")


def _check_u64(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an int in [0, 2**64), got {value!r}")


def decode_eptp(eptp: int, *, levels: int = 4, maxphyaddr: int = 46) -> tuple[int, bool]:
    """Check an EPTP against the VM-entry rules and return ``(root_hpa, eptp_ad_bit)``.

    Any violation raises ValueError: it is a VM-entry failure, not a walk fault
    (SDM 24.6.11; the checks of SDM 26.2.1.1).  The CPU is assumed to support
    UC and WB EPTP memory types, 4- and 5-level walks and EPT A/D flags.
    """
    _check_u64("EPTP", eptp)
    # Bits 2:0: memory type of the paging-structure accesses; only 0 (UC) and 6 (WB).
    memtype = eptp & EPTP_MEMTYPE_MASK
    if memtype not in EPTP_MEMTYPES_OK:
        raise ValueError(f"EPTP {eptp:#x}: memory type {memtype} is not UC (0) or WB (6)")
    # Bits 5:3: page-walk length minus one; 3 = 4-level, 4 = 5-level.
    pwl_minus_1 = (eptp & EPTP_PWL_MASK) >> EPTP_PWL_SHIFT
    if pwl_minus_1 != levels - 1:
        raise ValueError(
            f"EPTP {eptp:#x}: page-walk length field {pwl_minus_1} does not match "
            f"levels={levels} (expected {levels - 1})"
        )
    # Bit 6: A/D enable (allowed: A/D support is assumed).  Bit 7: SSS enable in newer
    # SDMs, reserved in the 2016 SDM -- ignored by this model [MODEL CHOICE].
    # Bits 11:8: reserved, must be zero.
    if eptp & EPTP_RSVD_LOW:
        raise ValueError(f"EPTP {eptp:#x}: reserved bits 11:8 are set")
    # Bits 63:MAXPHYADDR: reserved, must be zero.
    if eptp >> maxphyaddr:
        raise ValueError(f"EPTP {eptp:#x}: bits 63:{maxphyaddr} (above MAXPHYADDR) are set")
    # Bits MAXPHYADDR-1:12: the root table (PML4 or PML5) address.
    return eptp & ADDR_51_12, bool(eptp & EPTP_AD)


def decode_ncr3(ncr3: int, *, maxphyaddr: int = 46) -> int:
    """Check nCR3 and return the root table address (APM 15.25.3).

    nCR3 has the CR3 format: base in bits 51:12, PWT (3) and PCD (4) allowed.  Bits
    63:MAXPHYADDR are MBZ (a set one makes VMRUN fail with VMEXIT_INVALID, reported here
    as ValueError); the other bits of 11:0 are ignored [MODEL CHOICE].
    """
    _check_u64("nCR3", ncr3)
    if ncr3 >> maxphyaddr:
        raise ValueError(f"nCR3 {ncr3:#x}: bits 63:{maxphyaddr} (above MAXPHYADDR) are set")
    return ncr3 & ADDR_51_12


def _read_entry(memory: Mapping[int, bytes], table_hpa: int, index: int) -> tuple[int, int]:
    """Read one 8-byte little-endian entry: address = table_base | index << 3 (SDM 28.2.2)."""
    entry_hpa = table_hpa | (index * ENTRY_SIZE)
    try:
        page = memory[table_hpa]
    except KeyError:
        raise KeyError(
            f"paging-structure page {table_hpa:#x} is not in the memory image"
        ) from None
    offset = index * ENTRY_SIZE
    return entry_hpa, int.from_bytes(page[offset : offset + ENTRY_SIZE], "little")


def _leaf_hpa(entry: int, level: int, gpa: int) -> int:
    """Final HPA = leaf address bits 51:12 / 51:21 / 51:30 | GPA page offset (SDM 28.2.2)."""
    shift = LEAF_SHIFT[level]
    return (entry & _bits(51, shift)) | (gpa & _bits(shift - 1, 0))


def _ad_updates(used: list[tuple[int, int]], accessed: int, dirty: int, write: bool):
    """A/D updates after a successful walk (SDM 28.2.4 for EPT, APM 15.25.5 for NPT).

    A is set in every entry used if it is clear; D is set in the leaf (the last entry) on a
    write.  A leaf needing both gets one update carrying both bits; entries already in the
    target state get none (Bochs ``update_ept_access_dirty`` behaves the same way).
    """
    writes = []
    for i, (entry_hpa, old) in enumerate(used):
        new = old | accessed
        if write and i == len(used) - 1:
            new |= dirty
        if new != old:
            writes.append((entry_hpa, old, new))
    return tuple(writes)


# ---------------------------------------------------------------------------- walk
def walk(
    memory: Mapping[int, bytes],
    root_pointer: int,
    gpa: int,
    access: str,
    *,
    fmt: str = "ept",
    levels: int = 4,
    ad: bool = True,
    maxphyaddr: int = 46,
    exec_only: bool = True,
    user: bool = True,
    mbec: bool = False,
    paging_structure: bool = False,
) -> WalkResult:
    """Translate ``gpa`` through the EPT (``fmt="ept"``) or NPT (``fmt="npt"``) in ``memory``.

    ``access``: ``"r"`` read, ``"w"`` write, ``"x"`` supervisor-mode fetch, ``"xu"``
    user-mode fetch (checks EPT bit 10 when ``mbec``; same as ``"x"`` otherwise and on NPT).

    ``ad``: A/D updates wanted; for EPT they also need EPTP bit 6 (SDM 24.6.11, 28.2.4).

    ``exec_only``: IA32_VMX_EPT_VPID_CAP bit 0 (execute-only EPT entries supported).

    ``user``: accepted for interface compatibility and ignored.  The user/supervisor mode
    of the guest linear address only matters for the MBEC fetch check, and that choice is
    made by ``access`` ("xu" versus "x").

    ``paging_structure``: the access is to a guest paging-structure entry rather than the
    final translation of a linear address (which, with CR0.PG = 0, equals the GPA).

    Invalid arguments, an invalid EPTP/nCR3, a GPA at or above 2**maxphyaddr and a
    malformed memory image raise ValueError; a missing table page raises KeyError.
    """
    # ----- argument checks (MODEL: these are caller errors, never walk faults)
    if fmt not in ("ept", "npt"):
        raise ValueError(f"fmt must be 'ept' or 'npt', got {fmt!r}")
    if not isinstance(levels, int) or isinstance(levels, bool) or levels not in (4, 5):
        raise ValueError(f"levels must be 4 or 5, got {levels!r}")
    if access not in ACCESSES:
        raise ValueError(f"access must be one of {ACCESSES}, got {access!r}")
    if (
        not isinstance(maxphyaddr, int)
        or isinstance(maxphyaddr, bool)
        or not MIN_MAXPHYADDR <= maxphyaddr <= MAX_MAXPHYADDR
    ):
        raise ValueError(
            f"maxphyaddr must be an int in [{MIN_MAXPHYADDR}, {MAX_MAXPHYADDR}], "
            f"got {maxphyaddr!r}"
        )
    validate_memory(memory)

    # ----- root pointer (SDM 24.6.11 EPTP, APM 15.25.3 nCR3)
    if fmt == "ept":
        root, eptp_ad = decode_eptp(root_pointer, levels=levels, maxphyaddr=maxphyaddr)
        # EPT A/D updates happen only if EPTP[6] = 1 *and* the caller asked for them.
        ad_enabled = bool(ad) and eptp_ad
    else:
        root = decode_ncr3(root_pointer, maxphyaddr=maxphyaddr)
        # NPT always maintains A/D in hardware; ``ad`` lets the model switch it off.
        ad_enabled = bool(ad)

    # ----- GPA range: a GPA can never exceed MAXPHYADDR (SDM 28.2.2: the guest walk would
    # already have taken a reserved-bit #PF), so this is a caller error.
    if not isinstance(gpa, int) or isinstance(gpa, bool) or gpa < 0:
        raise ValueError(f"gpa must be a non-negative int, got {gpa!r}")
    if gpa >> maxphyaddr:
        raise ValueError(f"gpa {gpa:#x} is not below 2**maxphyaddr ({maxphyaddr})")

    if fmt == "ept":
        return _walk_ept(
            memory, root, gpa, access, levels, ad_enabled, maxphyaddr,
            bool(exec_only), bool(mbec), bool(paging_structure),
        )
    return _walk_npt(
        memory, root, gpa, access, levels, ad_enabled, maxphyaddr, bool(paging_structure)
    )


def _fault(kind: str, level: int, entries: list[int], *, qualification=None, error_code=None):
    return WalkResult(
        ok=False,
        hpa=None,
        fault=kind,
        qualification=qualification,
        error_code=error_code,
        level=level,
        refs=len(entries),
        ad_writes=(),
        entries=tuple(entries),
    )


def _walk_ept(memory, root, gpa, access, levels, ad_enabled, maxphyaddr, exec_only, mbec,
              paging_structure) -> WalkResult:
    # ----- what kind of access is this? (SDM 28.2.3.2)
    if paging_structure:
        # Guest paging-structure access: qualification bit 7 = 1, bit 8 = 0.
        gla_bits = QUAL_GLA_VALID
        if ad_enabled:
            # With EPTP[6] = 1 every guest paging-structure access counts as a write and
            # the qualification reports both read and write (SDM 28.2.3.2, 28.2.4).
            kind, access_bits = "write", QUAL_READ | QUAL_WRITE
        elif access == "w":
            # Writing guest A/D bits is a data write (SDM 28.2.3.2).  MODEL: report bit 1 only
            # (whether an RMW also sets bit 0 is implementation-specific).
            kind, access_bits = "write", QUAL_WRITE
        else:
            # Reading a guest paging-structure entry is a data read (SDM 28.2.3.2), even when
            # the walk serves an instruction fetch (MODEL: "x"/"xu" are reads here).
            kind, access_bits = "read", QUAL_READ
    else:
        # Final translation of a linear address (CR0.PG = 0: linear == GPA): bits 7 and 8.
        gla_bits = QUAL_GLA_VALID | QUAL_GLA_TRANSLATION
        kind, access_bits = {
            "r": ("read", QUAL_READ),
            "w": ("write", QUAL_WRITE),
            "x": ("fetch", QUAL_FETCH),
            "xu": ("fetch", QUAL_FETCH),
        }[access]
    # With MBEC a fetch for a user-mode linear address checks XU (bit 10) instead of XS
    # (bit 2) ("mode-based execute control for EPT", secondary control bit 22: the EPT
    # translation and violation sections of the SDM editions that describe it).
    user_fetch = kind == "fetch" and access == "xu" and mbec

    entries: list[int] = []

    # ----- 4-level EPT: GPA bits 51:48 must be zero, else an EPT violation whose
    # permission bits (3-6) read 0; nothing is read (SDM 28.2.2; newer SDMs'
    # note to the EPT-violation exit-qualification table).
    if levels == 4 and gpa >> 48:
        return _fault("violation", levels, entries, qualification=access_bits | gla_bits)

    # Address bits MAXPHYADDR..51 are reserved at every level (SDM 28.2.2).
    rsvd_addr = _bits(51, maxphyaddr)

    used: list[tuple[int, int]] = []
    acc_r = acc_w = acc_x = acc_xu = True
    table = root
    level = levels
    while True:
        entry_hpa, e = _read_entry(memory, table, gpa_index(gpa, level))
        entries.append(e)
        used.append((entry_hpa, e))

        r = bool(e & EPT_R)
        w = bool(e & EPT_W)
        x = bool(e & EPT_X)
        xu = mbec and bool(e & EPT_XU)  # bit 10 is ignored without MBEC (SDM 28.2.2)

        # Present iff any of bits 2:0 is set, or bit 10 with MBEC (SDM 28.2.2).
        # Not present -> EPT violation; qualification bits 3-6 read 0 (SDM 27.2.1).
        if not (r or w or x or xu):
            return _fault("violation", level, entries, qualification=access_bits | gla_bits)

        # Leaf: the PTE always; a PDE/PDPTE with bit 7 set (2-MB / 1-GB page; 1-GB pages
        # are assumed supported).  Bit 7 of a PML4E/PML5E is reserved (SDM 28.2.2).
        leaf = level == 1 or (level in (2, 3) and bool(e & EPT_PS))

        misconfig = False
        # Rule 1: R = 0 and W = 1 (XWR = 010 or 110), regardless of X/XU (SDM 28.2.3.1).
        if not r and w:
            misconfig = True
        # Rule 2: R = 0 without execute-only support, with X = 1 or (MBEC and XU = 1).
        if not r and not exec_only and (x or xu):
            misconfig = True
        # Rule 3: reserved bits of a present entry (SDM 28.2.2; Linux
        # __reset_rsvds_bits_mask_ept).
        rsvd = rsvd_addr  # MAXPHYADDR..51 at every level
        if level >= 4:
            rsvd |= _bits(7, 3)  # PML5E / PML4E: bits 7:3 (incl. PS)
        elif not leaf:
            rsvd |= _bits(6, 3)  # non-leaf PDPTE / PDE: bits 6:3
        elif level == 3:
            rsvd |= _bits(29, 12)  # 1-GB leaf: unaligned address bits 29:12
        elif level == 2:
            rsvd |= _bits(20, 12)  # 2-MB leaf: unaligned address bits 20:12
        if e & rsvd:
            misconfig = True
        # Rule 4: leaf memory type (bits 5:3) of 2, 3 or 7 (SDM 28.2.3.1).
        if leaf and ((e & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT) in EPT_BAD_MEMTYPES:
            misconfig = True
        # A misconfiguration never carries an exit qualification (SDM 28.2.3.3).
        if misconfig:
            return _fault("misconfig", level, entries)

        # Permissions accumulate as a logical AND over every level (SDM 28.2.3.3).
        acc_r = acc_r and r
        acc_w = acc_w and w
        acc_x = acc_x and x
        acc_xu = acc_xu and xu

        if leaf:
            break
        table = e & ADDR_51_12  # next table: entry bits 51:12 (SDM 28.2.2)
        level -= 1

    # ----- permission check after the leaf (SDM 28.2.3.3).
    if kind == "read":
        allowed = acc_r
    elif kind == "write":
        allowed = acc_w
    elif user_fetch:
        allowed = acc_xu
    else:
        allowed = acc_x
    if not allowed:
        # Bits 3/4/5 = AND of R/W/X (XS with MBEC); bit 6 = AND of XU, MBEC only (SDM 27.2.1).
        qual = access_bits | gla_bits
        qual |= QUAL_READABLE if acc_r else 0
        qual |= QUAL_WRITABLE if acc_w else 0
        qual |= QUAL_EXECUTABLE if acc_x else 0
        qual |= QUAL_USER_EXEC if (mbec and acc_xu) else 0
        # MODEL: a failed permission check is reported at the leaf's level.
        return _fault("violation", level, entries, qualification=qual)

    # ----- success: A (bit 8) in every entry used, D (bit 9) in the leaf on a write,
    # only when EPT A/D is enabled (SDM 28.2.4).
    ad_writes = _ad_updates(used, EPT_A, EPT_D, kind == "write") if ad_enabled else ()
    return WalkResult(
        ok=True,
        hpa=_leaf_hpa(e, level, gpa),
        fault=None,
        qualification=None,
        error_code=None,
        level=level,
        refs=len(entries),
        ad_writes=ad_writes,
        entries=tuple(entries),
    )


def _walk_npt(memory, root, gpa, access, levels, ad_enabled, maxphyaddr,
              paging_structure) -> WalkResult:
    # ----- access kind (APM 15.25.5).  Every nested access is a user access.  Nested walks for
    # guest page-table entries count as user writes (ROGPT off) and are never fetches.
    if paging_structure:
        kind = "write"
    else:
        kind = {"r": "read", "w": "write", "x": "fetch", "xu": "fetch"}[access]

    # ----- error-code bits that do not depend on where the walk stops (APM 15.25.6):
    # US always; RW on a write (always for guest-table walks); ID on a fetch of the final
    # translation only; bit 32 final GPA, bit 33 guest page-table GPA.
    base_err = PFERR_USER
    if kind == "write":
        base_err |= PFERR_WRITE
    if kind == "fetch":
        base_err |= PFERR_FETCH
    base_err |= PFERR_GUEST_PAGE if paging_structure else PFERR_GUEST_FINAL

    entries: list[int] = []

    # ----- 4-level NPT: a GPA with bits >= 48 set is beyond its reach.  The APM is silent;
    # MODEL (APM 15.25.3): #NPF with P = 0, reported before any entry is read.
    if levels == 4 and gpa >> 48:
        return _fault("npf", levels, entries, error_code=base_err)

    rsvd_addr = _bits(51, maxphyaddr)  # MAXPHYADDR..51 reserved at every level (APM 5.4)

    used: list[tuple[int, int]] = []
    acc_w = acc_u = True
    any_nx = False
    table = root
    level = levels
    while True:
        entry_hpa, e = _read_entry(memory, table, gpa_index(gpa, level))
        entries.append(e)
        used.append((entry_hpa, e))

        # P (bit 0) clear -> #NPF with P = 0 (APM 15.25.6); the other bits are ignored.
        if not e & NPT_P:
            return _fault("npf", level, entries, error_code=base_err)

        # PS (bit 7) makes a PDPE / PDE a leaf (1-GB pages assumed supported); a PTE is
        # always a leaf (APM 5.3).
        leaf = level == 1 or (level in (2, 3) and bool(e & NPT_PS))

        # Reserved bits (APM 5.4; Linux __reset_rsvds_bits_mask, host EFER.NXE = 1 assumed
        # so NX is not reserved) -> #NPF with P = 1 and RSV.
        rsvd = rsvd_addr
        if level >= 4:
            rsvd |= NPT_PS  # PS is reserved in PML5E / PML4E
            rsvd |= NPT_BIT8  # bit 8 reserved in (always non-leaf) PML4E / PML5E
        elif level == 3 and not leaf:
            if NPT_PDPE_BIT8_RESERVED:  # see the note at the constant's definition
                rsvd |= NPT_BIT8
        elif level == 3 and leaf:
            rsvd |= _bits(29, 13)  # 1-GB leaf: bit 12 is PAT, 29:13 must be zero
        elif level == 2 and leaf:
            rsvd |= _bits(20, 13)  # 2-MB leaf: bit 12 is PAT, 20:13 must be zero
        if e & rsvd:
            return _fault("npf", level, entries,
                          error_code=base_err | PFERR_PRESENT | PFERR_RSVD)

        # Permissions combine over all levels (APM 15.25.5): writable only if R/W at every
        # level; user only if U/S at every level; no fetch if NX at any level.
        acc_w = acc_w and bool(e & NPT_RW)
        acc_u = acc_u and bool(e & NPT_US)
        any_nx = any_nx or bool(e & NPT_NX)

        if leaf:
            break
        table = e & ADDR_51_12
        level -= 1

    # ----- permission check after the leaf (APM 15.25.5): the access is a user access, so
    # U/S must be 1 everywhere; a write needs R/W; a fetch faults on NX.
    if not acc_u or (kind == "write" and not acc_w) or (kind == "fetch" and any_nx):
        # MODEL: reported at the leaf's level.  P = 1: the entries were present.
        return _fault("npf", level, entries, error_code=base_err | PFERR_PRESENT)

    # ----- success: A (bit 5) in every entry used, D (bit 6) in the leaf on a write
    # (APM 15.25.5: guest-table walks always set A and D).
    ad_writes = _ad_updates(used, NPT_A, NPT_D, kind == "write") if ad_enabled else ()
    return WalkResult(
        ok=True,
        hpa=_leaf_hpa(e, level, gpa),
        fault=None,
        qualification=None,
        error_code=None,
        level=level,
        refs=len(entries),
        ad_writes=ad_writes,
        entries=tuple(entries),
    )
