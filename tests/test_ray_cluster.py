"""`--executor ray --ray-address` against a Ray cluster of separate processes started here (`ray start --head` and a
`ray start --address` worker node with a custom resource): a smoke grid's jobs run on both nodes, the worker node is
killed mid-run, and the run it held is retried on the head and ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clusters import Output, RayCluster, metrics, records, wait_until

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip("ray")
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_smoke_grid_on_two_ray_nodes_survives_a_killed_worker(ray_cluster, tmp_path):
    head, worker = ray_cluster.node_id("head"), ray_cluster.node_id("worker")
    runs = tmp_path / "runs" / "smoke"
    # Table 1: the LoRA kl run and the full fine-tune, two training jobs (their records read from the run folders)
    cmd = [PY, "-m", "harness", "reproduce", "--table", "1", "--preset", "smoke",
           "--set", "steps=6", "--set", "checkpoint_every=3", "--set", "threads=1", "--executor", "ray",
           "--ray-address", ray_cluster.address, "--no-report", "--runs", str(tmp_path / "runs"),
           "--results", str(tmp_path / "results")]
    run = Output(subprocess.Popen(cmd, cwd=ROOT, env=dict(ray_cluster.env, HARNESS_CACHE=str(tmp_path / "cache")),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    def past_a_checkpoint_on_the_worker():
        for folder in runs.glob("kl-*-s1-*"):
            log = folder / "train.log"
            if log.is_file() and f"(ray node {worker})" in log.read_text() and (folder / "metrics.jsonl").is_file() \
                    and 4 <= len(metrics(folder)) < 6:
                return folder
        return None

    try:
        folder = wait_until(past_a_checkpoint_on_the_worker, 300, "a run past step 3 on the worker node")
        assert ray_cluster.kill_node("worker")  # the node's raylet, its Ray workers and the run they held
    except BaseException:
        run.proc.kill()
        raise
    assert run.finish() == 0, run.text()[-3000:]
    got = sorted((r["label"]["lora"], r["step"], r["evaluator"]) for r in records(tmp_path))
    assert got == [(False, 6, "efficiency"), (True, 6, "efficiency")]
    headers = {folder.name: re.findall(r"attempt (\d)/2 at [-\d: ]+ on \S+ \(ray node ([0-9a-f]+)\)",
                                       (folder / "train.log").read_text()) for folder in runs.glob("kl-*-s1-*")}
    killed = headers.pop(folder.name)
    assert killed == [("1", worker), ("2", head)]  # retried on the node still alive
    assert list(headers.values()) == [[("1", head)]]  # the other run ran on the head
    assert "resumed from" in (folder / "train.log").read_text()
    # the retried run ends exactly as one that was never interrupted
    plain = tmp_path / "plain"
    done = subprocess.run([PY, "-m", "harness", "train", "--config", str(folder / "grid-config.json"), "--out",
                           str(plain)], cwd=ROOT, env=ray_cluster.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert metrics(folder) == metrics(plain)
    assert json.loads((folder / "grid-config.json").read_text())["steps"] == 6
