"""The seed scenario (LKML, March 2022: "[PATCH v4 03/30] KVM: x86/mmu: Formalize TDP
MMU's (unintended?) deferred TLB flush logic"), played on the public API.

KVM puts a TDP root without flushing because every vCPU flushes when it loads a root
and when it migrates to another pCPU. Each function below builds one side of that
argument and returns what happened; ``tdpfast demo`` prints them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from . import jsondoc
from .policy import Policy
from .results import Event, Violation
from .tlbconfig import TLBConfig
from .vm import VM

GFN = 5                 # the guest page the scenarios touch
GPA = GFN << 12


@dataclass
class ScenarioResult:
    id: str                 # "root_reuse", "migration" or "nested"
    name: str
    arch: str
    policy: str
    violations: List[Violation]
    events: List[Event]     # up to the first violation
    stats: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The scenario in the ``tdpfast demo --json`` document (docs/json/demo.md)."""
        return {"id": self.id, "name": self.name, "arch": self.arch, "policy": self.policy,
                "violations": [jsondoc.violation(v) for v in self.violations],
                "events": [jsondoc.event(e) for e in self.events], "stats": dict(self.stats)}


def _events_up_to_violation(vm: VM) -> List[Event]:
    evs = vm.events
    v = vm.violations
    last = v[0].event if v else len(evs) - 1
    return list(evs[:last + 1])


def root_reuse(arch: str, policy: Policy, policy_name: str) -> ScenarioResult:
    """A root is torn down without a flush; later a new root is allocated. On VMX the
    freed root page comes back (LIFO) as the new root, with the same EP4TA; on SVM the
    vCPU keeps its ASID. Only the flush on root load stands between the guest and the
    translations of the dead root."""
    vm = VM(arch=arch, vcpus=1, pcpus=1, tlb=TLBConfig.adversarial(), policy=policy, record=True)
    slot = vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "w")                  # TLB: the dead-to-be root's context -> frame X
    for _ in range(2):                      # two memslot updates: two root teardowns
        vm.vcpu_exit(0)
        vm.delete_memslot(slot)             # zap_all_fast: invalidate, zap, no flush
        slot = vm.add_memslot(0, 512, max_level=1)  # the gfn is now backed elsewhere
        vm.vcpu_run(0, 0)                   # FREE_OBSOLETE_ROOTS, then load a root
        vm.access(0, GPA, "r")
        if vm.violations:
            break
    return ScenarioResult("root_reuse", "root teardown, then a new root", arch, policy_name,
                          list(vm.violations), _events_up_to_violation(vm), _pick(vm.stats))


def migration(arch: str, policy: Policy, policy_name: str) -> ScenarioResult:
    """A vCPU ran on pCPU 0, moved to pCPU 1 while its mapping was zapped and the frame
    freed, and returns to pCPU 0: only the flush on migration (VMX) or the fresh ASID
    (SVM) stands between it and pCPU 0's stale entry."""
    vm = VM(arch=arch, vcpus=1, pcpus=2, tlb=TLBConfig.adversarial(), policy=policy, record=True)
    vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, GPA, "r")                  # pCPU 0's TLB: gfn 5 -> frame X
    vm.vcpu_run(0, 1)                       # migrate
    vm.host_unmap(GFN, GFN + 1)             # notifier: zap, flush (the vCPU is on pCPU 1), free X
    vm.vcpu_run(0, 0)                       # back to pCPU 0
    vm.access(0, GPA, "r")
    return ScenarioResult("migration", "migration away and back", arch, policy_name,
                          list(vm.violations), _events_up_to_violation(vm), _pick(vm.stats))


def nested(arch: str, policy: Policy, policy_name: str) -> ScenarioResult:
    """The same argument one level down (VMX, bug B16): L2 runs on its own root, so its TLB
    entries carry L2's EPTP. The vCPU goes back to L1; the host unmaps the page (KVM zaps
    every root, L2's too, and requests a remote flush, serviced while the vCPU runs L1); L2
    runs again. Only a remote flush of every EPTP/VPID context, not just the current one,
    stands between L2 and the page the host took back."""
    vm = VM(arch=arch, vcpus=1, pcpus=1, tlb=TLBConfig.adversarial(), policy=policy, record=True)
    vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    vm.nested_enter(0)
    vm.access(0, GPA, "w")                  # L2's context: gfn 5 -> frame X
    vm.nested_exit(0)
    vm.host_unmap(GFN, GFN + 1)             # notifier: zap every root, remote flush, X gone
    vm.vcpu_run(0, 0)                       # the flush is serviced in L1's context
    vm.nested_enter(0)
    vm.access(0, GPA, "r")
    return ScenarioResult("nested", "a remote flush while L1 runs", arch, policy_name,
                          list(vm.violations), _events_up_to_violation(vm), _pick(vm.stats))


# The two ways of putting a root compared by root_churn_costs(), keyed by identifier,
# with the label the text output shows.
COST_POLICIES = {"deferred": ("kvm", "deferred (kvm)"), "flush_on_put": ("flush-on-put-root", "flush on put")}

COST_KEYS = ("remote_tlb_flush", "ipis", "invept_single", "invept_global", "tlb_control_flush_asid",
             "tlb_misses", "walk_refs", "spte_writes", "cycles")


def _pick(stats: Dict[str, int]) -> Dict[str, int]:
    return {k: stats[k] for k in COST_KEYS + ("violations",)}


def root_churn_costs(arch: str, policy: Policy, *, vcpus: int = 4, rounds: int = 8, pages: int = 256,
                     seed: int = 0) -> Dict[str, int]:
    """A workload of memslot updates (each one tears every root down) while vCPUs keep
    touching their memory; returns the counters."""
    vm = VM(arch=arch, vcpus=vcpus, pcpus=vcpus, tlb=TLBConfig.preset("skylake" if arch == "vmx" else "zen3"),
            policy=policy, seed=seed, record=False)
    slot = vm.add_memslot(0, pages, max_level=1)
    gpas = [g << 12 for g in range(pages)]
    for v in range(vcpus):
        vm.vcpu_run(v, v)
    for _ in range(rounds):
        for v in range(vcpus):
            vm.access_batch(v, gpas, "r")
        vm.delete_memslot(slot)
        slot = vm.add_memslot(0, pages, max_level=1)
        for v in range(vcpus):
            vm.vcpu_run(v, v)
    return _pick(vm.stats)


def run_all() -> dict:
    """Every scenario of ``tdpfast demo``."""
    kvm = Policy.kvm()
    out = {"reuse": [], "migration": [], "nested": [], "costs": {}}
    for arch in ("vmx", "svm"):
        out["reuse"].append(root_reuse(arch, kvm, "kvm"))
        out["reuse"].append(root_reuse(arch, Policy.named("no-flush-on-root-load"), "no-flush-on-root-load"))
        out["migration"].append(migration(arch, kvm, "kvm"))
        out["migration"].append(migration(arch, Policy.named("no-flush-on-migrate"), "no-flush-on-migrate"))
        out["costs"][arch] = {key: root_churn_costs(arch, Policy.named(pol))
                              for key, (pol, _label) in COST_POLICIES.items()}
    # B16 is VMX's (SVM's remote flush is the current ASID either way, and every nested
    # transition flushes it).
    out["nested"].append(nested("vmx", kvm, "kvm"))
    out["nested"].append(nested("vmx", Policy.named("B16-remote-flush-current-only"), "B16-remote-flush-current-only"))
    return out


def verdict(res: dict) -> dict:
    """Whether KVM's policy stayed clean and whether removing each flush broke its scenario."""
    scen = res["reuse"] + res["migration"] + res["nested"]
    removals = [s for s in scen if s.policy != "kvm"]
    return {"kvm_clean": all(not s.violations for s in scen if s.policy == "kvm"),
            "removals": len(removals), "removals_broken": sum(1 for s in removals if s.violations)}


def document(res: dict) -> dict:
    """The ``tdpfast demo --json`` document (docs/json/demo.md)."""
    doc = jsondoc.header("demo")
    doc.update(reuse=[s.as_dict() for s in res["reuse"]], migration=[s.as_dict() for s in res["migration"]],
               nested=[s.as_dict() for s in res["nested"]],
               costs={arch: {k: dict(c) for k, c in by.items()} for arch, by in res["costs"].items()},
               verdict=verdict(res))
    return doc
