"""Progress of a long loop (rollout chunks, PPO minibatches, evaluation batches, judge answers, bios): a tqdm bar
with rate and ETA when the stream is a terminal; otherwise (a log file, a pipe, CI) a plain line with the same
numbers at most every $HARNESS_PROGRESS_EVERY seconds (default 30), and one at its end once it has printed one: logs
show a slow loop moving without a line per item, and a loop shorter than the interval adds nothing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

DEFAULT_EVERY = 30.0


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _every() -> float:
    text = os.environ.get("HARNESS_PROGRESS_EVERY", "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_EVERY
    except ValueError:
        return DEFAULT_EVERY


def clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Meter:
    """`total` items of a loop named `desc`; `update(n)` as they are done. `tty`: force the bar (True) or the lines
    (False) instead of asking the stream; `log`: where lines go (default: the stream); `enabled=False`: silent (the
    ranks of a multi-process run other than the first)."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, stream=None, tty: bool | None = None,
                 every: float | None = None, log: Callable[[str], None] | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled and total > 0
        self.stream = stream or sys.stderr
        self.every = _every() if every is None else every
        self.clock, self.done, self.lines = clock, 0, 0
        self.started = self.last_line = clock()
        self.log = log or (lambda line: print(line, file=self.stream, flush=True))
        self.bar = None
        if self.enabled and (is_terminal(self.stream) if tty is None else tty):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last_line >= self.every or (self.done >= self.total and self.lines):
            self.last_line, self.lines = now, self.lines + 1
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        seconds = (self.clock() if now is None else now) - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} | {rate:.3g} {self.unit}/s | "
                f"elapsed {clock_text(seconds)} | ETA {clock_text(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
