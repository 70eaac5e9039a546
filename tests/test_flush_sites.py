"""The engine's flush sites (csrc/flush_sites.def): the list cannot drift from the code, and
each mutant (``VM(mutant=...)``) removes exactly its flush."""
import os
import re

import pytest

from tdpfast import VM, fuzz
from tdpfast.errors import InvalidArgumentError
from tdpfast.flush_sites import BY_NAME, SITES, site_id

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

# A flush, or a flush flag being set, in the engine's C code.
FLUSH = re.compile(r"\b(kvm_flush_remote_tlbs(_range)?|vendor_flush_tlb_(all|current|guest))\(|"
                   r"requests \|= TDP_REQ_TLB_FLUSH|tlb_control = [13]\b|asid_generation(--| = 0\b)|"
                   r"op->flush( = true|\s*\|=)")
NOT_A_SITE = "not a KVM flush site"


def _sources():
    for name in sorted(os.listdir(CSRC)):
        if name.endswith(".c"):
            with open(os.path.join(CSRC, name), encoding="utf-8") as f:
                yield name, f.read().splitlines()


def test_every_flush_in_the_engine_is_a_site_or_says_why_not():
    unmarked = []
    for name, lines in _sources():
        for i, line in enumerate(lines):
            code = line.split("/*")[0]
            if not FLUSH.search(code) or re.match(r"^(void|int|bool|static)\b", line):
                continue                                   # not a flush, or a function's definition
            context = "\n".join(lines[max(0, i - 5):i + 1])
            if "FLUSH_SITE(vm, " not in context and NOT_A_SITE not in context:
                unmarked.append(f"csrc/{name}:{i + 1}: {line.strip()}")
    assert not unmarked, "flushes that are neither FLUSH_SITE-guarded nor marked '%s':\n%s" % (
        NOT_A_SITE, "\n".join(unmarked))


def test_every_listed_site_guards_code_and_every_guard_is_listed():
    used = set()
    for _, lines in _sources():
        for line in lines:
            used.update(re.findall(r"FLUSH_SITE\(vm, (\w+)\)", line))
    with open(os.path.join(CSRC, "flush_sites.def"), encoding="utf-8") as f:
        listed = re.findall(r"^SITE\((\w+), ", f.read(), flags=re.M)
    assert len(listed) == len(SITES) == len(set(listed))
    assert used == set(listed)


def test_site_names_are_unique_and_checked():
    assert [s.id for s in SITES] == list(range(1, len(SITES) + 1))
    assert len(BY_NAME) == len(SITES)
    assert site_id(None) == 0 and site_id("yield") == BY_NAME["yield"].id
    for bad in ("nope", 3, ""):
        with pytest.raises(InvalidArgumentError, match="flush sites"):
            VM(mutant=bad)


def _yield_run(mutant):
    """A 2-root zap with a yield after every leaf: the pending flush is done before each
    yield unless the mutant removes it."""
    from tdpfast import Policy

    vm = VM(vcpus=1, pcpus=1, policy=Policy.kvm().replace(yield_every=1), mutant=mutant)
    vm.add_memslot(0, 64)
    vm.mmu.alloc_root()
    vm.mmu.map_range(0, 64, 1)
    vm.mmu.zap_gfn_range(0, 64, shared=False)
    return vm.stats


def test_a_mutant_removes_its_flush_and_nothing_else():
    base, mut = _yield_run(None), _yield_run("yield")
    assert (base["iter_yields"], base["remote_tlb_flush"]) == (63, 63)
    assert (mut["iter_yields"], mut["remote_tlb_flush"]) == (63, 0)
    assert {k: v for k, v in base.items() if "flush" not in k and k not in ("cycles", "ipis")} == \
        {k: v for k, v in mut.items() if "flush" not in k and k not in ("cycles", "ipis")}
    assert _yield_run("asid_rollover") == base           # a site this run never reaches


def test_the_explorer_kills_a_mutant_and_the_witness_replays_it():
    cfg = fuzz.FuzzConfig(mutant="shared_zap")
    finding, total = fuzz.run(cfg, seed=0, budget_s=600, max_ops=20_000, shrink_budget_s=10)
    assert finding is not None and finding.violation.kind == "use_after_free"
    assert finding.ops_explored == 16195                   # the same find as the policy switch (B5)
    assert finding.witness.verdict == "policy"             # clean on the engine as it is
    script = fuzz.reproducer(cfg, finding.seed, finding.minimal)
    assert "mutant='shared_zap'" in script
    assert fuzz.kvm_twin(cfg).mutant is None
