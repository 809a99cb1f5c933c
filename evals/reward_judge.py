"""A reward model used as a pairwise judge (AlpacaFarm's gold-versus-proxy setting).

Both outputs are scored by the reward model on the prompt they answer (same template as PPO); the preference is
the Bradley-Terry probability that output_2 is better:

    preference = 1 + sigmoid(r(x, o_2) - r(x, o_1))

so it is symmetric under swapping (p -> 3 - p) and 1.5 exactly when the two rewards are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from evals.judging import Judge, Pair
from trainers.data import format_prompt
from trainers.heads import ScalarHeadModel, load_reward_model, response_start, reward_backbone_spec
from trainers.models import load_tokenizer
from trainers.sampling import position_ids_from_mask


def _fingerprint(spec: str) -> str:
    head = Path(spec).expanduser() / "scalar_head.safetensors"
    if head.is_file():
        return hashlib.sha256(head.read_bytes()).hexdigest()[:12]
    return "untrained-head" if spec.startswith("head:") else "?"


def reward_text(prompt: str, output: str, eos: str) -> str:
    """What a reward model reads: the prompt, the response as generated (decoded continuation), then `eos`: the
    EOS token for a model that reads its score there, "" for one that reads the response's last token (its
    `score_token`), as in PPO's rollouts."""
    return prompt + output + eos


@torch.inference_mode()
def read_states(reward: ScalarHeadModel, tokenizer, prompts: Sequence[str], outputs: Sequence[str], *,
                batch_size: int = 8, max_tokens: int = 1024, device: torch.device | str = "cpu",
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The hidden states `reward` reads for each prompt + response (+ EOS, where it reads one), [N, d] on the CPU:
    left-padded batches, the last column (the EOS or the response's last token), or the response's span for a
    model reading its mean. What the reward-model judge scores and what `harness prepare` fits its head on."""
    eos = (tokenizer.eos_token or "") if reward.reads_eos else ""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        texts = [reward_text(p, o, eos) for p, o in zip(batch, outputs[start:start + batch_size])]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", truncation=True,
                        max_length=max_tokens, add_special_tokens=True)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        last = torch.full((ids.size(0),), ids.size(1) - 1, device=ids.device)  # left padding: the last column
        first = response_start(tokenizer, batch, mask) if reward.score_token == "response_mean" else None
        out.append(reward.read_states(ids, mask, position_ids_from_mask(mask), last, first).float().cpu())
        if progress is not None:
            progress(start + len(batch), len(prompts))
    return torch.cat(out)


class RewardModelJudge(Judge):
    name = "reward-model"

    def __init__(self, spec: str, *, template: str = "alpaca", max_tokens: int = 1024, batch_size: int = 8,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.spec, self.template, self.max_tokens, self.batch_size = spec, template, max_tokens, batch_size
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(reward_backbone_spec(spec))
        self.tokenizer.padding_side = "left"
        self.reward = load_reward_model(spec, dtype, seed).to(self.device).eval()
        self.model = spec
        self.version = f"head {_fingerprint(spec)} template {template}"

    @torch.inference_mode()
    def rewards(self, prompts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        states = read_states(self.reward, self.tokenizer, prompts, outputs, batch_size=self.batch_size,
                             max_tokens=self.max_tokens, device=self.device)
        return self.reward.head(states.to(self.reward.head.weight.dtype)).squeeze(-1).float()

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        prompts = [format_prompt({"instruction": p.instruction, "input": p.input}, self.template, self.tokenizer)
                   for p in pairs]
        r1 = self.rewards(prompts, [p.output_1 for p in pairs])
        r2 = self.rewards(prompts, [p.output_2 for p in pairs])
        return (1.0 + torch.sigmoid(r2 - r1)).tolist()
