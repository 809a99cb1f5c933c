"""Registers `mlflow`: experiment = the run's group, on $MLFLOW_TRACKING_URI (MLflow's default store when unset); a
run is reopened on the tracking URI it was created on."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from trainers.options import option
from trainers.tracker_backends import flat_params, register_tracker


@dataclass(frozen=True, slots=True)
class MLflowOptions:
    tracking_uri: str | None = option(None, "the MLflow tracking URI ($MLFLOW_TRACKING_URI; unset: MLflow's default "
                                      "store)", env="MLFLOW_TRACKING_URI")


class MLflow:
    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None, options: MLflowOptions) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # a run reopens where it was made
        self.client = MlflowClient(tracking_uri=state.get("tracking_uri") or options.tracking_uri)
        if state.get("id"):
            self.id = state["id"]
            self.client.update_run(self.id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(group)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(group)
        self.id = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={"harness.run_dir": str(run_dir.resolve())}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_params(config).items()]
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


register_tracker("mlflow", library="mlflow", description="MLflow: an experiment per grid, a run per PPO run",
                 options=MLflowOptions, backend=MLflow)
