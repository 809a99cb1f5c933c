"""Win rate against reference outputs, and the offline references themselves.

References: the eval set's own `output` field when it has one (the paper: text-davinci-003, sampled at
temperature 0.7, top_p 1.0, max 300 new tokens). Offline sets have none; then the SFT model's outputs at those
same settings stand in, generated once and cached as JSON under `cache_dir`, keyed by the SFT model, the eval
set's hash and the settings, and checked against the hash stored inside on every read.

`winrate_result` judges model outputs (output_2) against references (output_1) and returns the metric block of
a results record: win rate (draws half), standard error, the length-controlled win rate and its standard error
(`evals.length_control`), n (instructions with a parsable judgement), the unparsable share of the judge's answers,
mean lengths (words) of both sides, and the per-instruction preferences for paired statistics. With several answers
per instruction, win rate, standard errors and n count instructions; `unparsed`, `strict_win_rate`,
`empty_outputs` and the mean lengths count answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from evals import stats
from evals.evalsets import EvalSet
from evals.judge_monitor import MonitoredJudge, check_unparsed
from evals.judging import AnnotationCache, Judge, Pair, agreement_of, annotate, both_orders, combine_orders
from evals.length_control import length_controlled_win_rate

# text-davinci-003's settings in AlpacaFarm's evaluation set ("temp=0.7,top_p=1.0,max_new_tokens=300")
REFERENCE_TEMPERATURE, REFERENCE_TOP_P = 0.7, 1.0


class EmptyGenerationsError(ValueError):
    """Every (or nearly every) output is empty: judging them would only measure the failure."""


def references_key(policy: str, eval_set: EvalSet, settings: dict) -> str:
    blob = json.dumps([policy, eval_set.hash, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_references(eval_set: EvalSet, *, policy: str, settings: dict, cache_dir: str | Path,
                      generate_fn: Callable[[], list[str]], write: Callable[[Path, str], None]) -> tuple[list[str], dict]:
    """(references, identity): the eval set's outputs, or the SFT model's, generated once and cached."""
    if eval_set.has_references:
        refs = [r["output"] for r in eval_set.records]
        return refs, {"source": "eval set", "generator": eval_set.reference_generator, "hash": _hash(refs)}
    key = references_key(policy, eval_set, settings)
    path = Path(cache_dir) / f"references-{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            saved = None  # a damaged cache is generated again
        outputs = saved.get("outputs") if isinstance(saved, dict) else None
        if isinstance(outputs, list) and all(isinstance(o, str) for o in outputs) \
                and saved.get("eval_set_hash") == eval_set.hash and _hash(outputs) == saved.get("outputs_hash") \
                and len(outputs) == len(eval_set.records):
            return saved["outputs"], {"source": "cache", "generator": policy, "hash": saved["outputs_hash"],
                                      "settings": settings, "path": str(path)}
    outputs = generate_fn()
    payload = {"policy": policy, "eval_set": eval_set.identity(), "eval_set_hash": eval_set.hash,
               "settings": settings, "outputs_hash": _hash(outputs), "outputs": outputs}
    write(path, json.dumps(payload, indent=1, ensure_ascii=False))
    return outputs, {"source": "generated", "generator": policy, "hash": payload["outputs_hash"],
                     "settings": settings, "path": str(path)}


def _hash(outputs: list[str]) -> str:
    return hashlib.sha256(json.dumps(outputs, ensure_ascii=False).encode()).hexdigest()[:16]


def check_generations(outputs: list[str], what: str, allow_all_empty: bool = False) -> int:
    """The number of empty outputs; an error when every output is empty (a plumbing failure, not a policy).

    A policy that learned to answer with nothing (PPO can collapse to immediate EOS under a weak proxy reward)
    is judged as it is: empty outputs lose, and the record counts them in `empty_outputs`.
    """
    empty = sum(not o.strip() for o in outputs)
    if not outputs or (empty == len(outputs) and not allow_all_empty):
        raise EmptyGenerationsError(f"{what}: all {len(outputs)} generations are empty; check the model, the "
                                    "prompt template and max_new_tokens (--allow-empty judges them anyway)")
    return empty


def winrate_result(eval_set: EvalSet, outputs: list[str], references: list[str], judge: Judge, *,
                   cache: AnnotationCache | None = None, order: str = "both", seed: int = 0,
                   max_unparsed: float | None = None, log: Callable[[str], None] | None = None,
                   samples: int = 1) -> dict:
    """The metric block; `max_unparsed`: the largest unparsable share of the judge's answers (else
    `UnparsableJudgeError`, nothing measured); `log`: progress lines while the judge answers.

    `samples` answers per instruction: `outputs` holds sample 0 of every instruction, then sample 1, ... Each is
    judged against the instruction's one reference; an instruction's item is the mean of its judged preferences,
    so the win rate is the mean over instructions and its standard error counts instructions, not answers.
    """
    n_records = len(eval_set.records)
    if len(outputs) != samples * n_records or len(references) != n_records:
        raise ValueError(f"{len(outputs)} outputs ({samples} per instruction) and {len(references)} references "
                         f"for {n_records} instructions")
    records, refs = eval_set.records * samples, references * samples
    pairs = [Pair(r["instruction"], r["input"], ref.strip(), out.strip(), r["id"])
             for r, ref, out in zip(records, refs, outputs)]
    asked = [p.output_1 != p.output_2 for p in pairs]  # identical outputs are a draw without asking
    rounds = 2 if order == "both" else 1
    monitored = MonitoredJudge(judge, expected=rounds * sum(asked), max_unparsed=max_unparsed, log=log)
    if order == "both":  # the agreement comes from the same answers: no second round of judging
        forward, backward = both_orders(monitored, pairs, cache)
        prefs, agreement = combine_orders(forward, backward), agreement_of(forward, backward)
        answers = [a for f, b, ask in zip(forward, backward, asked) if ask for a in (f, b)]
    else:
        prefs, agreement = annotate(monitored, pairs, order=order, seed=seed, cache=cache), {"agreement": None}
        answers = [a for a, ask in zip(prefs, asked) if ask]
    unparsed_share = check_unparsed(judge, answers, max_unparsed)
    judged = [v for v in prefs if v is not None]
    if not judged:
        raise ValueError(f"judge {judge.name!r} could not parse any of its {len(pairs)} answers")
    kept = _per_instruction_means(pairs, prefs)
    values = [v for _, v in kept]
    lc = length_controlled_win_rate(prefs, [len(p.output_1) for p in pairs], [len(p.output_2) for p in pairs],
                                    groups=[p.id for p in pairs] if samples > 1 else None)

    def mean_words(texts: list[str]) -> float:
        return sum(len(t.split()) for t in texts) / max(1, len(texts))

    metrics = {
        "win_rate": stats.win_rate(values),
        "standard_error": stats.standard_error(values),
        # alpaca-eval's length_controlled_minimal GLM (evals/length_control.py); None under 5 judged pairs
        "lc_win_rate": lc and lc["lc_win_rate"],
        "lc_standard_error": lc and lc["lc_standard_error"],
        "n": len(values),
        "unparsed": len(pairs) - len(judged),
        "unparsed_answers_pct": 100.0 * unparsed_share,  # of every answer asked (both orders), cached ones too
        "strict_win_rate": 100.0 * sum(v > 1.5 for v in judged) / len(judged),  # the paper's seed code's count
        "mean_words_model": mean_words(outputs),
        "mean_words_reference": mean_words(references),
        "empty_outputs": sum(not o.strip() for o in outputs),
        "order_agreement": agreement["agreement"],  # % of pairs with the same winner in both orders
    }
    length_control = None if lc is None else {"glm": "length_controlled_minimal", "length_weight": lc["length_weight"],
                                              "C": lc["C"]}
    return {"metrics": metrics, "per_item": [{"id": i, "preference": v} for i, v in kept],
            "judge": judge.identity(), "order": order, "length_control": length_control}


def _per_instruction_means(pairs: list[Pair], prefs: list[float | None]) -> list[tuple[str, float]]:
    """(instruction id, mean of its judged preferences) in first-seen order; instructions never judged drop out."""
    judged: dict[str, list[float]] = {}
    for p, v in zip(pairs, prefs):
        judged.setdefault(p.id, [])
        if v is not None:
            judged[p.id].append(v)
    return [(i, sum(vs) / len(vs)) for i, vs in judged.items() if vs]
