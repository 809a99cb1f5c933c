"""A run folder's `metrics.jsonl`: one JSON object per PPO step, appended and flushed as each step ends.

The one reader is strict: only the last line may be cut short (a crash while appending: that step is redone on
resume); a damaged line anywhere else is a UserError naming the file and the line, since dropping it, or everything
after it, would lose steps without a word.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainers.errors import UserError
from trainers.io import atomic_write_text

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


def read_metrics(path: Path) -> list[dict]:
    """The steps of the log at `path` ([] when there is none yet)."""
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


def _line(row: dict) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def append_metrics(path: Path, row: dict) -> None:
    """One step's row, on disk (fsync) before the step's checkpoint is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(_line(row))
        f.flush()
        os.fsync(f.fileno())


def keep_metrics_through(path: Path, step: int) -> None:
    """Keep the steps <= `step` (those a checkpoint covers); later ones are redone on resume."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    atomic_write_text(path, "".join(_line(r) for r in kept))
