"""`harness reproduce` on a fresh clone: it evaluates what it trains. A run's id names its reward model by content,
so records made with another reward model are never shown as this run's; records of the very same run are reused,
and the command says so and how to recompute them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from trainers import models
from trainers.heads import ScalarHeadModel, new_head, save_reward_model

ROOT = Path(__file__).resolve().parents[1]


def _reward_dir(path: Path, seed: int) -> None:
    backbone = models.tiny_random_llama().model.float()
    model = ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=seed))
    save_reward_model(model, models.load_tokenizer(models.TINY), path)


def _reproduce(tmp: Path, runs: str, *extra: str) -> str:
    env = dict(os.environ, HARNESS_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "harness", "reproduce", "--figure", "1", "--preset", "smoke",
           "--set", "steps=2", "--set", "checkpoint_every=2", "--set", "threads=1",
           "--set", f"reward={tmp / 'rm'}", "--runs", str(tmp / runs), "--results", str(tmp / "results"),
           "--no-report", *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def _records(tmp: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((tmp / "results" / "records").glob("*.json")):
        rec = json.loads(p.read_text())
        if rec["source"] == "harness":
            out[p.name] = rec
    return out


def test_fresh_clone_reuses_only_its_own_records_and_retrains_for_a_new_reward_model(tmp_path):
    _reward_dir(tmp_path / "rm", seed=1)
    _reproduce(tmp_path, "runs-a")
    first = _records(tmp_path)
    first_runs = {r["run_id"] for r in first.values() if not r["run_id"].startswith("sft:")}
    assert len(first_runs) == 4  # kl, none, jensen_shannon LoRA + the full fine-tune
    manifests = lambda: {p.parent.name: json.loads(p.read_text())  # noqa: E731
                         for p in (tmp_path / "results" / "runs").glob("*/manifest.json")}
    trained_by = manifests()
    assert set(trained_by) == first_runs and all("runs-a" in m["command"] for m in trained_by.values())
    assert {p.parent.name for p in (tmp_path / "results" / "runs").glob("*/curves.json")} == first_runs

    # another clone, same inputs: the same ids, so the records are this run's; nothing is trained, and it says so
    out = _reproduce(tmp_path, "runs-b")
    assert not (tmp_path / "runs-b" / "smoke").exists() or not any(
        p.name != "eval-logs" for p in (tmp_path / "runs-b" / "smoke").iterdir())
    for rid in first_runs:
        assert f"reusing the records of {rid}" in out and "--recompute" in out
    assert _records(tmp_path) == first
    assert manifests() == trained_by  # who trained a run stays on record when a later reproduce only reads it

    # a clone whose reward model came out different: new ids, trained and evaluated here
    shutil.rmtree(tmp_path / "rm")
    _reward_dir(tmp_path / "rm", seed=2)
    out = _reproduce(tmp_path, "runs-c")
    assert "reusing the records of" not in out
    after = _records(tmp_path)
    new_runs = {r["run_id"] for r in after.values() if not r["run_id"].startswith("sft:")} - first_runs
    assert len(new_runs) == 4 and not new_runs & first_runs
    assert {p.name for p in (tmp_path / "runs-c" / "smoke").iterdir()} >= new_runs
