"""One adapter per experiment tracker, each through the library itself, imported only when that tracker is used.

Every adapter opens (or reopens) one tracker run, logs scalars at a PPO step, logs the resolved configuration as
hyper-parameters when the run is new, and closes. `state()` is what reopens the same tracker run later (a resumed
training, an evaluation): kept by `trainers.trackers` in the run folder's `trackers.json`.

- tensorboard: event files in RUN/tensorboard/ (`tensorboard --logdir runs/`). A resumed run writes a purge marker
  at its first redone step, so TensorBoard drops what the killed process had logged from that step on.
- wandb: project $WANDB_PROJECT (default "harness"), group = the run's group, files under RUN/wandb/; $WANDB_MODE
  (offline, online) and the rest of W&B's environment apply as usual. Evaluations use their own step axis
  (`eval/ppo_step`), since W&B refuses a step below the run's latest.
- mlflow: experiment = the run's group, on $MLFLOW_TRACKING_URI (MLflow's default store when unset); a run is
  reopened on the tracking URI it was created on.
- trackio: project $TRACKIO_PROJECT (default "harness"), group = the run's group (releases without groups: the
  group is the project).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any


def _flat_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """Hyper-parameters as the trackers take them: scalars kept, lists and None written as text."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in sorted(config.items())}


class TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
        if not state:  # a new run: its configuration once, where TensorBoard's HPARAMS tab finds it
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(_flat_params(config), {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, sort_keys=True) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    log_eval = log

    def state(self) -> dict:
        return {"logdir": "tensorboard"}

    def close(self, finished: bool) -> None:
        self.writer.close()


class WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None) -> None:
        import wandb

        self.wandb = wandb
        self.id = state.get("id") or secrets.token_hex(6)  # a new W&B run; kept to reopen it
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "harness"), group=group, name=run_name,
                              id=self.id, resume="allow", dir=str(run_dir), config=config)
        self.run.define_metric("eval/ppo_step")
        self.run.define_metric("eval/*", step_metric="eval/ppo_step")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_eval(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "eval/ppo_step": step})

    def state(self) -> dict:
        return {"id": self.id}

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class MLflow:
    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=state.get("tracking_uri"))  # a run reopens where it was made
        if state.get("id"):
            self.id = state["id"]
            self.client.update_run(self.id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(group)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(group)
        self.id = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={"harness.run_dir": str(run_dir.resolve())}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.id, params=params[i:i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.id, metrics=batch[i:i + 1000])

    log_eval = log

    def state(self) -> dict:
        return {"id": self.id, "tracking_uri": self.client.tracking_uri}

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.id, status="FINISHED" if finished else "KILLED")


class Trackio:
    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None) -> None:
        import inspect

        import trackio

        self.trackio = trackio
        grouping = {"group": group} if "group" in inspect.signature(trackio.init).parameters else {}
        project = os.environ.get("TRACKIO_PROJECT", "harness" if grouping else group)  # older: a project per grid
        trackio.init(project=project, name=run_name, config=config, resume="allow", **grouping)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    log_eval = log

    def state(self) -> dict:
        return {}

    def close(self, finished: bool) -> None:
        self.trackio.finish()


BACKENDS = {b.name: b for b in (TensorBoard, WandB, MLflow, Trackio)}
