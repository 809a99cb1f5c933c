"""One PPO step of our side of the side-by-side work unit under the torch profiler.

Builds the trainer with the side-by-side settings (SmolLM2, 16 AlpacaFarm prompts, 64-token responses, LoRA
without dropout, micro-batches of 4, 2 threads), runs a warm-up step, then profiles one step and prints its
phase times, the minor page faults it caused, and the operators that took the most time. The figures behind
docs/performance.md's list of measured levers (KV-cache concatenation, multinomial draws, batched LM-head products,
page faults) come from this command, run before and after each change:

  python -m benchmarks.profile_step [--rows 25] [--no-profile] [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
from pathlib import Path

from benchmarks.side_by_side import write_prompts


def settings(prompts: Path) -> dict:
    return dict(policy="smollm2-135m-instruct", reward="head:smollm2-135m-instruct", value_init="reward",
                prompts=str(prompts), prompt_split="", query_len=128, response_len=64, stop_at_eos=False,
                temperature=1.0, rollout_batch_size=16, step_batch_size=16, micro_batch_size=4,
                rollout_micro_batch_size=16, noptepochs=1, lr=1e-5, kl_coef=0.05, threads=2, steps=2,
                checkpoint_every=10**6, lora=True, reference="shared", lora_dropout=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--no-profile", action="store_true", help="time the step without the profiler")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from harness import presets
    from trainers.process_settings import configure_training_process
    from trainers.trainer import PPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        values = presets.preset("tiny")
        values.update(settings(write_prompts(Path(tmp) / "prompts.json")))
        values.update(presets.parse_overrides(args.set))
        run = presets.run_config(values)
        configure_training_process(run.execution)  # as `harness train` does: the step is measured as a run takes it
        trainer = PPOTrainer(run.train, Path(tmp) / "run", execution=run.execution, log=lambda _m: None)
        trainer.ppo_step()  # warm-up
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if args.no_profile:
            record, prof = trainer.ppo_step(), None
        else:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                record = trainer.ppo_step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        shutil.rmtree(Path(tmp) / "run", ignore_errors=True)
    phases = {k.removeprefix("time/"): round(v, 2) for k, v in record.items()
              if k in ("time/rollout", "time/score", "time/train", "time/step")}
    print(f"phases (s): {phases} | minor page faults: {faults:,} | peak: {record['memory/peak_bytes'] / 2**30:.2f} GiB")
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
