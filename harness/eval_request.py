"""What `harness eval` is asked to do, and the judge, eval set and settings its records will carry.

Torch-free: `harness grid` tells a record of exactly this evaluation from another (another judge, eval set or
generation setting) without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from evals.evalsets import EvalSet, load_eval_set
from evals.generation_settings import GenerationSettings
from evals.judges import check_judge_options, judge_identity
from evals.judging import ORDERS
from harness import presets
from harness.errors import check_preset_name

BUNDLED = "bundled"
VERIFIERS = ("auto", "consistency", "lexical", "smollm2", "llm")


@dataclass(frozen=True, slots=True)
class EvalRequest:
    target: str
    judge: str = "simulated"
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_config: str | None = None  # openai: an alpaca-eval annotator config name or configs.yaml path
    judge_timeout: float | None = None  # openai: seconds per request
    judge_max_retries: int | None = None  # openai: re-asks after a failed request
    judge_max_tokens: int | None = None  # openai: the answer's length (default: the config's)
    judge_max_unparsed: float | None = 0.5  # stop when more of the judge's answers are unparsable (None: never)
    eval_set: str = BUNDLED
    limit: int | None = None
    step: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None  # default: the run's response_len, else 300 (the paper's)
    batch_size: int = 16
    order: str = "both"
    seed: int = 0
    factuality: bool = False
    factuality_limit: int | None = None
    allow_empty: bool = False  # judge a policy whose every output is empty (a grid records collapses as results)
    verifier: str = "auto"  # factuality: auto (llm with the openai judge, else consistency), lexical, smollm2, llm
    knowledge: str | None = None  # a FActScore-format SQLite Wikipedia (default: the bundled documents)
    winrate: bool = True
    preset: str = "custom"
    run_id: str | None = None
    label: dict | None = None
    device: str = "cpu"
    force: bool = False  # replace a record of the same evaluation whose results differ
    refresh_judge_cache: bool = False  # ask the judge again instead of reading its cached answers

    def __post_init__(self) -> None:
        check_preset_name(self.preset, "--preset")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1 (leave it out for the default)")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not known; allowed: {', '.join(ORDERS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be >= 1")
        check_judge_options(self.judge, reward_model=self.judge_model, config=self.judge_config,
                            timeout=self.judge_timeout, max_retries=self.judge_max_retries,
                            max_tokens=self.judge_max_tokens, max_unparsed=self.judge_max_unparsed)
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier={self.verifier!r} is not known; allowed: {', '.join(VERIFIERS)}")
        if self.factuality and resolved_verifier(self) == "llm" and not self.judge_model:
            raise ValueError("the llm factuality verifier needs its model named: --judge-model NAME (there is no "
                             "default model); or choose an offline one with --verifier consistency")


def resolved_verifier(req: EvalRequest) -> str:
    """The factuality verifier `req` asks for: "auto" is llm with the openai judge, else consistency."""
    if req.verifier != "auto":
        return req.verifier
    return "llm" if req.judge == "openai" else "consistency"


def judge_options(req: EvalRequest) -> dict:
    """The keyword arguments of `evals.judges.make_judge` for `req.judge`."""
    return dict(model=req.judge_model, base_url=req.judge_base_url, api_key_env=req.judge_api_key_env,
                device=req.device, seed=req.seed, config=req.judge_config, timeout=req.judge_timeout,
                max_retries=req.judge_max_retries, max_tokens=req.judge_max_tokens)


def generation_settings(req: EvalRequest, run_response_len: int | None = None) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=req.max_new_tokens or run_response_len or 300,
                              temperature=req.temperature, top_p=req.top_p, batch_size=req.batch_size, seed=req.seed)


def expected_identity(req: EvalRequest) -> dict[str, dict]:
    """{evaluator: the judge, eval set and settings its records of `req` carry}, found without loading a policy
    (`req.max_new_tokens` set), so that a caller can tell a record of exactly this evaluation from another."""
    settings = generation_settings(req)
    found = {"factuality": {"settings": factuality_settings(req, settings)}}
    if req.winrate:
        found["winrate"] = {"judge": judge_identity(req.judge, **judge_options(req)),
                            "eval_set": open_eval_set(req.eval_set, req.limit).identity(),
                            "settings": record_settings(req, settings)}
    return found


def record_settings(req: EvalRequest, settings: GenerationSettings) -> dict:
    """What, besides target, judge and eval set, changes a win-rate record's result: part of its id."""
    generation = {k: v for k, v in settings.as_dict().items() if k != "batch_size"}
    return {"generation": generation, "order": req.order, "limit": req.limit}


def factuality_settings(req: EvalRequest, settings: GenerationSettings) -> dict:
    """What, besides target and verifier, changes a factuality record's result: part of its id."""
    generation = {k: v for k, v in settings.as_dict().items() if k != "batch_size"}
    knowledge = req.knowledge
    if knowledge is None:  # the bundled documents by content: records made with other documents differ
        from evals.retrieval import BundledKnowledge

        knowledge = "bundled:" + BundledKnowledge().sha256[:16]
    return {"generation": generation, "verifier": resolved_verifier(req), "knowledge": knowledge,
            "factuality_limit": req.factuality_limit}


def open_eval_set(source: str, limit: int | None = None) -> EvalSet:
    if source == BUNDLED:
        return load_eval_set(presets.INSTRUCTIONS, split="eval", name="harness-bundled", limit=limit)
    return load_eval_set(source, limit=limit)
