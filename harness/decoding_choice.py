"""The baseline "SFT at its best decoding": a gain from PPO must beat what simply sharpening SFT's sampling gives.

1. the SFT policy answers the validation instructions (`PresetGrid.validation_set`, disjoint from the evaluation
   instructions) at each candidate decoding (`PresetGrid.sft_decodings`: temperatures, 0 = greedy), one answer per
   instruction, judged as every policy of the grid is;
2. the best of them by validation win rate is chosen (a tie goes to the candidate listed first);
3. the SFT policy answers the evaluation instructions at that decoding: a record of run `sft-best:<policy>`,
   label baseline "sft-best", beside the SFT row at the grid's own decoding.

Torch-free: requests and the choice are read from settings and records, so `harness grid` can plan them.
"""

from __future__ import annotations

import dataclasses

from evals.config import EvalConfig
from harness.eval_request import EvalRequest, expected_identity

BASELINE = "sft-best"
LABEL = {"regularizer": None, "lora": None, "seed": None, "baseline": BASELINE}


def decoding_text(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"temperature {temperature:g}"


def _at(config: EvalConfig, temperature: float) -> EvalConfig:
    """`config` decoding at `temperature`, one answer per instruction: candidates differ in nothing else."""
    return dataclasses.replace(config, temperature=temperature, samples=1)


def validation_requests(config: EvalConfig, policy: str, validation_set: str, preset: str,
                        temperatures: tuple[float, ...]) -> list[EvalRequest]:
    """One win-rate evaluation of the SFT policy on every validation instruction per candidate temperature (the
    greedy candidate is the record `harness reproduce --validation` makes of the SFT policy at greedy grids)."""
    return [EvalRequest(target=policy, config=dataclasses.replace(_at(config, t), limit=None), eval_set=validation_set,
                        preset=preset)
            for t in temperatures]


def best_request(config: EvalConfig, policy: str, eval_set: str, preset: str, temperature: float) -> EvalRequest:
    """The SFT policy on the evaluation instructions at the chosen decoding (the report's extra baseline row)."""
    return EvalRequest(target=policy, config=_at(config, temperature), eval_set=eval_set, preset=preset,
                       run_id=f"{BASELINE}:{policy}", label=dict(LABEL))


def matches(rec: dict, request: EvalRequest, run_id: str, identity: dict | None = None) -> bool:
    """Whether `rec` is the win-rate record `request` writes (same run, step 0, judge, eval set and settings)."""
    want = (identity or expected_identity(request))["winrate"]
    return (rec["source"] == "harness" and rec["preset"] == request.preset and rec["run_id"] == run_id
            and rec["step"] == 0 and rec["evaluator"] == "winrate" and all(rec.get(k) == v for k, v in want.items()))


def find(records: list[dict], request: EvalRequest, run_id: str) -> dict | None:
    identity = expected_identity(request)
    return next((r for r in sorted(records, key=lambda r: str(r.get("created")), reverse=True)
                 if matches(r, request, run_id, identity)), None)


def choose(records: list[dict], requests: list[EvalRequest], run_id: str) -> tuple[float, dict[float, float]] | None:
    """(the chosen temperature, {temperature: validation win rate}); None while a candidate has no record yet."""
    rates = {}
    for req in requests:
        rec = find(records, req, run_id)
        if rec is None:
            return None
        rates[req.config.temperature] = rec["metrics"]["win_rate"]
    best = max(rates.values())
    return next(t for t, r in rates.items() if r == best), rates
