"""The `model-wins` baseline judge: output_2, the model under evaluation, always wins.

It judges roles, not texts: asked with the outputs swapped it still picks output_2, so its order agreement is 0%
and it must be asked in the given order (`positional`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evals.judges import register_judge
from evals.judging import Judge, Pair


class ModelWinsJudge(Judge):
    name = "model-wins"
    model = "the model always wins"
    version = "roles-1"
    positional = True  # its answer means something only in the given order (output_2 is the model)

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        return [2.0] * len(pairs)


@dataclass(frozen=True, slots=True)
class ModelWinsOptions:
    """Roles need no settings."""


register_judge("model-wins", description="baseline: the evaluated model's output always wins",
               options=ModelWinsOptions, build=lambda options, *, device, seed: ModelWinsJudge(), offline=True,
               cheap=True)
