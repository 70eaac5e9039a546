"""A progress line for long commands (``tdpfast fuzz``): redrawn at most a few times a second.

On a terminal the line rewrites itself in place; on a pipe or a log file it prints whole
lines, fewer of them, so a captured log stays readable. The first update and every change
of phase are drawn at once; the rest are dropped until the interval has passed, before
the text is even formatted (callers pass a function that builds it).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO


class ProgressLine:
    """One status line on ``stream``; ``interval`` seconds at least between redraws on a
    terminal, ``log_interval`` seconds between lines elsewhere."""

    def __init__(self, stream: TextIO, *, interval: float = 0.25, log_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        try:
            self.tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if self.tty else log_interval
        self.clock = clock
        self._last: Optional[float] = None
        self._phase: Optional[str] = None
        self._width = 0
        self.draws = 0

    def update(self, phase: str, text: Callable[[], str]) -> bool:
        """Draw ``phase`` and ``text()`` unless the last draw of the same phase was less
        than the interval ago. Returns whether it drew."""
        now = self.clock()
        if phase == self._phase and self._last is not None and now - self._last < self.interval:
            return False
        self._last, self._phase = now, phase
        line = f"{phase:<9s} {text()}"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.draws += 1
        return True

    def close(self) -> None:
        """End the line (on a terminal) so what follows starts on a fresh one."""
        if self.tty and self.draws:
            self.stream.write("\n")
            self.stream.flush()
        self.draws = 0
        self._width = 0


def rate(count: float, seconds: float) -> str:
    """``count`` per second, e.g. "1.23M/s", "845k/s"."""
    r = count / seconds if seconds > 0 else 0.0
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= div:
            return f"{r / div:.2f}{unit}/s"
    return f"{r:.0f}/s"
