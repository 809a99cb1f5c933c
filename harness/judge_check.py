"""`harness judge-check`: score a judge against a reference judge's annotations and store the results record.

    harness judge-check --annotations FILE.jsonl[.gz] [--instructions alpaca_farm_evaluation.json]
                        [--judge NAME and the judge's options] [--models A,B] [--sample-instructions N]
                        [--order both|fixed] [--probe N] [--results DIR]

Every input is checked before a judge loads (file, fields, model names, the judge's options). The pairs the
reference judge was asked about (output != reference) are judged with the reference output as output_1; by default
in both orders (averaged, as `harness eval` does) so that order consistency is measured too; the role-reading
`model-wins` baseline is read in the given order. On the same pairs the two baselines (`longer`, `model-wins`) are
computed from lengths alone, so every record carries them. The correctness probe (`evals.correctness_probe`) is
judged the same way. Figures: `evals.judge_check`.

The record (evaluator `judge_check`, preset `judge-check`) is keyed by the judge, the annotation file's content
hash and the settings (models scored, instruction sample, order); its items keep each pair's model, index, the
judge's and the reference judge's preference, so every figure can be recomputed from it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from evals import judge_check as jc
from evals.annotations import AnnotationError, file_hash, judged_pairs, load_annotations, load_instructions
from evals.evaluators.judge_check import JudgeCheckOptions
from evals.judging import AnnotationCache, Pair, agreement_of, annotate, both_orders, combine_orders
from harness import machine
from harness.option_flags import options_from_args
from harness.results import ResultsStore, make_record
from trainers.io import repository_path
from trainers.specs import cache_dir

PRESET = "judge-check"
LABEL = {"regularizer": None, "lora": None, "seed": None, "baseline": None}
DEFAULT_INSTRUCTIONS = "alpaca_farm_evaluation.json"  # looked for beside the annotation file


def instructions_path(annotations: str | Path, instructions: str | None) -> Path:
    return Path(instructions) if instructions else Path(annotations).parent / DEFAULT_INSTRUCTIONS


def load_annotated(annotations: str | Path, instructions: str | None) -> tuple[list, list[str]]:
    """(the annotation rows, the instructions their indices point to), every index checked against the latter."""
    rows = load_annotations(annotations)
    prompts = load_instructions(instructions_path(annotations, instructions))
    if (top := max(r.index for r in rows)) >= len(prompts):
        raise AnnotationError(f"--annotations {str(annotations)!r} has index {top}; --instructions holds only "
                              f"{len(prompts)} instructions")
    return rows, prompts


def select(rows, *, models: str | None, sample_instructions: int | None, seed: int, path: str):
    """The rows of the named models (all by default) on a seeded sample of instructions (all by default)."""
    known = sorted({r.model for r in rows})
    if models:
        wanted = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise AnnotationError(f"--models {','.join(unknown)}: not in {path!r}; its models: {', '.join(known)}")
        rows = [r for r in rows if r.model in set(wanted)]
    indices = sorted({r.index for r in rows})
    if sample_instructions is not None:
        if sample_instructions < 1:
            raise AnnotationError(f"--sample-instructions={sample_instructions}: an integer >= 1")
        keep = set(random.Random(seed).sample(indices, min(sample_instructions, len(indices))))
        rows = [r for r in rows if r.index in keep]
    return rows


def judge_pairs(judge, pairs: list[Pair], order: str, cache: AnnotationCache | None):
    """(preferences, order consistency or None). A positional judge's answer is read in the given order."""
    if order == "fixed":
        return annotate(judge, pairs, order="fixed", cache=cache), None
    forward, backward = both_orders(judge, pairs, cache)
    consistency = agreement_of(forward, backward)
    if getattr(judge, "positional", False):
        return forward, consistency
    return combine_orders(forward, backward), consistency


def run(args, judge_name: str, options, log=print) -> dict:
    """`options`: judge `judge_name`'s (`evals.judges.judge_options`), already checked."""
    from evals.judges import judge_spec, make_judge

    started = time.time()
    options_from_args(args, JudgeCheckOptions)  # its settings, checked before anything is read
    rows, prompts = load_annotated(args.annotations, args.instructions)
    every = select(rows, models=args.models, sample_instructions=None, seed=args.seed, path=args.annotations)
    rows = select(every, models=None, sample_instructions=args.sample_instructions, seed=args.seed,
                  path=args.annotations)
    pairs_rows = judged_pairs(rows)
    if not pairs_rows:
        raise AnnotationError(f"--annotations {args.annotations!r}: no pair whose output differs from its reference")
    from evals.correctness_probe import probe_pairs

    probes = probe_pairs(every, prompts, n=args.probe, seed=args.seed) if args.probe else []  # every instruction
    judge = make_judge(judge_name, options, seed=args.seed)
    identity = judge.identity()
    log(f"judge-check: {identity['name']} ({identity['model']}, {identity['version']}) on {len(pairs_rows)} pairs of "
        f"{len({r.model for r in pairs_rows})} models, {len(probes)} probe pairs")
    pairs = [Pair(prompts[r.index], "", r.reference, r.output, r.id) for r in pairs_rows]
    cache = None if judge_spec(judge_name).cheap else AnnotationCache(cache_dir() / "annotations.sqlite")
    try:
        prefs, consistency = judge_pairs(judge, pairs, args.order, cache)
        probe_prefs = judge_pairs(judge, [p.pair for p in probes], args.order, cache)[0] if probes else []
    finally:
        judge.close()
        if cache is not None:
            cache.close()
    settings = {"models": sorted({r.model for r in rows}), "sample_instructions": args.sample_instructions,
                "seed": args.seed, "order": args.order, "probe": args.probe}
    rec = build_record(identity, args.annotations, pairs_rows, prefs, consistency, probes, probe_prefs,
                       settings=settings, seed=args.seed,
                       details={"command": args.command_line, "seconds": round(time.time() - started, 1)})
    path = ResultsStore(args.results).put(rec, force=args.force)
    log(table([rec]))
    log(f"record {path}")
    return rec


def build_record(identity: dict, annotations: str | Path, pairs_rows, prefs, consistency: dict | None, probes,
                 probe_prefs, *, settings: dict, seed: int = 0, details: dict | None = None) -> dict:
    """The judge_check record of `prefs` (the judge's preference per pair of `pairs_rows`, None: unparsed)."""
    judged = [(r, p) for r, p in zip(pairs_rows, prefs) if p is not None]
    models, indices = [r.model for r, _ in judged], [r.index for r, _ in judged]
    ref = [r.preference for r, _ in judged]
    len_r, len_o = [len(r.reference) for r, _ in judged], [len(r.output) for r, _ in judged]
    metrics, per_model = jc.check_metrics(models, indices, [p for _, p in judged], ref, len_r, len_o, seed=seed)
    shorter = (jc.sides(ref) == -np.sign(np.subtract(len_o, len_r))) & (np.subtract(len_o, len_r) != 0)
    for name, base in (("longer", [2.0 if o > r else 1.0 if o < r else 1.5 for r, o in zip(len_r, len_o)]),
                       ("model_wins", [2.0] * len(judged))):
        scores = jc.agreement_scores(base, ref)
        metrics[f"{name}_agreement"], metrics[f"{name}_agreement_se"], _ = jc.percent(scores)
        metrics[f"{name}_agreement_shorter_preferred"] = jc.percent(scores[shorter])[0]
    metrics["order_consistency"] = consistency["agreement"] if consistency and consistency["n"] else None
    right = np.array([p.right(v) for p, v in zip(probes, probe_prefs) if v is not None])
    metrics["probe_correct"], metrics["probe_correct_se"], metrics["probe_n"] = jc.percent(right)
    metrics["unparsed"] = len(pairs_rows) - len(judged)
    rnd = lambda v: None if v is None else round(float(v), 5)  # noqa: E731
    return make_record(
        preset=PRESET, run_id=f"judge-check:{identity['name']}", label=LABEL, step=0, evaluator="judge_check",
        judge=identity, eval_set={"name": Path(annotations).name, "hash": file_hash(annotations),
                                  "n": len(pairs_rows)},
        metrics=metrics, settings=settings,
        # the reference judge's own preferences stay in its file (named by content hash): figures recompute by
        # joining these items with it on (model, index)
        per_item=[{"id": r.id, "model": r.model, "index": r.index, "preference": rnd(p)}
                  for r, p in zip(pairs_rows, prefs)],
        details={"per_model": per_model, "annotations": repository_path(annotations), "machine": machine.describe(),
                 "probe": [{"id": p.id, "preference": rnd(v), "original_side": p.original_side,
                            "edits": list(p.edits)} for p, v in zip(probes, probe_prefs)], **(details or {})})


def _fmt(value, se=None, digits=1) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _ci(m: dict, key: str) -> str:
    if m.get(key) is None:
        return "—"
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f"{m[key]:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


COLUMNS = ("judge", "pairs", "agreement %", "GPT-4 preferred the shorter %", "longer wins, same pairs %",
           "Spearman (all)", "Kendall (all)", "Spearman (< 70%)", "Kendall (< 70%)", "prefers longer %",
           "order consistency %", "correctness probe %")


def row(rec: dict) -> list[str]:
    m, j = rec["metrics"], rec["judge"]
    return [f"{j['name']} ({j['model']})", str(m.get("n")), _fmt(m.get("agreement"), m.get("agreement_se")),
            _fmt(m.get("agreement_shorter_preferred"), m.get("agreement_shorter_preferred_se")) +
            f" (n = {m.get('agreement_shorter_preferred_n')})",
            _fmt(m.get("longer_agreement"), m.get("longer_agreement_se")),
            _ci(m, "spearman"), _ci(m, "kendall"), _ci(m, "spearman_under70"), _ci(m, "kendall_under70"),
            _fmt(m.get("longer_share"), m.get("longer_share_se")), _fmt(m.get("order_consistency")),
            _fmt(m.get("probe_correct"), m.get("probe_correct_se")) + (f" (n = {m['probe_n']})" if m.get("probe_n")
                                                                         else "")]


def table(records: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in records]
    return "\n".join(lines)
