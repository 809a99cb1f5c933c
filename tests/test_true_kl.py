"""The evaluation's token-level true KL against a direct computation over every position's full logits."""

from __future__ import annotations

import torch

from evals.kl import true_kl
from trainers.models import load_causal_lm, load_tokenizer


def _direct_kl(policy, reference, tok, prompts, outputs) -> float:
    total, count = 0.0, 0
    for p, o in zip(prompts, outputs):
        p_ids = tok(p, add_special_tokens=True)["input_ids"]
        o_ids = tok(o, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + o_ids])
        lp = torch.log_softmax(policy(input_ids=ids).logits.float(), -1)[0]
        lq = torch.log_softmax(reference(input_ids=ids).logits.float(), -1)[0]
        for t in range(len(p_ids) - 1, len(p_ids) + len(o_ids) - 1):  # the distributions of the output tokens
            total += float((lp[t].exp() * (lp[t] - lq[t])).sum())
            count += 1
    return total / count


@torch.inference_mode()
def test_true_kl_reads_only_the_response_positions_and_matches_the_direct_sum():
    tok = load_tokenizer("tiny-random-llama")
    reference = load_causal_lm("tiny-random-llama", torch.float32)
    policy = load_causal_lm("tiny-random-llama", torch.float32)
    torch.manual_seed(0)
    for param in policy.parameters():
        param.add_(0.02 * torch.randn_like(param))
    # prompts and outputs of different lengths, so left padding and the kept window differ per row
    prompts = ["Name a colour.", "Write a much longer instruction about several things at once.", "Hi", "Count."]
    outputs = ["Blue.", "First, second and third.", "", "one two three four five six seven"]
    got = true_kl(policy, reference, tok, prompts, outputs, rows=3)
    want = _direct_kl(policy, reference, tok, prompts, outputs)
    assert want > 1e-4 and abs(got - want) < 1e-5 * max(1.0, want)
    assert true_kl(reference, reference, tok, prompts, outputs) == 0.0
