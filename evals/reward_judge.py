"""A reward model used as a pairwise judge (AlpacaFarm's gold-versus-proxy setting).

Both outputs are scored by the reward model on the prompt they answer (same template as PPO); the preference is
the Bradley-Terry probability that output_2 is better:

    preference = 1 + sigmoid(r(x, o_2) - r(x, o_1))

so it is symmetric under swapping (p -> 3 - p) and 1.5 exactly when the two rewards are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from evals.judging import Judge, Pair
from trainers.data import format_prompt
from trainers.heads import load_reward_model, response_start, reward_backbone_spec
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
        eos = (self.tokenizer.eos_token or "") if self.reward.reads_eos else ""
        texts = [reward_text(p, o, eos) for p, o in zip(prompts, outputs)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_tokens, add_special_tokens=True)
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            last = torch.full((ids.size(0),), ids.size(1) - 1, device=self.device)  # left padding: last column
            first = (response_start(self.tokenizer, list(prompts[start:start + self.batch_size]), mask)
                     if self.reward.score_token == "response_mean" else None)
            scores.append(self.reward.score_at(ids, mask, position_ids_from_mask(mask), last, first).float().cpu())
        return torch.cat(scores)

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        prompts = [format_prompt({"instruction": p.instruction, "input": p.input}, self.template, self.tokenizer)
                   for p in pairs]
        r1 = self.rewards(prompts, [p.output_1 for p in pairs])
        r2 = self.rewards(prompts, [p.output_2 for p in pairs])
        return (1.0 + torch.sigmoid(r2 - r1)).tolist()
