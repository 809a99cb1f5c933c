"""Rule rewards for sanity checks: `rule:NAME[:ARG...]`, scored on the decoded response text.

- `rule:count:TEXT`: number of occurrences of TEXT in the response (TEXT may contain ':').
- `rule:length:MIN:MAX`: 1 when the response has MIN..MAX tokens, else -(distance to the band) / MAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

RULES = ("count", "length")


@dataclass(frozen=True, slots=True)
class RuleReward:
    """A reward computed from response texts and token counts, no model involved."""

    spec: str
    fn: Callable[[list[str], Tensor], Tensor]

    def __call__(self, texts: list[str], lengths: Tensor) -> Tensor:
        return self.fn(texts, lengths).float()


def parse_rule(spec: str) -> RuleReward:
    """Parse `rule:NAME[:ARG...]`; bad input names the value and the allowed forms."""
    parts = spec.split(":")
    name = parts[1] if len(parts) > 1 else ""
    if name == "count" and len(parts) >= 3 and ":".join(parts[2:]):
        target = ":".join(parts[2:])
        return RuleReward(spec, lambda texts, lengths: torch.tensor([float(t.count(target)) for t in texts]))
    if name == "length" and len(parts) == 4:
        try:
            lo, hi = int(parts[2]), int(parts[3])
        except ValueError:
            lo, hi = -1, -1
        if 0 <= lo <= hi and hi > 0:
            def length_band(texts: list[str], lengths: Tensor) -> Tensor:
                n = lengths.float()
                distance = (lo - n).clamp(min=0) + (n - hi).clamp(min=0)
                return torch.where(distance == 0, torch.ones_like(n), -distance / hi)
            return RuleReward(spec, length_band)
    raise ValueError(
        f"reward={spec!r} is not a valid rule; allowed: 'rule:count:TEXT' (TEXT non-empty) or "
        "'rule:length:MIN:MAX' (integers, 0 <= MIN <= MAX, MAX > 0)"
    )
