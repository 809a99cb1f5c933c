"""The memory planner: parameter counts from configs, predictions against measured peaks, the paper's layouts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import presets
from trainers import memory_plan as mp
from trainers import models

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results" / "ppo_modes-tiny.json"
LLAMA = mp.Dims.from_config(mp.KNOWN["llama-7b"])


def test_parameter_counts_from_configs():
    tiny = models.tiny_random_llama()
    assert mp.dims("tiny-random-llama").params == sum(p.numel() for p in tiny.parameters())
    assert mp.dims("smollm2-135m-instruct").params == 134_515_008
    assert LLAMA.params == 6_738_415_616 + 2 * 4096  # LLaMA-7B plus AlpacaFarm's pad row


@pytest.mark.skipif(not RESULTS.is_file(), reason="benchmarks/results/ppo_modes-tiny.json not present")
def test_predictions_match_the_measured_tiny_peaks_within_15_percent():
    from benchmarks.ppo_modes import MODES

    rows = json.loads(RESULTS.read_text())["rows"]
    assert {row["mode"] for row in rows} == set(MODES)  # every mode the benchmark runs, one-base mode included
    for row in rows:
        cfg = presets.resolve("tiny", None, MODES[row["mode"]] + ["stop_at_eos=false"]).train
        predicted = mp.plan(cfg, frozen_dtype=row["frozen_dtype"], query_tokens=100).total
        assert predicted == pytest.approx(row["peak_memory_bytes"], rel=0.15), row["mode"]


def test_the_papers_layouts():
    paper = dict(policy_dims=LLAMA, reward_dims=LLAMA)
    lora = presets.resolve("paper", None, ["lora=true", "reference=copy"]).train
    gpu = 80 * mp.GIB
    # the paper's code keeps fp32 frozen copies: LoRA needs 2 A100-80GB, as the paper reports
    assert not mp.plan(lora, gpus=1, device_bytes=gpu, frozen_dtype="float32", **paper).fits
    assert mp.plan(lora, gpus=2, device_bytes=gpu, frozen_dtype="float32", **paper).fits
    full = presets.resolve("paper", None, ["lora=false", "reference=copy"]).train
    assert not mp.plan(full, gpus=2, device_bytes=gpu, **paper).fits
    assert mp.plan(full, gpus=8, device_bytes=gpu, **paper).fits
    assert mp.smallest_fitting(full, gpu, **paper) > mp.smallest_fitting(lora, gpu, **paper)
    shared = presets.resolve("paper", None, ["lora=true", "reference=shared"]).train
    assert mp.plan(shared, gpus=1, **paper).total < mp.plan(lora, gpus=1, **paper).total


def test_plan_cli():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "--preset", "paper", "--gpus", "8", "--full"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "LLaMA-7B" in out.stdout and "fits" in out.stdout and "smallest fitting layout" in out.stdout
