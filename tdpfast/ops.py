"""Stepped operations (``vm.start_op``): a whole KVM operation -- with its caller's flush
contract -- that stops at each yield point of its iterator (where KVM drops mmu_lock and
leaves RCU, tdp_mmu_iter_cond_resched()), so that other operations can run before it
resumes."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from ._args import _choice, _int
from ._lock import locked
from ._native import check, ffi, lib
from .errors import InvalidArgumentError
from .events import OPS
from .mmu import Root
from .results import Memslot

if TYPE_CHECKING:  # pragma: no cover
    from .vm import VM


def start(vm: "VM", name: str, args, yield_every: int) -> "Op":
    """:meth:`tdpfast.VM.start_op` (called with the VM's lock held)."""
    _choice("operation", name, tuple(OPS))
    vals = [a.id if isinstance(a, (Memslot, Root)) else _int(f"{name} argument", a) for a in args]
    if len(vals) > 3:
        raise InvalidArgumentError(f"{name} takes at most 3 arguments, got {len(vals)}")
    vals += [0] * (3 - len(vals))
    out = ffi.new("uint32_t *")
    check(vm._h, lib.tdp_op_start(vm._h, OPS[name], vals[0], vals[1], vals[2],
                                  _int("yield_every", yield_every, 0, 1 << 30), out))
    return Op(vm, out[0], name)


def in_flight(vm: "VM") -> List["Op"]:
    """:attr:`tdpfast.VM.ops`: stepped operations that have not finished (called with the
    VM's lock held; sized by the engine, never truncated)."""
    n = ffi.new("int *")
    lib.tdp_op_list(vm._h, ffi.NULL, 0, n)
    while True:
        cap = n[0]
        ids = ffi.new("uint32_t[]", max(cap, 1))
        lib.tdp_op_list(vm._h, ids, cap, n)
        if n[0] <= cap:
            return [Op(vm, ids[i], "?") for i in range(n[0])]


class Op:
    """A long operation in flight (see :meth:`VM.start_op`)."""

    def __init__(self, vm: "VM", op_id: int, name: str):
        self._vm = vm
        self.id = op_id
        self.name = name
        self.done = False
        self.result: Optional[int] = None

    @property
    def _lock(self):
        return self._vm._lock

    @locked
    def step(self) -> bool:
        """Run to the next yield point (True once the operation has finished)."""
        if self.done:
            return True
        done = ffi.new("int *")
        res = ffi.new("int *")
        check(self._vm._h, lib.tdp_op_step(self._vm._h, self.id, done, res))
        if done[0]:
            self.done = True
            self.result = res[0]
        return self.done

    @locked
    def finish(self) -> int:
        """Run to the end; returns the operation's result (e.g. whether a zap flushed)."""
        while not self.step():
            pass
        return self.result

    def __repr__(self) -> str:
        return f"Op(id={self.id}, {self.name}, done={self.done})"


__all__ = ["Op", "OPS", "start", "in_flight"]
