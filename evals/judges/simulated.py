"""Registers `simulated`: the offline rubric judge of `evals.simulated` (MiniLM relevance, length, structure)."""

from __future__ import annotations

from dataclasses import dataclass

from evals.judges import register_judge


@dataclass(frozen=True, slots=True)
class SimulatedOptions:
    """The rubric has no settings: its weights are part of its version."""


def _build(options: SimulatedOptions, *, device: str, seed: int):
    from evals.simulated import SimulatedJudge

    return SimulatedJudge()


def _identity(options: SimulatedOptions) -> dict[str, str]:
    from evals.simulated import default_identity

    return default_identity()  # without loading the embedding model: a grid lists its records with no torch


register_judge("simulated", description="a documented rubric of what AlpacaFarm's annotators reward, over MiniLM "
               "relevance", options=SimulatedOptions, build=_build, offline=True,
               identity=_identity)
