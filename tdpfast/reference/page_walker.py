"""The CPU's nested (guest-physical -> host-physical) walk as the engine uses it.

``tdpfast/reference/walk.py`` is the executable specification of the walk from an
EPTP/nCR3 over a memory *image*.  The engine needs more than that: a walk that starts
from a paging-structure-cache entry (a table at some level, with the permissions
accumulated above it), reads the engine's live frames, and reports the accumulated
permissions that a TLB entry records.  This module is that walk; its rules are the
same (Intel SDM Vol. 3C 28.2, 2016 edition; AMD64 APM Vol. 2 15.25) and every rule
names its source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Tuple

from .spte import EPT_A, EPT_D, EPT_XU, NPT_A, NPT_D, NPT_NX, NPT_P, NPT_U, NPT_W, PERM_R, PERM_W, PERM_X, PERM_XU, PS

READ, WRITE, EXEC, EXEC_USER = 0, 1, 2, 3
OK, VIOLATION, MISCONFIG, NPF = 0, 1, 2, 3


def bits(hi: int, lo: int) -> int:
    return 0 if hi < lo else ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


@dataclass(frozen=True)
class HwParams:
    ept: bool
    levels: int
    ad: bool
    maxphyaddr: int
    exec_only: bool = True
    mbec: bool = False
    paging_structure: bool = False


@dataclass
class Walk:
    status: int = OK
    level: int = 0
    hpa: int = 0
    qualification: int = 0
    error_code: int = 0
    perms: int = 0
    entries: List[int] = field(default_factory=list)
    ad_writes: List[Tuple[int, int, int]] = field(default_factory=list)  # (entry hpa, old, new)

    @property
    def refs(self) -> int:
        return len(self.entries)


def _entry_addr(table: int, gpa: int, level: int) -> int:
    """Entry address = table | index << 3 (SDM 28.2.2)."""
    return table | (((gpa >> (12 + 9 * (level - 1))) & 511) << 3)


def _ept_qual(access: int, p: HwParams, perms: int) -> int:
    """EPT-violation exit qualification (SDM 27.2.1): access bits 0-2, the AND of R/W/X in
    3-5 (XU in 6 with MBEC), bit 7 GLA valid, bit 8 for a final translation."""
    if p.paging_structure:
        q = 3 if p.ad else (2 if access == WRITE else 1)
    else:
        q = {READ: 1, WRITE: 2}.get(access, 4)
    q |= (perms & 7) << 3
    if p.mbec:
        q |= ((perms >> 3) & 1) << 6
    q |= 1 << 7
    if not p.paging_structure:
        q |= 1 << 8
    return q


def _npt_error_code(access: int, present: bool, rsvd: bool, paging_structure: bool) -> int:
    """#NPF EXITINFO1 (APM 15.25.6): P, RW (also for guest-table walks), US always, RSV,
    ID for a final fetch, bit 32 final GPA / bit 33 guest page table."""
    ec = 1 << 2
    if present:
        ec |= 1
    if access == WRITE or paging_structure:
        ec |= 2
    if rsvd:
        ec |= 8
    if access in (EXEC, EXEC_USER) and not paging_structure:
        ec |= 16
    return ec | (1 << 33 if paging_structure else 1 << 32)


def _ad_updates(w: Walk, tables: List[int], gpa: int, start_level: int, accessed: int,
                dirty: int, is_write: bool) -> None:
    """A in every entry used, D in the leaf on a write; one update per entry that
    changes (SDM 28.2.4 EPT, APM 15.25.5 NPT)."""
    for i, old in enumerate(w.entries):
        new = old | accessed
        if i == len(w.entries) - 1 and is_write:
            new |= dirty
        if new != old:
            level = start_level - i
            w.ad_writes.append((_entry_addr(tables[i], gpa, level), old, new))


def walk(read: Callable[[int], int], p: HwParams, table: int, start_level: int, perms: int,
         gpa: int, access: int) -> Walk:
    """Walk ``gpa`` from ``table`` (holding level-``start_level`` entries), with
    ``perms`` accumulated above it.  ``read(hpa)`` returns the 8-byte entry at hpa."""
    return (_walk_ept if p.ept else _walk_npt)(read, p, table, start_level, perms, gpa, access)


def _walk_ept(read, p: HwParams, table, start_level, perms, gpa, access) -> Walk:
    w = Walk()
    # With EPT A/D on, guest paging-structure accesses count as writes (SDM 28.2.3.2).
    is_write = access == WRITE or (p.paging_structure and p.ad)
    if p.levels == 4 and gpa & bits(51, 48):
        # 4-level EPT with GPA bits 51:48 set: violation, permissions read 0 (SDM 28.2.2).
        w.status, w.level, w.qualification = VIOLATION, p.levels, _ept_qual(access, p, 0)
        return w
    tables = []
    level = start_level
    while True:
        tables.append(table)
        e = read(_entry_addr(table, gpa, level))
        w.entries.append(e)
        # Present iff any of bits 2:0 (or XU with MBEC) (SDM 28.2.2).
        if not (e & 7 or (p.mbec and e & EPT_XU)):
            w.status, w.level, w.qualification, w.perms = VIOLATION, level, _ept_qual(access, p, 0), 0
            return w
        leaf = level == 1 or (level in (2, 3) and bool(e & PS))
        # Reserved bits (SDM 28.2.2): MAXPHYADDR..51 everywhere; 7:3 in PML4E/PML5E; 6:3 in a
        # non-leaf PDPTE/PDE; unaligned address bits in a huge leaf.
        rsvd = bits(51, p.maxphyaddr)
        if level >= 4:
            rsvd |= bits(7, 3)
        elif not leaf:
            rsvd |= bits(6, 3)
        elif level == 3:
            rsvd |= bits(29, 12)
        elif level == 2:
            rsvd |= bits(20, 12)
        # Misconfiguration (SDM 28.2.3.1): W without R; X/XU without R and no exec-only support;
        # a reserved bit; a leaf memory type of 2, 3 or 7.
        misconfig = ((e & 3) == 2
                     or (not e & 1 and not p.exec_only and bool(e & 4 or (p.mbec and e & EPT_XU)))
                     or bool(e & rsvd)
                     or (leaf and (e >> 3) & 7 in (2, 3, 7)))
        if misconfig:
            w.status, w.level = MISCONFIG, level
            return w
        perms &= (e & 7) | (((e >> 10) & 1) << 3)
        if leaf:
            break
        table = e & bits(51, 12)
        level -= 1
    w.perms = perms
    # Permissions are checked after the leaf, on the AND over all levels (SDM 28.2.3.3).
    if is_write:
        ok = perms & PERM_W
    elif access == READ or p.paging_structure:
        ok = perms & PERM_R
    elif access == EXEC:
        ok = perms & PERM_X
    else:
        ok = perms & (PERM_XU if p.mbec else PERM_X)
    if not ok:
        w.status, w.level, w.qualification = VIOLATION, level, _ept_qual(access, p, perms)
        return w
    w.status, w.level = OK, level
    w.hpa = (e & bits(51, 12 + 9 * (level - 1))) | (gpa & ((1 << (12 + 9 * (level - 1))) - 1))
    if p.ad:
        _ad_updates(w, tables, gpa, start_level, EPT_A, EPT_D, is_write)
    return w


def _walk_npt(read, p: HwParams, table, start_level, perms, gpa, access) -> Walk:
    w = Walk()
    # Every nested access is a user access; guest-table walks are writes (APM 15.25.5).
    is_write = access == WRITE or p.paging_structure
    is_fetch = access in (EXEC, EXEC_USER) and not p.paging_structure
    if p.levels == 4 and gpa >> 48:
        # [MODEL CHOICE] beyond a 4-level NPT's reach: #NPF, P = 0 (APM 15.25.3).
        w.status, w.level = NPF, p.levels
        w.error_code = _npt_error_code(access, False, False, p.paging_structure)
        return w
    tables = []
    level = start_level
    while True:
        tables.append(table)
        e = read(_entry_addr(table, gpa, level))
        w.entries.append(e)
        if not e & NPT_P:
            w.status, w.level, w.perms = NPF, level, 0
            w.error_code = _npt_error_code(access, False, False, p.paging_structure)
            return w
        leaf = level == 1 or (level in (2, 3) and bool(e & PS))
        # Reserved (APM 5.4, Linux): MAXPHYADDR..51; PS and bit 8 in PML4E/PML5E (bit 8 of
        # a non-leaf PDPE is not reserved, Linux 2020); unaligned huge-leaf address bits.
        rsvd = bits(51, p.maxphyaddr)
        if level >= 4:
            rsvd |= PS | (1 << 8)
        elif leaf and level == 3:
            rsvd |= bits(29, 13)
        elif leaf and level == 2:
            rsvd |= bits(20, 13)
        if e & rsvd:
            w.status, w.level = NPF, level
            w.error_code = _npt_error_code(access, True, True, p.paging_structure)
            return w
        # Writable only if W everywhere; no fetch through NX; a supervisor (U=0) entry
        # denies the user-mode nested access (APM 15.25.5).
        ep = PERM_R | (PERM_W if e & NPT_W else 0) | (0 if e & NPT_NX else PERM_X | PERM_XU)
        if not e & NPT_U:
            ep = 0
        perms &= ep
        if leaf:
            break
        table = e & bits(51, 12)
        level -= 1
    w.perms = perms
    ok = perms & PERM_R and (not is_write or perms & PERM_W) and (not is_fetch or perms & PERM_X)
    if not ok:
        w.status, w.level = NPF, level
        w.error_code = _npt_error_code(access, True, False, p.paging_structure)
        return w
    w.status, w.level = OK, level
    w.hpa = (e & bits(51, 12 + 9 * (level - 1))) | (gpa & ((1 << (12 + 9 * (level - 1))) - 1))
    if p.ad:
        _ad_updates(w, tables, gpa, start_level, NPT_A, NPT_D, is_write)
    return w
