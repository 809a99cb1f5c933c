"""`harness runs`: a smoke grid's run folders in each state (running, finished, failed, stale lock), their steps,
last reward, true KL, latest win rate and wall time, as a table and as JSON."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from harness import grid
from harness.cli import main
from harness.results import ResultsStore, make_record
from trainers.runfolder import LOCK, RunFolder, RunLock

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, run_id: str, steps: int, done: int, checkpoint: int | None) -> None:
    folder.mkdir(parents=True)
    run = RunFolder(folder)
    run.write_config({"steps": steps, "regularizer": "kl"})
    run.write_facts({"run_id": run_id, "parameters": {"trainable": 1, "total": 2, "policy_trainable": 1,
                                                      "policy_total": 2}})
    for s in range(1, done + 1):
        run.append_metrics({"step": s, "objective/scores": 0.5 + s, "objective/true_kl": 0.01 * s, "time/step": 1800.0})
    if checkpoint:
        run.checkpoint_dir(checkpoint).mkdir(parents=True)
        (run.checkpoint_dir(checkpoint) / "state.json").write_text("{}")


def killed_holding_the_lock(folder: Path) -> None:
    """A real process that takes the run folder's lock and dies by SIGKILL."""
    code = f"from trainers.runfolder import RunLock; RunLock({str(folder)!r}).acquire(); print('held', flush=True); " \
           "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_smoke_grid_runs_and_their_states(tmp_path, capsys):
    g = grid.build_grid(("table2",), "smoke")
    ids = [r.run_id for r in g.runs]
    assert len(ids) >= 4
    runs = tmp_path / "runs"
    finished, running, failed, stale = (runs / "smoke" / i for i in ids[:4])
    fake_run(finished, ids[0], 6, 6, 6)
    fake_run(running, ids[1], 6, 2, 2)
    fake_run(failed, ids[2], 6, 3, 2)
    fake_run(stale, ids[3], 6, 4, 4)
    fake_run(runs / "smoke" / "elsewhere", "kl-lora-s9-000000000000", 6, 6, 6)  # not a run of table 2
    killed_holding_the_lock(stale)
    stopped = RunLock(failed)  # a run that stopped on an error released its lock: an empty lock file
    stopped.acquire()
    stopped.release()
    assert (failed / LOCK).read_text() == "" and (stale / LOCK).read_text().split()[0].isdigit()
    store = ResultsStore(tmp_path / "results")
    for step, rate in ((3, 40.0), (6, 62.5)):
        store.put(make_record(preset="smoke", run_id=ids[0], label={"regularizer": "kl", "lora": True, "seed": 1,
                                                                     "baseline": None}, step=step, evaluator="winrate",
                              metrics={"win_rate": rate, "n": 8}, judge={"name": "j", "model": "m", "version": "1"},
                              eval_set={"name": "e", "hash": "h", "n": 8}))
    holder = RunLock(running)
    holder.acquire()
    try:
        assert main(["runs", "--runs", str(runs), "--results", str(tmp_path / "results"), "--table", "2",
                     "--preset", "smoke", "--json"]) == 0
        rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
        assert main(["runs", "--runs", str(runs), "--results", str(tmp_path / "results"), "--preset", "smoke"]) == 0
        table = capsys.readouterr().out
    finally:
        holder.release()
    assert set(rows) == set(ids[:4])
    assert {i: rows[i]["state"] for i in ids[:4]} == {ids[0]: "finished", ids[1]: "running", ids[2]: "failed",
                                                      ids[3]: "stale lock"}
    first = rows[ids[0]]
    assert (first["steps_done"], first["steps_total"], first["reward"], first["true_kl"]) == (6, 6, 6.5, 0.06)
    assert (first["win_rate"], first["win_rate_step"], first["wall_time_s"]) == (62.5, 6, 10800.0)
    assert rows[ids[2]]["win_rate"] is None and rows[ids[2]]["steps_done"] == 3
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert set(lines) == {*ids[:4], "kl-lora-s9-000000000000"}
    assert lines[ids[0]].split()[1:] == ["finished", "6/6", "+6.500", "0.0600", "62.5", "(step", "6)", "3:00:00"]
    assert "stale lock" in lines[ids[3]] and " 4/6 " in lines[ids[3]]


def test_a_missing_runs_root_is_one_line(tmp_path, capsys):
    assert main(["runs", "--runs", str(tmp_path / "nope")]) == 2
    assert "--runs" in capsys.readouterr().err


def test_a_lock_is_cleared_on_release_and_held_while_taken(tmp_path):
    from trainers.runfolder import lock_state

    lock = RunLock(tmp_path)
    assert lock_state(tmp_path) == "free"
    lock.acquire()
    assert lock_state(tmp_path) == "held"
    lock.release()
    assert lock_state(tmp_path) == "free"
    assert (tmp_path / LOCK).read_text() == ""


def test_harness_runs_never_loads_torch(tmp_path):
    fake_run(tmp_path / "runs" / "a", "kl-lora-s1-aaaaaaaaaaaa", 2, 1, None)
    code = ("import sys; from harness.cli import main; main(['runs', '--runs', sys.argv[1], '--json']); "
            "print('torch loaded:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.rsplit("torch loaded", 1)[0])[0]["state"] == "failed"
    assert "torch loaded: False" in out.stdout
