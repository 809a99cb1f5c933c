"""The TRL side of the side-by-side benchmark: TRL 1.12's `trl.experimental.ppo.PPOTrainer`, timed per phase.

Runs in its own virtual environment (`bash benchmarks/setup_trl.sh` makes `.venv-trl`) and imports nothing of
this repository; `benchmarks/side_by_side.py` runs it and reads the JSON it writes:

  .venv-trl/bin/python benchmarks/trl_side.py --model-dir DIR --prompts-file FILE --steps N --mode lora|full \
      --epochs E --out result.json [--response-length 64 --batch-size 16 --threads 2 --seed 42]

The work (../../shared/BENCH.md): the policy is DIR in float32; the reward and value models are DIR as
`AutoModelForSequenceClassification(num_labels=1)` with a seeded normal(0, 1/sqrt(hidden)) reward head and a zero
value head; `--mode lora` gives the policy TRL's `peft_config` (r=8, alpha=64, dropout 0.1 on q/k/v/o_proj; the
reference is the policy with its adapter disabled), `--mode full` trains the whole policy against a copied
reference. Prompts are the first `--batch-size` records of FILE in the Alpaca template, left-truncated to 128
tokens, so every PPO step sees the same prompts (in TRL's shuffled order).

Equal work: every response is exactly `--response-length` tokens. TRL's `stop_token="eos"` writes EOS into the
policy's `generation_config`, which `generate()` merges into TRL's own sampling config; we reset it to None after
the trainer is built, so nothing stops generation, while the sampling distribution stays untouched (EOS can still be
sampled; TRL then truncates that response for scoring and masking, which changes no tensor shape, hence no work).

Instrumentation, without editing TRL: the module-level names that `PPOTrainer.train` calls are wrapped (generation
= the `unwrap_model_for_generation` block around `batch_generation`; `forward` without grad = the reference forward,
with grad = the training forward of policy + value; `get_reward` = the value and reward forwards), as are the
accelerator's `backward` and the optimizer's `step` / `zero_grad`. A step runs from one fetch of a prompt batch to
the next (the last one to the end of `train()`); `other` is what the phases leave (log-softmaxes, GAE, losses, gc).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

# The prompt template is the harness's own: trainers/data.py needs only the standard library, so this script
# (which runs in TRL's virtual environment, without the harness installed) imports it by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainers.data import format_prompt  # noqa: E402

PAD_TOKEN = "<|endoftext|>"  # SmolLM2's pad == eos == <|im_end|> would hide EOS from TRL's `!= pad` masks
PHASES = ("generation", "ref_forward", "value_reward_forward", "train_forward", "backward_optimizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a local transformers checkpoint with its tokenizer")
    p.add_argument("--prompts-file", required=True, help="JSON list of {instruction, input}")
    p.add_argument("--steps", type=int, required=True, help="PPO steps (the first is reported but not in medians)")
    p.add_argument("--mode", choices=["lora", "full"], required=True)
    p.add_argument("--epochs", type=int, default=1, help="PPO epochs per step (num_ppo_epochs)")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--response-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per PPO step, one minibatch")
    p.add_argument("--max-prompt-tokens", type=int, default=128, help="prompts are left-truncated to this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--kl-coef", type=float, default=0.05)
    return p.parse_args(argv)


class StepClock:
    """Seconds per phase for the PPO step in progress; a finished step becomes one dict in `steps`."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps, self.steps, self.current, self.pending_start = total_steps, [], None, None

    def start_step(self, t0: float) -> None:
        if self.current is not None:
            self.finish(t0)
        self.current = {"t0": t0, "batch_generation": 0.0, "value_forward": 0.0, "reward_forward": 0.0,
                        "backward": 0.0, "optimizer": 0.0, "gc_collect": 0.0, **{k: 0.0 for k in PHASES}}

    def add(self, phase: str, seconds: float) -> None:
        if self.current is not None:
            self.current[phase] = self.current.get(phase, 0.0) + seconds

    def finish(self, t_end: float) -> None:
        cur, self.current = self.current, None
        cur["step"] = t_end - cur.pop("t0")
        cur["backward_optimizer"] = cur["backward"] + cur["optimizer"]
        cur["value_reward_forward"] = cur["value_forward"] + cur["reward_forward"]
        cur["other"] = cur["step"] - sum(cur[k] for k in PHASES)
        cur["tokens_per_s"] = cur.get("response_tokens", 0) / cur["step"]
        cur["rss_bytes_so_far"] = peak_rss_bytes()
        cur = {"index": len(self.steps) + 1, **cur}
        self.steps.append(cur)
        print(f"trl step {cur['index']}/{self.total_steps} | {cur['step']:.2f} s | generation {cur['generation']:.2f} | "
              f"ref fwd {cur['ref_forward']:.2f} | value+reward fwd {cur['value_reward_forward']:.2f} | "
              f"train fwd {cur['train_forward']:.2f} | backward+opt {cur['backward_optimizer']:.2f} | "
              f"other {cur['other']:.2f} (gc {cur['gc_collect']:.2f}) | {cur['tokens_per_s']:.1f} tok/s | "
              f"responses {cur.get('responses', 0)}x{cur.get('response_width', 0)} (full length: {cur.get('full_length')}, "
              f"with EOS: {cur.get('responses_with_eos', 0)}) | peak RSS {cur['rss_bytes_so_far'] / 2**30:.2f} GiB",
              flush=True)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import accelerate
    import peft
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from peft import LoraConfig
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.set_seed(args.seed)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    # 1. tokenizer and prompts
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    tok.pad_token = PAD_TOKEN
    tok.padding_side = "left"  # TRL generates from left-padded queries
    records = json.loads(Path(args.prompts_file).read_text())[: args.batch_size]
    if len(records) < args.batch_size:
        raise SystemExit(f"{args.prompts_file} has {len(records)} records; --batch-size {args.batch_size} needs more")
    texts = [format_prompt(r, "alpaca") for r in records]
    ids = [tok(t)["input_ids"][-args.max_prompt_tokens:] for t in texts]
    train_dataset = Dataset.from_dict({"input_ids": ids})

    # 2. models: float32 policy; reward and value = the same backbone with a scalar head
    def scalar_model(seeded: bool):
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1, dtype=torch.float32)
        hidden = model.config.hidden_size
        with torch.no_grad():
            if seeded:
                gen = torch.Generator().manual_seed(args.seed)
                model.score.weight.copy_(torch.randn(1, hidden, generator=gen) / hidden**0.5)
            else:
                model.score.weight.zero_()
            if getattr(model.score, "bias", None) is not None:
                model.score.bias.zero_()
        model.config.pad_token_id = tok.pad_token_id
        return model

    policy = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    policy.config.pad_token_id = policy.generation_config.pad_token_id = tok.pad_token_id
    reward_model, value_model = scalar_model(seeded=True), scalar_model(seeded=False)
    ref_model, peft_config = None, None
    if args.mode == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=64, lora_dropout=0.1, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    else:
        ref_model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        ref_model.requires_grad_(False).eval()
        ref_model.config.pad_token_id = tok.pad_token_id

    # 3. the trainer
    out_dir = tempfile.mkdtemp(prefix="trl_side-")
    config = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=1, total_episodes=args.batch_size * args.steps, num_ppo_epochs=args.epochs,
        response_length=args.response_length, temperature=1.0, learning_rate=1e-5, num_sample_generations=0,
        report_to="none", kl_coef=args.kl_coef, stop_token="eos", missing_eos_penalty=None, bf16=False,
        gradient_checkpointing=False, save_strategy="no", seed=args.seed, logging_steps=1, disable_tqdm=True,
    )
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref_model,
                         reward_model=reward_model, train_dataset=train_dataset, value_model=value_model,
                         peft_config=peft_config)
    # Equal work: TRL's stop_token="eos" put EOS into the policy's generation_config, which generate() merges into
    # TRL's own GenerationConfig (whose eos_token_id is None). Without it, no EOS stopping criterion is built.
    base_policy = getattr(trainer.policy_model, "get_base_model", lambda: trainer.policy_model)()
    base_policy.generation_config.eos_token_id = None
    base_policy.generation_config.pad_token_id = tok.pad_token_id
    # TRL's disable_dropout_in_model sets every nn.Dropout's p to 0, LoRA's dropout included.
    dropout_p = max((m.p for m in trainer.policy_model.modules() if isinstance(m, torch.nn.Dropout)), default=None)
    trainable = {"policy": sum(p.numel() for p in trainer.policy_model.parameters() if p.requires_grad),
                 "value": sum(p.numel() for p in trainer.value_model.parameters() if p.requires_grad)}

    # 4. instrumentation
    clock = StepClock(args.steps)

    def timed(phase, fn):
        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                clock.add(phase, time.perf_counter() - t0)
        return wrapper

    orig_unwrap, orig_batch_generation = ppo_mod.unwrap_model_for_generation, ppo_mod.batch_generation
    orig_forward, orig_get_reward = ppo_mod.forward, ppo_mod.get_reward

    @contextlib.contextmanager
    def timed_unwrap(*a, **k):
        t0 = time.perf_counter()
        try:
            with orig_unwrap(*a, **k) as unwrapped:
                yield unwrapped
        finally:
            sync()
            clock.add("generation", time.perf_counter() - t0)

    def batch_generation(model, queries, *a, **k):
        t0 = time.perf_counter()
        query_responses, logits = orig_batch_generation(model, queries, *a, **k)
        sync()
        clock.add("batch_generation", time.perf_counter() - t0)
        responses = query_responses[:, queries.shape[1]:]
        if clock.current is not None:
            clock.current.update(
                responses=responses.shape[0], response_width=responses.shape[1],
                response_tokens=responses.numel(),
                full_length=responses.shape[1] == args.response_length,
                pad_id_tokens_in_responses=int((responses == tok.pad_token_id).sum()),
                responses_with_eos=int((responses == tok.eos_token_id).any(1).sum()),
            )
        return query_responses, logits

    def forward(model, *a, **k):
        phase = "train_forward" if torch.is_grad_enabled() else "ref_forward"
        return timed(phase, orig_forward)(model, *a, **k)

    def get_reward(model, *a, **k):
        phase = "reward_forward" if model is trainer.reward_model else "value_forward"
        return timed(phase, orig_get_reward)(model, *a, **k)

    ppo_mod.unwrap_model_for_generation, ppo_mod.batch_generation = timed_unwrap, batch_generation
    ppo_mod.forward, ppo_mod.get_reward = forward, get_reward
    # TRL calls gc.collect() after the rollout and at the end of each step: a part of `other`.
    ppo_mod.gc = types.SimpleNamespace(collect=timed("gc_collect", gc.collect))
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    trainer.optimizer.step = timed("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = timed("optimizer", trainer.optimizer.zero_grad)

    class TimedLoader:
        """Marks a step's start when its prompt batch is requested (a pass ending does not start one)."""

        def __init__(self, loader) -> None:
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            it = iter(self.loader)
            while True:
                if clock.pending_start is None:
                    clock.pending_start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                clock.start_step(clock.pending_start)
                clock.pending_start = None
                yield batch

    trainer.dataloader = TimedLoader(trainer.dataloader)

    class KeepMetrics(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_kw):
            if clock.current is not None and logs:
                clock.current["trl_metrics"] = {k: v for k, v in logs.items() if isinstance(v, (int, float))}

    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(KeepMetrics())

    # 5. run
    print(f"trl side: mode {args.mode} | epochs {args.epochs} | {args.steps} steps x {args.batch_size} prompts "
          f"(mean {statistics.mean(map(len, ids)):.1f} tokens) x {args.response_length} response tokens | "
          f"trainable {sum(trainable.values()):,} (policy {trainable['policy']:,}, value {trainable['value']:,}) | "
          f"{args.threads} threads", flush=True)
    trainer.train()
    sync()
    clock.finish(time.perf_counter())
    shutil.rmtree(out_dir, ignore_errors=True)  # save_strategy="no": TRL wrote nothing there

    # 6. record
    later = clock.steps[1:] or clock.steps
    numeric = [k for k, v in clock.steps[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k != "index"]
    result = {
        "side": "trl",
        "mode": args.mode,
        "epochs": args.epochs,
        "steps": clock.steps,
        "median_excluding_first": {k: statistics.median(s[k] for s in later) for k in numeric},
        "median_over": f"steps {later[0]['index']}..{later[-1]['index']}",
        "peak_rss_bytes": peak_rss_bytes(),
        "trainable_parameters": sum(trainable.values()),
        "trainable_parameters_by_model": trainable,
        "policy_dropout_p_after_trl_init": dropout_p,
        "all_responses_full_length": all(s.get("full_length", False) for s in clock.steps),
        "settings": {"batch_size": args.batch_size, "response_length": args.response_length,
                     "threads": args.threads, "seed": args.seed, "kl_coef": args.kl_coef,
                     "max_prompt_tokens": args.max_prompt_tokens, "prompt_tokens": [len(x) for x in ids],
                     "model_dir": Path(args.model_dir).resolve().name, "pad_token_id": tok.pad_token_id,
                     "eos_token_id": tok.eos_token_id},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "trl": trl.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
        # a result names no machine's folders: absolute paths (model, output) by their last part
        "command": " ".join(["python benchmarks/trl_side.py",
                             *(Path(a).name if Path(a).is_absolute() else a for a in sys.argv[1:])]),
    }
    if torch.cuda.is_available():
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    med = result["median_excluding_first"]
    print(f"trl median ({result['median_over']}): {med['step']:.2f} s/step | generation {med['generation']:.2f} | "
          f"ref fwd {med['ref_forward']:.2f} | value+reward fwd {med['value_reward_forward']:.2f} | train fwd "
          f"{med['train_forward']:.2f} | backward+opt {med['backward_optimizer']:.2f} | {med['tokens_per_s']:.1f} "
          f"tok/s | peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
