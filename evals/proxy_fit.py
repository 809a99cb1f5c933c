"""Fitting the proxy reward model's head on preference pairs, and its held-out agreement with the judge.

`fit_head`: the frozen SFT backbone with a linear head fitted by Bradley-Terry maximum likelihood
(`trainers.reward_fit`) on the hidden states it reads (`score_token`: their mean over the response and its EOS, or
the EOS state alone), read exactly as the reward-model judge reads them; and the 5-fold (by instruction)
cross-validated agreement of the same fit with the gold labels. `heldout_agreement`: a saved reward model read
back as PPO and the reward-model judge read it, against the held-out pairs' gold and noisy labels.
"""

from __future__ import annotations

import time

import torch

from evals.judging import Pair
from evals.reward_judge import RewardModelJudge, read_states
from trainers.config import TrainConfig
from trainers.heads import ScalarHeadModel, hidden_size, load_backbone, new_head
from trainers.reward_fit import cross_validated_agreement, fit_bradley_terry_head, pair_accuracy


def fit_head(cfg: TrainConfig, tok, sampled: list[dict], prompt_of: dict, pairs: list[Pair], train: list[int],
              noisy: list[int], gold: list[float | None], l2: float, score_token: str,
              log) -> tuple[ScalarHeadModel, list[float]]:
    """The frozen SFT backbone with a Bradley-Terry linear head on the hidden states it reads (`score_token`: the
    mean over the response and its EOS, or the EOS alone), and the 5-fold (by instruction) cross-validated
    agreement of the same fit with the gold labels."""
    backbone = load_backbone(cfg.policy, torch.float32).eval()
    reader = ScalarHeadModel(backbone, new_head(hidden_size(backbone), zero=True, seed=0), score_token=score_token)
    index, prompts, outputs = {}, [], []
    for s in sampled:
        for o in s["outputs"]:
            index[(s["id"], o)] = len(prompts)
            prompts.append(prompt_of[s["id"]])
            outputs.append(o)
    feats = read_features(reader, tok, prompts, outputs, log)
    every = torch.tensor([[index[(p.id.split(":")[0], p.output_1)], index[(p.id.split(":")[0], p.output_2)]]
                          for p in pairs])
    noisy_all = torch.tensor([1.0 if n == 2 else 0.0 for n in noisy])
    gold_all = torch.tensor([float("nan") if g in (None, 1.5) else float(g > 1.5) for g in gold])
    rows, labels = every[train], noisy_all[train]
    head = fit_bradley_terry_head(feats, rows, labels, l2=l2)
    with torch.no_grad():
        fitted = head(feats).squeeze(-1)
    log(f"  head fitted: agreement with its own noisy training labels {100 * pair_accuracy(fitted, rows, labels):.1f}%")
    cv = cross_validated_agreement(feats, every, noisy_all, gold_all, [p.id.split(":")[0] for p in pairs], l2=l2,
                                   seed=cfg.seed)
    log(f"  5-fold agreement with the gold labels by instruction: {', '.join(f'{100 * a:.1f}%' for a in cv)}")
    return ScalarHeadModel(backbone, head, score_token=score_token).eval(), cv


def read_features(reader: ScalarHeadModel, tok, prompts: list[str], outputs: list[str], log,
                 batch_size: int = 16) -> torch.Tensor:
    """The hidden states `reader` reads for each prompt + response, exactly as the reward-model judge (and so the
    held-out check below) reads them, with progress."""
    started = time.time()

    def progress(done: int, total: int) -> None:
        if done == total or (done // batch_size) % 10 == 1:
            rate = done / max(time.time() - started, 1e-9)
            log(f"  features: {done}/{total} responses, {rate:.1f}/s, ETA {(total - done) / max(rate, 1e-9):.0f} s")

    return read_states(reader, tok, prompts, outputs, batch_size=batch_size, progress=progress)


def heldout_agreement(model_dir: str, template: str, pairs: list[Pair], held: list[int], instruction_of: list[str],
                      prompt_of: dict, gold: list[float | None], noisy: list[int]) -> tuple[float, float, int]:
    """(% agreement with the gold preferences, % with the noisy labels, pairs the gold judge decided) of the reward
    model saved at `model_dir` on the held-out pairs `held`, read back exactly as PPO and the reward-model judge
    read it."""
    rm = RewardModelJudge(model_dir, template=template)
    # each response once, however many pairs it is in
    unique = sorted({(instruction_of[i], o) for i in held for o in (pairs[i].output_1, pairs[i].output_2)})
    scored = dict(zip(unique, rm.rewards([prompt_of[q] for q, _ in unique], [o for _, o in unique]).tolist())) \
        if unique else {}
    r1 = torch.tensor([scored[(instruction_of[i], pairs[i].output_1)] for i in held])
    r2 = torch.tensor([scored[(instruction_of[i], pairs[i].output_2)] for i in held])
    decided = [(a, b, g) for a, b, g in zip(r1.tolist(), r2.tolist(), [gold[i] for i in held]) if g not in (None, 1.5)]
    acc_gold = 100.0 * sum((b > a) == (g > 1.5) for a, b, g in decided) / max(1, len(decided))
    acc_noisy = 100.0 * sum((b > a) == (noisy[i] == 2) for a, b, i in zip(r1.tolist(), r2.tolist(), held)) / max(1, len(held))
    return acc_gold, acc_noisy, len(decided)
