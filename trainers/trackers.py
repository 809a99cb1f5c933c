"""Experiment trackers a run reports to (`report_to`): which exist, whether their library is installed, and the
set of them one process logs through, with what each has received kept in the run folder's `trackers.json`.

Logged: every number of a `metrics.jsonl` row at its PPO step under the same name, the resolved configuration as
hyper-parameters (once, when the tracker run is new), and evaluations at their checkpoint's step as
`eval/<evaluator>/<metric>`. A resumed run reopens the same tracker run (its id is in `trackers.json`) and sends no
step twice: TensorBoard is told to drop what the killed process logged after the checkpoint (the redone steps are
logged again, as metrics.jsonl has them); W&B, MLflow and trackio cannot unlog a value, so the steps they already
hold are not sent again (on CPU a redone step is bit-identical to the first try).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from trainers.errors import UserError
from trainers.runfolder import RunFolder
from trainers.tracker_backends import (DEFAULT_GROUP, NONE, names_errors, options_from_env, tracker_names,  # noqa: F401
                                       tracker_spec)

def selected(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if n != NONE)


def check_installed(names: tuple[str, ...]) -> None:
    """One line naming the extra to install when a tracker's library is missing (before any model loads)."""
    for name in selected(names):
        library = tracker_spec(name).library
        if importlib.util.find_spec(library) is None:
            raise UserError(f"--report-to {name}: the {library!r} library is not installed; install its "
                            f"extra: pip install 'harness-lora-rlhf[{name}]' (or drop {name} from --report-to)")


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The loggable numbers of a metrics row or an evaluation's metrics (no step, strings, booleans or None)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The trackers one process logs to; `resume_step` is the checkpoint step a resumed training goes on from
    (None: a new run, or an evaluation that only adds values)."""

    def __init__(self, names: tuple[str, ...], run_dir: str | Path, *, run_name: str, group: str = "",
                 config: dict[str, Any] | None = None, resume_step: int | None = None) -> None:
        check_installed(names)
        self.run_dir = Path(run_dir)
        self.saved: dict[str, dict] = RunFolder(self.run_dir).read_trackers()
        self.backends = []
        try:
            for name in selected(names):
                state = self.saved.get(name, {})
                purge = resume_step + 1 if resume_step is not None and state else None
                title = state.get("name", run_name)  # a tracker run keeps the name it started with
                self.backends.append(tracker_spec(name).backend(self.run_dir, title, group or DEFAULT_GROUP,
                                                                config or {}, state, purge, options_from_env(name)))
                self.saved[name] = {**state, **self.backends[-1].state(), "name": title, "step": state.get("step", 0)}
        except BaseException:
            self.close(finished=False)
            raise
        if resume_step is not None:  # TensorBoard takes the redone steps again (it drops the killed process's)
            if "tensorboard" in self.saved:
                self.saved["tensorboard"]["step"] = min(self.saved["tensorboard"]["step"], resume_step)
        self._write()

    def log_step(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl row, to each tracker that does not hold its step yet."""
        step, values = record["step"], numeric(record)
        for backend in self.backends:
            if step > self.saved[backend.name]["step"]:
                backend.log(values, step)
                self.saved[backend.name]["step"] = step
        self._write()

    def log_evaluation(self, evaluator: str, step: int, metrics: dict[str, Any]) -> None:
        values = {f"eval/{evaluator}/{k}": v for k, v in numeric(metrics).items()}
        for backend in self.backends:
            backend.log_eval(values, step)

    def close(self, finished: bool = True) -> None:
        while self.backends:
            self.backends.pop().close(finished)

    def _write(self) -> None:
        RunFolder(self.run_dir).write_trackers(self.saved)


def for_training(names: tuple[str, ...], run_dir: str | Path, run_name: str, group: str, config: dict[str, Any],
                 resume_step: int | None) -> Trackers:
    """A training's trackers: a new run (`resume_step` None) gets new tracker runs; a resumed one reopens its own
    and goes on from its checkpoint's step."""
    if resume_step is None:
        RunFolder(run_dir).forget_trackers()
    return Trackers(names, run_dir, run_name=run_name, group=group, config=config, resume_step=resume_step)


def log_evaluation(run_dir: str | Path, evaluator: str, step: int, metrics: dict[str, Any], log=print) -> None:
    """Send one evaluation of a run folder's checkpoint to the trackers its config.json names (the same tracker
    runs as its training). A tracker that fails is named in one line: the evaluation's record is already stored."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    execution = folder.read_execution()
    names = tuple(execution.get("report_to", ()))
    if not selected(names):
        return
    try:
        trackers = Trackers(names, run_dir, run_name=folder.run_id(), group=execution.get("tracker_group", ""),
                            config={**folder.read_config(), **execution})
        try:
            trackers.log_evaluation(evaluator, step, metrics)
        finally:
            trackers.close()
    except Exception as e:  # noqa: BLE001  (a tracker's own error types are many; the record is safe)
        log(f"trackers: the {evaluator} evaluation of step {step} was not logged to {', '.join(selected(names))}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
