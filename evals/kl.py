"""Token-level true KL of generated outputs: mean over response tokens of KL(pi(.|prefix) || pi_ref(.|prefix)).

The paper's second figure plots win rate against "token-level true KL"; we measure it on the evaluation
generations themselves: for every response token position t, sum over the vocabulary of
pi(v) * (log pi(v) - log pi_ref(v)), averaged over all response tokens of all outputs. It is exact (no sampled
estimator), computed in chunks of rows so the [rows, tokens, vocabulary] tensors stay small.

An exact KL is >= 0, but its float32 sum over a vocabulary of terms that nearly cancel can land a few ulps below
zero when the two distributions agree: such values are rounding, read as 0 (`rounded_kl`).
"""

from __future__ import annotations

import torch

from trainers.sampling import position_ids_from_mask

KL_ROUNDING = 1e-6  # nats: how far below zero a mean of float32 KL terms can land from rounding alone


def rounded_kl(value: float, what: str) -> float:
    """`value`, a KL estimate, with rounding below zero read as 0; a value further below is an error in `what`.

        rounded_kl(-1.6e-08, ...) == 0.0;  rounded_kl(-0.01, ...) raises ValueError naming `what`.
    """
    if value >= 0:
        return float(value)
    if value >= -KL_ROUNDING:
        return 0.0
    raise ValueError(f"{what}={value!r} is a KL below zero by more than rounding ({KL_ROUNDING:g}): the log that "
                     "holds it is damaged or was not written by a KL estimate")


@torch.inference_mode()
def true_kl(policy, reference, tokenizer, prompts: list[str], outputs: list[str], *, rows: int = 4,
            device: str = "cpu", max_tokens: int = 1024) -> float:
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), rows):
        p_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts[start:start + rows]]
        o_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs[start:start + rows]]
        seqs = [(p + o)[-max_tokens:] for p, o in zip(p_ids, o_ids)]
        # a response token needs one token before it: a truncated sequence that is all response loses its first
        resp = [min(len(o), len(s) - 1) for o, s in zip(o_ids, seqs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = position_ids_from_mask(mask)
        # left-padded, every response ends at the last position: only the last `keep` positions' logits are needed
        # (the prompt's vocabulary-wide logits were most of the work)
        keep = max(resp) + 1
        lp = torch.log_softmax(policy(input_ids=ids, attention_mask=mask, position_ids=pos,
                                      logits_to_keep=keep).logits.float(), -1)
        lq = torch.log_softmax(reference(input_ids=ids, attention_mask=mask, position_ids=pos,
                                         logits_to_keep=keep).logits.float(), -1)
        # [B, keep]: KL of the next-token distribution after each position (>= 0; below it is rounding)
        kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)
        for i, n in enumerate(resp):
            if n:
                # the distributions that produced the response tokens: positions width-n-1 .. width-2, which are
                # kept positions keep-n-1 .. keep-2
                total += float(kl[i, keep - n - 1: keep - 1].sum())
                count += n
    return total / count if count else 0.0
