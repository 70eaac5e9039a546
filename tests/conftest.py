"""Shared test helpers."""
import os
import tempfile
import functools
import weakref

import pytest

import tdpfast
from tdpfast import vm as _vm_module

# Subprocesses must import the tdpfast these tests import (installed, or this checkout
# built in place) — never the source tree by accident because it is the working
# directory: they run from a scratch directory with PYTHONPATH naming the package's home.
PKG_HOME = os.path.dirname(os.path.dirname(os.path.abspath(tdpfast.__file__)))
SUBPROCESS_ENV = dict(os.environ, PYTHONPATH=PKG_HOME)
SUBPROCESS_CWD = tempfile.mkdtemp(prefix="tdpfast-tests-")


def build_c_test(name: str, out_dir) -> str:
    """Compile tests/c/NAME.c with the engine's C sources of this checkout (or unpacked sdist,
    wherever tdpfast itself is installed), warnings as errors; returns the executable's path."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "csrc")
    exe = os.path.join(str(out_dir), name)
    cc = subprocess.run(["gcc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I", src,
                         *sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".c")),
                         os.path.join(root, "tests", "c", name + ".c"), "-o", exe],
                        capture_output=True, text=True, timeout=300)
    assert cc.returncode == 0, cc.stderr
    return exe


# Every VM a test makes is checked afterwards for the engine's WARN_ON()-style reports and
# dropped records: a "can't happen" state fails the test that reached it.
_live_vms = []
_vm_init = _vm_module.VM.__init__


@functools.wraps(_vm_init)
def _tracking_init(self, *args, **kwargs):
    _vm_init(self, *args, **kwargs)
    _live_vms.append(weakref.ref(self))


_vm_module.VM.__init__ = _tracking_init


@pytest.fixture(autouse=True)
def _engine_health():
    _live_vms.clear()
    yield
    for ref in _live_vms:
        vm = ref()
        if vm is not None and getattr(vm, "_h", None) is not None:
            h = vm.health()
            assert h["warnings"] == 0 and h["dropped_records"] == 0, f"engine health: {h}"
    _live_vms.clear()
