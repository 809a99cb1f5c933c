"""`harness reproduce` end to end at the smoke preset: killed mid-grid with a real signal, rerun to completion."""

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

ROOT = Path(__file__).resolve().parents[1]


def _reproduce(tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, HARNESS_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "harness", "reproduce", "--figure", "1", "--preset", "smoke",
           "--set", "steps=2", "--set", "checkpoint_every=2", "--set", "threads=1",
           "--runs", str(tmp / "runs"), "--results", str(tmp / "results"), "--report", str(tmp / "report")]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _harness_records(tmp: Path) -> dict[str, bytes]:
    folder = tmp / "results" / "records"
    out = {}
    for p in sorted(folder.glob("*.json")) if folder.exists() else ():
        if json.loads(p.read_text())["source"] == "harness":
            out[p.name] = p.read_bytes()
    return out


def test_killed_reproduce_resumes_without_redoing_or_corrupting(tmp_path):
    proc = _reproduce(tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and not _harness_records(tmp_path):
        if proc.poll() is not None:
            pytest.fail(f"reproduce ended before it was killed:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)  # the orchestrator and every job it started
    proc.wait(timeout=60)
    before = _harness_records(tmp_path)
    assert before, "no record was written before the kill"
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("state.json")}
    assert len(checkpoints) == 4  # every run finished training before the first evaluation record

    second = _reproduce(tmp_path)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    after = _harness_records(tmp_path)
    # finished work is neither redone nor rewritten: same bytes, same checkpoints
    assert {k: after[k] for k in before} == before
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    # the grid is complete: 3 LoRA regularisers + the full fine-tune at step 2, and the SFT baseline
    recs = [json.loads(v) for v in after.values()]
    assert sorted((r["label"]["regularizer"] or "sft", r["step"]) for r in recs) == \
        [("jensen_shannon", 2), ("kl", 2), ("kl", 2), ("none", 2), ("sft", 0)]
    for name in ("table2.md", "figure1.png", "figure1.pdf", "figure2.png", "summary.md"):
        assert (tmp_path / "report" / name).stat().st_size > 500, name
    assert "complete" in out


def _outcome(tmp: Path) -> tuple[dict, dict]:
    """What a finished grid produced, timings aside: its records' results and its runs' metrics."""
    records = {}
    for rec in map(json.loads, _harness_records(tmp).values()):
        records[(rec["run_id"], rec["step"], rec["evaluator"])] = (rec["metrics"], rec["per_item"])
    metrics = {}
    for log in (tmp / "runs").rglob("metrics.jsonl"):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        metrics[log.parent.name] = [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))}
                                    for r in rows]
    return records, metrics


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    started = time.time()
    out, _ = _reproduce(tmp).communicate(timeout=900)
    assert "complete" in out, out[-3000:]
    return _outcome(tmp), time.time() - started


@pytest.mark.parametrize("seed", [3, 8])
def test_reproduce_killed_at_a_random_moment_ends_as_an_uninterrupted_run(tmp_path, uninterrupted, seed):
    (want_records, want_metrics), duration = uninterrupted
    proc = _reproduce(tmp_path)
    try:
        proc.wait(timeout=random.Random(seed).uniform(0.1, 0.8) * duration)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the orchestrator and every job at once
        proc.wait(timeout=60)
    rerun = _reproduce(tmp_path)
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out[-3000:]
    records, metrics = _outcome(tmp_path)
    assert records == want_records
    assert metrics == want_metrics
