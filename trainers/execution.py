"""`ExecutionConfig`: where and how fast a run computes, never what: threads, device, the host allocator, the
decoding and batching levers, and the experiment trackers it reports to. Frozen and validated on construction.

None of it enters a run's id (`trainers.identity` reads `TrainConfig` alone), and a run may be resumed with any of
it changed except the device, whose dtypes differ (`trainers.resumption`). With a lever on or off
a run computes the same quantities; results differ at most by floating-point summation order. Each lever has a test
that it does (tests/test_decode_levers.py, tests/test_speed_levers.py) and a benchmark line that says what it buys
(`python -m benchmarks.side_by_side`, `python -m benchmarks.decode_floor`).

`DecodeLevers` is the part that generation uses, in a PPO rollout and in an evaluation alike (`evals.config.
EvalConfig.decoding`); its values default to this configuration's field defaults.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from trainers import fieldtypes
from trainers.tracker_backends import DEFAULT_GROUP, names_errors, tracker_names

MAX_THREADS = 1024  # beyond it a thread count is a typo


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class DecodeLevers:
    """How a policy decodes; each lever gives the same logits as without it (see `ExecutionConfig`'s help)."""

    few_row_decode_products: bool
    lean_decode_step: bool
    packed_decode_weights: bool

    def __post_init__(self) -> None:
        fieldtypes.check_types(self)

    def to_dict(self) -> dict[str, bool]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeLevers:
        """Levers as `to_dict` wrote them; one left out takes `ExecutionConfig`'s default."""
        unknown = sorted(set(data) - set(decode_lever_names()))
        if unknown:
            raise ValueError(f"unknown decoding lever(s) {unknown}; valid: {', '.join(decode_lever_names())}")
        return dataclasses.replace(ExecutionConfig().decoding, **data)


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """How a run executes: the machine's share it takes, the speed levers, and where it reports."""

    # machine
    threads: int = _f(0, "CPU threads for torch (0: this machine's cores, shared among the processes of a "
                      "multi-process run on it)")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto: cuda when available")
    tune_host_allocator: bool = _f(True, "on glibc, keep freed memory within a PPO phase (fewer page faults) and "
                                   "give it back between phases (trainers.host_memory)")
    # speed levers: how the same sums are computed, never what they are
    group_by_length: bool = _f(True, "order rows by length before splitting them into micro-batches (prefill, "
                               "scoring forwards, training), so that each micro-batch carries little padding")
    merge_adapters_for_rollout: bool = _f(True, "sample with the LoRA update folded into temporary copies of the "
                                          "adapted weights (the originals are put back untouched afterwards)")
    few_row_decode_products: bool = _f(True, "on CPUs, decode with each float32 linear layer computed as W x^T, "
                                       "which MKL runs faster than x W^T for a few rows")
    lean_decode_step: bool = _f(True, "decode Llama models with their weights' tensor operations alone, without "
                                "the per-token work of the model's forward (mask building, module dispatch); the "
                                "same logits")
    packed_decode_weights: bool = _f(True, "on CPUs, decode bf16 linear layers with copies of their weights packed "
                                     "once per rollout into oneDNN's blocked layout; the same logits")
    # trackers
    report_to: tuple[str, ...] = _f(("tensorboard",), "experiment trackers the run logs its metrics, configuration "
                                    f"and evaluations to, several at once: {', '.join(tracker_names())}, or "
                                    "none (tensorboard: event files in RUN/tensorboard/)")
    tracker_group: str = _f("", "the runs logged together: W&B group, MLflow experiment, trackio project (empty: "
                            f"{DEFAULT_GROUP!r}; `harness reproduce` names it after its grid)")

    def __post_init__(self) -> None:
        fieldtypes.check_types(self)
        errors = []
        if self.threads < 0:
            errors.append(f"threads={self.threads} must be >= 0")
        if self.threads > MAX_THREADS:
            errors.append(f"threads={self.threads} must be <= {MAX_THREADS}")
        errors.extend(names_errors(self.report_to))
        if errors:
            raise ValueError("invalid execution configuration:\n  - " + "\n  - ".join(errors))

    @property
    def decoding(self) -> DecodeLevers:
        return DecodeLevers(**{name: getattr(self, name) for name in decode_lever_names()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionConfig:
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown ExecutionConfig field(s) {unknown}; valid fields: {', '.join(field_names())}")
        return cls(**{k: tuple(v) if k == "report_to" and isinstance(v, list) else v for k, v in data.items()})


# the fields of ExecutionConfig, by name: for the command line and the config-file readers
field_names = functools.partial(fieldtypes.field_names, ExecutionConfig)
field_types = functools.partial(fieldtypes.field_types, ExecutionConfig)
field_help = functools.partial(fieldtypes.field_help, ExecutionConfig)


def decode_lever_names() -> list[str]:
    return [f.name for f in dataclasses.fields(DecodeLevers)]
