"""A run folder, the one reader and writer of the files `harness train` (and `harness reproduce` around it) keep
in it; every other module goes through `RunFolder`. The names are in `trainers.runfolder.names`.

Every reader validates, and a damaged file is refused the same way wherever it is read (evaluation, runs table,
curves, resume): one UserError line naming the file, what is wrong and where (its line, or its field). Every writer
is atomic, bar the lock's holder line and the metrics log, which is appended one fsynced line per step (a torn last
line is what resume redoes).

The parts: `lock` (who may write the folder), `metrics` (the per-step log), `state` (a checkpoint's state.json),
`resume` (whether a checkpoint belongs to the run about to continue it). Nothing here loads torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainers.errors import UserError
from trainers.io import atomic_write_text, read_json_object
from trainers.runfolder.lock import RunLock, check_out, lock_state
from trainers.runfolder.metrics import append_metrics, keep_metrics_through, read_metrics
from trainers.runfolder.names import (CHECKPOINT_PREFIX, CHECKPOINTS, CONFIG, FACTS, FAILED, GRID_CONFIG, LOCK,
                                      METRICS, STATE, TRACKERS, TRAIN_LOG, checkpoint_name)
from trainers.runfolder.resume import check_no_checkpoint, check_resume, resume_hash
from trainers.runfolder.state import content_digest, has_state, read_state, seal_state, verify, write_state
from trainers.run_config import split

__all__ = ["RunFolder", "RunLock", "check_out", "lock_state", "resume_hash", "check_resume", "check_no_checkpoint",
           "read_state", "write_state", "has_state", "verify", "seal_state", "content_digest", "checkpoint_name",
           "STATE", "LOCK"]


@dataclass(frozen=True, slots=True)
class RunFolder:
    """The run folder at `path` (which need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def find(cls, root: str | Path) -> list[RunFolder]:
        """The run folders under `root` (itself included; not inside a checkpoint), sorted by path."""
        root = Path(root)
        found = {p.parent for p in root.rglob(CONFIG) if CHECKPOINTS not in p.relative_to(root).parts}
        return [cls(p) for p in sorted(found)]

    @classmethod
    def of_checkpoint(cls, folder: str | Path) -> RunFolder | None:
        """The run whose checkpoint `folder` (RUN/checkpoints/step-N) is; None when it is not one."""
        folder = Path(folder)
        run = cls(folder.parent.parent)
        return run if folder.parent.name == CHECKPOINTS and run.has_config() else None

    # ---- paths -------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def facts_path(self) -> Path:
        return self.path / FACTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def trackers_path(self) -> Path:
        return self.path / TRACKERS

    @property
    def grid_config_path(self) -> Path:
        return self.path / GRID_CONFIG

    @property
    def train_log_path(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def failed_path(self) -> Path:
        return self.path / FAILED

    # ---- config.json: the resolved configuration (`trainers.run_config.RunConfig.to_dict`) ----------------------
    def has_config(self) -> bool:
        """Whether this is a run folder: config.json is the first file `harness train` writes."""
        return self.config_path.is_file()

    def read_config(self) -> dict:
        """The experiment settings (`TrainConfig`'s fields), from a config.json of either layout."""
        return self._split_config()[0]

    def read_execution(self) -> dict:
        """The execution settings (`ExecutionConfig`'s fields): config.json's `execution` section, or those mixed
        into the top level of a config.json written before the section existed."""
        return self._split_config()[1]

    def _split_config(self) -> tuple[dict, dict]:
        values = read_json_object(self.config_path)
        try:
            return split(values)
        except ValueError as e:
            raise UserError(f"{self.config_path}: {e}") from None

    def write_config(self, values: dict) -> None:
        atomic_write_text(self.config_path, json.dumps(values, indent=2, sort_keys=True))

    # ---- run.json: what the trainer measured of the run --------------------------------------------------------
    def has_facts(self) -> bool:
        return self.facts_path.is_file()

    def read_facts(self) -> dict:
        """run.json, checked field by field."""
        return _checked_facts(read_json_object(self.facts_path), self.facts_path)

    def read_facts_if_any(self) -> dict:
        """`read_facts`, or {} for a run that has not written its run.json yet."""
        return self.read_facts() if self.has_facts() else {}

    def write_facts(self, facts: dict) -> None:
        atomic_write_text(self.facts_path, json.dumps(facts, indent=2, sort_keys=True))

    def run_id(self) -> str:
        """The run's id as its run.json records it; the folder's name before there is one."""
        return self.read_facts_if_any().get("run_id") or self.path.name

    # ---- metrics.jsonl: one row per PPO step -------------------------------------------------------------------
    def has_metrics(self) -> bool:
        return self.metrics_path.exists()

    def read_metrics(self) -> list[dict]:
        """The logged steps, in order ([] before the first); a damaged line is refused by number."""
        return read_metrics(self.metrics_path)

    def append_metrics(self, row: dict) -> None:
        append_metrics(self.metrics_path, row)

    def keep_metrics_through(self, step: int) -> None:
        """Drop the rows after `step` (a resume redoes them from the checkpoint of `step`)."""
        keep_metrics_through(self.metrics_path, step)

    def metrics_at(self, step: int) -> dict | None:
        """The logged row of `step`, None when the log has no such step."""
        return next((row for row in self.read_metrics() if row["step"] == step), None)

    def completed_steps(self) -> int:
        """The last logged step (0 for none)."""
        return max((row["step"] for row in self.read_metrics()), default=0)

    # ---- checkpoints/step-NNNNNN/ ------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS / checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (their state.json, written last, exists), oldest first."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if has_state(p))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def checkpoint_steps(self) -> list[int]:
        return [int(p.name.removeprefix(CHECKPOINT_PREFIX)) for p in self.checkpoints()]

    def is_finished(self, last_step: int) -> bool:
        """Whether the latest complete checkpoint is that of `last_step` (the run's last)."""
        latest = self.latest_checkpoint()
        return latest is not None and latest.name == checkpoint_name(last_step)

    # ---- .lock -------------------------------------------------------------------------------------------------
    def lock(self) -> RunLock:
        return RunLock(self.path)

    def lock_state(self) -> str:
        """"held", "stale" (its holder was killed) or "free" (`trainers.runfolder.lock.lock_state`)."""
        return lock_state(self.path)

    # ---- trackers.json: what each experiment tracker has received ----------------------------------------------
    def read_trackers(self) -> dict:
        return read_json_object(self.trackers_path) if self.trackers_path.is_file() else {}

    def write_trackers(self, saved: dict) -> None:
        atomic_write_text(self.trackers_path, json.dumps(saved, indent=1, sort_keys=True) + "\n")

    def forget_trackers(self) -> None:
        """A new run starts new tracker runs."""
        self.trackers_path.unlink(missing_ok=True)

    # ---- the files `harness reproduce` keeps beside a run ------------------------------------------------------
    def write_grid_config(self, values: dict) -> Path:
        """The configuration to hand `harness train --config`; returns its path."""
        atomic_write_text(self.grid_config_path, json.dumps(values, indent=1, sort_keys=True))
        return self.grid_config_path

    def failed(self) -> bool:
        """Whether the last dispatch of this run's training gave up (a rerun retries it)."""
        return self.failed_path.is_file()

    def mark_failed(self, log_tail: str) -> None:
        atomic_write_text(self.failed_path, log_tail)

    def clear_failed(self) -> None:
        self.failed_path.unlink(missing_ok=True)


def _checked_facts(facts: dict, path: Path) -> dict:
    counts = facts.get("parameters")
    keys = ("trainable", "total", "policy_trainable", "policy_total")
    if not isinstance(counts, dict) or not all(
            isinstance(counts.get(k), int) and not isinstance(counts.get(k), bool) and counts[k] >= 0 for k in keys):
        raise UserError(f"{path}: parameters={counts!r:.120} must hold the integers >= 0 {', '.join(keys)}")
    if counts["policy_total"] < 1 or counts["policy_trainable"] > counts["policy_total"]:
        raise UserError(f"{path}: parameters.policy_trainable={counts['policy_trainable']} and policy_total="
                        f"{counts['policy_total']} must satisfy 0 <= trainable <= total, total >= 1")
    world = facts.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= 100_000:
        raise UserError(f"{path}: world_size={world!r:.40} must be an integer in [1, 100000]")
    for key in ("device", "frozen_dtype", "run_id"):
        if facts.get(key) is not None and not isinstance(facts[key], str):
            raise UserError(f"{path}: {key}={facts[key]!r:.60} must be a string")
    return facts
