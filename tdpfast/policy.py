"""Flush policies: KVM's behaviour, every flush decision point as a named switch, the kernel
releases the model knows (each a set of switch values, every difference written once with the
upstream commit that made it: :data:`RELEASE_CHANGES`), and the historical flush bugs of KVM's TDP MMU as
named policies (each names its upstream fix)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ._native import c_name_table, lib

#: The switches that take one of several values, each value's name indexed by its C value
#: (tdp_policy_value_name(), csrc/names.c).
_ENUMS: Dict[str, Tuple[str, ...]] = {
    switch: c_name_table(lambda v, s=switch.encode(): lib.tdp_policy_value_name(s, v), range(16))
    for switch in ("root_lifetime", "dirty_log_enable_flush", "removed_pt_flush", "huge_recovery")
}


@dataclass(frozen=True)
class Policy:
    """Every flush decision KVM makes, and every behaviour its releases differ in, as a switch.
    ``Policy()`` / ``Policy.kvm()`` is the default release (:data:`DEFAULT_RELEASE`, KVM v6.13);
    ``Policy.release("6.12")`` another one.

    Change one with ``.replace(switch=value)``; list the named variants with
    ``Policy.names()`` and get one with ``Policy.named(name)``.
    """

    flush_on_root_load: bool = True
    """kvm_mmu_load() flushes the current context after loading a root (the deferred-flush
    argument of db01416b22d9)."""
    flush_on_migrate: bool = True
    """VMX: KVM_REQ_TLB_FLUSH when a VMCS was last loaded elsewhere; SVM: fresh ASID."""
    flush_on_put_root: bool = False
    """Eager remote flush whenever a root is freed (the alternative to deferring)."""
    root_lifetime: str = "preserve"
    """"preserve" (v6.6+: the TDP MMU holds its own reference) or "zap_on_last_put" (v5.17)."""
    remote_flush_all_contexts: bool = True
    """KVM_REQ_TLB_FLUSH flushes every EPTP/VPID context (False: only the current, bug B16)."""
    shared_zap_flush: bool = True
    """tdp_mmu_zap_spte_atomic() flushes between freeze and clear (False: bug B5)."""
    flush_before_yield: bool = True
    """A pending flush is done before the iterator drops mmu_lock / RCU."""
    precise_range_flush: bool = False
    """Ranged flushes stay ranged (Hyper-V style); default: bare metal (ranged = full)."""
    dirty_log_enable_flush: str = "always"
    """"always" (b64d740ea7dd) or "if_changed" (bug B14)."""
    notifier_zaps_invalid_roots: bool = True
    """MMU-notifier unmaps also visit invalid roots (v5.16+)."""
    per_root_flush_reset: bool = False
    """Bug B1: each root's zap starts with flush=False, so a yield in a later root skips the flush."""
    nx_recovery_flush_assign: bool = False
    """Bug B4: NX recovery overwrites the pending flush instead of OR-ing it."""
    removed_pt_flush: str = "none"
    """Who flushes an unlinked table: "none" (the caller, v5.18+), "table" (itself), "last_child" (bug B6)."""
    iter_skip_after_yield: bool = False
    """Bug B9: the iterator steps past the entry at its restart point after a yield."""
    map_huge_over_table_flush: bool = True
    """The fault path flushes after a huge leaf replaces a table (1e203847aa92)."""
    nx_huge_pages: bool = False
    """The iTLB-multihit mitigation: huge pages are NX; exec faults map 4K and are recovered later."""
    nx_recovery_ratio: int = 60
    """NX recovery zaps 1/ratio of the possible NX huge pages per run."""
    yield_every: int = 0
    """need_resched() every N iterator steps (0: never yield)."""
    rcu_gp_at_yield: bool = True
    """A grace period may end while a walker has yielded."""
    rcu_gp_at_op_end: bool = True
    """A grace period ends after every top-level operation."""
    memslot_delete_zap_all: bool = True
    """Memslot deletion zaps everything (fast zap); False zaps only the slot (reverted, B18)."""
    eager_split: bool = True
    """Split huge pages when dirty logging is enabled."""
    flush_after_zap: bool = False
    """Every zap operation that changed an SPTE ends with a remote flush (even of an invalid root)."""
    per_spte_flush: bool = False
    """Every changed SPTE is flushed (gfn, level) on the spot instead of one pending flush."""
    huge_recovery: str = "recover"
    """After dirty logging: "recover" huge pages in place, one flush per root that changed (v6.13+,
    13e2e4f62a4b), or "zap_collapsible" tables with one self-flushing atomic zap each (<= v6.12)."""
    ept_soft_ad: bool = True
    """EPT with A/D disabled: SPTEs still carry A and D as software bits, set when a leaf is made
    and cleared by aging (v6.13, 3835819fb1b3 / 53510b912518 / 7971801b5618 / 85649117511d);
    False: no A/D bits, aging access-tracks (<= v6.12)."""
    fault_spurious_if_allowed: bool = True
    """A fault on a present leaf that already allows the access returns RET_PF_SPURIOUS without
    rewriting it (v6.13, 386d69f9f29b); False: the SPTE is rebuilt (spurious only if identical)."""
    age_valid_roots_only: bool = True
    """Aging walks only valid roots (v6.13, 526e609f0567); False: every root (<= v6.12)."""
    per_vmcb_asid: bool = True
    """SVM: each VMCB (vmcb01, vmcb02) keeps its ASID generation and last pCPU (v5.13, "KVM: SVM:
    Track the ASID generation of the vmcb vmrun through the vmcb"); False: one per vCPU, so a
    nested transition can run a VMCB with an ASID of a past generation (B22)."""

    # ---------------------------------------------------------------- construction
    @classmethod
    def kvm(cls) -> "Policy":
        """KVM's behaviour: the default release (:data:`DEFAULT_RELEASE`)."""
        return cls()

    @classmethod
    def releases(cls) -> List[str]:
        """The kernel releases the model knows, oldest first (``VM(kernel=...)`` takes one)."""
        return list(RELEASES)

    @classmethod
    def release(cls, version: str) -> "Policy":
        """KVM as of release ``version`` ("5.17", "6.6", "6.12", "6.13"): the default release with
        every change made after ``version`` undone (see :data:`RELEASE_CHANGES`)."""
        from .errors import InvalidArgumentError

        if version not in RELEASES:
            raise InvalidArgumentError(f"unknown kernel release {version!r}; releases: {', '.join(RELEASES)}")
        undo = {}
        for since, switch, before, _commit in reversed(RELEASE_CHANGES):
            if _version_key(since) > _version_key(version):
                undo[switch] = before
        return cls().replace(**undo)

    def replace(self, **changes) -> "Policy":
        """A copy with some switches changed; unknown switches raise ``InvalidArgumentError``."""
        from .errors import InvalidArgumentError

        names = {f.name for f in dataclasses.fields(self)}
        for k, v in changes.items():
            if k not in names:
                raise InvalidArgumentError(f"unknown policy switch {k!r}; switches: {', '.join(sorted(names))}")
            if k in _ENUMS and v not in _ENUMS[k]:
                raise InvalidArgumentError(f"policy switch {k} must be one of {_ENUMS[k]}, got {v!r}")
            if k in ("yield_every", "nx_recovery_ratio"):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31:
                    raise InvalidArgumentError(f"policy switch {k} must be a non-negative integer, got {v!r}")
            elif k not in _ENUMS and not isinstance(v, bool):
                raise InvalidArgumentError(f"policy switch {k} takes True or False, got {v!r}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> List[str]:
        """The named policies (KVM, its eras, and the historical bugs)."""
        return list(_NAMED)

    @classmethod
    def named(cls, name: str) -> "Policy":
        """A named policy; see :meth:`names` and :meth:`describe`."""
        from .errors import NotFoundError

        if name not in _NAMED:
            raise NotFoundError(f"no policy named {name!r}; names: {', '.join(_NAMED)}")
        return cls().replace(**_NAMED[name][1])

    @classmethod
    def describe(cls, name: str) -> str:
        """One line on what a named policy is."""
        cls.named(name)
        return _NAMED[name][0]

    def changed(self) -> Dict[str, object]:
        """The switches that differ from KVM's policy."""
        base = Policy()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(base, f.name)}

    def set_switch(self, name: str, text: str) -> "Policy":
        """Parse ``text`` for switch ``name`` (as the CLI's ``--set name=value``)."""
        from .errors import InvalidArgumentError

        fields = {f.name: f for f in dataclasses.fields(self)}
        if name not in fields:
            raise InvalidArgumentError(f"unknown policy switch {name!r}")
        cur = getattr(self, name)
        if isinstance(cur, bool):
            low = text.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise InvalidArgumentError(f"{name} takes true/false, got {text!r}")
            return self.replace(**{name: low in ("1", "true", "yes", "on")})
        if isinstance(cur, int):
            try:
                return self.replace(**{name: int(text)})
            except ValueError:
                raise InvalidArgumentError(f"{name} takes an integer, got {text!r}") from None
        return self.replace(**{name: text})

    def _to_c(self, ffi):
        p = ffi.new("struct tdp_policy *")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _ENUMS:
                v = _ENUMS[f.name].index(v)
            setattr(p, f.name, int(v))
        return p


def _version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


#: Each difference between the releases the model knows, written once: (the release that made the
#: change, the switch, its value before, the upstream commit id + subject). A release's policy is
#: the default with every later change undone (Policy.release()).
RELEASE_CHANGES: Tuple[Tuple[str, str, object, str], ...] = (
    ("6.4", "root_lifetime", "zap_on_last_put",
     "edbdb43fc96b KVM: x86/mmu: Preserve TDP MMU roots until they are explicitly invalidated"),
    ("6.13", "huge_recovery", "zap_collapsible",
     "13e2e4f62a4b KVM: x86/mmu: Recover TDP MMU huge page mappings in-place instead of zapping"),
    ("6.13", "ept_soft_ad", False,
     "3835819fb1b3 KVM: x86/mmu: Set shadow_accessed_mask for EPT even if A/D bits disabled "
     "(with 53510b912518, 7971801b5618 and 85649117511d of the same series)"),
    ("6.13", "age_valid_roots_only", False,
     "526e609f0567 KVM: x86/mmu: Process only valid TDP MMU roots when aging a gfn range"),
    ("6.13", "fault_spurious_if_allowed", False,
     "386d69f9f29b KVM: x86/mmu: Treat TDP MMU faults as spurious if access is already allowed"),
)

#: The releases ``VM(kernel=...)`` / ``Policy.release()`` accept, oldest first. Releases between
#: two of them that the model tells apart behave as the older one (v6.6 and v6.12 have the same
#: switch values: the changes between them are outside the model).
RELEASES: Tuple[str, ...] = ("5.17", "6.6", "6.12", "6.13")

#: The newest release the model matches exactly: ``Policy()`` and ``Policy.named("kvm")``.
DEFAULT_RELEASE = "6.13"

_NAMED: Dict[str, Tuple[str, dict]] = {
    "kvm": (f"KVM v{DEFAULT_RELEASE} (the default release): deferred flush on root teardown, flush on root load "
            "and on migration", {}),
    "kvm-v6.12": ("KVM v6.12: collapsible tables zapped, no EPT software A/D, aging of invalid roots, "
                  "faults on permitting leaves rewrite them", {}),
    "kvm-v6.6": ("KVM v6.6 (the same switch values as v6.12)", {}),
    "kvm-v5.17": ("KVM v5.17: the last put zaps the whole root without a flush (the seed thread); "
                  "otherwise as v6.12", {}),
    "flush-on-put-root": ("safe alternative: an eager remote flush every time a root is freed",
                          {"flush_on_put_root": True}),
    "precise-range": ("KVM with precise (Hyper-V style) ranged flushes", {"precise_range_flush": True}),
    "flush-after-every-zap": ("safe alternative: every zap that changed an SPTE flushes, even of invalid roots",
                              {"flush_after_zap": True}),
    "per-spte-flush": ("safe alternative: every changed SPTE is flushed at once, precise ranges",
                       {"per_spte_flush": True, "precise_range_flush": True}),
    "kvm-v6.12-zap-collapsible": ("dirty-logging disable zaps collapsible tables, one flush each (<= v6.12)",
                                  {"huge_recovery": "zap_collapsible"}),
    "no-flush-on-root-load": ("the seed's first argument removed: loading a root does not flush",
                              {"flush_on_root_load": False}),
    "no-flush-on-migrate": ("the seed's second argument removed: migrating a vCPU does not flush",
                            {"flush_on_migrate": False}),
    "B1-yield-flush-lost": ("B1 a835429cda91: per-root flush flag reset, a yield in a later root skips the flush",
                            {"per_root_flush_reset": True, "yield_every": 8}),
    "B4-nx-recovery-flush-overwritten": ("B4 315f02c60d94: NX recovery does flush = zap_sp() instead of |=",
                                         {"nx_recovery_flush_assign": True, "nx_huge_pages": True}),
    "B5-atomic-zap-no-flush": ("B5 08f07c800e9d: the atomic (shared-mode) zap clears without flushing",
                               {"shared_zap_flush": False}),
    "B6-removed-pt-range": ("B6 574c3c55e969: a disconnected table is flushed from its last child's gfn",
                            {"removed_pt_flush": "last_child", "precise_range_flush": True,
                             "map_huge_over_table_flush": False}),
    "B9-iter-skip-after-yield": ("B9 3a0f64de479c: the iterator steps past the restart entry after a yield",
                                 {"iter_skip_after_yield": True, "yield_every": 8}),
    "B14-dirty-log-enable-if-changed": ("B14 b64d740ea7dd: enabling dirty logging flushes only if an SPTE changed "
                                        "(needs EPT A/D off: VM(ad=False))",
                                        {"dirty_log_enable_flush": "if_changed"}),
    "B16-remote-flush-current-only": ("B16 (~v5.7): KVM_REQ_TLB_FLUSH flushes only the current EPTP/VPID context, "
                                      "so a remote flush while a vCPU runs L1 leaves L2's entries (nested VMX)",
                                      {"remote_flush_all_contexts": False}),
    "B22-asid-generation-per-vcpu": ("B22 (before v5.13): the ASID generation and last pCPU are kept per vCPU, not "
                                     "per VMCB, so vmcb02 can run with an ASID handed out again (nested SVM)",
                                     {"per_vmcb_asid": False}),
    "B18-memslot-precise-zap": ("B18 4e103134b862 (reverted): memslot deletion zaps only the slot, with a flush",
                                {"memslot_delete_zap_all": False}),
    "no-flush-before-yield": ("the iterator drops the lock with a flush still pending",
                              {"flush_before_yield": False, "yield_every": 8}),
}

# The release policies are the releases' switch values (written once, in RELEASE_CHANGES).
for _name, _version in (("kvm-v6.12", "6.12"), ("kvm-v6.6", "6.6"), ("kvm-v5.17", "5.17")):
    _NAMED[_name] = (_NAMED[_name][0], Policy.release(_version).changed())

__all__ = ["Policy", "RELEASES", "RELEASE_CHANGES", "DEFAULT_RELEASE"]
