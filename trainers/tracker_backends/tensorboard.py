"""Registers `tensorboard`: event files in RUN/tensorboard/ (`tensorboard --logdir runs/`), through torch's writer.

A resumed run writes a purge marker at its first redone step, so TensorBoard drops what the killed process had
logged from that step on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainers.tracker_backends import flat_params, register_tracker


@dataclass(frozen=True, slots=True)
class TensorBoardOptions:
    """The event files' folder is part of the run folder: nothing to set."""


class TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None, options: TensorBoardOptions) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
        if not state:  # a new run: its configuration once, where TensorBoard's HPARAMS tab finds it
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(flat_params(config), {}):
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


register_tracker("tensorboard", library="tensorboard", description="event files in RUN/tensorboard/ (the default)",
                 options=TensorBoardOptions, backend=TensorBoard)
