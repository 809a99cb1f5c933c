"""One evaluation's settings: the judge, how outputs are generated and judged, the factuality protocol.

Frozen and validated on construction (cheap: no model loads), so a bad setting fails before any work starts; the
settings that change a record's result (`winrate_settings`, `factuality_settings`) are part of its id; how outputs
are decoded (`decoding`, the levers of `trainers.execution`) never is. Torch-free:
a grid names the records it needs from these without loading a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from evals.generation_settings import GenerationSettings
from evals.judges import DEFAULT as DEFAULT_JUDGE, checked_options, options_from_dict
from evals.judging import ORDERS
from trainers.execution import DecodeLevers, ExecutionConfig

VERIFIERS = ("auto", "consistency", "lexical", "smollm2", "llm")
DEFAULT_MAX_NEW_TOKENS = 300  # the paper's, when neither the config nor the run says
SAMPLE_SEED_STRIDE = 1_000_003  # seeds of an evaluation's sampled answers lie this far apart


@dataclass(frozen=True, slots=True)
class EvalConfig:
    judge: str = DEFAULT_JUDGE  # a registered judge (`evals.judges`)
    # the judge's own options dataclass (`evals.judges.judge_options`); None: its defaults
    judge_options: Any = None
    judge_max_unparsed: float | None = 0.5  # stop when more of the judge's answers are unparsable (None: never)
    limit: int | None = None  # the eval set's first N instructions
    temperature: float = 0.0
    top_p: float = 1.0
    # answers sampled per instruction (temperature > 0), each with its own seed; an instruction's preferences are
    # averaged, so the paired statistics keep one item per instruction and sampling noise shrinks by sqrt(samples)
    samples: int = 1
    max_new_tokens: int | None = None  # default: the run's response_len, else DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 16
    order: str = "both"
    seed: int = 0
    allow_empty: bool = False  # judge a policy whose every output is empty (a collapsed policy is a result)
    factuality_limit: int | None = None
    verifier: str = "auto"  # factuality: auto (llm with the openai judge, else consistency), or one of VERIFIERS
    knowledge: str | None = None  # a FActScore-format SQLite Wikipedia (default: the bundled documents)
    device: str = "cpu"
    refresh_judge_cache: bool = False  # ask the judge again instead of reading its cached answers
    # the reward model whose mean score of the outputs a win-rate record keeps (metric proxy_reward); None: the
    # evaluated run's own (the base policy then has none); a rule reward is not scored
    proxy_reward: str | None = None
    # how outputs are decoded: the same outputs whichever levers are on (defaults: `ExecutionConfig`'s)
    decoding: DecodeLevers = field(default_factory=lambda: ExecutionConfig().decoding)

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1 (leave it out for the default)")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples={self.samples!r} must be an integer >= 1")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples={self.samples} needs temperature > 0: greedy decoding gives one answer per "
                             "instruction")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not known; allowed: {', '.join(ORDERS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be >= 1")
        # the judge's defaults stand in for None, so every reader sees the options the judge is built with
        object.__setattr__(self, "judge_options", checked_options(self.judge, self.judge_options))
        if self.judge_max_unparsed is not None and not 0.0 <= self.judge_max_unparsed <= 1.0:
            raise ValueError(f"--judge-max-unparsed={self.judge_max_unparsed!r}: a share of the judge's answers "
                             "in [0, 1]")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier={self.verifier!r} is not known; allowed: {', '.join(VERIFIERS)}")

    def check_factuality(self) -> None:
        """Raise before any work when the factuality evaluation cannot run as configured."""
        if self.factuality_verifier == "llm" and not self.llm_server().get("model"):
            raise ValueError("the llm factuality verifier asks the judge's server and needs its model named: "
                             "--judge openai --judge-model NAME (there is no default model); or choose an offline "
                             "one with --verifier consistency")

    def llm_server(self) -> dict:
        """The server the llm factuality verifier asks: a server judge's (one whose options name a `base_url`, as
        the openai judge's do) model, base_url, api_key_env, timeout and max_retries; {} for any other judge."""
        if not hasattr(self.judge_options, "base_url"):
            return {}
        wanted = ("model", "base_url", "api_key_env", "timeout", "max_retries")
        return {k: getattr(self.judge_options, k) for k in wanted if hasattr(self.judge_options, k)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvalConfig":
        """The configuration `to_dict` wrote (an evaluation request's `config`); a ValueError names a field it does
        not have."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"an evaluation request has no field(s) {', '.join(f'config.{k}' for k in unknown)}")
        judge = data.get("judge", DEFAULT_JUDGE)
        return cls(**{**data, "judge_options": options_from_dict(judge, data.get("judge_options")),
                      "decoding": DecodeLevers.from_dict(data.get("decoding") or {})})

    def generation(self, run_response_len: int | None = None) -> GenerationSettings:
        """How the target's outputs are generated; `run_response_len`: the evaluated run's, when it is a run."""
        return GenerationSettings(max_new_tokens=self.max_new_tokens or run_response_len or DEFAULT_MAX_NEW_TOKENS,
                                  temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size,
                                  seed=self.seed)

    def sample_generations(self, generation: GenerationSettings) -> list[GenerationSettings]:
        """The settings of each sampled answer: sample k (from 0) is seeded `seed + k * SAMPLE_SEED_STRIDE`, so
        sample 0 is the single-sample evaluation's answer and evaluations of neighbouring seeds share no sample."""
        return [replace(generation, seed=generation.seed + k * SAMPLE_SEED_STRIDE) for k in range(self.samples)]

    def winrate_settings(self, generation: GenerationSettings) -> dict:
        """What, besides target, judge and eval set, changes a win-rate record's result: part of its id."""
        found = {"generation": _result_changing(generation), "order": self.order, "limit": self.limit}
        if self.samples > 1:  # absent at 1, so single-sample records keep their ids
            found["samples"] = self.samples
        return found

    def factuality_settings(self, generation: GenerationSettings) -> dict:
        """What, besides target and verifier, changes a factuality record's result: part of its id."""
        knowledge = self.knowledge
        if knowledge is None:  # the bundled documents by content: records made with other documents differ
            from evals.retrieval import BundledKnowledge

            knowledge = "bundled:" + BundledKnowledge().sha256[:16]
        return {"generation": _result_changing(generation), "verifier": self.factuality_verifier,
                "knowledge": knowledge, "factuality_limit": self.factuality_limit}

    @property
    def factuality_verifier(self) -> str:
        """The factuality verifier asked for: "auto" is llm with the openai judge, else consistency."""
        if self.verifier != "auto":
            return self.verifier
        return "llm" if self.judge == "openai" else "consistency"


def _result_changing(generation: GenerationSettings) -> dict:
    return {k: v for k, v in generation.as_dict().items() if k != "batch_size"}
