"""What a resumed run may change, and the hash a checkpoint carries of what it may not.

A run goes on with more steps, another checkpoint interval, or any execution setting changed (threads, levers,
trackers: `trainers.execution`), but not on another device, whose dtypes differ; every other experiment setting
must be the one that wrote its checkpoints. Torch-free.
"""

from __future__ import annotations

from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.identity import LATER_SETTINGS, without_later_defaults
from trainers.runfolder import resume_hash

RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every"})  # of TrainConfig's fields
FIXED_EXECUTION = ("device",)  # the execution settings a resume must keep


def resumable_changes(cfg: TrainConfig) -> frozenset[str]:
    """Fields a resumed run may change: not `steps` when a linear schedule decays over them (the rate of every
    step already taken would have been another)."""
    decays_over_steps = cfg.lr_schedule == "linear" and cfg.lr_decay_epochs == 0
    return RESUMABLE_CHANGES - {"steps"} if decays_over_steps else RESUMABLE_CHANGES


def settings_hash(cfg: TrainConfig, execution: ExecutionConfig) -> str:
    """The hash a checkpoint carries of the settings that shaped it: a run resumed or evaluated from it must have
    the same (`resumable_changes` may differ, e.g. `steps` extended by a resume). The fixed execution settings sit
    beside the experiment's, as they did when both were one mapping, so that earlier checkpoints keep their hash."""
    fixed = {name: getattr(execution, name) for name in FIXED_EXECUTION}
    return resume_hash({**without_later_defaults(cfg.to_dict()), **fixed}, resumable_changes(cfg))


def refused_changes(old_train: dict, old_execution: dict, cfg: TrainConfig, execution: ExecutionConfig) -> list[str]:
    """`name: old -> new` for each setting a run folder's config.json (`old_train`, `old_execution`; empty: no
    earlier run) holds otherwise than `cfg` and `execution`, and that a resume may not change."""
    if not old_train:
        return []
    # a folder from before a setting existed holds its old value
    old = {**{k: old_train.get(k, LATER_SETTINGS.get(k)) for k in cfg.to_dict()},
           **{k: old_execution.get(k, getattr(ExecutionConfig(), k)) for k in FIXED_EXECUTION}}
    new = {**cfg.to_dict(), **{k: getattr(execution, k) for k in FIXED_EXECUTION}}
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(new)
            if k not in resumable_changes(cfg) and old[k] != new[k]]
