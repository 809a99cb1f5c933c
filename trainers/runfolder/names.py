"""The names of a run folder's files: the one place they are spelled.

    RUN/config.json            the resolved training configuration (written first: it marks a run folder)
    RUN/run.json               what the trainer measured of the run (parameter counts, device, processes)
    RUN/metrics.jsonl          one JSON object per PPO step, appended as each step ends
    RUN/checkpoints/step-NNNNNN/state.json   a checkpoint's step, KL coefficient, manifest and seal
    RUN/.lock                  the advisory lock of the process writing the folder
    RUN/trackers.json          what each experiment tracker has received
    RUN/grid-config.json       the configuration `harness reproduce` hands to `harness train`
    RUN/train.log              the training's output under `harness reproduce`
    RUN/FAILED                 the tail of that log, left when the training failed
"""

CONFIG = "config.json"
FACTS = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
STATE = "state.json"
LOCK = ".lock"
TRACKERS = "trackers.json"
GRID_CONFIG = "grid-config.json"
TRAIN_LOG = "train.log"
FAILED = "FAILED"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of `step` under `checkpoints/`."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"
