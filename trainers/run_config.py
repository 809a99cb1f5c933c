"""A run's configuration: what it computes (`TrainConfig`, which alone makes its id) and how it executes
(`ExecutionConfig`); and how one mapping of both kinds of settings splits into the two.

The mappings that hold both: a run folder's config.json (the experiment settings at its top level, the execution
settings in an `execution` section), a config file of `harness train --config` (either way), `--set` overrides,
and a config.json written before the two were apart (every setting at the top level). `split` reads them all.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers import config as train_config, execution as execution_config
from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig

EXECUTION = "execution"  # config.json's section of execution settings


def split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(experiment settings, execution settings) of a mapping of both: mixed at its top level, in an `execution`
    section, or both. A key that is neither's stays with the experiment settings, whose reader names it."""
    train = dict(values)
    section = train.pop(EXECUTION, None) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{EXECUTION}={section!r:.60} must be a mapping of execution settings "
                         f"({', '.join(execution_config.field_names())})")
    names = set(execution_config.field_names())
    execution = {k: train.pop(k) for k in list(train) if k in names}
    twice = sorted(set(execution) & set(section))
    if twice:
        raise ValueError(f"{', '.join(twice)} given both at the top level and in the {EXECUTION!r} section")
    return train, {**execution, **section}


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: `train` names it (`trainers.identity.run_id(train)`), `execution` only says how it runs."""

    train: TrainConfig
    execution: ExecutionConfig = ExecutionConfig()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """From any mapping `split` reads (a config.json, old or new)."""
        train, execution = split(values)
        return cls(TrainConfig.from_dict(train), ExecutionConfig.from_dict(execution))

    def to_dict(self) -> dict[str, Any]:
        """config.json's layout: the experiment settings, and the execution settings in their own section."""
        return {**self.train.to_dict(), EXECUTION: self.execution.to_dict()}

    def flat(self) -> dict[str, Any]:
        """Every setting at one level, as `--set` names them (a tracker's hyper-parameters)."""
        return {**self.train.to_dict(), **self.execution.to_dict()}


def field_names() -> list[str]:
    """Every setting `--set` and a config file accept: the experiment's, then the execution's."""
    return [*train_config.field_names(), *execution_config.field_names()]


def field_types() -> dict[str, Any]:
    return {**train_config.field_types(), **execution_config.field_types()}


def field_help() -> dict[str, str]:
    return {**train_config.field_help(), **execution_config.field_help()}
