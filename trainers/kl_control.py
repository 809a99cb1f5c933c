"""KL coefficient controllers: fixed, or adaptive (Ziegler et al., 2019, as AlpacaFarm and TRL implement)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FixedKLController:
    """kl_coef stays at its initial value."""

    kl_coef: float

    def update(self, current_kl: float, n_steps: int) -> None:
        return None


@dataclass(slots=True)
class AdaptiveKLController:
    """kl_coef <- kl_coef * (1 + clip(KL / target_kl - 1, -0.2, 0.2) * n_steps / kl_horizon).

    KL is the batch mean of the per-sequence sum of k_t; n_steps the number of sequences seen.
    """

    kl_coef: float
    target_kl: float
    kl_horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.kl_horizon


def make_kl_controller(kl_controller: str, kl_coef: float, target_kl: float, kl_horizon: int):
    """The controller named `kl_controller` ('fixed' or 'adaptive'), starting at `kl_coef`."""
    if kl_controller == "fixed":
        return FixedKLController(kl_coef)
    if kl_controller == "adaptive":
        return AdaptiveKLController(kl_coef, target_kl, kl_horizon)
    raise ValueError(f"kl_controller={kl_controller!r} is not known; valid: fixed, adaptive")
