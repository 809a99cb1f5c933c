"""Matrix-product layouts for decoding on this CPU, and the sampler with and without its decoding levers.

1. x W^T (`F.linear`) against W x^T for SmolLM2's layer shapes and 1-128 rows (ms per product, best layout
   marked): the basis of `few_row_decode_products` and its 64-row crossover (trainers/decode_linear.py).
2. The sampler on the side-by-side work unit (16 AlpacaFarm prompts, 64 tokens, LoRA with random updates),
   alternating lever settings: W x^T products and folded LoRA each on and off.

  python -m benchmarks.decode_products [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ((576, 576), (576, 1536), (1536, 576), (576, 49152))  # q/o, gate/up, down, LM head


def per_product_ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def layouts() -> None:
    print("rows | " + " | ".join(f"{k}x{n}: x W^T / W x^T (ms)" for k, n in SHAPES))
    for rows in (1, 4, 16, 32, 64, 128):
        cells = []
        for k, n in SHAPES:
            x, w = torch.randn(rows, k), torch.randn(n, k)
            reps = 6 if n > 10_000 else 60
            plain, flipped = per_product_ms(lambda: F.linear(x, w), reps), per_product_ms(lambda: (w @ x.t()).t(), reps)
            cells.append(f"{plain:.3f} / {flipped:.3f}" + (" *" if flipped < plain else ""))
        print(f"{rows} | " + " | ".join(cells), flush=True)


def sampler(repeats: int) -> None:
    from benchmarks.side_by_side import write_prompts
    from harness import presets
    from trainers import data
    from trainers.build import build_models
    from trainers.config import TrainConfig
    from trainers.rollout import left_pad
    from trainers.sampling import sample

    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.json")
        values = presets.preset("tiny")
        values.update(policy="smollm2-135m-instruct", reward="head:smollm2-135m-instruct", prompts=str(prompts),
                      prompt_split="", lora_dropout=0.0)
        models = build_models(TrainConfig(**values), torch.device("cpu"))
        records = json.loads(prompts.read_text())
    tok = models.tokenizer
    with torch.no_grad():  # random LoRA updates, so that folding them has something to fold
        gen = torch.Generator().manual_seed(0)
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    q, m = left_pad([tok(data.format_prompt(r, "alpaca", tok))["input_ids"] for r in records], tok.pad_token_id,
                    torch.device("cpu"))
    for _ in range(repeats):
        for fold, few in ((True, True), (False, True), (True, False)):
            t0 = time.perf_counter()
            with models.sampling_context(fold, few):
                sample(models.policy, q, m, max_new_tokens=64, temperature=1.0, stop_ids=[], pad_id=tok.pad_token_id,
                       generator=torch.Generator().manual_seed(0), prefill_rows=4, lean_step=True,
                       packed_weights=True)
            print(f"sampler 16 x 64 tokens: folded LoRA {fold}, W x^T products {few}: "
                  f"{time.perf_counter() - t0:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    layouts()
    sampler(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
