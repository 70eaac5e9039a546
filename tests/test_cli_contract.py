"""The CLI's contract (issue 11): arguments are checked before any work (exit 2, one line),
Ctrl-C ends a fuzz run with its partial result (exit 130, valid JSON under --json), the
progress line is rate-limited and shows the budget and a shrinking phase, `--version`."""
import io
import json
import signal
import subprocess
import sys

import pytest

import schema_check
import tdpfast
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV
from tdpfast import cli, fuzz, Policy


def tdpfast_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tdpfast", *args], capture_output=True, text=True,
                          timeout=timeout, env=SUBPROCESS_ENV, cwd=SUBPROCESS_CWD)


# --------------------------------------------------------------------------- validation before work

# A policy that finds a violation within ~10,000 operations from seed 0: had the bad argument
# been let through, the run would search, find, shrink and print (exit 1), or never stop.
FINDS = ("--policy", "no-flush-on-migrate", "--max-ops", "3000000", "--no-progress")


@pytest.mark.parametrize("args,says", [
    (("--budget", "nan"), "--budget"),
    (("--budget", "inf"), "--budget"),
    (("--budget", "-1"), "--budget"),
    (("--budget", "0"), "--budget"),
    (("--budget", "ten"), "--budget"),
    (("--shrink-budget", "inf"), "--shrink-budget"),
    (("--shrink-budget", "nan"), "--shrink-budget"),
    (("--shrink-budget", "-0.5"), "--shrink-budget"),
    (("--max-ops", "-5"), "--max-ops"),
    (("--max-ops", "0"), "--max-ops"),
    (("--max-ops", "1e6"), "--max-ops"),
    (("--vcpus", "0"), "--vcpus"),
    (("--vcpus", "5000"), "vcpus must be between 1 and 4096"),
    (("--pcpus", "-2"), "--pcpus"),
    (("--seed", "-1"), "--seed"),
    (("--seed", str(1 << 64)), "--seed"),
    (("--levels", "3"), "--levels"),
    (("--set", "flush_on_migrate"), "SWITCH=VALUE"),
])
def test_bad_numbers_and_seeds_exit_2_with_one_line_before_searching(args, says):
    p = tdpfast_cli("fuzz", *FINDS, *args, "--json", timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr[-300:])
    assert p.stdout == ""                                   # no search, no result
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tdpfast fuzz: error:"), p.stderr
    assert says in lines[0]


def test_out_in_a_missing_directory_is_refused_before_the_search(tmp_path):
    target = tmp_path / "missing" / "repro.py"
    p = tdpfast_cli("fuzz", *FINDS, "--out", str(target))
    assert p.returncode == 2, p.stdout[-300:] + p.stderr[-300:]
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"tdpfast fuzz: error: --out {target}: directory "
                                             f"{target.parent} does not exist"]
    assert not target.parent.exists()


@pytest.mark.parametrize("kind", ["directory", "parent_is_a_file", "unwritable"])
def test_out_that_cannot_be_written_is_refused_before_the_search(tmp_path, kind):
    if kind == "directory":
        target = tmp_path
    elif kind == "parent_is_a_file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "repro.py"
    else:
        target = "/proc/tdpfast-cannot-create-here.py"     # no file can be created in procfs, even as root
    p = tdpfast_cli("fuzz", *FINDS, "--out", str(target))
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "--out" in p.stderr


def test_a_good_out_is_left_untouched_by_the_check_and_written_after(tmp_path):
    target = tmp_path / "repro.py"
    cli.check_output_file(str(target))
    assert not target.exists()                               # the check leaves no empty file behind
    p = tdpfast_cli("fuzz", *FINDS, "--out", str(target), "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["out"] == str(target)
    assert target.read_text() == json.loads(p.stdout)["reproducer"]


def test_usage_errors_of_demo_and_policies_and_no_command():
    for args in (("demo", "--bogus"), ("policies", "extra")):
        p = tdpfast_cli(*args)
        assert p.returncode == 2 and p.stdout == ""
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert tdpfast_cli().returncode == 2


def test_version():
    p = tdpfast_cli("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"tdpfast {tdpfast.__version__}"
    assert tdpfast.__version__.count(".") >= 2


# --------------------------------------------------------------------------- Ctrl-C

def _interrupt_after_first_progress_line(*args):
    """Start `tdpfast fuzz`, wait for its first progress line on stderr, send SIGINT."""
    p = subprocess.Popen([sys.executable, "-m", "tdpfast", "fuzz", "--progress", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=SUBPROCESS_ENV, cwd=SUBPROCESS_CWD)
    seen = []
    while True:
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("exploring"):
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=300)
    return p.returncode, out, "".join(seen) + err


def test_ctrl_c_during_the_search_prints_the_partial_result_as_json():
    # KVM's policy never violates and the budget is 2 minutes: only the interrupt ends the run
    # early (the budget only bounds the wait should no progress line ever come).
    code, out, err = _interrupt_after_first_progress_line("--budget", "120", "--json")
    assert code == 130, err[-500:]
    assert "Traceback" not in err
    doc = json.loads(out)
    schema_check.check(doc, "fuzz.schema.json")
    assert doc["status"] == "interrupted"
    assert doc["ops_explored"] >= 4000                     # at least the VM the progress line reported
    assert doc["violation"] is None and doc["minimal"] is None


def test_ctrl_c_during_the_search_prints_the_partial_result_as_text():
    code, out, err = _interrupt_after_first_progress_line("--budget", "120")
    assert code == 130 and "Traceback" not in err
    assert out.startswith("interrupted: no violation in ")


def test_ctrl_c_while_shrinking_keeps_the_finding(monkeypatch, capsys, tmp_path):
    """The interrupt arrives at the first shrink replay (deterministic: sent from inside the
    run); the CLI reports the violation, the sequence so far, and writes the reproducer."""
    real_replay = fuzz.replay
    sent = []

    def replay_then_interrupt(*a, **k):
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)
        return real_replay(*a, **k)

    monkeypatch.setattr(fuzz, "replay", replay_then_interrupt)
    # A guard in place of Python's handler: were the CLI not to handle SIGINT, the signal
    # would land here (the run goes on and the exit status shows it), not abort pytest.
    reached_guard = []
    guard = lambda signum, frame: reached_guard.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGINT, guard)
    try:
        out = tmp_path / "repro.py"
        code = cli.main(["fuzz", *FINDS, "--json", "--out", str(out)])
        assert signal.getsignal(signal.SIGINT) is guard     # the CLI put the previous handler back
    finally:
        signal.signal(signal.SIGINT, previous)
    doc = json.loads(capsys.readouterr().out)
    assert code == 130 and sent and not reached_guard
    schema_check.check(doc, "fuzz.schema.json")
    assert doc["status"] == "interrupted"
    assert doc["violation"]["kind"] in ("use_after_free", "stale_page_table")
    assert doc["shrink"]["complete"] is False
    assert doc["shrink"]["to_events"] == len(doc["minimal"]) <= doc["shrink"]["from_events"]
    assert out.read_text() == doc["reproducer"]
    r = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=120,
                       env=SUBPROCESS_ENV, cwd=SUBPROCESS_CWD)
    assert r.returncode == 1 and doc["violation"]["kind"] in r.stdout   # the partial reproducer still shows it


# --------------------------------------------------------------------------- progress

class _Tty(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_line_redraws_at_most_four_times_a_second():
    from tdpfast.progress import ProgressLine

    clock, out = _Clock(), _Tty()
    line = ProgressLine(out, clock=clock)
    built = []
    for i in range(2000):                      # 2,000 updates over 2 simulated seconds
        clock.t = i / 1000
        line.update("exploring", lambda: built.append(1) or "x")
    assert line.draws <= 9 and len(built) == line.draws   # text is built only when drawn
    clock.t += 0.001
    assert line.update("shrinking", lambda: "y")           # a new phase shows at once
    assert "\n" not in out.getvalue()                      # on a terminal: one line, redrawn in place
    line.close()
    assert out.getvalue().endswith("\n")


def test_fuzz_progress_shows_the_budget_share_rate_and_the_shrinking_phase():
    class Args:
        budget, max_ops, shrink_budget = 20.0, 1_000_000, 30.0

    clock, out = _Clock(), io.StringIO()
    bar = cli._FuzzProgress(Args, out, clock=clock)
    clock.t = 5.0
    bar.explore(250_000, 5.0)
    clock.t = 6.5
    bar.shrink(800, 800)
    clock.t = 9.0
    bar.shrink(800, 40)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["exploring", "5.0s/20s", "25%", "250,000/1,000,000", "ops", "50.00k/s"]
    assert lines[1].startswith("shrinking") and "0.0s/30s" in lines[1] and "800 -> 800 events" in lines[1]
    assert "2.5s/30s" in lines[2] and "800 -> 40 events" in lines[2] and "2 replays" in lines[2]


def test_shrinking_reports_before_every_replay():
    """No silent stretch while shrinking: the callback runs before each candidate replay."""
    calls = []
    cfg = fuzz.FuzzConfig(policy=Policy.named("no-flush-on-migrate"))
    finding, _ = fuzz.run(cfg, seed=0, budget_s=600, max_ops=3_000_000,
                          shrink_progress=lambda start, now: calls.append((start, now)))
    assert finding is not None and finding.shrink_complete
    assert len(calls) == finding.shrink_replays > 10
    assert all(start == finding.shrink_from for start, _ in calls)
    assert calls[-1][1] <= calls[0][1]


def test_progress_on_a_pipe_prints_whole_exploring_and_shrinking_lines(capsys):
    code = cli.main(["fuzz", "--policy", "no-flush-on-migrate", "--max-ops", "3000000", "--progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "\r" not in err
    phases = [ln.split()[0] for ln in err.splitlines()[1:]]
    assert phases[0] == "exploring" and "shrinking" in phases
