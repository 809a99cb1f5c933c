"""Seconds per PPO step and per phase, tokens/s, peak memory and trainable share of the modes: LoRA with the shared
reference, LoRA with a copied reference (the paper's code), full fine-tune, LoRA with every role on one frozen base
(reference=one_base), and LoRA with the value as a head on the policy (value_model=policy_head).

Each mode runs in its own process (so that peak RSS is its own) through `harness train`, for `--steps`
steps; the first step is a warm-up and is excluded from the medians.

  python -m benchmarks.ppo_modes --preset tiny --steps 3 [--set FIELD=VALUE ...]
writes benchmarks/results/ppo_modes-<preset>.json and .md (with `--modes A,B`: ppo_modes-<preset>-A+B.*).
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

from trainers.runfolder import RunFolder

MODES = {
    "lora_shared": ["lora=true", "reference=shared"],
    "lora_copy": ["lora=true", "reference=copy"],
    "full": ["lora=false", "reference=copy"],
    "one_base": ["lora=true", "reference=one_base"],
    "policy_head": ["lora=true", "reference=shared", "value_model=policy_head", "value_init=policy"],
}
PHASES = ("time/step", "time/rollout", "time/score", "time/train", "time/tokens_per_s", "time/rollout_tokens_per_s")
RESULTS = Path(__file__).parent / "results"


def run_mode(preset: str, steps: int, extra: list[str], mode: str, workdir: Path) -> dict:
    out = workdir / mode
    cmd = [sys.executable, "-m", "harness.cli", "train", "--preset", preset, "--out", str(out),
           "--set", f"steps={steps}", "--set", f"checkpoint_every={10**6}"]
    for item in MODES[mode] + extra:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t0
    records = RunFolder(out).read_metrics()
    facts = RunFolder(out).read_facts()
    timed = records[1:] or records
    counts = facts["parameters"]
    return {
        "mode": mode,
        "steps_timed": len(timed),
        **{key: statistics.median(r[key] for r in timed) for key in PHASES},
        "peak_memory_bytes": max(r["memory/peak_bytes"] for r in records),
        "memory_kind": records[-1]["memory/kind"],
        "trainable_parameters": counts["trainable"],
        "total_parameters": counts["total"],
        "trainable_share_percent": 100 * counts["trainable"] / counts["total"],
        "policy_trainable_share_percent": 100 * counts["policy_trainable"] / counts["policy_total"],
        "frozen_dtype": facts["frozen_dtype"],
        "layout": facts.get("layout"),  # what was built (one_base falls back to shared when it cannot apply)
        "wall_s": wall,
        "facts": facts,
    }


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| mode | s/step | rollout | score | train | tokens/s | peak memory | trainable (policy) | trainable (all) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['time/step']:.1f} | {r['time/rollout']:.1f} | {r['time/score']:.1f} | "
            f"{r['time/train']:.1f} | {r['time/tokens_per_s']:.1f} | {r['peak_memory_bytes'] / 2**30:.2f} GiB "
            f"({r['memory_kind']}) | {r['policy_trainable_share_percent']:.3f}% | {r['trainable_parameters']:,} "
            f"({r['trainable_share_percent']:.3f}%) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    unknown = [mode for mode in args.modes.split(",") if mode not in MODES]
    if unknown:
        parser.error(f"--modes {args.modes}: no mode {', '.join(map(repr, unknown))}; valid: {', '.join(MODES)}")
    subset = "" if args.modes == ",".join(MODES) else args.modes.replace(",", "+")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            rows.append(run_mode(args.preset, args.steps, args.set, mode, Path(tmp)))
            print(markdown(rows[-1:], f"## {mode}"), flush=True)
    from harness.machine import describe

    machine = describe()
    header = (f"PPO step by mode, preset `{args.preset}` {' '.join(args.set)}; median of {args.steps - 1} steps after "
              f"a warm-up step; {machine}; command: `python -m benchmarks.ppo_modes --preset {args.preset} "
              f"--steps {args.steps}{'' if args.modes == ','.join(MODES) else ' --modes ' + args.modes}"
              f"{''.join(' --set ' + s for s in args.set)}`")
    RESULTS.mkdir(parents=True, exist_ok=True)
    # a subset of the modes gets its own files: the full table (tests/test_memory_plan.py reads it) stays whole
    stem = RESULTS / "-".join(part for part in ("ppo_modes", args.preset, subset, args.tag) if part)
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "machine": machine, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
