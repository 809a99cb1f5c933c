"""Progress and parse failures of a judge while it answers, and the end of a judge that cannot answer.

`MonitoredJudge` wraps any judge (same identity, so cached annotations stay valid) and reports after every batch:
answers so far, the unparsable share, seconds per answer and an ETA. A judge whose answers mostly cannot be
parsed (a small local model that ignores the answer format) is stopped by `UnparsableJudgeError` as soon as its
unparsable answers exceed `max_unparsed` of all answers the evaluation needs, and by `check_unparsed` at the end
over every answer (cached ones included): its preferences would not measure the model, and counting the failures
as losses or draws would invent a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from evals.judging import Judge, Pair
from trainers.progress import Meter, is_terminal


class UnparsableJudgeError(ValueError):
    """Too many of the judge's answers could not be parsed; nothing is recorded."""


def _limit_text(judge: Judge, what: str, max_unparsed: float) -> str:
    who = judge.identity()
    config = f", config {who['config']}" if who.get("config") else ""
    return (f"judge {who.get('name')} ({who.get('model')}{config}) cannot answer in a parsable form: {what}, over "
            f"--judge-max-unparsed {max_unparsed:g}; nothing recorded (try a one-pair config such as "
            "alpaca_farm_greedy_gpt4_b1, or a stronger judge model)")


class MonitoredJudge(Judge):
    """`judge` with progress lines and an early stop. `expected`: the answers the evaluation needs at most (both
    orders of every pair); `max_unparsed`: the largest allowed unparsable share in [0, 1] (None: no limit)."""

    def __init__(self, judge: Judge, *, expected: int, max_unparsed: float | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if max_unparsed is not None and not 0.0 <= max_unparsed <= 1.0:
            raise ValueError(f"max_unparsed={max_unparsed!r} must lie in [0, 1] (a share of the judge's answers)")
        self.inner, self.expected, self.max_unparsed = judge, expected, max_unparsed
        self.log, self.clock = log, clock
        self.name, self.model, self.version = judge.name, judge.model, judge.version
        self.answers = self.unparsed = 0
        self._started: float | None = None
        self._meter: Meter | None = None  # the bar, on a terminal

    def identity(self) -> dict[str, str]:
        return self.inner.identity()

    def close(self) -> None:
        if self._meter is not None:
            self._meter.close()
        self.inner.close()

    @property
    def unparsed_share(self) -> float:
        return self.unparsed / self.answers if self.answers else 0.0

    def _prefer(self, pairs: Sequence[Pair]) -> list[float | None]:
        if self._started is None:
            self._started = self.clock()
        answers = self.inner._prefer(pairs)
        self.answers += len(answers)
        self.unparsed += sum(a is None for a in answers)
        if self.log is not None and is_terminal():  # a bar with rate and ETA; a line per batch in logs
            self._meter = self._meter or Meter(self.expected, "judge", "answers", tty=True)
            self._meter.update(len(answers))
        elif self.log is not None:
            seconds = self.clock() - self._started
            left = max(self.expected - self.answers, 0)
            self.log(f"judge: {self.answers}/{self.expected} answers asked | unparsable {self.unparsed} "
                     f"({100.0 * self.unparsed_share:.0f}%) | {seconds / self.answers:.2f} s per answer | "
                     f"ETA {seconds / self.answers * left:.0f} s")
        if self.max_unparsed is not None and self.unparsed > self.max_unparsed * self.expected:
            # the final share cannot fall back under the limit: stop now rather than after the remaining answers
            raise UnparsableJudgeError(_limit_text(
                self, f"{self.unparsed} unparsable answers after {self.answers} of the {self.expected} needed",
                self.max_unparsed))
        return answers


def check_unparsed(judge: Judge, answers: Sequence[float | None], max_unparsed: float | None) -> float:
    """The unparsable share of `answers` (every answer the metric rests on, cached ones included); raises
    `UnparsableJudgeError` when it exceeds `max_unparsed`."""
    unparsed = sum(a is None for a in answers)
    share = unparsed / len(answers) if answers else 0.0
    if max_unparsed is not None and share > max_unparsed:
        raise UnparsableJudgeError(_limit_text(
            judge, f"{unparsed} of {len(answers)} answers unparsable ({100.0 * share:.0f}%)", max_unparsed))
    return share
