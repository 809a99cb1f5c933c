"""Our LoRA-PPO step side by side with TRL 1.12's PPOTrainer on the same work (issue: performance).

The work unit (../shared/BENCH.md): SmolLM2-135M-Instruct (the same dequantised weights on both sides), 16
prompts = the first AlpacaFarm evaluation instructions whose Alpaca-template prompt fits 128 tokens, every
response exactly 64 tokens (EOS ignored on both sides, so that both do equal work), temperature 1, LoRA r=8,
alpha=64, dropout 0.1 on q/k/v/o, reward and value models = the same backbone with a seeded scalar head,
`--epochs` PPO epochs over one minibatch of 16, 2 threads. Each run is its own process; runs alternate
(ours, TRL, ours, TRL, ...); each run's first step is a warm-up and is excluded.

  bash benchmarks/setup_trl.sh          # once: .venv-trl with torch==2.13.0, trl==1.12.0
  python -m benchmarks.side_by_side --steps 3 --repeats 2 [--epochs 1] [--mode lora]
writes benchmarks/results/side_by_side-<mode>-<epochs>ep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EVAL_SET = ROOT.parent / "shared" / "data" / "alpaca_farm_evaluation.json"
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"


def write_prompts(path: Path, n: int = 16, max_tokens: int = 128) -> Path:
    """The first `n` evaluation instructions whose templated prompt has at most `max_tokens` tokens."""
    from trainers import data, models

    if not EVAL_SET.is_file():
        raise SystemExit(f"{EVAL_SET} is missing: the benchmark uses the real AlpacaFarm evaluation prompts")
    tok = models.load_tokenizer(models.SMOLLM2)
    picked = []
    for record in json.loads(EVAL_SET.read_text()):
        prompt = data.format_prompt(record, "alpaca")
        if len(tok(prompt)["input_ids"]) <= max_tokens:
            picked.append({"instruction": record["instruction"], "input": record.get("input") or ""})
        if len(picked) == n:
            break
    path.write_text(json.dumps(picked, indent=1))
    return path


def ours(prompts: Path, out: Path, steps: int, epochs: int, mode: str) -> dict:
    settings = [
        "policy=smollm2-135m-instruct", "reward=head:smollm2-135m-instruct", "value_init=reward",
        f"prompts={prompts}", "prompt_split=", "query_len=128", "response_len=64", "stop_at_eos=false",
        "temperature=1.0", "rollout_batch_size=16", "step_batch_size=16", "micro_batch_size=4",
        "rollout_micro_batch_size=16", f"noptepochs={epochs}", "lr=1e-5", "kl_coef=0.05", "threads=2",
        f"steps={steps}", f"checkpoint_every={10**6}",
        *(["lora=true", "reference=shared"] if mode == "lora" else ["lora=false", "reference=copy"]),
    ]
    cmd = [sys.executable, "-m", "harness.cli", "train", "--preset", "tiny", "--out", str(out)]
    for s in settings:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return {
        "s_per_step": statistics.median(r["time/step"] for r in records),
        "generation": statistics.median(r["time/rollout"] for r in records),
        "frozen_forwards": statistics.median(r["time/score"] for r in records),
        "training": statistics.median(r["time/train"] for r in records),
        "tokens_per_s": statistics.median(r["time/tokens_per_s"] for r in records),
        "peak_bytes": max(r["memory/peak_bytes"] for r in records),
    }


def trl(prompts: Path, out: Path, steps: int, epochs: int, mode: str) -> dict:
    from trainers import models

    if not TRL_PYTHON.is_file():
        raise SystemExit(f"{TRL_PYTHON} is missing: run `bash benchmarks/setup_trl.sh` first")
    result = out / "trl.json"
    cmd = [str(TRL_PYTHON), str(ROOT / "benchmarks" / "trl_side.py"), "--model-dir", str(models.smollm2_dir()),
           "--prompts-file", str(prompts), "--steps", str(steps), "--mode", mode, "--epochs", str(epochs),
           "--out", str(result), "--response-length", "64", "--batch-size", "16", "--threads", "2"]
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    data = json.loads(result.read_text())
    med = data["median_excluding_first"]
    return {
        "s_per_step": med["step"],
        "generation": med.get("generation"),
        "frozen_forwards": sum(med.get(k) or 0.0 for k in ("ref_forward", "value_reward_forward")),
        "training": sum(med.get(k) or 0.0 for k in ("train_forward", "backward_optimizer")),
        "tokens_per_s": med.get("tokens_per_s"),
        "peak_bytes": data["peak_rss_bytes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"harness": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.json")
        for rep in range(args.repeats):
            for side, fn in (("harness", ours), ("trl", trl)):
                t0 = time.perf_counter()
                row = fn(prompts, Path(tmp) / f"{side}-{rep}", args.steps, args.epochs, args.mode)
                row["wall_s"] = time.perf_counter() - t0
                runs[side].append(row)
                print(side, rep, json.dumps(row), flush=True)
    summary = {side: {k: statistics.median(r[k] for r in rows if r[k] is not None) for k in rows[0]}
               for side, rows in runs.items()}
    ratios = {"speedup_s_per_step": summary["trl"]["s_per_step"] / summary["harness"]["s_per_step"],
              "memory_ratio": summary["harness"]["peak_bytes"] / summary["trl"]["peak_bytes"]}
    command = (f"python -m benchmarks.side_by_side --steps {args.steps} --repeats {args.repeats} "
               f"--epochs {args.epochs} --mode {args.mode}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"side_by_side-{args.mode}-{args.epochs}ep"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "runs": runs, "summary": summary,
                                                     "ratios": ratios}, indent=2))
    lines = [f"Command: `{command}`", "", "| side | s/step | generation | frozen forwards | training | tokens/s | peak |",
             "|---|---|---|---|---|---|---|"]
    for side, s in summary.items():
        lines.append(f"| {side} | {s['s_per_step']:.1f} | {s['generation'] or 0:.1f} | {s['frozen_forwards']:.1f} | "
                     f"{s['training']:.1f} | {s['tokens_per_s'] or 0:.1f} | {s['peak_bytes'] / 2**30:.2f} GiB |")
    lines.append(f"\nTRL / harness seconds per step: {ratios['speedup_s_per_step']:.2f}x; harness / TRL peak memory: "
                 f"{ratios['memory_ratio']:.2f}x")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
