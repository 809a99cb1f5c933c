"""A reward head fitted on a frozen backbone's features by Bradley-Terry maximum likelihood.

Each response is represented by the backbone's last hidden state at the token the reward model reads (`score_token`),
x in R^d. For a labelled pair (a, b) with y = 1 when b is preferred, the head r(x) = w . x + c is fitted by

    minimise  mean_pairs  -[y log sigmoid(r(x_b) - r(x_a)) + (1 - y) log sigmoid(r(x_a) - r(x_b))]  +  l2 * |w|^2

(c cancels in every difference; it is set so that the mean training reward is 0). Features are standardised before
the fit and the scaling is folded back into (w, c), so the head reads raw hidden states. The objective is convex:
L-BFGS from zero reaches the same optimum whatever the order of the pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def fit_bradley_terry_head(features: Tensor, pairs: Tensor, labels: Tensor, *, l2: float = 1e-2,
                           max_iter: int = 500) -> nn.Linear:
    """`features` [N, d]; `pairs` [P, 2] row indices (a, b); `labels` [P] in {0, 1} (1: b preferred)."""
    if pairs.ndim != 2 or pairs.size(1) != 2 or labels.shape != (pairs.size(0),):
        raise ValueError(f"pairs must be [P, 2] and labels [P]; got {tuple(pairs.shape)} and {tuple(labels.shape)}")
    if pairs.size(0) == 0:
        raise ValueError("no labelled pairs to fit a reward head on")
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    diff = z[pairs[:, 1]] - z[pairs[:, 0]]
    y = labels.double()
    w = torch.zeros(z.size(1), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(diff @ w, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(z.size(1), 1)
    with torch.no_grad():
        raw_w = w.detach() / std
        head.weight.copy_(raw_w.unsqueeze(0).float())
        head.bias.fill_(float(-(x @ raw_w).mean()))
    return head


def pair_accuracy(rewards: Tensor, pairs: Tensor, labels: Tensor) -> float:
    """Share of pairs whose reward difference has the label's sign (ties count half)."""
    d = rewards[pairs[:, 1]] - rewards[pairs[:, 0]]
    right = torch.where(labels.bool(), d > 0, d < 0).double() + 0.5 * (d == 0).double()
    return float(right.mean())


def cross_validated_agreement(features: Tensor, pairs: Tensor, labels: Tensor, gold: Tensor, groups: list[str], *,
                              l2: float, folds: int = 5, seed: int = 0) -> list[float]:
    """Held-out agreement with `gold` (1: b better, 0: a better, nan: a tie, left out) of heads fitted on `labels`,
    over `folds` folds of the groups (instructions): a group's pairs are all in one fold, so no fold is scored on an
    instruction the head was fitted on. Returns one share per fold."""
    import random

    names = sorted(set(groups))
    random.Random(seed).shuffle(names)
    fold_of = {name: i % folds for i, name in enumerate(names)}
    fold = torch.tensor([fold_of[g] for g in groups])
    shares = []
    for k in range(folds):
        test = fold == k
        scored = test & ~torch.isnan(gold)
        if not scored.any() or test.all():
            continue
        head = fit_bradley_terry_head(features, pairs[~test], labels[~test], l2=l2)
        with torch.no_grad():
            rewards = head(features).squeeze(-1)
        shares.append(pair_accuracy(rewards, pairs[scored], gold[scored]))
    return shares
