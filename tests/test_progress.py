"""Live progress: a tqdm bar with rate and ETA on a terminal; plain lines, at most one per interval and one at the
end, with the same numbers in a log."""

from __future__ import annotations

import io
import time

from trainers.progress import Meter, is_terminal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_in_a_log_carry_rate_and_eta_at_most_once_per_interval():
    clock, lines = Clock(), []
    meter = Meter(10, "step 3 rollout", "chunk", tty=False, every=30.0, log=lines.append, clock=clock)
    for _ in range(4):  # 4 chunks at 5 s each: 20 s, under the interval
        clock.now += 5.0
        meter.update()
    assert lines == []
    clock.now += 15.0  # 35 s for 5 chunks
    meter.update()
    assert lines == ["step 3 rollout: 5/10 chunk | 0.143 chunk/s | elapsed 00:35 | ETA 00:35"]
    for _ in range(5):
        clock.now += 1.0
        meter.update()
    assert lines[-1] == "step 3 rollout: 10/10 chunk | 0.25 chunk/s | elapsed 00:40 | ETA 00:00"  # and its end
    assert len(lines) == 2
    short = Meter(3, "step 4 rollout", "chunk", tty=False, every=30.0, log=lines.append, clock=clock)
    for _ in range(3):
        clock.now += 1.0
        short.update()
    assert len(lines) == 2  # a loop shorter than the interval adds nothing to the log


def test_a_terminal_gets_a_tqdm_bar_with_rate_and_eta():
    stream = io.StringIO()
    with Meter(4, "judge", "answers", stream=stream, tty=True) as meter:
        for _ in range(4):
            time.sleep(0.12)  # tqdm redraws at most every 0.1 s
            meter.update()
    text = stream.getvalue()
    assert "judge" in text and "3/4" in text and "answers/s]" in text and "<00:0" in text
    assert "?answers/s" not in text.split("3/4")[1].split("]")[0]  # a measured rate by then


def test_an_idle_meter_writes_nothing_and_a_stringio_is_not_a_terminal():
    stream = io.StringIO()
    assert not is_terminal(stream)
    silent = Meter(3, "other rank", stream=stream, enabled=False)
    silent.update(3)
    silent.close()
    assert stream.getvalue() == ""
