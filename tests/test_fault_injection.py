"""`harness train` killed with SIGKILL at random points (while logging, checkpointing or starting up), then rerun
with --resume: the metrics equal an uninterrupted run's, step for step (timings and memory aside)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS, EVERY = 6, 2
VOLATILE = ("time/", "memory/")


def command(out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "harness", "train", "--preset", "smoke", "--set", f"steps={STEPS}",
            "--set", f"checkpoint_every={EVERY}", "--set", "threads=1", "--out", str(out)] + (["--resume"] * resume)


ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def stable(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def logged(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("full") / "run"
    done = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return stable(out)


# seed 1: killed in step 2, before the first checkpoint; 2: during start-up; 5: around the step-4 checkpoint
@pytest.mark.parametrize("seed", [1, 2, 5])
def test_a_killed_run_resumes_to_the_uninterrupted_metrics(uninterrupted, tmp_path, seed):
    rng = random.Random(seed)
    after_lines = rng.randint(0, STEPS - 1)  # 0: anywhere in start-up or the first step
    delay = rng.uniform(0.0, 0.6)  # lands in the step, its checkpoint, or the next step's rollout
    out = tmp_path / "run"
    proc = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and logged(out) < after_lines and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay if after_lines else 3.0 + 3 * delay)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = subprocess.run(command(out, resume=True), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert stable(out) == uninterrupted, f"killed after {after_lines} lines + {delay:.2f} s"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == \
        [f"step-{s:06d}" for s in range(EVERY, STEPS + 1, EVERY)]


def test_a_second_train_on_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(command(out)[:-2] + ["--set", "steps=60", "--out", str(out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while logged(out) < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command(out, resume=True), env=ENV, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second started"
    finally:
        first.kill()
        first.wait(timeout=60)
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert second.returncode == 2 and len(lines) == 1 and f"run folder {out} is in use" in lines[0], second.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step logged twice
