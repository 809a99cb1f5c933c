"""KL coefficient controllers: fixed, or adaptive (Ziegler et al., 2019, as AlpacaFarm and TRL implement)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FixedKLController:
    """beta stays at its initial value."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        return None


@dataclass(slots=True)
class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon).

    KL is the batch mean of the per-sequence sum of k_t; n_steps the number of sequences seen.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kind: str, init: float, target: float, horizon: int):
    """The controller named `kind` ('fixed' or 'adaptive')."""
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"kl_controller={kind!r} is not known; valid: fixed, adaptive")
