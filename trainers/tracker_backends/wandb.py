"""Registers `wandb`: Weights & Biases, project $WANDB_PROJECT (default "harness"), group = the run's group, files
under RUN/wandb/.

$WANDB_MODE (offline, online) and the rest of W&B's environment apply as usual. Evaluations use their own step
axis (`eval/ppo_step`), since W&B refuses a step below the run's latest.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from trainers.options import option
from trainers.tracker_backends import register_tracker


@dataclass(frozen=True, slots=True)
class WandBOptions:
    project: str = option("harness", "the W&B project ($WANDB_PROJECT)", env="WANDB_PROJECT")


class WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None, options: WandBOptions) -> None:
        import wandb

        self.wandb = wandb
        self.id = state.get("id") or secrets.token_hex(6)  # a new W&B run; kept to reopen it
        self.run = wandb.init(project=options.project, group=group, name=run_name,
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


register_tracker("wandb", library="wandb", description="Weights & Biases: a run per PPO run, grouped by the grid",
                 options=WandBOptions, backend=WandB)
