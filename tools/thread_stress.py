"""Eight threads share one VM and hammer it with mixed calls (guest accesses and access
batches, faults, range zaps, MMU-notifier unmaps, vCPU scheduling, flushes, reads of the
model, and calls that must fail); then the run is checked against the same calls run
serially:

- nothing crashed, and no call that should succeed failed;
- every failing call raised exactly the exception class and message that call raises
  alone (no message of another call, no class of another error);
- every successful call that changes the model is in the event log exactly once, and
  the log (the order in which the VM's lock let the calls run) replayed serially on a
  fresh VM reaches the same digest and the same violations, and the violations the
  calls reported add up to the VM's list.

    python tools/thread_stress.py --calls 1000000          # the issue's 10^6 (run it under ASan)
    python tools/thread_stress.py --calls 20000 --policy kvm

``run()`` is what tests/test_threads.py calls with a smaller size.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

if __name__ == "__main__":   # run from a source tree: use its tdpfast
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tdpfast import Policy, TdpError, TLBConfig, VM  # noqa: E402

NPAGES = 2048          # the memslot: gfns [0, NPAGES); gfns above are MMIO
VCPUS, PCPUS = 2, 4     # vCPU v migrates between pCPUs v and v + 2 (never kicks the other out)

#: Calls that must fail, whatever the state: (name, function of vm).
BAD_CALLS = (
    ("vcpu_run(99, 0)", lambda vm: vm.vcpu_run(99, 0)),
    ("access(0, 1 << 60)", lambda vm: vm.access(0, 1 << 60, "r")),
    ("zap_gfn_range(10, 5)", lambda vm: vm.mmu.zap_gfn_range(10, 5)),
    ("delete_memslot(999)", lambda vm: vm.delete_memslot(999)),
    ("host_unmap(1 << 40, 1 << 41)", lambda vm: vm.host_unmap(1 << 40, 1 << 41)),
    ("access_batch(7, ...)", lambda vm: vm.access_batch(7, [0x1000], "r")),
    ("put_root(12345)", lambda vm: vm.mmu.put_root(12345)),
    ("vcpu_request(0, 'x')", lambda vm: vm.vcpu_request(0, "no_such_request")),
    ("invept(5, 'global')", lambda vm: vm.invept(5, "global")),
)
#: Successful calls of these kinds add one event each to the log.
LOGGED = ("access", "access_batch", "map", "zap_gfn_range", "host_unmap", "vcpu_run", "flush_remote_tlbs",
          "flush_remote_tlbs_range")


def make_vm(arch: str, policy: str, seed: int) -> VM:
    vm = VM(arch=arch, seed=seed, vcpus=VCPUS, pcpus=PCPUS, tlb=TLBConfig.adversarial(),
            policy=Policy.named(policy), record=True)
    vm.add_memslot(0, NPAGES, max_level=2)
    for v in range(VCPUS):
        vm.vcpu_run(v, v)
    return vm


def expected_failures(arch: str, policy: str, seed: int) -> Dict[str, tuple]:
    """What each bad call raises when it runs alone."""
    vm = make_vm(arch, policy, seed)
    out = {}
    for name, call in BAD_CALLS:
        try:
            call(vm)
        except TdpError as e:
            out[name] = (type(e), str(e))
        else:
            raise AssertionError(f"{name} did not fail")
    return out


def _worker(vm: VM, tid: int, ncalls: int, seed: int, res: dict) -> None:
    rng = random.Random(seed * 7919 + tid)
    kinds = ["access"] * 30 + ["access_batch"] * 10 + ["map"] * 10 + ["zap_gfn_range"] * 8 + \
        ["host_unmap"] * 6 + ["vcpu_run"] * 8 + ["flush_remote_tlbs"] * 3 + ["read"] * 5 + ["bad"] * 20
    ok = {k: 0 for k in LOGGED}
    failures: List[tuple] = []      # (call name, exception class, message)
    unexpected: List[str] = []
    reported = 0                    # violations the calls themselves reported
    for _ in range(ncalls):
        kind = rng.choice(kinds)
        v = rng.randrange(VCPUS)
        gfn = rng.randrange(NPAGES + 64)
        try:
            if kind == "access":
                r = vm.access(v, (gfn << 12) | rng.randrange(4096), rng.choice(("r", "w", "x")))
                reported += r.violation is not None
            elif kind == "access_batch":
                gpas = [rng.randrange(NPAGES + 64) << 12 for _ in range(16)]
                r = vm.access_batch(v, gpas, [rng.choice("rwx") for _ in gpas])
                if r.accesses != 16:
                    unexpected.append(f"access_batch ran {r.accesses} of 16: {r.stopped}")
                reported += r.violations
            elif kind == "map":
                vm.mmu.map(rng.randrange(NPAGES), 1)
            elif kind == "zap_gfn_range":
                s = rng.randrange(NPAGES)
                # As KVM's callers do (kvm_zap_gfn_range()): the zap and the flush it owes, one
                # locked call that logs two events when it flushes. A bare zap that skipped the
                # owed flush would be a caller bug, reported as a violation even under KVM's policy.
                if vm.mmu.kvm_zap_gfn_range(s, s + rng.randrange(1, 600), shared=rng.random() < 0.3):
                    ok["flush_remote_tlbs_range"] += 1
            elif kind == "host_unmap":
                s = rng.randrange(NPAGES)
                vm.host_unmap(s, s + rng.randrange(1, 64))
            elif kind == "vcpu_run":
                vm.vcpu_run(v, v + VCPUS * rng.randrange(PCPUS // VCPUS))
            elif kind == "flush_remote_tlbs":
                vm.flush_remote_tlbs()
            elif kind == "read":
                what = rng.randrange(4)
                if what == 0:
                    assert vm.stats["accesses"] >= 0
                elif what == 1:
                    assert len(vm.memslots) == 1
                elif what == 2:
                    assert vm.ops == []
                else:
                    assert repr(vm).startswith("VM(")
            else:
                name, call = BAD_CALLS[rng.randrange(len(BAD_CALLS))]
                try:
                    call(vm)
                except TdpError as e:
                    failures.append((name, type(e), str(e)))
                else:
                    unexpected.append(f"{name} succeeded")
                continue
            if kind in ok:
                ok[kind] += 1
        except Exception as e:  # noqa: BLE001 -- any failure of a call that must succeed is a finding
            unexpected.append(f"{kind}: {type(e).__name__}: {e}")
    res[tid] = {"ok": ok, "failures": failures, "unexpected": unexpected, "reported": reported}


def run(calls: int, *, threads: int = 8, seed: int = 0, policy: str = "no-flush-on-migrate",
        arch: str = "vmx") -> dict:
    """Run ``calls`` calls over ``threads`` threads on one VM and check them (see the
    module docstring). Returns a summary; ``summary["problems"]`` lists every mismatch."""
    expected = expected_failures(arch, policy, seed)
    vm = make_vm(arch, policy, seed)
    setup_events = len(vm.events)
    res: dict = {}
    per = [calls // threads + (1 if t < calls % threads else 0) for t in range(threads)]
    ts = [threading.Thread(target=_worker, args=(vm, t, per[t], seed, res)) for t in range(threads)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)     # switch threads as often as the interpreter allows
    t0 = time.monotonic()
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    seconds = time.monotonic() - t0
    problems: List[str] = []
    nfail = 0
    ok_total = {k: 0 for k in LOGGED}
    reported = 0
    for tid in range(threads):
        r = res[tid]
        problems += [f"thread {tid}: {u}" for u in r["unexpected"]]
        for name, cls, msg in r["failures"]:
            nfail += 1
            if (cls, msg) != expected[name]:
                problems.append(f"{name} raised {cls.__name__}({msg!r}); alone it raises "
                                f"{expected[name][0].__name__}({expected[name][1]!r})")
        for k, n in r["ok"].items():
            ok_total[k] += n
        reported += r["reported"]
    events = vm.events
    logged = len(events) - setup_events
    if logged != sum(ok_total.values()):
        problems.append(f"{sum(ok_total.values())} successful calls, {logged} events logged")
    by_op = {k: sum(1 for e in events[setup_events:] if e.op == k) for k in LOGGED}
    if by_op != ok_total:
        problems.append(f"events by kind {by_op} != successful calls {ok_total}")
    violations = vm.violations
    if reported != len(violations):
        problems.append(f"the calls reported {reported} violations, the VM holds {len(violations)}")
    serial = vm.fresh()
    serial.replay(events)
    if serial.digest() != vm.digest():
        problems.append("the event log replayed serially does not reach the same digest")
    if serial.violations != violations:
        problems.append(f"serial replay: {len(serial.violations)} violations, threaded run: {len(violations)}")
    return {"calls": calls, "threads": threads, "seed": seed, "policy": policy, "arch": arch,
            "seconds": round(seconds, 3), "successful": sum(ok_total.values()), "failed_as_expected": nfail,
            "events": len(events), "violations": len(violations), "problems": problems}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="no-flush-on-migrate", choices=Policy.names())
    ap.add_argument("--arch", default="vmx", choices=("vmx", "svm"))
    args = ap.parse_args(argv)
    if args.calls < 1 or args.threads < 1:
        ap.error("--calls and --threads must be positive")
    out = run(args.calls, threads=args.threads, seed=args.seed, policy=args.policy, arch=args.arch)
    shown = dict(out, problems=out["problems"][:20], problem_count=len(out["problems"]))
    print(json.dumps(shown, indent=2))
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
