"""Held-out figures of `harness fit-judge` settings under several fold seeds: how much of a setting's held-out
ranking is the setting and how much is the way the models happened to be dealt into folds.

    python -m benchmarks.judge_sweep --annotations ../shared/data/alpaca_eval_gpt4_annotations.jsonl.gz \
        --setting "" --setting "--min-df 10 --word-weight 2" --seeds 0 1 [--workers 2] \
        [--out benchmarks/results/judge_sweep.json]

Each (setting, seed) is one real `harness fit-judge ... --seed S --out TMP --results TMP` (the shipped weights and
the committed `results/` are never touched), run from this checkout's code; `--workers` fits run side by side, each
on one BLAS thread (the held-out figures do not depend on it; the wall times are those of a shared machine). One
entry per fit is appended to `--out` (a JSON list) with the setting, the seed, the fit record's held-out figures,
each model's held-out win rate and the reference judge's, its wall time, the machine and the commit; the Markdown table beside it (`.md`) is rewritten from the whole list.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("spearman", "spearman_ci_low", "spearman_ci_high", "kendall", "spearman_under70", "agreement",
           "agreement_se", "agreement_shorter_preferred", "longer_agreement")


OWN_OPTIONS = ("--seed", "--out", "--results", "--force")  # set by the sweep for every fit


def check_setting(annotations: str, setting: str) -> None:
    """Refuse a setting that fit-judge would refuse, or that names an option the sweep sets, before any fit starts."""
    from harness.cli import build_parser

    words = shlex.split(setting)
    own = [w for w in words if w.split("=")[0] in OWN_OPTIONS]
    if own:
        raise SystemExit(f"--setting {setting!r}: {own[0]} is set by the sweep for every fit; allowed: any other "
                         "fit-judge option")
    build_parser().parse_args(["fit-judge", "--annotations", annotations, *words])  # argparse names a bad option


def fit_once(annotations: str, setting: str, seed: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="judge-sweep-") as tmp:
        command = [sys.executable, "-m", "harness", "fit-judge", "--annotations", annotations, "--seed", str(seed),
                   *shlex.split(setting), "--out", f"{tmp}/weights.json", "--results", f"{tmp}/results"]
        env = dict(os.environ)
        if workers > 1:
            env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"fit-judge {setting!r} --seed {seed} failed:\n{done.stderr[-2000:]}")
        fit = json.loads(Path(f"{tmp}/weights.fit.json").read_text())
        record = json.loads(Path(f"{tmp}/results/records/{fit['heldout_record']}.json").read_text())
    return {"setting": setting, "seed": seed, "heldout": {k: fit["heldout"].get(k) for k in FIGURES},
            "heldout_record": fit["heldout_record"],
            # each model's held-out win rate beside the reference judge's: which models a setting misranks
            "per_model": {m: [round(v["win_rate"], 2), round(v["reference_win_rate"], 2)]
                          for m, v in record["details"]["per_model"].items()},
            "version": fit["weights"]["version"], "seconds": round(time.time() - started, 1), "workers": workers,
            "machine": fit["machine"], "commit": fit["harness"]["git_commit"]}


def markdown(entries: list[dict]) -> str:
    lines = ["# Learned judge: held-out figures by setting and fold seed", "",
             "Written by `python -m benchmarks.judge_sweep` from `judge_sweep.json`. Every figure is held out by "
             "model (the fit's folds, dealt by the seed); Spearman is over the models' win rates against the reference "
             "judge's.", "",
             "| setting | fold seed | Spearman [95% CI] | Kendall | Spearman < 70% | agreement % | GPT-4 preferred "
             "the shorter % | longer wins % | seconds (workers) | commit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        h = {k: ("—" if v is None else f"{v:.3f}" if k in FIGURES[:5] else f"{v:.2f}") for k, v in e["heldout"].items()}
        lines.append(f"| `{e['setting'] or '(defaults)'}` | {e['seed']} | {h['spearman']} "
                     f"[{h['spearman_ci_low']}, {h['spearman_ci_high']}] | {h['kendall']} | {h['spearman_under70']} | "
                     f"{h['agreement']} | {h['agreement_shorter_preferred']} | {h['longer_agreement']} | "
                     f"{e['seconds']:.0f} ({e['workers']}) | {e['commit'][:7]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from harness.errors import int_in
    from trainers.io import atomic_write_text

    parser = argparse.ArgumentParser(prog="python -m benchmarks.judge_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--setting", action="append", required=True, help="fit-judge options, quoted ('' = defaults)")
    parser.add_argument("--seeds", type=int_in(0, 2**63 - 1), nargs="+", default=[0])
    parser.add_argument("--workers", type=int_in(1, 64), default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "judge_sweep.json"))
    args = parser.parse_args(argv)
    annotations = str(Path(args.annotations).resolve())
    if not Path(annotations).is_file():
        raise SystemExit(f"--annotations {args.annotations!r}: no such file")
    for setting in args.setting:
        check_setting(annotations, setting)
    jobs = [(s, seed) for s in args.setting for seed in args.seeds]
    out = Path(args.out)
    started = time.time()
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(fit_once, annotations, s, seed, args.workers) for s, seed in jobs]
        for i, future in enumerate(futures, 1):
            entry = future.result()
            entries = json.loads(out.read_text()) if out.is_file() else []
            entries.append(entry)
            atomic_write_text(out, json.dumps(entries, indent=1) + "\n")
            atomic_write_text(out.with_suffix(".md"), markdown(entries))
            elapsed = time.time() - started
            print(f"[{i}/{len(jobs)}] {entry['setting'] or '(defaults)'} seed {entry['seed']}: Spearman "
                  f"{entry['heldout']['spearman']}, agreement {entry['heldout']['agreement']:.2f}; "
                  f"{elapsed / 60:.0f} min, ETA {elapsed / i * (len(jobs) - i) / 60:.0f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
