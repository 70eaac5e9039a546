"""Tests for the pure-Python reference EPT/NPT walker (tdpfast/reference/walk.py).

Every vector below is derived by hand from the Intel SDM Vol. 3C (2016 edition, 28.2 "The
Extended Page Table Mechanism") and the AMD64 APM Vol. 2 (15.25 "Nested Paging"),
sections 1 (Intel EPT) and 2 (AMD NPT); the expected values are literals, not values
recomputed with the module under test.

The last test is a hypothesis differential test of the reference walker against the
C-backed ``tdpfast.hw.walk``.
"""

from __future__ import annotations

import dataclasses

import pytest

from tdpfast import hw
from tdpfast.reference import walk as ref

walk = ref.walk
WalkResult = ref.WalkResult

FIELDS = ("ok", "hpa", "fault", "qualification", "error_code", "level", "refs",
          "ad_writes", "entries")

# ------------------------------------------------------------------------------ image helpers
# Tables of a hand-built hierarchy, root first.
T0, T1, T2, T3, T4 = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000
MISSING = 0x7F000  # a page never put in any image

# GPA with PML4 index 3, PDPT index 5, PD index 7, PT index 9 and offset 0xabc (SDM 28.2.2):
# 3<<39 | 5<<30 | 7<<21 | 9<<12 | 0xabc.
GPA = 0x181_40E0_9ABC
# Entry addresses along GPA's path: table | index << 3.
E4, E3, E2, E1 = T0 + 0x18, T1 + 0x28, T2 + 0x38, T3 + 0x48

# Final 4-KiB page used by most vectors, and the expected HPA for GPA.
PAGE = 0xABCDE000
HPA = 0xABCDEABC

# EPTP values (SDM 24.6.11): memtype WB (6) in 2:0, PWL-1 in 5:3, A/D enable in bit 6.
EPTP4_AD = T0 | 0x5E  # 6 | 3<<3 | 1<<6
EPTP4 = T0 | 0x1E  # 6 | 3<<3, A/D disabled
EPTP5_AD = T0 | 0x66  # 6 | 4<<3 | 1<<6


def page_bytes(entries: dict[int, int]) -> bytes:
    """One 4-KiB table: ``entries`` maps index -> 64-bit value, little-endian."""
    buf = bytearray(4096)
    for index, value in entries.items():
        buf[index * 8 : index * 8 + 8] = value.to_bytes(8, "little")
    return bytes(buf)


def image(tables: dict[int, dict[int, int]]) -> dict[int, bytes]:
    return {base: page_bytes(entries) for base, entries in tables.items()}


def image4(pml4e: int, pdpte: int | None = None, pde: int | None = None,
           pte: int | None = None) -> dict[int, bytes]:
    """A 4-level image for GPA: entries at E4, E3, E2, E1 (those given)."""
    tables = {T0: {3: pml4e}}
    if pdpte is not None:
        tables[T1] = {5: pdpte}
    if pde is not None:
        tables[T2] = {7: pde}
    if pte is not None:
        tables[T3] = {9: pte}
    return image(tables)


def ept_leaf(perms: int = 0b111, memtype: int = 6, addr: int = PAGE) -> int:
    return addr | memtype << 3 | perms


def ept_chain(pte: int, upper: int = 0b111) -> dict[int, bytes]:
    """4-level EPT image for GPA: three non-leaf entries with permissions ``upper``."""
    return image4(T1 | upper, T2 | upper, T3 | upper, pte)


def npt_chain(pte: int, upper: int = 0b111) -> dict[int, bytes]:
    """4-level NPT image for GPA: three non-leaf entries with flags ``upper`` (P|RW|US)."""
    return image4(T1 | upper, T2 | upper, T3 | upper, pte)


def as_tuple(result) -> tuple:
    return tuple(getattr(result, f) for f in FIELDS)


def violation(qual, level, refs):
    return dict(ok=False, hpa=None, fault="violation", qualification=qual, error_code=None,
                level=level, refs=refs)


def check(result, **expected):
    for field, value in expected.items():
        assert getattr(result, field) == value, (field, getattr(result, field), value)


# ------------------------------------------------------------------------------ WalkResult
def test_walkresult_is_frozen_dataclass_with_exact_fields():
    assert tuple(f.name for f in dataclasses.fields(WalkResult)) == FIELDS
    r = walk(ept_chain(ept_leaf()), EPTP4_AD, GPA, "r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ok = False
    assert isinstance(r.ad_writes, tuple) and isinstance(r.entries, tuple)


# ------------------------------------------------------------------------------ EPTP decoding
@pytest.mark.parametrize(
    "eptp, levels, maxphyaddr, expected",
    [
        (0x10000 | 0x5E, 4, 46, (0x10000, True)),  # WB, 4-level, A/D
        (0x10000 | 0x18, 4, 46, (0x10000, False)),  # UC, 4-level
        (0x10000 | 0x26, 5, 46, (0x10000, False)),  # WB, 5-level
        (0x10000 | 0x66, 5, 52, (0x10000, True)),  # WB, 5-level, A/D
        (0x10000 | 0x9E, 4, 46, (0x10000, False)),  # bit 7 (SSS) is ignored
        (0x3FFF_FFFF_F000 | 0x1E, 4, 46, (0x3FFF_FFFF_F000, False)),  # top address bit 45
        (0xF_FFFF_FFFF_F000 | 0x1E, 4, 52, (0xF_FFFF_FFFF_F000, False)),
    ],
)
def test_decode_eptp_valid(eptp, levels, maxphyaddr, expected):
    assert ref.decode_eptp(eptp, levels=levels, maxphyaddr=maxphyaddr) == expected


@pytest.mark.parametrize(
    "eptp, levels, maxphyaddr",
    [
        *[(0x10000 | 0x18 | mt, 4, 46) for mt in (1, 2, 3, 4, 5, 7)],  # memtype not UC/WB
        (0x10000 | 0x26, 4, 46),  # PWL says 5 levels, walk is 4
        (0x10000 | 0x1E, 5, 46),  # PWL says 4 levels, walk is 5
        (0x10000 | 0x16, 4, 46),  # PWL-1 = 2 (3-level): never valid here
        (0x10000 | 0x3E, 4, 46),  # PWL-1 = 7
        *[(0x10000 | 0x1E | 1 << b, 4, 46) for b in (8, 9, 10, 11)],  # reserved 11:8
        (1 << 46 | 0x10000 | 0x1E, 4, 46),  # bit MAXPHYADDR
        (1 << 51 | 0x10000 | 0x1E, 4, 46),
        (1 << 63 | 0x10000 | 0x1E, 4, 52),  # bits 63:52 always reserved
        (1 << 52 | 0x10000 | 0x1E, 4, 52),
    ],
)
def test_decode_eptp_invalid(eptp, levels, maxphyaddr):
    with pytest.raises(ValueError):
        ref.decode_eptp(eptp, levels=levels, maxphyaddr=maxphyaddr)
    # The same EPTP fed to walk() is a VM-entry failure (ValueError), never a walk fault.
    with pytest.raises(ValueError):
        walk(ept_chain(ept_leaf()), eptp, 0x1000, "r", levels=levels, maxphyaddr=maxphyaddr)


def test_eptp_root_address_is_used():
    # The root at 0x20000 holds the path; T0 holds a decoy pointing to a missing page.
    mem = ept_chain(ept_leaf())
    mem[0x20000] = mem[T0]
    mem[T0] = page_bytes({3: MISSING | 7})
    r = walk(mem, 0x20000 | 0x1E, GPA, "r")
    check(r, ok=True, hpa=HPA, refs=4)
    with pytest.raises(KeyError):
        walk(mem, T0 | 0x1E, GPA, "r")


def test_ept_ad_needs_eptp_bit6_and_kwarg():
    mem = ept_chain(ept_leaf())
    assert walk(mem, EPTP4_AD, GPA, "w", ad=True).ad_writes != ()
    assert walk(mem, EPTP4_AD, GPA, "w", ad=False).ad_writes == ()
    assert walk(mem, EPTP4, GPA, "w", ad=True).ad_writes == ()
    assert walk(mem, EPTP4, GPA, "w", ad=False).ad_writes == ()


# ------------------------------------------------------------------------------ nCR3
def test_decode_ncr3():
    assert ref.decode_ncr3(0x10000, maxphyaddr=46) == 0x10000
    # PWT/PCD allowed, the other low bits ignored.
    assert ref.decode_ncr3(0x10000 | 0x18, maxphyaddr=46) == 0x10000
    assert ref.decode_ncr3(0x10000 | 0xFFF, maxphyaddr=46) == 0x10000
    assert ref.decode_ncr3(1 << 45 | 0x10000, maxphyaddr=46) == 1 << 45 | 0x10000
    assert ref.decode_ncr3(1 << 46 | 0x10000, maxphyaddr=52) == 1 << 46 | 0x10000
    for bad, m in ((1 << 46 | 0x10000, 46), (1 << 63 | 0x10000, 52), (1 << 52, 52)):
        with pytest.raises(ValueError):
            ref.decode_ncr3(bad, maxphyaddr=m)
        with pytest.raises(ValueError):
            walk(npt_chain(PAGE | 7), bad, GPA, "r", fmt="npt", maxphyaddr=m)


def test_ncr3_low_bits_do_not_change_the_walk():
    mem = npt_chain(PAGE | 7)
    a = walk(mem, T0, GPA, "r", fmt="npt")
    b = walk(mem, T0 | 0xFFF, GPA, "r", fmt="npt")
    assert as_tuple(a) == as_tuple(b)
    check(a, ok=True, hpa=HPA)


# ------------------------------------------------------------------------------ GPA indices
def test_gpa_index_decomposition():
    assert ref.gpa_indices(GPA, 4) == (3, 5, 7, 9)
    assert ref.gpa_indices(GPA, 5) == (0, 3, 5, 7, 9)
    # 0xa<<48 | 0x1ff<<39 | 1<<30 | 2<<21 | 0x1ff<<12 | 0x123
    assert ref.gpa_indices(0xA_FF80_405F_F123, 5) == (0xA, 0x1FF, 1, 2, 0x1FF)
    assert ref.gpa_indices(0xA_FF80_405F_F123, 4) == (0x1FF, 1, 2, 0x1FF)
    assert ref.gpa_indices(0xFFF, 4) == (0, 0, 0, 0)
    assert ref.gpa_indices(0x1000, 4) == (0, 0, 0, 1)
    assert ref.gpa_indices(0x20_0000, 4) == (0, 0, 1, 0)
    assert ref.gpa_indices(0x4000_0000, 4) == (0, 1, 0, 0)
    assert ref.gpa_indices(0x80_0000_0000, 4) == (1, 0, 0, 0)
    assert ref.gpa_indices(0x1_0000_0000_0000, 5) == (1, 0, 0, 0, 0)


def test_walk_reads_exactly_the_indexed_entries():
    # Decoys at the neighbouring indices point to a missing page: reading one would raise.
    decoy = MISSING | 7
    mem = image({
        T0: {2: decoy, 3: T1 | 7, 4: decoy},
        T1: {4: decoy, 5: T2 | 7, 6: decoy},
        T2: {6: decoy, 7: T3 | 7, 8: decoy},
        T3: {8: decoy, 9: ept_leaf(), 10: decoy},
    })
    r = walk(mem, EPTP4, GPA, "r")
    check(r, ok=True, hpa=HPA, level=1, refs=4,
          entries=(T1 | 7, T2 | 7, T3 | 7, 0xABCDE037))


# ------------------------------------------------------------------------------ full EPT walks
def test_ept_4level_read_with_ad():
    r = walk(ept_chain(ept_leaf()), EPTP4_AD, GPA, "r")
    assert r == WalkResult(
        ok=True, hpa=0xABCDEABC, fault=None, qualification=None, error_code=None, level=1,
        refs=4,
        ad_writes=(
            (0x10018, 0x11007, 0x11107),
            (0x11028, 0x12007, 0x12107),
            (0x12038, 0x13007, 0x13107),
            (0x13048, 0xABCDE037, 0xABCDE137),
        ),
        entries=(0x11007, 0x12007, 0x13007, 0xABCDE037),
    )


def test_ept_4level_write_sets_a_and_d_in_one_leaf_update():
    r = walk(ept_chain(ept_leaf()), EPTP4_AD, GPA, "w")
    assert r.ok and r.hpa == 0xABCDEABC and r.level == 1 and r.refs == 4
    assert r.ad_writes == (
        (0x10018, 0x11007, 0x11107),
        (0x11028, 0x12007, 0x12107),
        (0x12038, 0x13007, 0x13107),
        (0x13048, 0xABCDE037, 0xABCDE337),
    )


def test_ept_ad_writes_skip_entries_already_set():
    # PML4E and PDE already accessed, leaf already accessed and dirty.
    mem = image4(T1 | 0x107, T2 | 7, T3 | 0x107, ept_leaf() | 0x300)
    r = walk(mem, EPTP4_AD, GPA, "w")
    assert r.ad_writes == ((0x11028, 0x12007, 0x12107),)
    # Leaf accessed but clean: a write sets only D there.
    mem = image4(T1 | 0x107, T2 | 0x107, T3 | 0x107, ept_leaf() | 0x100)
    assert walk(mem, EPTP4_AD, GPA, "w").ad_writes == ((0x13048, 0xABCDE137, 0xABCDE337),)
    assert walk(mem, EPTP4_AD, GPA, "r").ad_writes == ()


def test_ept_no_ad_writes_on_fault():
    r = walk(ept_chain(ept_leaf(perms=0b001)), EPTP4_AD, GPA, "w")
    check(r, ok=False, fault="violation", ad_writes=())


def test_ept_2mb_leaf():
    pde = 0x4000_0000 | 0x80 | 0x37  # PS, WB, RWX
    r = walk(image4(T1 | 7, T2 | 7, pde), EPTP4_AD, GPA, "w")
    assert r == WalkResult(
        ok=True, hpa=0x4000_9ABC, fault=None, qualification=None, error_code=None, level=2,
        refs=3,
        ad_writes=(
            (0x10018, 0x11007, 0x11107),
            (0x11028, 0x12007, 0x12107),
            (0x12038, 0x400000B7, 0x400003B7),
        ),
        entries=(0x11007, 0x12007, 0x400000B7),
    )


def test_ept_1gb_leaf():
    pdpte = 0x80_0000_0000 | 0x80 | 0x37
    r = walk(image4(T1 | 7, pdpte), EPTP4, GPA, "x")
    check(r, ok=True, hpa=0x80_00E0_9ABC, level=3, refs=2, ad_writes=(),
          entries=(0x11007, 0x80_0000_00B7), fault=None, qualification=None)


def test_ept_pte_bit7_is_ignored_and_high_bits_ignored():
    # PTE bit 7 is ignored; bits 63:52 (SVE, SPP, ...) are ignored; IPAT (6) is allowed.
    pte = 1 << 63 | 1 << 61 | 1 << 52 | ept_leaf() | 0x80 | 0x40 | 0x800
    r = walk(ept_chain(pte), EPTP4, GPA, "r")
    check(r, ok=True, hpa=HPA, level=1)


def test_ept_address_bits_above_maxphyaddr_ok_when_maxphyaddr_52():
    pte = ept_leaf(addr=1 << 51 | 1 << 46 | PAGE)
    r = walk(ept_chain(pte), EPTP4, GPA, "r", maxphyaddr=52)
    check(r, ok=True, hpa=1 << 51 | 1 << 46 | HPA)


# ------------------------------------------------------------------------------ permissions
# (leaf XWR, access) -> qualification of the violation, or None for success.  Upper entries
# are RWX; final translation, so bits 7 and 8 (0x180) are set.  Qualification = access
# bit (0 read, 1 write, 2 fetch) | leaf R/W/X in bits 3/4/5 (SDM 27.2.1).
LEAF_PERMS = {
    (0b001, "r"): None, (0b001, "w"): 0x18A, (0b001, "x"): 0x18C,
    (0b011, "r"): None, (0b011, "w"): None, (0b011, "x"): 0x19C,
    (0b101, "r"): None, (0b101, "w"): 0x1AA, (0b101, "x"): None,
    (0b111, "r"): None, (0b111, "w"): None, (0b111, "x"): None,
    (0b100, "r"): 0x1A1, (0b100, "w"): 0x1A2, (0b100, "x"): None,  # execute-only
    (0b000, "r"): 0x181, (0b000, "w"): 0x182, (0b000, "x"): 0x184,  # not present
}


@pytest.mark.parametrize("perms, access", sorted(LEAF_PERMS))
def test_ept_leaf_permissions(perms, access):
    r = walk(ept_chain(ept_leaf(perms)), EPTP4, GPA, access)
    qual = LEAF_PERMS[(perms, access)]
    if qual is None:
        check(r, ok=True, hpa=HPA, fault=None, qualification=None, error_code=None,
              level=1, refs=4)
    else:
        check(r, ok=False, hpa=None, fault="violation", qualification=qual,
              error_code=None, level=1, refs=4, ad_writes=())


@pytest.mark.parametrize(
    "upper_levels, access, qual",
    [
        # PDPTE without W: the write fails even though the leaf is RWX; bit 4 reads 0.
        ((7, 0b101, 7), "w", 0x1AA),
        # PML4E without X.
        ((0b011, 7, 7), "x", 0x19C),
        # PDE execute-only: read fails, bits 3 and 4 read 0.
        ((7, 7, 0b100), "r", 0x1A1),
        # Restrictions on different levels AND together: W missing in the PML4E, X in the
        # PDE, so only bit 3 (R) survives.
        ((0b101, 7, 0b011), "w", 0x18A),
        ((0b101, 7, 0b011), "x", 0x18C),
    ],
)
def test_ept_permissions_accumulate_over_levels(upper_levels, access, qual):
    a, b, c = upper_levels
    r = walk(image4(T1 | a, T2 | b, T3 | c, ept_leaf()), EPTP4, GPA, access)
    check(r, ok=False, hpa=None, fault="violation", qualification=qual, level=1, refs=4,
          entries=(T1 | a, T2 | b, T3 | c, 0xABCDE037))
    if access != "r":
        # R is set at every level, so a read of the same GPA succeeds.
        check(walk(image4(T1 | a, T2 | b, T3 | c, ept_leaf()), EPTP4, GPA, "r"), ok=True,
              hpa=HPA)


@pytest.mark.parametrize("level, refs", [(4, 1), (3, 2), (2, 3), (1, 4)])
def test_ept_not_present_at_each_level(level, refs):
    # A not-present entry ignores bits 62:3 (here: every one of them set, still no misconfig).
    junk = 0x7FFF_FFFF_FFFF_FFF8
    entries = [T1 | 7, T2 | 7, T3 | 7, ept_leaf()]
    entries[4 - level] = junk
    r = walk(image4(*entries), EPTP4_AD, GPA, "w")
    check(r, ok=False, hpa=None, fault="violation", qualification=0x182, error_code=None,
          level=level, refs=refs, ad_writes=(), entries=tuple(entries[:refs]))


# ------------------------------------------------------------------------------ MBEC
def test_mbec_user_fetch_uses_xu():
    mem = ept_chain(ept_leaf(0b001) | 0x400, upper=0x407)  # leaf R + XU, uppers RWX + XU
    check(walk(mem, EPTP4, GPA, "xu", mbec=True), ok=True, hpa=HPA)
    # Supervisor fetch needs XS (bit 2): bits 3 (R) and 6 (XU) set, 4 and 5 clear.
    check(walk(mem, EPTP4, GPA, "x", mbec=True), ok=False, fault="violation",
          qualification=0x1CC, level=1)
    # Without MBEC bit 10 is ignored and "xu" is an ordinary fetch; bit 6 is not reported.
    check(walk(mem, EPTP4, GPA, "xu", mbec=False), ok=False, fault="violation",
          qualification=0x18C, level=1)


def test_mbec_xu_missing():
    mem = ept_chain(ept_leaf(0b111), upper=0x407)
    check(walk(mem, EPTP4, GPA, "x", mbec=True), ok=True)
    check(walk(mem, EPTP4, GPA, "xu", mbec=True), ok=False, fault="violation",
          qualification=0x1BC, level=1)
    # A read violation under MBEC reports bit 6 = AND of XU.
    mem = ept_chain(ept_leaf(0b100) | 0x400, upper=0x407)
    check(walk(mem, EPTP4, GPA, "r", mbec=True), ok=False, fault="violation",
          qualification=0x1E1, level=1)


def test_mbec_xu_only_entry_presence():
    mem = ept_chain(ept_leaf(0b000) | 0x400, upper=0x407)
    # Without MBEC an entry with only bit 10 is not present.
    check(walk(mem, EPTP4, GPA, "xu", mbec=False), ok=False, fault="violation",
          qualification=0x184, level=1, refs=4)
    # With MBEC it is present (execute-only for user mode).
    check(walk(mem, EPTP4, GPA, "xu", mbec=True), ok=True, hpa=HPA)
    check(walk(mem, EPTP4, GPA, "x", mbec=True), ok=False, fault="violation",
          qualification=0x1C4, level=1)
    # ... and a misconfiguration without execute-only support (rule 2).
    check(walk(mem, EPTP4, GPA, "xu", mbec=True, exec_only=False), ok=False,
          fault="misconfig", qualification=None, level=1, refs=4)


def test_user_kwarg_is_ignored():
    mem = ept_chain(ept_leaf(0b101) | 0x400, upper=0x407)
    for access in ("r", "w", "x", "xu"):
        for mbec in (False, True):
            a = walk(mem, EPTP4_AD, GPA, access, mbec=mbec, user=True)
            b = walk(mem, EPTP4_AD, GPA, access, mbec=mbec, user=False)
            assert as_tuple(a) == as_tuple(b)


# ------------------------------------------------------------------------------ misconfig
def misconfig(level, refs):
    return dict(ok=False, hpa=None, fault="misconfig", qualification=None, error_code=None,
                level=level, refs=refs, ad_writes=())


@pytest.mark.parametrize("perms", [0b010, 0b110])
@pytest.mark.parametrize("access", ["r", "w", "x"])
def test_ept_misconfig_write_without_read(perms, access):
    check(walk(ept_chain(ept_leaf(perms)), EPTP4, GPA, access), **misconfig(1, 4))
    # Also at non-leaf levels: PDE, PDPTE, PML4E.
    check(walk(image4(T1 | 7, T2 | 7, T3 | perms, ept_leaf()), EPTP4, GPA, access),
          **misconfig(2, 3))
    check(walk(image4(T1 | 7, T2 | perms, T3 | 7, ept_leaf()), EPTP4, GPA, access),
          **misconfig(3, 2))
    check(walk(image4(T1 | perms, T2 | 7, T3 | 7, ept_leaf()), EPTP4, GPA, access),
          **misconfig(4, 1))
    # Rule 1 holds whether or not execute-only is supported, and with MBEC + XU.
    check(walk(ept_chain(ept_leaf(perms) | 0x400, upper=0x407), EPTP4, GPA, access,
               exec_only=False, mbec=True), **misconfig(1, 4))


def test_ept_execute_only_depends_on_capability():
    mem = ept_chain(ept_leaf(0b100))
    check(walk(mem, EPTP4, GPA, "x", exec_only=True), ok=True, hpa=HPA)
    check(walk(mem, EPTP4, GPA, "x", exec_only=False), **misconfig(1, 4))
    check(walk(mem, EPTP4, GPA, "r", exec_only=False), **misconfig(1, 4))
    # Execute-only non-leaf PDPTE without the capability.
    mem = image4(T1 | 7, T2 | 0b100, T3 | 7, ept_leaf())
    check(walk(mem, EPTP4, GPA, "x", exec_only=False), **misconfig(3, 2))
    check(walk(mem, EPTP4, GPA, "x", exec_only=True), ok=True, hpa=HPA)


@pytest.mark.parametrize("memtype, bad", [(0, False), (1, False), (2, True), (3, True),
                                          (4, False), (5, False), (6, False), (7, True)])
def test_ept_leaf_memory_type(memtype, bad):
    r = walk(ept_chain(ept_leaf(memtype=memtype)), EPTP4, GPA, "r")
    if bad:
        check(r, **misconfig(1, 4))
    else:
        check(r, ok=True, hpa=HPA)
    # Same for 2-MB and 1-GB leaves.
    r = walk(image4(T1 | 7, T2 | 7, 0x4000_0000 | 0x80 | memtype << 3 | 7), EPTP4, GPA, "r")
    if bad:
        check(r, **misconfig(2, 3))
    else:
        check(r, ok=True, hpa=0x4000_9ABC)
    r = walk(image4(T1 | 7, 0x80_0000_0000 | 0x80 | memtype << 3 | 7), EPTP4, GPA, "r")
    if bad:
        check(r, **misconfig(3, 2))
    else:
        check(r, ok=True, hpa=0x80_00E0_9ABC)


@pytest.mark.parametrize("bit", [3, 4, 5, 6])
def test_ept_nonleaf_pdpte_pde_reserved_6_3(bit):
    check(walk(image4(T1 | 7, T2 | 7, T3 | 7 | 1 << bit, ept_leaf()), EPTP4, GPA, "r"),
          **misconfig(2, 3))
    check(walk(image4(T1 | 7, T2 | 7 | 1 << bit, T3 | 7, ept_leaf()), EPTP4, GPA, "r"),
          **misconfig(3, 2))


@pytest.mark.parametrize("bit", [3, 4, 5, 6, 7])
def test_ept_pml4e_reserved_7_3(bit):
    check(walk(image4(T1 | 7 | 1 << bit, T2 | 7, T3 | 7, ept_leaf()), EPTP4, GPA, "r"),
          **misconfig(4, 1))


def test_ept_ps_in_pml4e_is_misconfig():
    # A PML4E never maps a page: bit 7 is reserved (SDM 28.2.2).
    check(walk(image4(0x80 | 0x37), EPTP4, GPA, "r"), **misconfig(4, 1))


@pytest.mark.parametrize("ignored_bit", [8, 9, 10, 11, 52, 62, 63])
def test_ept_nonleaf_ignored_bits(ignored_bit):
    mem = image4(T1 | 7 | 1 << ignored_bit, T2 | 7 | 1 << ignored_bit,
                 T3 | 7 | 1 << ignored_bit, ept_leaf())
    check(walk(mem, EPTP4, GPA, "r", ad=False), ok=True, hpa=HPA)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize("bit", [46, 47, 51])
def test_ept_reserved_address_bits(level, bit):
    entries = [T1 | 7, T2 | 7, T3 | 7, ept_leaf()]
    entries[4 - level] |= 1 << bit
    check(walk(image4(*entries), EPTP4, GPA, "r", maxphyaddr=46), **misconfig(level, 5 - level))


@pytest.mark.parametrize("bit, bad", [(12, True), (16, True), (20, True), (21, False)])
def test_ept_2mb_alignment(bit, bad):
    pde = (0x4000_0000 | 1 << bit) | 0x80 | 0x37
    r = walk(image4(T1 | 7, T2 | 7, pde), EPTP4, GPA, "r")
    if bad:
        check(r, **misconfig(2, 3))
    else:
        check(r, ok=True, hpa=0x4020_9ABC, level=2)


@pytest.mark.parametrize("bit, bad", [(12, True), (21, True), (29, True), (30, False)])
def test_ept_1gb_alignment(bit, bad):
    pdpte = (0x80_0000_0000 | 1 << bit) | 0x80 | 0x37
    r = walk(image4(T1 | 7, pdpte), EPTP4, GPA, "r")
    if bad:
        check(r, **misconfig(3, 2))
    else:
        check(r, ok=True, hpa=0x80_40E0_9ABC, level=3)


def test_ept_misconfig_wins_over_permission():
    # A read-only leaf with memtype 7: the misconfiguration is found before the
    # permission check, so a write gets a misconfig, not a violation.
    check(walk(ept_chain(ept_leaf(0b001, memtype=7)), EPTP4, GPA, "w"), **misconfig(1, 4))


def test_ept_stops_at_first_fault():
    # PDPTE misconfigured, PDE not present: the walk stops at the PDPTE.
    mem = image4(T1 | 7, T2 | 0b010, 0, ept_leaf())
    check(walk(mem, EPTP4, GPA, "r"), **misconfig(3, 2))
    # PDPTE not present, PDE misconfigured (and never read).
    mem = image4(T1 | 7, 0, T3 | 0b010, ept_leaf())
    check(walk(mem, EPTP4, GPA, "r"), **violation(0x181, 3, 2))


# ------------------------------------------------------------------------------ 5-level
GPA5 = 0xA_FF80_405F_F123  # indices 0xa, 0x1ff, 1, 2, 0x1ff; offset 0x123


def test_ept_5level_walk():
    mem = image({
        T0: {0xA: T1 | 7},
        T1: {0x1FF: T2 | 7},
        T2: {1: T3 | 7},
        T3: {2: T4 | 7},
        T4: {0x1FF: ept_leaf(addr=0xF_0000_0000_0000)},
    })
    r = walk(mem, EPTP5_AD, GPA5, "w", levels=5, maxphyaddr=52)
    assert r == WalkResult(
        ok=True, hpa=0xF_0000_0000_0123, fault=None, qualification=None, error_code=None,
        level=1, refs=5,
        ad_writes=(
            (T0 + 0x50, T1 | 7, T1 | 0x107),
            (T1 + 0xFF8, T2 | 7, T2 | 0x107),
            (T2 + 0x8, T3 | 7, T3 | 0x107),
            (T3 + 0x10, T4 | 7, T4 | 0x107),
            (T4 + 0xFF8, 0xF_0000_0000_0037, 0xF_0000_0000_0337),
        ),
        entries=(T1 | 7, T2 | 7, T3 | 7, T4 | 7, 0xF_0000_0000_0037),
    )


def test_ept_5level_low_gpa_uses_pml5_index_0():
    mem = image({T0: {0: T1 | 7}, T1: {3: T2 | 7}, T2: {5: T3 | 7}, T3: {7: T4 | 7},
                 T4: {9: ept_leaf()}})
    r = walk(mem, T0 | 0x26, GPA, "r", levels=5)
    check(r, ok=True, hpa=HPA, level=1, refs=5, ad_writes=())


@pytest.mark.parametrize("bit", [3, 4, 5, 6, 7])
def test_ept_pml5e_reserved_7_3(bit):
    mem = image({T0: {0: T1 | 7 | 1 << bit}, T1: {3: T2 | 7}})
    check(walk(mem, T0 | 0x26, GPA, "r", levels=5), **misconfig(5, 1))


def test_ept_4level_gpa_above_48_bits():
    # GPA bits 51:48 must be zero with 4-level EPT: violation, permission bits 3-6 zero,
    # nothing read (an empty image proves it).  SDM 28.2.2.
    for bit in (48, 50, 51):
        gpa = 1 << bit | 0x1000
        check(walk({}, EPTP4_AD, gpa, "r", maxphyaddr=52),
              **violation(0x181, 4, 0), ad_writes=(), entries=())
        check(walk({}, EPTP4_AD, gpa, "w", maxphyaddr=52), **violation(0x182, 4, 0))
        check(walk({}, EPTP4_AD, gpa, "x", maxphyaddr=52), **violation(0x184, 4, 0))
        check(walk({}, EPTP4_AD, gpa, "xu", maxphyaddr=52, mbec=True),
              **violation(0x184, 4, 0))
        # A guest paging-structure access with EPT A/D: read+write, bit 7 only.
        check(walk({}, EPTP4_AD, gpa, "r", maxphyaddr=52, paging_structure=True),
              **violation(0x083, 4, 0))
        check(walk({}, EPTP4, gpa, "r", maxphyaddr=52, paging_structure=True),
              **violation(0x081, 4, 0))


def test_ept_5level_reaches_gpa_bit_50():
    gpa = 1 << 50 | 0x1000  # PML5 index 4, others 0, PT index 1
    mem = image({T0: {4: T1 | 7}, T1: {0: T2 | 7}, T2: {0: T3 | 7}, T3: {0: T4 | 7},
                 T4: {1: ept_leaf()}})
    check(walk(mem, EPTP5_AD, gpa, "r", levels=5, maxphyaddr=52), ok=True, hpa=PAGE,
          refs=5)


def test_gpa_at_or_above_maxphyaddr_is_value_error():
    mem = ept_chain(ept_leaf())
    with pytest.raises(ValueError):
        walk(mem, EPTP4, 1 << 46, "r", maxphyaddr=46)
    with pytest.raises(ValueError):
        walk(mem, T0, 1 << 46, "r", fmt="npt", maxphyaddr=46)
    with pytest.raises(ValueError):
        walk(mem, EPTP5_AD, 1 << 52, "r", levels=5, maxphyaddr=52)
    with pytest.raises(ValueError):
        walk(mem, EPTP4, -1, "r")
    # 2**46 - 1 is fine (it simply is not mapped here).
    r = walk(mem, EPTP4, (1 << 46) - 1, "r", maxphyaddr=46)
    check(r, **violation(0x181, 4, 1))


# ------------------------------------------------------------------------------ EPT guest tables
def test_ept_paging_structure_with_ad_is_a_write():
    # Success: D is set in the leaf although the caller asked for a read.
    r = walk(ept_chain(ept_leaf()), EPTP4_AD, GPA, "r", paging_structure=True)
    check(r, ok=True, hpa=HPA)
    assert r.ad_writes[-1] == (0x13048, 0xABCDE037, 0xABCDE337)
    # Read+execute leaf: needs W -> violation with bits 0, 1, 3, 5, 7 (not 8).
    for access in ("r", "w", "x", "xu"):
        r = walk(ept_chain(ept_leaf(0b101)), EPTP4_AD, GPA, access, paging_structure=True)
        check(r, **violation(0x0AB, 1, 4))
    # Not present: bits 0, 1, 7.
    check(walk(ept_chain(0), EPTP4_AD, GPA, "x", paging_structure=True),
          **violation(0x083, 1, 4))


def test_ept_paging_structure_without_ad():
    mem = ept_chain(ept_leaf(0b101))
    # A read of a guest table: needs R only, no A/D.
    check(walk(mem, EPTP4, GPA, "r", paging_structure=True), ok=True, hpa=HPA, ad_writes=())
    # The caller's ad=False also disables it even with EPTP[6] = 1.
    check(walk(mem, EPTP4_AD, GPA, "r", paging_structure=True, ad=False), ok=True,
          ad_writes=())
    # A guest A/D update is a write: bit 1 and bit 7.
    check(walk(mem, EPTP4, GPA, "w", paging_structure=True), **violation(0x0AA, 1, 4))
    # A table read made for a fetch is a data read (MODEL): R-only leaf succeeds...
    check(walk(ept_chain(ept_leaf(0b001)), EPTP4, GPA, "x", paging_structure=True),
          ok=True, hpa=HPA)
    # ... and an execute-only leaf fails as a read: bits 0, 5, 7.
    check(walk(ept_chain(ept_leaf(0b100)), EPTP4, GPA, "x", paging_structure=True),
          **violation(0x0A1, 1, 4))
    check(walk(ept_chain(ept_leaf(0b100)), EPTP4, GPA, "xu", paging_structure=True,
               mbec=True), **violation(0x0A1, 1, 4))


# ------------------------------------------------------------------------------ NPT
def npf(err, level, refs):
    return dict(ok=False, hpa=None, fault="npf", qualification=None, error_code=err,
                level=level, refs=refs, ad_writes=())


def test_npt_4level_read_and_write_with_ad():
    mem = npt_chain(PAGE | 7)
    r = walk(mem, T0, GPA, "r", fmt="npt")
    assert r == WalkResult(
        ok=True, hpa=HPA, fault=None, qualification=None, error_code=None, level=1, refs=4,
        ad_writes=(
            (0x10018, 0x11007, 0x11027),
            (0x11028, 0x12007, 0x12027),
            (0x12038, 0x13007, 0x13027),
            (0x13048, 0xABCDE007, 0xABCDE027),
        ),
        entries=(0x11007, 0x12007, 0x13007, 0xABCDE007),
    )
    r = walk(mem, T0, GPA, "w", fmt="npt")
    assert r.ad_writes[-1] == (0x13048, 0xABCDE007, 0xABCDE067)
    assert len(r.ad_writes) == 4
    assert walk(mem, T0, GPA, "w", fmt="npt", ad=False).ad_writes == ()
    # NPT ignores EPT-only knobs.
    for kw in (dict(mbec=True), dict(exec_only=False)):
        assert as_tuple(walk(mem, T0, GPA, "w", fmt="npt", **kw)) == as_tuple(r)


def test_npt_large_pages():
    # 2-MB leaf: PS; bit 12 is PAT and allowed.
    r = walk(image4(T1 | 7, T2 | 7, 0x4000_0000 | 0x1000 | 0x87), T0, GPA, "w", fmt="npt")
    check(r, ok=True, hpa=0x4000_9ABC, level=2, refs=3)
    assert r.ad_writes[-1] == (0x12038, 0x4000_1087, 0x4000_10E7)
    # 1-GB leaf.
    r = walk(image4(T1 | 7, 0x80_0000_0000 | 0x1000 | 0x87), T0, GPA, "r", fmt="npt")
    check(r, ok=True, hpa=0x80_00E0_9ABC, level=3, refs=2)


@pytest.mark.parametrize("level, refs", [(4, 1), (3, 2), (2, 3), (1, 4)])
def test_npt_not_present(level, refs):
    entries = [T1 | 7, T2 | 7, T3 | 7, PAGE | 7]
    entries[4 - level] = 0xFFFF_FFFF_FFFF_FFFE  # everything but P
    mem = image4(*entries)
    check(walk(mem, T0, GPA, "r", fmt="npt"), **npf(0x1_0000_0004, level, refs))
    check(walk(mem, T0, GPA, "w", fmt="npt"), **npf(0x1_0000_0006, level, refs))
    check(walk(mem, T0, GPA, "x", fmt="npt"), **npf(0x1_0000_0014, level, refs))
    check(walk(mem, T0, GPA, "xu", fmt="npt"), **npf(0x1_0000_0014, level, refs))
    # Guest page-table walk: bit 33, RW always, never ID.
    for access in ("r", "w", "x", "xu"):
        check(walk(mem, T0, GPA, access, fmt="npt", paging_structure=True),
              **npf(0x2_0000_0006, level, refs))


RSV_READ = 0x1_0000_000D  # P | US | RSV | final GPA


@pytest.mark.parametrize(
    "entries, level",
    [
        # Address bits MAXPHYADDR (46) .. 51 at each level.
        ((T1 | 7 | 1 << 46, T2 | 7, T3 | 7, PAGE | 7), 4),
        ((T1 | 7, T2 | 7 | 1 << 51, T3 | 7, PAGE | 7), 3),
        ((T1 | 7, T2 | 7, T3 | 7 | 1 << 47, PAGE | 7), 2),
        ((T1 | 7, T2 | 7, T3 | 7, PAGE | 7 | 1 << 46), 1),
        # PS and bit 8 in the PML4E.
        ((T1 | 0x87, T2 | 7, T3 | 7, PAGE | 7), 4),
        ((T1 | 0x107, T2 | 7, T3 | 7, PAGE | 7), 4),
        # Misaligned large pages (bit 12 is PAT, 20:13 / 29:13 reserved).
        ((T1 | 7, T2 | 7, 0x4000_0000 | 1 << 13 | 0x87), 2),
        ((T1 | 7, T2 | 7, 0x4000_0000 | 1 << 20 | 0x87), 2),
        ((T1 | 7, 0x80_0000_0000 | 1 << 13 | 0x87), 3),
        ((T1 | 7, 0x80_0000_0000 | 1 << 29 | 0x87), 3),
    ],
)
def test_npt_reserved_bits(entries, level):
    r = walk(image4(*entries), T0, GPA, "r", fmt="npt")
    check(r, **npf(RSV_READ, level, 5 - level))
    r = walk(image4(*entries), T0, GPA, "x", fmt="npt", paging_structure=True)
    check(r, **npf(0x2_0000_000F, level, 5 - level))


def test_npt_reserved_wins_over_later_not_present_and_permissions():
    # U=0 in the PML4E (a permission problem) and a reserved bit in the PDE: RSV is found
    # during the walk, before the permission check.
    mem = image4(T1 | 3, T2 | 7, T3 | 7 | 1 << 46, PAGE | 7)
    check(walk(mem, T0, GPA, "r", fmt="npt"), **npf(RSV_READ, 2, 3))
    # U=0 in the PML4E and a not-present PTE: P=0 at level 1.
    mem = image4(T1 | 3, T2 | 7, T3 | 7, 0)
    check(walk(mem, T0, GPA, "r", fmt="npt"), **npf(0x1_0000_0004, 1, 4))


def test_npt_bit8_in_lower_nonleaf_entries_is_ignored():
    # MODEL (Linux since 2020): AMD reserves bit 8 only in PML4E/PML5E, not in PDPE/PDE.
    mem = image4(T1 | 7, T2 | 0x107, T3 | 0x107, PAGE | 0x107)
    check(walk(mem, T0, GPA, "r", fmt="npt"), ok=True, hpa=HPA)


def test_npt_pdpe_bit8_switch(monkeypatch):
    monkeypatch.setattr(ref, "NPT_PDPE_BIT8_RESERVED", True)
    mem = image4(T1 | 7, T2 | 0x107, T3 | 7, PAGE | 7)
    check(walk(mem, T0, GPA, "r", fmt="npt"), **npf(RSV_READ, 3, 2))


def test_npt_pml5e_reserved():
    for bad in (T1 | 0x87, T1 | 0x107, T1 | 7 | 1 << 46):
        mem = image({T0: {0: bad}, T1: {3: T2 | 7}})
        check(walk(mem, T0, GPA, "r", fmt="npt", levels=5), **npf(RSV_READ, 5, 1))


def test_npt_user_bit_required_everywhere():
    for level in (4, 3, 2, 1):
        entries = [T1 | 7, T2 | 7, T3 | 7, PAGE | 7]
        entries[4 - level] &= ~4
        mem = image4(*entries)
        for access, err in (("r", 0x1_0000_0005), ("w", 0x1_0000_0007),
                            ("x", 0x1_0000_0015)):
            # Reported at the leaf level (MODEL), with P = 1.
            check(walk(mem, T0, GPA, access, fmt="npt"), **npf(err, 1, 4))


def test_npt_write_to_read_only():
    for level in (4, 3, 2, 1):
        entries = [T1 | 7, T2 | 7, T3 | 7, PAGE | 7]
        entries[4 - level] &= ~2
        mem = image4(*entries)
        check(walk(mem, T0, GPA, "r", fmt="npt"), ok=True, hpa=HPA)
        check(walk(mem, T0, GPA, "x", fmt="npt"), ok=True, hpa=HPA)
        check(walk(mem, T0, GPA, "w", fmt="npt"), **npf(0x1_0000_0007, 1, 4))
        # Guest page-table walks are writes: bit 33 | RW | US | P.
        check(walk(mem, T0, GPA, "r", fmt="npt", paging_structure=True),
              **npf(0x2_0000_0007, 1, 4))


def test_npt_nx_fetch():
    nx = 1 << 63
    for level in (4, 3, 2, 1):
        entries = [T1 | 7, T2 | 7, T3 | 7, PAGE | 7]
        entries[4 - level] |= nx
        mem = image4(*entries)
        check(walk(mem, T0, GPA, "r", fmt="npt"), ok=True, hpa=HPA)
        check(walk(mem, T0, GPA, "w", fmt="npt"), ok=True, hpa=HPA)
        check(walk(mem, T0, GPA, "x", fmt="npt"), **npf(0x1_0000_0015, 1, 4))
        check(walk(mem, T0, GPA, "xu", fmt="npt"), **npf(0x1_0000_0015, 1, 4))
        # A guest page-table access is a write, never a fetch: NX does not apply.
        check(walk(mem, T0, GPA, "x", fmt="npt", paging_structure=True), ok=True, hpa=HPA)


def test_npt_paging_structure_sets_a_and_d():
    r = walk(npt_chain(PAGE | 7), T0, GPA, "r", fmt="npt", paging_structure=True)
    check(r, ok=True, hpa=HPA, level=1, refs=4)
    assert r.ad_writes[-1] == (0x13048, 0xABCDE007, 0xABCDE067)


def test_npt_ignored_high_and_avl_bits():
    # Bits 62:52 and 11:9 are available to software; bit 12 of a PTE is address.
    avl = 0x7FF0_0000_0000_0000 | 0xE00
    mem = image4(T1 | 7 | avl, T2 | 7 | avl, T3 | 7 | avl, PAGE | 7 | avl | 0x80)
    check(walk(mem, T0, GPA, "r", fmt="npt", ad=False), ok=True, hpa=HPA)


def test_npt_4level_gpa_above_48_bits():
    gpa = 1 << 48
    check(walk({}, T0, gpa, "r", fmt="npt", maxphyaddr=52), **npf(0x1_0000_0004, 4, 0),
          entries=())
    check(walk({}, T0, gpa, "w", fmt="npt", maxphyaddr=52), **npf(0x1_0000_0006, 4, 0))
    check(walk({}, T0, gpa, "x", fmt="npt", maxphyaddr=52), **npf(0x1_0000_0014, 4, 0))
    check(walk({}, T0, 1 << 51, "x", fmt="npt", maxphyaddr=52, paging_structure=True),
          **npf(0x2_0000_0006, 4, 0))


def test_npt_5level_walk():
    mem = image({
        T0: {0xA: T1 | 7},
        T1: {0x1FF: T2 | 7},
        T2: {1: T3 | 7},
        T3: {2: T4 | 7},
        T4: {0x1FF: 0xF_0000_0000_0000 | 7},
    })
    r = walk(mem, T0, GPA5, "r", fmt="npt", levels=5, maxphyaddr=52)
    check(r, ok=True, hpa=0xF_0000_0000_0123, level=1, refs=5,
          entries=(T1 | 7, T2 | 7, T3 | 7, T4 | 7, 0xF_0000_0000_0007))
    assert r.ad_writes[0] == (T0 + 0x50, T1 | 7, T1 | 0x27)


# ------------------------------------------------------------------------------ image errors
@pytest.mark.parametrize(
    "mem, key_text",
    [
        ({"0x10000": bytes(4096)}, "0x10000"),  # key not an int
        ({0x10001: bytes(4096)}, "0x10001"),  # unaligned
        ({0x10800: bytes(4096)}, "0x10800"),
        ({-0x1000: bytes(4096)}, "-0x1000"),  # negative
        ({0x10000: bytes(4095)}, "0x10000"),  # short page
        ({0x10000: bytes(4097)}, "0x10000"),  # long page
        ({0x10000: "x" * 4096}, "0x10000"),  # not bytes
        ({0x20000: [0] * 4096}, "0x20000"),
        ({1.0: bytes(4096)}, "1.0"),
    ],
)
def test_malformed_image(mem, key_text):
    good = ept_chain(ept_leaf())
    good.update(mem)
    with pytest.raises(ValueError, match=key_text):
        walk(good, EPTP4, GPA, "r")
    with pytest.raises(ValueError, match=key_text):
        walk(good, T0, GPA, "r", fmt="npt")


def test_bytearray_pages_are_accepted():
    mem = {k: bytearray(v) for k, v in ept_chain(ept_leaf()).items()}
    check(walk(mem, EPTP4, GPA, "r"), ok=True, hpa=HPA)


@pytest.mark.parametrize("drop, addr_text", [(T0, "0x10000"), (T1, "0x11000"),
                                             (T2, "0x12000"), (T3, "0x13000")])
def test_missing_table_page(drop, addr_text):
    mem = ept_chain(ept_leaf())
    del mem[drop]
    with pytest.raises(KeyError, match=addr_text):
        walk(mem, EPTP4, GPA, "r")
    mem = npt_chain(PAGE | 7)
    del mem[drop]
    with pytest.raises(KeyError, match=addr_text):
        walk(mem, T0, GPA, "r", fmt="npt")


def test_leaf_target_page_need_not_exist():
    # The final page is not a paging structure: it is never read.
    mem = ept_chain(ept_leaf(addr=MISSING))
    check(walk(mem, EPTP4, GPA, "r"), ok=True, hpa=MISSING | 0xABC)


@pytest.mark.parametrize(
    "access, kwargs",
    [
        ("r", dict(fmt="arm")),
        ("r", dict(levels=3)),
        ("r", dict(levels=6)),
        ("rw", dict()),
        ("R", dict()),
        ("r", dict(maxphyaddr=53)),
        ("r", dict(maxphyaddr=12)),
    ],
)
def test_bad_arguments(access, kwargs):
    with pytest.raises(ValueError):
        walk(ept_chain(ept_leaf()), EPTP4, GPA, access, **kwargs)


# ------------------------------------------------------------------------------ differential
# Random small images whose tables a walk actually reaches, compared field by field against
# the C walker.  Skipped only when the C extension cannot be imported.

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    st = None

_POOL = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000)  # table pages
_ABSENT = 0x9000  # a page that is never in the image


if st is not None:

    def _weighted(*pairs):
        """sampled_from with integer weights; the first choice is the simplest."""
        return st.sampled_from([value for value, weight in pairs for _ in range(weight)])

    @st.composite
    def _root_pointer(draw, fmt, levels, maxphyaddr, root):
        """EPTP / nCR3: valid nine times in ten, otherwise one corruption."""
        if fmt == "ept":
            value = root | draw(st.sampled_from([6, 0])) | (levels - 1) << 3
            value |= draw(st.booleans()) << 6  # A/D enable
            value |= draw(_weighted((0, 3), (0x80, 1)))  # SSS enable: ignored
            corruption = None
            if draw(st.integers(0, 99)) >= 85:
                corruption = draw(st.sampled_from(["memtype", "pwl", "low", "high"]))
            if corruption == "memtype":
                value = value & ~7 | draw(st.sampled_from([1, 2, 3, 4, 5, 7]))
            elif corruption == "pwl":
                value = value & ~0x38 | draw(st.sampled_from([0, 1, 2, 5, 6, 7, 8 - levels])) << 3
            elif corruption == "low":
                value |= 1 << draw(st.integers(8, 11))
            elif corruption == "high":
                value |= 1 << draw(st.integers(maxphyaddr, 63))
            return value
        value = root | draw(_weighted((0, 3), (0x18, 1), (0xFE7, 1)))
        if draw(st.integers(0, 99)) >= 93:
            value |= 1 << draw(st.integers(maxphyaddr, 63))
        return value

    @st.composite
    def _clean_entry(draw, fmt, level, leaf, next_table, maxphyaddr):
        """A structurally valid entry; only the permissions vary."""
        if leaf:
            shift = {1: 12, 2: 21, 3: 30}[level]
            addr = draw(st.integers(0, (1 << (maxphyaddr - shift)) - 1)) << shift
        else:
            addr = next_table
        if fmt == "ept":
            low = draw(_weighted((7, 6), (1, 1), (3, 1), (5, 1), (4, 1)))
            low |= draw(_weighted((0, 4), (0x100, 1), (0x300, 1), (0x400, 2), (0x800, 1)))
            if leaf:
                low |= draw(_weighted((6, 4), (0, 1), (1, 1), (4, 1), (5, 1))) << 3
                low |= draw(_weighted((0, 3), (0x40, 1)))  # IPAT
                if level > 1:
                    low |= 0x80
        else:
            low = draw(_weighted((7, 8), (5, 1), (3, 1)))
            low |= draw(_weighted((0, 4), (0x20, 1), (0x60, 1), (0x18, 1), (0xE00, 1)))
            if leaf and level > 1:
                low |= 0x80 | draw(_weighted((0, 3), (0x1000, 1)))  # PS, PAT
            if draw(_weighted((False, 6), (True, 1))):
                low |= 1 << 63  # NX
        high = draw(_weighted((0, 6), (1 << 52, 1), (0x7FF << 52, 1)))
        return addr | low | high

    @st.composite
    def _dirty_entry(draw, fmt, level, maxphyaddr):
        """An entry with one likely fault: not present, bad permissions, a reserved bit,
        a misaligned or too-wide address, a bad memory type, PS where it is reserved, a
        pointer to a missing page, or plain random bits.  Returns (entry, next_table)."""
        kind = draw(st.sampled_from(["zero", "raw", "perms", "rsvd", "addr", "memtype",
                                     "ps", "missing", "notpresent"]))
        table = _POOL[draw(st.integers(0, len(_POOL) - 1))]
        if kind == "zero":
            return 0, None
        if kind == "raw":
            return draw(st.integers(0, (1 << 64) - 1)), None
        if kind == "notpresent":
            mask = 0x407 if fmt == "ept" else 1
            return draw(st.integers(0, (1 << 64) - 1)) & ~mask, None
        if kind == "missing":
            return _ABSENT | 7, _ABSENT
        if kind == "perms":
            if fmt == "ept":
                perms = draw(st.sampled_from([0b010, 0b110, 0b100, 0b000, 0x400, 0x402, 0x404]))
                return table | perms, table
            return table | draw(st.sampled_from([1, 3, 5, 0x8000000000000007])), table
        if kind == "rsvd":
            bit = draw(st.integers(3, 13))
            return table | 7 | 1 << bit, table
        if kind == "addr":
            top = draw(st.integers(maxphyaddr, 52)) if maxphyaddr < 52 else 52
            return table | 7 | (1 << top if top < 52 else 0), table
        if kind == "memtype":
            shift = {1: 12, 2: 21, 3: 30}.get(level, 12)
            addr = draw(st.integers(0, 255)) << shift
            return addr | 0x80 | draw(st.integers(0, 7)) << 3 | 7, None
        # "ps": a large leaf, possibly misaligned, at any level (reserved in PML4E/PML5E).
        addr = draw(st.integers(0, 255)) << 30
        addr |= draw(_weighted((0, 1), (1 << 12, 1), (1 << 13, 1), (1 << 20, 1),
                               (1 << 21, 1), (1 << 29, 1)))
        return addr | 0x80 | 0x37, None

    @st.composite
    def _walk_case(draw):
        fmt = draw(st.sampled_from(["ept", "npt"]))
        levels = draw(st.sampled_from([4, 5]))
        maxphyaddr = draw(st.sampled_from([46, 39, 48, 52]))
        access = draw(st.sampled_from(["r", "w", "x", "xu"]))
        ad = draw(_weighted((True, 3), (False, 1)))
        exec_only = draw(_weighted((True, 3), (False, 1)))
        mbec = draw(st.booleans())
        user = draw(st.booleans())
        paging_structure = draw(_weighted((False, 2), (True, 1)))

        gpa = draw(st.one_of(
            st.integers(0, (1 << min(maxphyaddr, 48)) - 1),
            st.integers(0, (1 << maxphyaddr) - 1),
            st.integers(0, (1 << 32) - 1),
        ))
        if maxphyaddr == 52 and draw(_weighted((False, 9), (True, 1))):
            gpa |= 1 << draw(st.integers(48, 51))  # beyond the reach of a 4-level walk

        root = _POOL[0]
        root_pointer = draw(_root_pointer(fmt, levels, maxphyaddr, root))

        tables: dict[int, dict[int, int]] = {base: {} for base in _POOL}
        # Decoys in random slots, written first so that the path overwrites them.
        for _ in range(draw(st.integers(0, 4))):
            tables[draw(st.sampled_from(_POOL))][draw(st.integers(0, 511))] = draw(
                st.integers(0, (1 << 64) - 1))

        table = root
        for depth, level in enumerate(range(levels, 0, -1)):
            index = (gpa >> (12 + 9 * (level - 1))) & 511
            if draw(_weighted((True, 7), (False, 1))):
                leaf = level == 1 or (level <= 3 and draw(_weighted((False, 3), (True, 1))))
                next_table = None if leaf else _POOL[depth + 1]
                entry = draw(_clean_entry(fmt, level, leaf, next_table, maxphyaddr))
            else:
                entry, next_table = draw(_dirty_entry(fmt, level, maxphyaddr))
            tables[table][index] = entry
            if next_table is None or next_table not in tables:
                break
            table = next_table

        # Sparse tables (not bytes) keep hypothesis' falsifying examples readable.
        tables = {base: dict(sorted(entries.items())) for base, entries in tables.items()}
        kwargs = dict(fmt=fmt, levels=levels, ad=ad, maxphyaddr=maxphyaddr,
                      exec_only=exec_only, user=user, mbec=mbec,
                      paging_structure=paging_structure)
        return tables, root_pointer, gpa, access, kwargs


def _outcome(fn, tables, root_pointer, gpa, access, kwargs):
    """Run one walker on a fresh image built from ``tables``; exceptions become values."""
    try:
        result = fn(image(tables), root_pointer, gpa, access, **kwargs)
    except (KeyError, ValueError) as exc:
        # tdpfast's errors subclass the builtins (MissingPageError is a KeyError):
        # compare the builtin kind, not the class name.
        return ("raised", "KeyError" if isinstance(exc, KeyError) else "ValueError")
    return ("result",
            result.ok, result.hpa, result.fault, result.qualification, result.error_code,
            result.level, result.refs,
            tuple(tuple(w) for w in result.ad_writes), tuple(result.entries))


def _differences(expected, actual) -> str:
    """Human-readable list of the fields on which two outcomes differ."""
    if expected[0] != "result" or actual[0] != "result":
        return f"reference {expected!r} != hw {actual!r}"
    def show(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return hex(value)
        return repr(value)

    lines = [f"{name}: reference={show(e)} hw={show(a)}"
             for name, e, a in zip(FIELDS, expected[1:], actual[1:]) if e != a]
    return "; ".join(lines)


@pytest.mark.skipif(st is None, reason="hypothesis is not installed")
def test_differential_against_c_walker():
    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_walk_case())
    def check_case(case):
        tables, root_pointer, gpa, access, kwargs = case
        expected = _outcome(walk, tables, root_pointer, gpa, access, kwargs)
        actual = _outcome(hw.walk, tables, root_pointer, gpa, access, kwargs)
        assert actual == expected, _differences(expected, actual)

    check_case()


def test_differential_generator_reaches_every_outcome():
    """The generator used above exercises successes and every fault kind (reference only)."""
    if st is None:
        pytest.skip("hypothesis is not installed")
    seen = set()

    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_walk_case())
    def collect(case):
        tables, root_pointer, gpa, access, kwargs = case
        out = _outcome(walk, tables, root_pointer, gpa, access, kwargs)
        seen.add(out[1] if out[0] == "raised" else (kwargs["fmt"], out[3] or "ok"))

    collect()
    assert {"KeyError", "ValueError", ("ept", "ok"), ("ept", "violation"),
            ("ept", "misconfig"), ("npt", "ok"), ("npt", "npf")} <= seen
