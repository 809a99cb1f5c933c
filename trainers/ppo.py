"""The maths of PPO for language models: pure functions on tensors.

Shapes: B sequences x T response positions; `mask` is 1 on response tokens up to and including the
first stop token and 0 after it. Semantics follow AlpacaFarm's PPO trainer (score added at the last
response token, optional reward whitening without mean shift, GAE with the value after the last token
taken as 0, whitened advantages, clipped policy and value losses), with one deliberate difference:
AlpacaFarm averages its losses over every response position, padding after EOS included; we average
over real tokens only (as TRL does), so that a response's padding never trains the policy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * mask) / sum(mask), over `dim` or over everything."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance of the masked entries (as AlpacaFarm's and TRL's whitening use)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    sq = masked_mean((x - mean).square(), mask)
    return sq * n / (n - 1).clamp(min=1)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over masked entries; with shift_mean=False the mean is added back.

    Masked-out entries are returned as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def shape_rewards(scores: Tensor, penalties: Tensor, kl_coef: float, mask: Tensor) -> tuple[Tensor, Tensor]:
    """r_t = -kl_coef * k_t on every response token, plus the score at the last response token.

    Returns (shaped_rewards, non_score_rewards), both zero after the response ends.
    """
    non_score = -kl_coef * penalties * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    shaped = non_score.clone()
    shaped[torch.arange(scores.numel(), device=scores.device), last] += scores
    return shaped, non_score


def gae_advantages(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, before whitening.

    delta_t = r_t + gamma * V_{t+1} - V_t, with V_T = 0 after the last position;
    A_t = delta_t + gamma * lam * A_{t+1};  returns R_t = A_t + V_t.
    Zero `rewards` and `values` after a response ends, and V after its last token is then 0 too.
    """
    T = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    return advantages, advantages + values


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float, denom: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: sum_t max(-A_t * rho_t, -A_t * clip(rho_t, 1-eps, 1+eps)) * mask / denom.

    rho_t = exp(logprob - old_logprob). `denom` is the number of real tokens in the whole minibatch, so
    that micro-batches with gradient accumulation sum to the minibatch mean exactly.
    Stats (sums over real tokens, divide by `denom` too): clipfrac, approxkl = 0.5 (log rho)^2.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = (torch.maximum(unclipped, clipped) * mask).sum() / denom
    with torch.no_grad():
        stats = {
            "clipfrac": ((clipped > unclipped).float() * mask).sum() / denom,
            "approxkl": (0.5 * log_ratio.square() * mask).sum() / denom,
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float, denom: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: 0.5 * sum_t max((V - R)^2, (clip(V, V_old +- eps) - R)^2) * mask / denom."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    loss = 0.5 * (torch.maximum(unclipped_loss, clipped_loss) * mask).sum() / denom
    with torch.no_grad():
        stats = {"clipfrac": ((clipped_loss > unclipped_loss).float() * mask).sum() / denom}
    return loss, stats


def sequence_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T)[token] without materialising the full log-softmax.

    log p(y) = z_y / T - logsumexp(z / T): one gather and one fused reduction over the vocabulary.
    """
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v, per position ([..., V] -> [...])."""
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def pair_statistics(logits: Tensor, ref_logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-position statistics of the policy and the reference at the sampled tokens, from one
    log-softmax of each ([..., V] logits already divided by the temperature):

        log pi(y_t), log pi_ref(y_t), KL(pi || pi_ref) = sum_v pi(v) (log pi(v) - log pi_ref(v)),
        H(pi) = -sum_v pi(v) log pi(v).

    The same values as `sequence_logprobs`, `regularizers.kl_full` and `entropy_from_logits` called one by
    one, in half the passes over the vocabulary.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    index = tokens.unsqueeze(-1)
    picked, ref_picked = logp.gather(-1, index).squeeze(-1), logq.gather(-1, index).squeeze(-1)
    p = logp.exp()
    kl = (p * (logp - logq)).sum(-1)
    entropy = -(p * logp).sum(-1)
    return picked, ref_picked, kl, entropy
