"""The `longer` baseline judge: the longer output (in characters) wins; equal lengths tie.

It reads nothing but the outputs' lengths: what a judge must beat to be worth asking (alpaca-eval lists a
"longest" annotator for the same reason). Symmetric, so its order agreement is 100%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evals.judges import register_judge
from evals.judging import Judge, Pair


class LongerJudge(Judge):
    name = "longer"
    model = "the longer output wins"
    version = "chars-1"

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        return [2.0 if len(p.output_2) > len(p.output_1) else 1.0 if len(p.output_2) < len(p.output_1) else 1.5
                for p in pairs]


@dataclass(frozen=True, slots=True)
class LongerOptions:
    """Lengths need no settings."""


register_judge("longer", description="baseline: the longer output (in characters) wins", options=LongerOptions,
               build=lambda options, *, device, seed: LongerJudge(), offline=True, cheap=True)
