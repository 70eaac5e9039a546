"""Progress of a bench run on stderr: which case runs and how many are done.

On a terminal one status line is redrawn in place by a ticker thread, at most
``MAX_REDRAWS_PER_S`` times a second (the measurements only update the state, so a fast
run of short cases costs no output); elsewhere (a pipe, a log file) one line per step.
``clock`` is injectable and ``tick()`` public so that the rate limit can be tested without
a thread or a sleep."""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, TextIO

MAX_REDRAWS_PER_S = 4


class Progress:
    def __init__(self, total_cases: int, total_steps: int, stream: Optional[TextIO] = None, enabled: bool = True,
                 tty: Optional[bool] = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.clock = clock
        self.total_cases, self.total_steps = total_cases, total_steps
        self.cases = self.steps = 0          # started so far
        self.step_name = self.current = ""
        self.t0 = self.step_t0 = clock()
        self.last_draw: Optional[float] = None
        self.redraws = 0
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def redrawing(self) -> bool:
        return self.enabled and self.tty

    # -- lifetime
    def start(self) -> "Progress":
        """Start the ticker thread (terminal only)."""
        if self.redrawing and self._thread is None:
            self._thread = threading.Thread(target=self._tick_loop, name="tdpfast-bench-progress", daemon=True)
            self._thread.start()
        return self

    def finish(self) -> None:
        """Stop the ticker and clear the status line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self.redrawing and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0

    # -- events (main thread)
    def step(self, key: str, what: str) -> None:
        self.steps += 1
        self.step_name, self.current = key, ""
        self.step_t0 = self.clock()
        if not self.tty:
            self._line(f"[step {self.steps}/{self.total_steps}] {what} ...")

    def case(self, case_id: str) -> None:
        """Case ``case_id`` starts (the ones before it are done)."""
        self.cases += 1
        self.current = case_id

    def step_done(self) -> None:
        if not self.tty:
            now = self.clock()
            self._line(f"      {self.step_name}: done in {now - self.step_t0:.1f}s, {self.cases}/{self.total_cases} "
                       f"cases, total {now - self.t0:.1f}s")

    # -- drawing (ticker thread)
    def status(self) -> str:
        return (f"[{self.cases}/{self.total_cases}] {self.current or self.step_name}  "
                f"(step {self.steps}/{self.total_steps}: {self.step_name}, {self.clock() - self.t0:.0f}s)")

    def tick(self) -> bool:
        """Redraw the status line unless the last redraw is under 1/MAX_REDRAWS_PER_S s old."""
        if not self.redrawing:
            return False
        with self._lock:
            now = self.clock()
            if self.last_draw is not None and now - self.last_draw < 1.0 / MAX_REDRAWS_PER_S:
                return False
            self.last_draw = now
            self.redraws += 1
            s = self.status()
            self.stream.write("\r" + s + " " * max(self._width - len(s), 0))
            self.stream.flush()
            self._width = len(s)
            return True

    def _tick_loop(self) -> None:
        while not self._stop.wait(1.0 / MAX_REDRAWS_PER_S):
            self.tick()

    def _line(self, s: str) -> None:
        if self.enabled:
            print(s, file=self.stream, flush=True)
