"""What `harness eval` is asked to do: a target, the evaluation's settings (`evals.config.EvalConfig`), and the
bookkeeping of its records (preset, run id, label).

Torch-free: `harness grid` tells a record of exactly this evaluation from another (another judge, eval set or
generation setting) without loading a model, and `harness reproduce` hands a request to a worker as a JSON file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from evals.config import EvalConfig
from evals.evaluators import DEFAULT as DEFAULT_EVALUATOR, check_runnable, evaluator_spec
from evals.evalsets import EvalSet, load_eval_set
from evals.judges import judge_identity
from harness import presets
from harness.errors import check_preset_name

BUNDLED = "bundled"
# the bundled validation instructions: where hyper-parameters and decodings are chosen, never on `bundled`
BUNDLED_VALIDATION = "bundled-val"


@dataclass(frozen=True, slots=True)
class EvalRequest:
    target: str  # a run folder, a checkpoint folder or a model spec
    config: EvalConfig = field(default_factory=EvalConfig)
    eval_set: str = BUNDLED  # bundled, alpaca_farm, hf:DATASET[:CONFIG]:SPLIT or a local file
    step: int | None = None  # a run's checkpoint (default: its latest; 0: its base policy)
    # the evaluators to run (`evals.evaluators`, those `harness eval` runs), in order
    evaluators: tuple[str, ...] = (DEFAULT_EVALUATOR,)
    preset: str = "custom"
    run_id: str | None = None  # default: the run's own id, or sft:<policy> for a model
    label: dict | None = None  # default: from the run's config
    force: bool = False  # replace a record of the same evaluation whose results differ

    def __post_init__(self) -> None:
        check_preset_name(self.preset, "--preset")
        names = (self.evaluators,) if isinstance(self.evaluators, str) else tuple(self.evaluators)
        object.__setattr__(self, "evaluators", check_runnable(names))  # a job file's list read back as a tuple
        for name in self.evaluators:
            if (check := evaluator_spec(name).check) is not None:
                check(self.config)

    def uses(self, what: str) -> bool:
        """Whether an evaluator of this request needs `what` ("eval_set", "judge") opened."""
        return any(what in evaluator_spec(name).uses for name in self.evaluators)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"},
                "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "EvalRequest":
        """The request `to_dict` wrote; a ValueError names what does not fit."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"an evaluation request has no field(s) {', '.join(unknown)}")
        return cls(**{**data, "config": EvalConfig.from_dict(data.get("config", {}))})


def expected_identity(req: EvalRequest) -> dict[str, dict]:
    """{evaluator: the judge, eval set and settings its records of `req` carry}, found without loading a policy
    (`req.config.max_new_tokens` set), so that a caller can tell a record of exactly this evaluation from another."""
    cfg = req.config
    generation = cfg.generation()
    found = {"factuality": {"settings": cfg.factuality_settings(generation)}}
    if "winrate" in req.evaluators:
        found["winrate"] = {"judge": judge_identity(cfg.judge, cfg.judge_options, device=cfg.device, seed=cfg.seed),
                            "eval_set": open_eval_set(req.eval_set, cfg.limit).identity(),
                            "settings": cfg.winrate_settings(generation)}
    return found


def open_eval_set(source: str, limit: int | None = None) -> EvalSet:
    """`bundled`: the harness's own held-out evaluation instructions; `bundled-val`: its validation instructions
    (disjoint from them); anything else as `evals.evalsets.load_eval_set` reads it."""
    if source == BUNDLED:
        return load_eval_set(presets.INSTRUCTIONS, split="eval", name="harness-bundled", limit=limit)
    if source == BUNDLED_VALIDATION:
        return load_eval_set(presets.INSTRUCTIONS, split="val", name="harness-bundled", limit=limit)
    return load_eval_set(source, limit=limit)
