"""Model specs by name, without loading anything: the builtin models, the cache folder, `prepared:` reward models.

Kept free of torch so that planning a grid or naming a run's inputs never imports the training stack.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY = "tiny-random-llama"
SMOLLM2 = "smollm2-135m-instruct"
BUILTINS = (TINY, SMOLLM2)
PREPARED = "prepared:"
MODEL_CONFIG = "config.json"  # a Hugging Face model directory's architecture (a run folder's files: trainers.runfolder)


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def prepared_dir(name: str) -> Path:
    """Where `harness prepare --preset NAME` writes the proxy reward model (under $HARNESS_CACHE)."""
    return cache_dir() / "prepared" / name / "reward-model"


def resolve_reward_spec(spec: str) -> str:
    """`prepared:NAME` -> the prepared reward model's directory; other specs unchanged."""
    return str(prepared_dir(spec.removeprefix(PREPARED))) if spec.startswith(PREPARED) else spec
