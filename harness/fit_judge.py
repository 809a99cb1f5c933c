"""`harness fit-judge`: fit the learned offline judge on a reference judge's annotations and ship it.

    harness fit-judge --annotations FILE.jsonl[.gz] [--instructions FILE] [--folds 5] [--seed 0] [--l2 1e-5] [--min-df 20]
                      [--content minilm|none] [--content-weight 1] [--word-weight 1] [--prompt-components 32]
                      [--shorter-weight 2] [--decision hard|soft] [--out evals/data/learned_judge.json] [--results results]

Instructions that resemble any of the bundled instructions (`harness/data/instructions.json`, every split, so the
offline grid's evaluation and preference sets) never enter the fit: word-set Jaccard >= `OVERLAP` with any of them.
The k-fold-by-model held-out preferences are stored as a judge_check record (the learned judge's row in the
report, its figures from models it never saw); the weights go to `--out` and the fit record beside them
(`<out stem>.fit.json`: command, data hash, folds, excluded instructions, held-out figures, wall time, machine and
its AVX flags, how many texts were embedded and how many read from the embedding cache, commit).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from evals.annotations import AnnotationError, file_hash, judged_pairs
from evals.learned_judge import WEIGHTS_FILE, model_description
from harness import machine
from harness.judge_check import build_record, load_annotated, table
from harness.results import ResultsStore, harness_identity
from trainers.io import atomic_write_text

BUNDLED = Path(__file__).parent / "data" / "instructions.json"
OVERLAP = 0.7


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def overlapping(prompts: list[str], bundled: str | Path = BUNDLED) -> dict[int, str]:
    """Index -> the bundled instruction it resembles (word-set Jaccard >= OVERLAP)."""
    ours = [(_words(f"{r['instruction']} {r.get('input', '')}"), r["id"]) for r in json.loads(Path(bundled).read_text())]
    found = {}
    for i, p in enumerate(prompts):
        w = _words(p)
        for b, bid in ours:
            if w and len(w & b) / len(w | b) >= OVERLAP:
                found[i] = bid
                break
    return found


def cpu_flags(names: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> dict[str, bool]:
    """Which of `names` /proc/cpuinfo lists (what sets MiniLM's speed on CPU); empty where it cannot be read."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {}
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), set())
    return {name: name in flags for name in names}


def _embedding_cache_size() -> int:
    import sqlite3

    from evals.judge_embeddings import cache_path

    if not cache_path().is_file():
        return 0
    db = sqlite3.connect(str(cache_path()), timeout=60)
    try:
        return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def run(args, log=print) -> dict:
    from evals.judge_fit import fit, model_folds

    started = time.time()
    if args.l2 <= 0:
        raise AnnotationError(f"--l2={args.l2}: a penalty > 0")
    if args.min_df < 0:
        raise AnnotationError(f"--min-df={args.min_df}: an integer >= 0 (0: no word features)")
    rows, prompts = load_annotated(args.annotations, args.instructions)
    pairs_rows = judged_pairs(rows)
    model_folds([r.model for r in pairs_rows], args.folds, args.seed)  # a bad --folds fails before the features
    exclude = overlapping(prompts)
    log(f"fit-judge: {len(pairs_rows)} pairs of {len({r.model for r in pairs_rows})} models; {len(exclude)} "
        f"instructions left out of the fit (they resemble bundled ones: {sorted(exclude)})")
    content = getattr(args, "content", "minilm") == "minilm"
    embedded = _embedding_cache_size()
    result = fit(pairs_rows, prompts, exclude=set(exclude), k=args.folds, seed=args.seed, l2=args.l2,
                 min_df=args.min_df, content=content, content_weight=args.content_weight,
                 prompt_components=args.prompt_components if content else 0, shorter_weight=args.shorter_weight,
                 decision=args.decision, word_weight=args.word_weight, log=log)
    embedded = _embedding_cache_size() - embedded
    identity = {"name": "learned", "model": f"{model_description(result.weights)}, {args.folds}-fold by model, held out",
                "version": result.weights["version"]}
    settings = {"models": sorted({r.model for r in pairs_rows}), "folds": args.folds, "seed": args.seed,
                "l2": args.l2, "min_df": args.min_df, "heldout": True}
    if args.word_weight != 1.0:  # records of fits before the option keep their identity
        settings["word_weight"] = args.word_weight
    if content:
        settings.update(content="minilm", content_weight=args.content_weight,
                        prompt_components=args.prompt_components)
    settings.update(shorter_weight=args.shorter_weight, decision=args.decision)
    rec = build_record(identity, args.annotations, pairs_rows, list(result.heldout), None, [], [],
                       settings=settings, seed=args.seed,
                       details={"command": args.command_line, "folds": result.folds})
    store = ResultsStore(args.results)
    path = store.put(rec, force=args.force)
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result.weights, indent=1) + "\n")
    fit_record = {
        "command": args.command_line, "annotations": {"name": Path(args.annotations).name,
                                                      "hash": file_hash(args.annotations)},
        "weights": {"version": result.weights["version"], "pairs": result.n_fit},
        "excluded_instructions": {str(k): v for k, v in sorted(exclude.items())}, "folds": result.folds,
        "heldout_record": rec["record_id"], "heldout": {k: v for k, v in rec["metrics"].items()},
        "seconds": round(time.time() - started, 1), "machine": machine.describe(), "cpu_flags": cpu_flags(),
        "harness": harness_identity(),
    }
    if content:
        fit_record["texts_embedded"] = embedded  # the others were read from the embedding cache
    atomic_write_text(out.with_suffix(".fit.json"), json.dumps(fit_record, indent=1, sort_keys=True) + "\n")
    log(table([rec]))
    log(f"weights {out} ({result.weights['version']}, fitted on {result.n_fit} pairs); fit record "
        f"{out.with_suffix('.fit.json')}; held-out record {path}")
    return rec
