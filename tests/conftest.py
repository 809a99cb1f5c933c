"""Shared fixtures: a local prompt file and smoke configurations (no hub, no network)."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness import presets  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402

TOPICS = ["rivers", "bread", "chess", "volcanoes", "bicycles", "owls", "tea", "bridges", "comets", "maple trees"]


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.json"
    records = []
    for i, topic in enumerate(TOPICS * 3):
        extra = f"Keep it under {i + 5} words." if i % 3 == 0 else ""
        records.append({"instruction": f"Write one sentence about {topic}.", "input": extra,
                        "split": "unlabeled" if i % 5 else "val"})
    path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture
def smoke(prompt_file):
    """smoke(**overrides) -> TrainConfig: the smoke preset on the local prompt file."""

    def make(**overrides) -> TrainConfig:
        values = presets.preset("smoke")
        values.update(prompts=prompt_file, prompt_split="", query_len=256)
        values.update(overrides)
        return TrainConfig(**values)

    return make
