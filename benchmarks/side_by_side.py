"""Our LoRA-PPO step side by side with TRL 1.12's PPOTrainer on the same work.

The work unit (../shared/BENCH.md): SmolLM2-135M-Instruct (the same dequantised weights on both sides), 16
prompts = the first AlpacaFarm evaluation instructions whose Alpaca-template prompt fits 128 tokens, every
response exactly 64 tokens (EOS ignored on both sides, so that both do equal work), temperature 1, LoRA r=8,
alpha=64 on q/k/v/o with dropout off (TRL's PPOTrainer switches LoRA dropout off, so we do too), reward and
value models = the same backbone with a seeded scalar head, `--epochs` PPO epochs over one minibatch of 16,
2 threads. Each run is its own process; runs alternate (ours, TRL, ours, TRL, ...); each run's first step is
a warm-up and is excluded.

With `--levers`, ours then runs once more per speed lever with that lever off (all others on), so that the
output shows what each one buys; with `--modes`, once more per row of `MODES` with that setting on (a row whose
setting our trainer refuses is skipped with a note); `--set FIELD=VALUE` passes settings to our side (e.g.
micro_batch_size=8). The training phase's useful matrix-product FLOPs (counted from the model's shapes and the real
tokens) are divided by its time and printed beside this CPU's measured float32 and bfloat16 matrix-product rates;
the JSON names the CPU and the torch version beside them.

  bash benchmarks/setup_trl.sh          # once: .venv-trl with torch==2.13.0, trl==1.12.0
  python -m benchmarks.side_by_side --steps 3 --repeats 2 [--epochs 1] [--mode lora] [--levers] [--modes]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EVAL_SET = ROOT.parent / "shared" / "data" / "alpaca_farm_evaluation.json"
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"

# Speed levers of our trainer, each switched off in turn by --levers (setting, value that switches it off).
LEVERS = {
    "length grouping (prefill, scoring, training)": "group_by_length=false",
    "LoRA folded into the weights while sampling": "merge_adapters_for_rollout=false",
    "W x^T products while decoding": "few_row_decode_products=false",
    "one micro-batch of 16 instead of 4": "micro_batch_size=16",
    "lean decoding step (no per-token forward overhead)": "lean_decode_step=false",
    "bf16 weights packed for decoding": "packed_decode_weights=false",
}

# Other modes of our trainer, each switched on in turn by --modes (one row each; the settings, space-separated, that
# switch it on). A row whose settings our trainer refuses (a field or value this version does not know) is skipped
# with a note.
MODES = {
    "one frozen base for every role": "reference=one_base",
    "value = a head on the policy": "value_model=policy_head value_init=policy",
    "one base, value head on the policy": "reference=one_base value_model=policy_head value_init=policy",
}


def write_prompts(path: Path, n: int = 16, max_tokens: int = 128, records: list[dict] | None = None,
                  tokenizer=None) -> Path:
    """The first `n` instructions whose templated prompt has at most `max_tokens` tokens (of SmolLM2's tokenizer
    unless another is given), from the AlpacaFarm evaluation set unless `records` are given."""
    from trainers import data, models

    if records is None:
        if not EVAL_SET.is_file():
            raise SystemExit(f"{EVAL_SET} is missing: the benchmark uses the real AlpacaFarm evaluation prompts")
        records = json.loads(EVAL_SET.read_text())
    tok = tokenizer or models.load_tokenizer(models.SMOLLM2)
    picked = []
    for record in records:
        prompt = data.format_prompt(record, "alpaca")
        if len(tok(prompt)["input_ids"]) <= max_tokens:
            picked.append({"instruction": record["instruction"], "input": record.get("input") or ""})
        if len(picked) == n:
            break
    path.write_text(json.dumps(picked, indent=1))
    return path


def work_unit(prompts: Path, steps: int, epochs: int, mode: str) -> dict[str, Any]:
    """Our trainer's settings for the work unit (module docstring), over the `tiny` preset."""
    return dict(
        policy="smollm2-135m-instruct", reward="head:smollm2-135m-instruct", value_init="reward",
        prompts=str(prompts), prompt_split="", query_len=128, response_len=64, stop_at_eos=False,
        temperature=1.0, rollout_batch_size=16, step_batch_size=16, micro_batch_size=4,
        rollout_micro_batch_size=16, noptepochs=epochs, lr=1e-5, kl_coef=0.05, threads=2,
        steps=steps, checkpoint_every=10**6, lora_dropout=0.0,
        **(dict(lora=True, reference="shared") if mode == "lora" else dict(lora=False, reference="copy")))


def as_settings(values: dict[str, Any]) -> list[str]:
    """FIELD=VALUE strings for `harness train --set`."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def refusal(settings: list[str]) -> str | None:
    """Why our trainer refuses these settings over the `tiny` preset (an unknown field, a value or combination it
    does not take), or None."""
    from harness import presets

    try:
        presets.resolve("tiny", None, settings)
    except ValueError as e:
        return str(e).replace("\n", " ")
    return None


def ours(prompts: Path, out: Path, steps: int, epochs: int, mode: str, extra: list[str] = ()) -> dict:
    from trainers.runfolder import RunFolder

    settings = [*as_settings(work_unit(prompts, steps, epochs, mode)), *extra]
    cmd = [sys.executable, "-m", "harness.cli", "train", "--preset", "tiny", "--out", str(out)]
    for s in settings:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    records = RunFolder(out).read_metrics()[1:]
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


def matmul_rates(threads: int = 2) -> dict[str, float]:
    """GFLOP/s of a square matrix product on this CPU: float32 at 2048 (BENCH.md's size), bfloat16 at 512
    (where bf16 has no hardware path it is ~100x slower, and 2048 would take minutes); best of 5, since a
    shared 2-core machine gives single products that vary by 1.5x."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype, size in (("float32", torch.float32, 2048), ("bfloat16", torch.bfloat16, 512)):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        a @ b
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        rates[name] = 2 * size**3 / best / 1e9
    return rates


def training_flops(prompts: Path, response_len: int, epochs: int, mode: str) -> float:
    """Useful matrix-product FLOPs of our training phase (one PPO step), from SmolLM2's shapes and the real
    tokens (padding excluded): per token, a forward costs 2 x (the backbone's linear weights) + attention
    (4 x context x hidden per layer); a backward through frozen weights the same again (input gradients), a
    backward into trained weights twice that. The LM head runs on the response tokens only."""
    from trainers import data, models

    tok = models.load_tokenizer(models.SMOLLM2)
    cfg = json.loads((models.smollm2_dir() / models.MODEL_CONFIG).read_text())
    query_lengths = [len(tok(data.format_prompt(r, "alpaca"))["input_ids"]) for r in json.loads(prompts.read_text())]
    return count_training_flops(cfg, query_lengths, response_len, epochs, mode)


def count_training_flops(cfg: dict, query_lengths: list[int], response_len: int, epochs: int, mode: str) -> float:
    """`training_flops` for a model config (config.json's fields) and the prompts' token counts, with the value
    model on a backbone of the same shape."""
    h, inter, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * (cfg.get("num_key_value_heads") or cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q, o; k, v; gate, up, down
    lengths = [q + response_len for q in query_lengths]
    forward = sum(2 * linear * n + 4 * layers * h * n * n / 2 for n in lengths)  # causal attention: n^2 / 2
    head = 2 * h * vocab * response_len * len(lengths)
    backward_factor = 1 if mode == "lora" else 2  # frozen weights: input gradients only
    policy = (forward + head) * (1 + backward_factor)
    value = forward * (1 + backward_factor)
    return epochs * (policy + value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--levers", action="store_true", help="then run ours once per speed lever with it off")
    parser.add_argument("--modes", action="store_true", help="then run ours once per row of MODES with it on")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a setting for our side")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"harness": [], "trl": []}
    lever_rows: dict[str, dict] = {}
    mode_rows: dict[str, dict] = {}
    rates = matmul_rates()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.json")
        base = [*as_settings(work_unit(prompts, args.steps, args.epochs, args.mode)), *args.set]
        if args.modes:  # every row checked before any run: a refused one is known at once, not after an hour
            for name, setting in MODES.items():
                if (why := refusal([*base, *setting.split()])) is not None:
                    mode_rows[name] = {"setting": setting, "skipped": why}
                    print(f"mode skipped: {name} ({setting}): our trainer refuses it: {why}", flush=True)
        flops = training_flops(prompts, 64, args.epochs, args.mode)
        for rep in range(args.repeats):
            for side in ("harness", "trl"):
                t0 = time.perf_counter()
                out = Path(tmp) / f"{side}-{rep}"
                row = (ours(prompts, out, args.steps, args.epochs, args.mode, args.set) if side == "harness"
                       else trl(prompts, out, args.steps, args.epochs, args.mode))
                row["wall_s"] = time.perf_counter() - t0
                runs[side].append(row)
                print(side, rep, json.dumps(row), flush=True)
        if args.levers:
            for name, setting in LEVERS.items():
                row = ours(prompts, Path(tmp) / f"lever-{len(lever_rows)}", args.steps, args.epochs, args.mode,
                           [*args.set, *setting.split()])
                lever_rows[name] = {"setting": setting, **row}
                print("lever off:", name, json.dumps(row), flush=True)
        if args.modes:
            for name, setting in MODES.items():
                if name not in mode_rows:
                    row = ours(prompts, Path(tmp) / f"mode-{len(mode_rows)}", args.steps, args.epochs, args.mode,
                               [*args.set, *setting.split()])
                    mode_rows[name] = {"setting": setting, **row}
                    print("mode on:", name, json.dumps(row), flush=True)
    summary = {side: {k: statistics.median(r[k] for r in rows if r[k] is not None) for k in rows[0]}
               for side, rows in runs.items()}
    ratios = {"speedup_s_per_step": summary["trl"]["s_per_step"] / summary["harness"]["s_per_step"],
              "memory_ratio": summary["harness"]["peak_bytes"] / summary["trl"]["peak_bytes"]}
    training_rate = flops / summary["harness"]["training"] / 1e9
    compute = {"training_gflop": flops / 1e9, "training_gflops_per_s": training_rate, "matmul_gflops_per_s": rates,
               "fraction_of_best_matmul_rate": training_rate / max(rates.values())}
    command = (f"python -m benchmarks.side_by_side --steps {args.steps} --repeats {args.repeats} "
               f"--epochs {args.epochs} --mode {args.mode}" + (" --levers" if args.levers else "")
               + (" --modes" if args.modes else "") + "".join(f" --set {s}" for s in args.set))
    result = {"command": command, "runs": runs, "summary": summary, "ratios": ratios, "compute": compute,
              "levers": lever_rows, "modes": mode_rows, "machine": machine(), "environment": environment(rates)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"side_by_side-{args.mode}-{args.epochs}ep"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = render(result)
    stem.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0


def _row_cells(r: dict) -> str:
    return (f"{r['s_per_step']:.1f} | {r['generation']:.1f} | {r['frozen_forwards']:.1f} | {r['training']:.1f} | "
            f"{r['peak_bytes'] / 2**30:.2f} GiB")


def render(result: dict) -> str:
    """The markdown table of a result (what `main` writes as JSON): a pure function of it."""
    summary, ratios, compute = result["summary"], result["ratios"], result["compute"]
    rates = compute["matmul_gflops_per_s"]
    lines = [f"Command: `{result['command']}` ({result['machine']})", "",
             "| side | s/step | generation | frozen forwards | training | tokens/s | peak |", "|---|---|---|---|---|---|---|"]
    for side, s in summary.items():
        lines.append(f"| {side} | {s['s_per_step']:.1f} | {s['generation'] or 0:.1f} | {s['frozen_forwards']:.1f} | "
                     f"{s['training']:.1f} | {s['tokens_per_s'] or 0:.1f} | {s['peak_bytes'] / 2**30:.2f} GiB |")
    lines.append(f"\nTRL / harness seconds per step: {ratios['speedup_s_per_step']:.2f}x; harness / TRL peak memory: "
                 f"{ratios['memory_ratio']:.2f}x")
    lines.append(f"\nTraining phase: {compute['training_gflop']:.0f} GFLOP of useful matrix products in "
                 f"{summary['harness']['training']:.1f} s = {compute['training_gflops_per_s']:.0f} GFLOP/s; this CPU's "
                 f"matrix products: float32 {rates['float32']:.0f} GFLOP/s, bfloat16 {rates['bfloat16']:.1f} GFLOP/s "
                 f"({100 * compute['fraction_of_best_matmul_rate']:.0f}% of the faster)")
    base = summary["harness"]
    if result.get("levers"):
        lines += ["", "Each lever off in turn (one run each, all other levers on; harness median above for reference):", "",
                  "| lever off | setting | s/step | generation | frozen forwards | training | peak | step vs all on |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in result["levers"].items():
            lines.append(f"| {name} | `{r['setting']}` | {_row_cells(r)} | {r['s_per_step'] / base['s_per_step']:.2f}x |")
    if result.get("modes"):
        lines += ["", "Modes: each setting on in turn (one run each, all levers on; harness median above for reference):",
                  "", "| mode | setting | s/step | generation | frozen forwards | training | peak | step vs default |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in result["modes"].items():
            if "skipped" in r:
                lines.append(f"| {name} | `{r['setting']}` | skipped: our trainer refuses the setting | | | | | |")
            else:
                lines.append(f"| {name} | `{r['setting']}` | {_row_cells(r)} | "
                             f"{r['s_per_step'] / base['s_per_step']:.2f}x |")
    return "\n".join(lines) + "\n"


def environment(rates: dict[str, float]) -> dict:
    """What the figures depend on: the CPU (model, cores), the torch build and its measured matrix-product rates."""
    import torch

    return {"cpu": machine(), "torch": torch.__version__, "matmul_gflops_per_s": rates}


def machine() -> str:
    from harness.machine import describe

    return describe()


if __name__ == "__main__":
    sys.exit(main())
