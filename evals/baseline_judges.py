"""Baseline judges that read nothing but the outputs' lengths or roles: what a judge must beat to be worth asking.

- `longer`: the longer output (in characters) wins; equal lengths tie. Symmetric (order agreement 100%).
- `model-wins`: output_2, the model under evaluation, always wins. It judges roles, not texts: asked with the
  outputs swapped it still picks output_2, so its order agreement is 0% and it must be asked in the given order.

alpaca-eval lists a "longest" annotator among its evaluators for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from evals.judging import Judge, Pair


class LongerJudge(Judge):
    name = "longer"
    model = "the longer output wins"
    version = "chars-1"

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        return [2.0 if len(p.output_2) > len(p.output_1) else 1.0 if len(p.output_2) < len(p.output_1) else 1.5
                for p in pairs]


class ModelWinsJudge(Judge):
    name = "model-wins"
    model = "the model always wins"
    version = "roles-1"
    positional = True  # its answer means something only in the given order (output_2 is the model)

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        return [2.0] * len(pairs)
