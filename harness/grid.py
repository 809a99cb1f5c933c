"""The paper's experiments as data: which runs, which checkpoints, which evaluators, at each preset.

A grid is the cartesian product of a preset's regularisers and seeds (LoRA runs) plus the baselines: the
SFT policy itself (step 0, no run) and the full fine-tune PPO run (regulariser kl, or the preset's
`full_overrides`: at paper scale, AlpacaFarm's own PPO settings). Every run is a resolved `TrainConfig` with the
`ExecutionConfig` it runs under; its id is `trainers.identity.run_id`: `<regularizer>-<lora|full>-s<seed>-<digest>`
over the `TrainConfig` alone (not where or how fast it runs), with the prompts and models named by content (the
prepared reward model included), so the same experiment has the same id on every machine and its folder and
records are found from its config.

Tables and figures (../shared/PAPER.md):
  table 1  efficiency: the kl LoRA run and the full fine-tune run (evaluator "efficiency", from run folders)
  table 2  win rate of every regulariser at every checkpoint, plus the baselines (evaluator "winrate")
  table 3  factuality of the SFT, full fine-tune and LoRA runs at their last checkpoint ("factuality")
  figure 1 = table 2's records; figure 2 = win rate against true KL for the figure-2 regularisers
Every configuration is built and validated before anything runs (`build_grid` raises on the first bad one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import presets
from trainers import identity
from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.runfolder import RunFolder

PAPER_REGULARIZERS = ("kl", "clamped_kl", "bregman", "jensen_shannon", "squared_error", "none", "negative_kl",
                      "dropout_only")
FIGURE1_REGULARIZERS = ("kl", "none", "jensen_shannon")
TARGETS = ("table1", "table2", "table3", "figure1", "figure2")


@dataclass(frozen=True)
class PresetGrid:
    """How a preset instantiates the paper's grid (sizes chosen so the preset finishes where it is meant to)."""

    table2: tuple[str, ...]
    figure2: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any]
    eval_limit: int | None  # instructions of the eval set (None: all)
    eval_max_new_tokens: int
    factuality_limit: int | None
    eval_temperature: float = 0.0  # 0: greedy, as AlpacaFarm evaluates; else sampled with the evaluation's seed
    eval_samples: int = 1  # sampled answers per instruction (eval_temperature > 0), averaged per instruction
    # the bios of Table 3: greedy, as the authors' inference script decodes (its temperature 0.7 without sampling on)
    factuality_temperature: float = 0.0
    judge: str = "simulated"
    eval_set: str = "bundled"
    # the SFT policy's candidate decodings (temperatures, 0 = greedy) for the baseline row "SFT at its best decoding",
    # chosen on `validation_set` (harness.decoding_choice); () for no such row
    sft_decodings: tuple[float, ...] = ()
    validation_set: str = "bundled-val"
    note: str = ""
    # the full fine-tune baseline's own settings over the preset's (its regulariser included; default kl)
    full_overrides: dict[str, Any] = field(default_factory=dict)
    # what a job asks of a cluster (SLURM, Ray): GPUs of a LoRA run, of the full fine-tune, of one evaluation
    lora_gpus: int = 0
    full_gpus: int = 0
    eval_gpus: int = 0

    def __post_init__(self) -> None:
        if any(not 0 <= t <= 100 for t in self.sft_decodings) or len(set(self.sft_decodings)) != len(self.sft_decodings):
            raise ValueError(f"sft_decodings={self.sft_decodings}: distinct temperatures in [0, 100] (0: greedy)")
        if self.eval_samples < 1 or (self.eval_samples > 1 and self.eval_temperature == 0):
            raise ValueError(f"eval_samples={self.eval_samples} needs an integer >= 1, and eval_temperature > 0 "
                             f"above 1 (eval_temperature={self.eval_temperature})")

    @property
    def full_regularizer(self) -> str:
        return self.full_overrides.get("regularizer", "kl")


GRIDS: dict[str, PresetGrid] = {
    "smoke": PresetGrid(
        table2=PAPER_REGULARIZERS, figure2=PAPER_REGULARIZERS, seeds=(1,),
        overrides=dict(steps=6, checkpoint_every=3), eval_limit=24, eval_max_new_tokens=16, factuality_limit=6,
        note="tiny random Llama: plumbing, seconds per run; the numbers mean nothing"),
    "tiny": PresetGrid(
        table2=FIGURE1_REGULARIZERS, figure2=FIGURE1_REGULARIZERS, seeds=(1,),
        # 96 tokens: room for the SFT policy's answers to end (the judge marks a cut-off answer down), so a longer
        # answer the proxy prefers can also be a better one, until PPO pushes past the limit
        overrides=dict(steps=6, checkpoint_every=3, rollout_batch_size=16, step_batch_size=16, response_len=96),
        # sampled at temperature 1, the distribution PPO optimises and the proxy was fitted on: greedy answers of a
        # 135M model barely move in 6 steps (docs/results.md has both measured); 128 instructions keep the README's
        # command within an hour on 2 cores
        eval_limit=128, eval_max_new_tokens=96, eval_temperature=1.0, factuality_limit=24,
        # every weight trained: of the two rates measured, the one whose policy moves like LoRA's (true KL at step 6:
        # 1e-5 0.009, 3e-5 0.047, LoRA at 5e-4 0.085) and does not collapse (docs/results.md)
        full_overrides=dict(lr=3e-5),
        note="SmolLM2-135M-Instruct on 2 CPU cores: three regularisers, 6 PPO steps, 128 eval instructions"),
    "miniature": PresetGrid(
        table2=FIGURE1_REGULARIZERS, figure2=FIGURE1_REGULARIZERS, seeds=(1, 2, 3),
        overrides=dict(steps=10, checkpoint_every=2),
        # greedy, as AlpacaFarm evaluates, for every policy of a table; the SFT policy's best decoding is its own row
        eval_limit=128, eval_max_new_tokens=96, eval_temperature=0.0, factuality_limit=None, judge="learned",
        sft_decodings=(0.0, 0.7, 1.0),
        # chosen on the validation instructions from 1e-5, 3e-5 and 1e-4, as the LoRA rate (presets.py)
        full_overrides=dict(lr=3e-5),
        note="SmolLM2-135M-Instruct on 2 CPU cores, judged by the learned judge: three regularisers and the full "
             "fine-tune, 3 seeds each, 10 PPO steps with 5 evaluated checkpoints, 128 greedy eval instructions"),
    "paper": PresetGrid(
        table2=PAPER_REGULARIZERS, figure2=PAPER_REGULARIZERS, seeds=(1,),
        overrides=dict(steps=200, checkpoint_every=20), eval_limit=None, eval_max_new_tokens=512,
        factuality_limit=None, judge="openai", eval_set="alpaca_farm",
        # settings are chosen on AlpacaFarm's own validation instructions, never on its evaluation set
        validation_set="hf:tatsu-lab/alpaca_farm:alpaca_instructions:val",
        # the paper's full fine-tune line is AlpacaFarm's public PPO checkpoint: its rlhf_ppo.sh (clamped KL at
        # kl_coef 0.0067, 512 rollouts per PPO step, one optimiser step per 256 of them)
        full_overrides=dict(regularizer="clamped_kl", kl_coef=0.0067, rollout_batch_size=512, step_batch_size=256),
        # the paper's setting: LoRA runs on 2 GPUs (data parallel), the full fine-tune on 8 (FSDP)
        lora_gpus=2, full_gpus=8, eval_gpus=1,
        note="the paper's setting: LLaMA-7B AlpacaFarm models, 805 eval instructions, an OpenAI-compatible judge"),
}



def grid_for(preset: str) -> PresetGrid:
    try:
        return GRIDS[preset]
    except KeyError:
        raise ValueError(f"preset={preset!r} has no grid; grids exist for: {', '.join(GRIDS)}") from None


@dataclass(frozen=True)
class Run:
    run_id: str
    config: TrainConfig
    label: dict
    eval_steps: tuple[int, ...]  # checkpoints evaluated for win rate
    evaluators: tuple[str, ...]  # of this run, over the requested targets
    execution: ExecutionConfig = ExecutionConfig()  # how it runs: never part of its id

    @property
    def last_step(self) -> int:
        return self.config.steps


@dataclass(frozen=True)
class Grid:
    preset: str
    targets: tuple[str, ...]
    spec: PresetGrid
    runs: tuple[Run, ...]
    sft_policy: str
    sft_evaluators: tuple[str, ...]
    extra_overrides: tuple[str, ...] = field(default=())
    seeds: tuple[int, ...] = field(default=())
    only: tuple[str, ...] = field(default=())  # the runs kept (regularisers of LoRA runs, "full"); () keeps all
    validation: bool = False  # evaluated on the preset's validation instructions (choosing settings), not its test set
    execution: ExecutionConfig = ExecutionConfig()  # how its runs run and its evaluations decode

    @property
    def provisional(self) -> bool:
        """Some run's id names an input that does not exist yet (an unprepared reward model)."""
        return any(identity.is_provisional(r.config) for r in self.runs)

    def rebuilt(self) -> "Grid":
        """The same grid with every id derived again (after `harness prepare` made the reward model)."""
        return build_grid(self.targets, self.preset, seeds=self.seeds, overrides=self.extra_overrides, only=self.only,
                          validation=self.validation)

    def describe(self) -> dict:
        return {"preset": self.preset, "targets": list(self.targets), "note": self.spec.note,
                "runs": [{"run_id": r.run_id, "label": r.label, "eval_steps": list(r.eval_steps),
                          "evaluators": list(r.evaluators)} for r in self.runs],
                "sft": {"policy": self.sft_policy, "evaluators": list(self.sft_evaluators)}}


FULL = "full"  # the full fine-tune baseline, as `only` names it


def checkpoint_steps(cfg: TrainConfig) -> tuple[int, ...]:
    steps = list(range(cfg.checkpoint_every, cfg.steps + 1, cfg.checkpoint_every))
    if not steps or steps[-1] != cfg.steps:
        steps.append(cfg.steps)
    return tuple(steps)


def build_grid(targets: tuple[str, ...], preset: str, *, seeds: tuple[int, ...] | None = None,
               overrides: tuple[str, ...] = (), only: tuple[str, ...] = (), validation: bool = False) -> Grid:
    """All runs needed for `targets` (e.g. ("table2",)), each configuration validated now.

    `only`: keep the LoRA runs of these regularisers and, with "full", the full fine-tune baseline (e.g. more
    seeds of one comparison); the SFT policy's evaluations stay, every comparison needs them.
    `validation`: evaluate on the preset's validation instructions instead of its evaluation set, where
    learning rates, steps and coefficients are chosen (with `overrides`); win-rate targets only."""
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"targets={list(targets)}: allowed {', '.join(TARGETS)}")
    spec = grid_for(preset)
    if validation:
        if set(targets) - {"table2", "figure1", "figure2"}:
            raise ValueError(f"--validation: win-rate targets only (table 2, figures 1 and 2), not "
                             f"{', '.join(sorted(set(targets) - {'table2', 'figure1', 'figure2'}))}")
        # every validation instruction: the set is small, and its size is the resolution of the choice
        spec = dataclasses.replace(spec, eval_set=spec.validation_set, sft_decodings=(), eval_limit=None)
    seeds = tuple(seeds or spec.seeds)
    base = presets.preset(preset)
    base.update(spec.overrides)
    user = presets.parse_overrides(list(overrides))
    base.update(user)
    wanted: dict[tuple, set[str]] = {}  # (regularizer, lora, seed) -> evaluators

    def want(reg: str, lora: bool, evaluator: str) -> None:
        for seed in seeds:
            wanted.setdefault((reg, lora, seed), set()).add(evaluator)

    regs_t2 = spec.table2
    for t in targets:
        if t in ("table2", "figure1"):
            for reg in (regs_t2 if t == "table2" else tuple(r for r in FIGURE1_REGULARIZERS if r in regs_t2)):
                want(reg, True, "winrate")
            want(spec.full_regularizer, False, "winrate")
        elif t == "figure2":
            for reg in spec.figure2:
                want(reg, True, "winrate")
        elif t == "table1":
            want("kl", True, "efficiency")
            want(spec.full_regularizer, False, "efficiency")
        elif t == "table3":
            for reg in regs_t2:
                want(reg, True, "factuality")
            want(spec.full_regularizer, False, "factuality")
    if only:
        kinds = {reg if lora else FULL for reg, lora, _ in wanted}
        unknown = [name for name in only if name not in kinds]
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: not a run of this grid; allowed: "
                             f"{', '.join(sorted(kinds))}")
        wanted = {key: ev for key, ev in wanted.items() if (key[0] if key[1] else FULL) in only}
    runs = []
    problems = []
    for (reg, lora, seed), evaluators in sorted(wanted.items(), key=lambda kv: (not kv[0][1], kv[0][0], kv[0][2])):
        values = dict(base, regularizer=reg, lora=lora, seed=seed)
        if not lora:  # a full fine-tune has no adapters to disable: the reference is a frozen copy (the paper's)
            values.update(spec.full_overrides, reference="copy")
            values.update(user)  # --set wins over the preset's full fine-tune settings too (e.g. a sweep of its lr)
        try:
            resolved = presets.run_config(values)
        except ValueError as exc:
            problems.append(f"{reg}/{'lora' if lora else 'full'}/seed {seed}: {exc}")
            continue
        cfg = resolved.train
        label = {"regularizer": reg, "lora": lora, "seed": seed, "baseline": None if lora else "full"}
        runs.append(Run(identity.run_id(cfg), cfg, label, checkpoint_steps(cfg), tuple(sorted(evaluators)),
                        resolved.execution))
    if problems:
        raise ValueError("the grid has invalid configurations:\n  - " + "\n  - ".join(problems))
    sft = ({"winrate"} if set(targets) & {"table2", "figure1", "figure2"} else set()) \
        | ({"factuality"} if "table3" in targets else set())
    sft_evaluators = tuple(sorted(sft))
    return Grid(preset, tuple(targets), spec, tuple(runs), base["policy"], sft_evaluators, tuple(overrides), seeds,
                tuple(only), validation, grid_execution(base))


def grid_execution(values: dict[str, Any]) -> ExecutionConfig:
    """The execution settings among a grid's values (each run's are the same)."""
    try:
        return presets.execution_config(values)
    except ValueError as exc:
        raise ValueError(f"the grid has invalid configurations:\n  - {exc}") from None


@dataclass(frozen=True, slots=True)
class Resources:
    """What one job of the grid asks of a cluster: GPUs, processes (one per GPU), the accelerate config."""

    gpus: int = 0
    processes: int = 1
    accelerate_config: str | None = None


def job_resources(spec: PresetGrid, run: Run | None, gpus: int | None = None) -> Resources:
    """A run's training job (`run`) or an evaluation (None): 2 GPUs per LoRA run and 8 per full fine-tune at the
    paper preset, one process per GPU (DDP for LoRA, FSDP for the full fine-tune); none offline. `gpus` overrides
    the preset's count (the processes follow it)."""
    if run is None:
        return Resources(gpus=spec.eval_gpus if gpus is None else gpus)
    if gpus is None:
        gpus = spec.lora_gpus if run.config.lora else spec.full_gpus
    if gpus <= 1:
        return Resources(gpus=gpus)
    return Resources(gpus, gpus, "ddp_lora_2gpu" if run.config.lora else "fsdp_full_8gpu")


# ---- state ------------------------------------------------------------------------------------------------
def run_dir(runs_root: str | Path, preset: str, rid: str) -> Path:
    return Path(runs_root) / preset / rid


def completed_steps(folder: Path) -> int:
    """The last step in the run's metrics log (0 for none); a damaged log is an error naming its line."""
    return RunFolder(folder).completed_steps()


def run_state(folder: Path, run: Run) -> str:
    """done | partial | failed | missing (failed = the last dispatch gave up; a rerun retries it)."""
    run_folder = RunFolder(folder)
    if run_folder.is_finished(run.last_step):
        return "done"
    if run_folder.failed():
        return "failed"
    if folder.is_dir() and (run_folder.completed_steps() or run_folder.latest_checkpoint() is not None):
        return "partial"
    return "missing"
