"""Regularisers of the shaped reward, keyed by name.

Notation, per sampled response token t: p = pi(y_t | x, y_<t) under the policy, q = pi_ref(y_t | ...)
under the reference, both at the sampling temperature; lp = log p, lq = log q. A regulariser gives an
element-wise penalty k_t and the shaped reward is r_t = -kl_coef * k_t (+ the reward-model score at the
last response token). The sampled-token forms follow the paper's code (SimengSun/alpaca_farm_lora);
`kl_full` and `jensen_shannon_full` are exact full-vocabulary divergences, an extension of ours.

Named configurations whose code is not public (our reading, documented in `RegularizerSpec.note`):
- `none`: k_t = 0 and LoRA dropout forced to 0, so that nothing but the clip keeps the policy close.
- `dropout_only`: k_t = 0 with the configured LoRA dropout kept (0.1 in the paper): dropout is then the
  only regulariser, which is what the name says and what separates it from `none`.
- `negative_kl`: k_t = -(lp - lq): the KL term with its sign flipped, rewarding drift away from the
  reference; consistent with its runs reaching the largest true KL in the paper's second figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the formulas use tensor methods only, so the configuration can list names without torch
    from torch import Tensor

LOG_HALF = math.log(0.5)


def kl(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = log p - log q (the "k1" estimator; unbiased for KL, negative on some tokens)."""
    return lp - lq


def clamped_kl(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = max(0, log p - log q) (AlpacaFarm's only form)."""
    return (lp - lq).clamp(min=0.0)


def bregman(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = q/p - 1 + log p - log q (the Bregman divergence of -log; the "k3" estimator, always >= 0)."""
    log_ratio = lp - lq
    return (-log_ratio).expm1() + log_ratio


def squared_error(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = 0.5 * (log p - log q)^2 (the "k2" estimator)."""
    return 0.5 * (lp - lq).square()


def jensen_shannon(lp: Tensor, lq: Tensor) -> Tensor:
    """Clamped token-level Jensen-Shannon on the sampled token, as in the paper's code.

    m = (p + q) / 2;  k_t = 0.5 * [max(0, log p - log m) + max(0, log q - log m)].
    log m is computed as logaddexp(lp, lq) + log(1/2) so that tiny probabilities do not underflow.
    """
    lm = lp.logaddexp(lq) + LOG_HALF
    return 0.5 * ((lp - lm).clamp(min=0.0) + (lq - lm).clamp(min=0.0))


def negative_kl(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = -(log p - log q): the KL penalty with its sign flipped (our reading, see the module doc)."""
    return lq - lp


def zero(lp: Tensor, lq: Tensor) -> Tensor:
    """k_t = 0 (no penalty; used by `none` and `dropout_only`)."""
    return lp.new_zeros(lp.shape)


def kl_full(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Exact per-position KL(pi || pi_ref) = sum_v pi(v) * (log pi(v) - log pi_ref(v)).

    `logits` and `ref_logits` are [..., V] and already divided by the sampling temperature.
    This is also the "token-level true KL" that the trainer logs whatever the regulariser.
    """
    logp = logits.float().log_softmax(dim=-1)
    logq = ref_logits.float().log_softmax(dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def jensen_shannon_full(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Exact per-position JS(pi, pi_ref) = 0.5 KL(pi || m) + 0.5 KL(pi_ref || m), m = (pi + pi_ref) / 2."""
    logp = logits.float().log_softmax(dim=-1)
    logq = ref_logits.float().log_softmax(dim=-1)
    logm = logp.logaddexp(logq) + LOG_HALF
    return 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1))


@dataclass(frozen=True, slots=True)
class RegularizerSpec:
    """How a named regulariser shapes the reward."""

    name: str
    note: str
    sampled: Callable[[Tensor, Tensor], Tensor] | None = None
    """k_t from sampled-token log-probs (lp, lq); None for full-vocabulary forms."""
    full: Callable[[Tensor, Tensor], Tensor] | None = None
    """k_t from temperature-scaled logits (logits, ref_logits); None for sampled-token forms."""
    lora_dropout: float | None = None
    """A LoRA dropout this configuration imposes (None: keep the configured one)."""

    @property
    def needs_logits(self) -> bool:
        return self.full is not None


REGULARIZERS: dict[str, RegularizerSpec] = {
    spec.name: spec
    for spec in (
        RegularizerSpec("kl", "log p - log q", sampled=kl),
        RegularizerSpec("clamped_kl", "max(0, log p - log q)", sampled=clamped_kl),
        RegularizerSpec("bregman", "q/p - 1 + log p - log q (k3)", sampled=bregman),
        RegularizerSpec("jensen_shannon", "clamped token-level JS on the sampled token", sampled=jensen_shannon),
        RegularizerSpec("squared_error", "0.5 (log p - log q)^2 (k2)", sampled=squared_error),
        RegularizerSpec("none", "no penalty, LoRA dropout 0", sampled=zero, lora_dropout=0.0),
        RegularizerSpec("negative_kl", "-(log p - log q): rewards drift", sampled=negative_kl),
        RegularizerSpec("dropout_only", "no penalty, LoRA dropout kept", sampled=zero),
        RegularizerSpec("kl_full", "exact full-vocabulary KL(pi || pi_ref)", full=kl_full),
        RegularizerSpec("jensen_shannon_full", "exact full-vocabulary JS(pi, pi_ref)", full=jensen_shannon_full),
    )
}


def get(name: str) -> RegularizerSpec:
    """The spec of `name`; an unknown name fails with the list of valid names."""
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise ValueError(
            f"regularizer={name!r} is not a known regulariser; valid names: {', '.join(REGULARIZERS)}"
        ) from None


def penalty(
    name: str,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    *,
    logits: Tensor | None = None,
    ref_logits: Tensor | None = None,
) -> Tensor:
    """Element-wise k_t for regulariser `name` (shape of `logprobs`).

    `logprobs` / `ref_logprobs` are the sampled tokens' log-probabilities at the sampling temperature.
    Full-vocabulary forms also need `logits` / `ref_logits` ([..., V], temperature-scaled).
    """
    spec = get(name)
    if spec.full is not None:
        if logits is None or ref_logits is None:
            raise ValueError(f"regularizer={name!r} is a full-vocabulary form: pass logits= and ref_logits=")
        return spec.full(logits, ref_logits)
    return spec.sampled(logprobs, ref_logprobs)
