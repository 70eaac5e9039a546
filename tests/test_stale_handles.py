"""A buggy engine reports, it does not crash: the TDP iterator checks the generation of every
table it holds before it steps, so an injected bug that keeps walking stale tables after a
yield (``VM(inject="stale_iter")``) is reported as a use after free of that page-table page,
with its root, gfn and level, and never reads a reused page. CI runs this file under ASan."""
import pytest

from tdpfast import VM, TLBConfig
from tdpfast.errors import InvalidArgumentError


def _vm(seed, inject=None, record=False):
    return VM(arch="vmx" if seed % 2 else "svm", seed=seed, vcpus=2, pcpus=3, tlb=TLBConfig.adversarial(),
              invariants=True, inject=inject, ad=seed % 4 < 2, record=record)


def test_the_explorer_reports_the_injected_stale_walk_and_kvm_is_clean():
    found = 0
    for seed in range(16):
        vm = _vm(seed, "stale_iter")
        ran = vm._fuzz(seed, 4000)
        if not vm.violations:
            continue
        found += 1
        v = vm.violations[0]
        assert v.kind == "use_after_free" and v.vcpu == -1 and v.root is not None and v.spte is None
        assert v.frame_state != "table" or v.stale_pfn is not None
        assert "walk of root" in str(v)
        # The same VM without the injected bug runs the same operations clean.
        clean = _vm(seed)
        assert clean._fuzz(seed, ran) == ran and clean.violations == []
    assert found >= 6                  # 8 of these 16 VMs meet it within 4,000 operations


def test_the_stale_walk_replays_from_the_event_log():
    vm = _vm(0, "stale_iter", record=True)
    vm._fuzz(0, 4000)
    v = vm.violations[0]
    again = _vm(0, "stale_iter", record=True)
    again.replay(vm.events)
    assert again.violations[0] == v
    assert again.digest() == vm.digest()


def test_inject_is_checked():
    with pytest.raises(InvalidArgumentError, match="inject"):
        VM(inject="nope")
