"""How outputs are generated for an evaluation: validated settings, named without loading torch (a record's id
includes them, and a grid lists its records without a model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    max_new_tokens: int = 300
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    seed: int = 0
    max_prompt_tokens: int = 1024

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def mode(self) -> str:
        return "greedy" if self.temperature == 0 else f"temp={self.temperature},top_p={self.top_p}"
