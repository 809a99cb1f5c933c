"""Preference data for a proxy reward model, AlpacaFarm in miniature: responses sampled from the SFT policy, every
pair of an instruction's responses labelled by the preset's gold judge (an offline judge: the simulated rubric or the
learned judge), and a split by instruction.

- `sample_responses`: K responses per `preference` instruction (temperature 1, the run's response length), one
  seeded sampling pass per response, cached in `samples.json` so that a larger K samples only the passes it lacks;
- `all_pairs`: every pair of an instruction's responses, K(K-1)/2 of them (identical outputs left out);
- `label_pairs`: the gold judge's noiseless preference in both orders ("gold"), and AlpacaFarm-style training
  labels with 25% of them flipped (seeded);
- `split_instructions`: 85% of the instructions for training, 15% held out (no pair of a held-out instruction is
  seen in training).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from evals.generate import GenerationSettings, generate
from evals.judging import AnnotationCache, Judge, Pair, annotate
from evals.simulated import SimulatedJudge, training_labels
from trainers import data
from trainers.config import TrainConfig
from trainers.execution import DecodeLevers
from trainers.models import cache_dir, load_causal_lm, load_tokenizer
from trainers.io import atomic_write_text

HELD_OUT = 0.15
LABEL_FLIP = 0.25


def sample_responses(cfg: TrainConfig, folder: Path, log, limit: int | None, k: int,
                     decoding: DecodeLevers) -> list[dict]:
    """[{id, instruction, input, outputs: [K strings]}] for the preference instructions. Each response comes from
    one seeded sampling pass over all instructions (seed 1..K); passes are cached, so a larger K samples only the
    passes it lacks."""
    path = folder / "samples.json"
    records = data.load_records(cfg.prompts, "preference")[:limit]
    key = {"policy": cfg.policy, "response_len": cfg.response_len, "template": cfg.prompt_template,
           "instructions": [[r["instruction"], r["input"]] for r in records]}
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, ValueError):
        saved = {}  # a damaged cache of samples: sampled again
    passes = saved.get("passes", {}) if isinstance(saved, dict) and saved.get("key") == key else {}
    missing = [seed for seed in range(1, k + 1) if str(seed) not in passes]
    log(f"samples: {k - len(missing)} of {k} responses to each of {len(records)} preference instructions cached "
        f"({path})")
    if missing:
        model, tok = load_causal_lm(cfg.policy, torch.float32), load_tokenizer(cfg.policy)
        for seed in missing:
            settings = GenerationSettings(max_new_tokens=cfg.response_len, temperature=1.0, top_p=1.0,
                                          batch_size=32, seed=seed)
            log(f"samples: response {seed} of {k} for {len(records)} preference instructions")
            passes[str(seed)] = generate(model, tok, records, cfg.prompt_template, settings, decoding,
                                         progress=lambda d, t, n, s: log(f"  {d}/{t} prompts, "
                                                                         f"{n / max(s, 1e-9):.0f} tokens/s"))
            atomic_write_text(path, json.dumps({"key": key, "passes": passes}, ensure_ascii=False))
    return [{"id": f"pref-{i}", "instruction": r["instruction"], "input": r["input"],
             "outputs": [passes[str(seed)][i] for seed in range(1, k + 1)]} for i, r in enumerate(records)]


def all_pairs(samples: list[dict]) -> list[Pair]:
    """Every pair of each instruction's responses, identical outputs left out (nothing to prefer)."""
    pairs = []
    for s in samples:
        for a, b in itertools.combinations(range(len(s["outputs"])), 2):
            if s["outputs"][a] != s["outputs"][b]:
                pairs.append(Pair(s["instruction"], s["input"], s["outputs"][a], s["outputs"][b], f"{s['id']}:{a}-{b}"))
    return pairs


def split_instructions(ids: list[str], seed: int) -> tuple[set[str], set[str]]:
    """(training, held-out) instruction ids: a seeded HELD_OUT share of the instructions is held out."""
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(HELD_OUT * len(order))))
    return set(order[cut:]), set(order[:cut])


def label_pairs(pairs: list[Pair], seed: int, judge: Judge | None = None) -> tuple[list[float | None], list[int], dict]:
    """(gold, noisy, judge identity): `judge`'s (default: the simulated rubric's) noiseless preferences of `pairs` in
    both orders (its answers cached), and training labels (1 or 2) with LABEL_FLIP of them flipped, seeded by
    `seed`."""
    judge = judge if judge is not None else SimulatedJudge()
    gold = annotate(judge, pairs, order="both", cache=AnnotationCache(cache_dir() / "annotations.sqlite"))
    return gold, training_labels(gold, p_flip=LABEL_FLIP, seed=seed), judge.identity()
