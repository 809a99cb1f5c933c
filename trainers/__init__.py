"""PPO for language models with LoRA and the regularisers of Sun, Gupta & Iyyer (2023).

Knows nothing of `harness` or `evals`: it takes a `TrainConfig` (what a run computes, its id) and an
`ExecutionConfig` (how it executes) and writes a run folder
(`config.json`, `metrics.jsonl`, `checkpoints/step-NNNNNN/`), read and written through `trainers.runfolder.RunFolder`.
"""
