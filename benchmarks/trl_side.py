"""The TRL 1.12 side of benchmarks/side_by_side.py: PPOTrainer on the shared work unit, phases timed.

Runs in `.venv-trl` (benchmarks/setup_trl.sh); imports nothing of this project. TRL's files are not edited:
its module-level helpers are wrapped to time the phases (generation = `batch_generation`; reference
forward = `forward` without grad; value + reward forwards = `get_reward`; training forwards = `forward`
with grad; backward + optimiser = `accelerator.backward` and `optimizer.step`). Equal work with our side:
`stop_token=None` leaves the policy's generation config without an EOS, so every response has exactly
`--response-length` tokens (checked after the run).

  .venv-trl/bin/python benchmarks/trl_side.py --model-dir DIR --prompts-file FILE --steps 3 --mode lora --out r.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import defaultdict

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

PHASES = defaultdict(float)


def timed(name, fn, grad_split=False):
    def wrapper(*args, **kwargs):
        key = name if not grad_split else (name[0] if torch.is_grad_enabled() else name[1])
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[key] += time.perf_counter() - t0
    return wrapper


class StepTimer(TrainerCallback):
    def __init__(self, response_tokens: int):
        self.rows, self.t0, self.response_tokens = [], time.perf_counter(), response_tokens

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        row = {"step": now - self.t0, **{k: round(v, 4) for k, v in PHASES.items()}}
        row["tokens_per_s"] = self.response_tokens / row["step"]
        self.rows.append(row)
        print(f"trl step {len(self.rows)}: " + json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
        PHASES.clear()
        self.t0 = time.perf_counter()


def seeded_head(model, seed: int, zero: bool) -> None:
    with torch.no_grad():
        w = model.score.weight
        if zero:
            w.zero_()
        else:
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) / w.shape[1] ** 0.5)
        if getattr(model.score, "bias", None) is not None:
            model.score.bias.zero_()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--response-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    tok.pad_token = "<|endoftext|>"  # pad == eos == <|im_end|> would hide EOS (BENCH.md)
    tok.padding_side = "left"
    records = json.loads(open(a.prompts_file).read())[: a.batch_size]
    prompts = [ALPACA_WITH_INPUT.format(**r) if r.get("input") else ALPACA_NO_INPUT.format(instruction=r["instruction"])
               for r in records]
    dataset = Dataset.from_dict({"input_ids": [tok(t)["input_ids"][-128:] for t in prompts]})

    policy = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(a.model_dir, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(a.model_dir, num_labels=1, dtype=torch.float32)
    seeded_head(reward, a.seed, zero=False)
    seeded_head(value, a.seed, zero=True)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    ref = None if a.mode == "lora" else AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    peft_config = (LoraConfig(r=8, lora_alpha=64, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                              task_type="CAUSAL_LM") if a.mode == "lora" else None)
    config = PPOConfig(
        output_dir="/tmp/trl-side", per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=1, total_episodes=a.batch_size * a.steps, num_ppo_epochs=a.epochs,
        response_length=a.response_length, temperature=1.0, learning_rate=1e-5, num_sample_generations=0,
        report_to="none", kl_coef=0.05, stop_token=None, missing_eos_penalty=None, bf16=False,
        local_rollout_forward_batch_size=a.batch_size, save_strategy="no", logging_steps=10**6, seed=a.seed,
    )
    generated_lengths = []
    generate = timed("generation", trl_ppo.batch_generation)

    def checked_generation(*args, **kwargs):
        query_responses, logits = generate(*args, **kwargs)
        generated_lengths.append(logits.shape[1])
        return query_responses, logits

    trl_ppo.batch_generation = checked_generation
    trl_ppo.forward = timed(("train_forward", "ref_forward"), trl_ppo.forward, grad_split=True)
    trl_ppo.get_reward = timed("value_reward_forward", trl_ppo.get_reward)
    timer = StepTimer(a.batch_size * a.response_length)
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, peft_config=peft_config, callbacks=[timer])
    trainer.accelerator.backward = timed("backward_optimizer", trainer.accelerator.backward)
    if trainer.optimizer is not None:
        trainer.optimizer.step = timed("backward_optimizer", trainer.optimizer.step)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    rows = timer.rows
    timed_rows = rows[1:] or rows
    median = {k: statistics.median(r.get(k, 0.0) for r in timed_rows) for k in rows[0]}
    result = {
        "side": "trl", "mode": a.mode, "epochs": a.epochs, "steps": rows, "median_excluding_first": median,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "trainable_parameters": trainable,
        "versions": {"trl": trl.__version__, "torch": torch.__version__}, "command": " ".join(sys.argv),
        "generated_lengths": generated_lengths,
        "all_responses_full_length": all(n == a.response_length for n in generated_lengths),
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(median))
    return 0


if __name__ == "__main__":
    sys.exit(main())
