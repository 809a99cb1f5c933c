"""A run folder's files: the per-step `metrics.jsonl`, peak memory, progress lines."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.errors import UserError
from trainers.io import atomic_write_text

if TYPE_CHECKING:  # reading a metrics log (reproduce, report) must not load torch
    import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        import torch  # already loaded by whoever holds a CUDA device

        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"


MAX_STEP = 10**9
NUMERIC_PREFIXES = ("objective/", "ppo/", "time/", "rollout/", "memory/peak")


def _row_problem(row: object) -> str | None:
    """What makes a metrics row unusable (None: nothing): its step, or a measurement that is not a number."""
    if not isinstance(row, dict):
        return f"a record is a JSON object, not {type(row).__name__}"
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= MAX_STEP:
        return f"step={step!r:.40} must be an integer in [1, {MAX_STEP}]"
    for key, value in row.items():
        if key.startswith(NUMERIC_PREFIXES) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key}={value!r:.40} must be a number (or null)"
    return None


def read_metrics(path: str | Path) -> list[dict]:
    """The steps of a `metrics.jsonl`. Only the last line may be cut short (a crash while appending: that step is
    redone on resume); a damaged line anywhere else is an error naming the file and line, since dropping it, or
    everything after it, would lose steps without a word."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); the metrics log is damaged") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)  # a complete record always ends in a newline
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if last:
                break
            raise UserError(f"{path}, line {number}: not a JSON record ({e}); the metrics log is damaged: "
                            "repair or remove that line") from None
        problem = _row_problem(row)
        if problem:
            if last:
                break
            raise UserError(f"{path}, line {number}: {problem}; the metrics log is damaged")
        records.append(row)
    return records


class MetricsLog:
    """`metrics.jsonl`: one JSON object per PPO step, appended and flushed as each step ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep the steps <= `step` (those a checkpoint covers); later ones are redone on resume."""
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


class Progress:
    """One line per step on stderr: step, reward, KL, speed and ETA."""

    def __init__(self, total: int, start: int, stream=sys.stderr) -> None:
        self.total, self.start, self.stream = total, start, stream
        self.t0 = time.perf_counter()

    def update(self, step: int, m: dict) -> None:
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        self.stream.write(
            f"step {step}/{self.total} | score {m['objective/scores']:+.3f} | true_kl {m['objective/true_kl']:.4f}"
            f" | len {m['rollout/response_length']:.1f} | {m['time/step']:.1f} s/step"
            f" | {m['time/tokens_per_s']:.0f} tok/s | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}\n"
        )
        self.stream.flush()
