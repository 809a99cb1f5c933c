"""`--executor slurm` against a real single-node SLURM (munged, slurmctld, slurmd started here): the dry run's
requests, a smoke grid, a requeued job that resumes to the uninterrupted run's metrics, a restarted `reproduce`
that submits nothing twice, an interrupted one that cancels its jobs, and a node that cannot see a job's folders."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusters import MARKER, Output, Slurm, metrics, missing_slurm, records, wait_until
from harness.executors import Job, LocalExecutor

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def slurm():
    if (why := missing_slurm()) is not None:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM runs its daemons as root (SlurmUser=root): run the tests as root")
    pytest.importorskip("submitit", reason="pip install -e '.[slurm]' (submitit)")
    cluster = Slurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    """This process submits to the test cluster; its jobs run this checkout's code."""
    for key in ("SLURM_CONF", "PATH", MARKER):
        monkeypatch.setenv(key, slurm.env[key])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return dict(os.environ)


def reproduce_argv(tmp: Path, *extra: str) -> list[str]:
    return [PY, "-m", "harness", "reproduce", "--figure", "1", "--preset", "smoke", "--only", "kl",
            "--set", "threads=1", "--executor", "slurm", "--slurm-cpus", "1", "--no-report",
            "--runs", str(tmp / "runs"), "--results", str(tmp / "results"), *extra]


def reproduce(env: dict, tmp: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(reproduce_argv(tmp, *extra), cwd=ROOT, env=dict(env, HARNESS_CACHE=str(tmp / "cache")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_dry_run_prints_each_jobs_sbatch_request_at_paper_scale(tmp_path):
    out = subprocess.run([PY, "-m", "harness", "reproduce", "--table", "2", "--preset", "paper", "--executor",
                          "slurm", "--dry-run", "--slurm-partition", "gpu", "--slurm-account", "nlp",
                          "--slurm-time", "720", "--slurm-mem-gb", "64", "--slurm-option", "qos=high",
                          "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip().startswith("sbatch ")]
    train = [x for x in lines if "harness train" in x]
    lora, full = [x for x in train if "-lora-" in x], [x for x in train if "-full-" in x]
    assert len(lora) == 8 and len(full) == 1  # the paper's eight regularisers and the full fine-tune
    for line in lora:
        assert "--gpus-per-node=2 " in line and "--cpus-per-task=8 " in line and "2 processes (ddp_lora_2gpu)" in line
    assert "--gpus-per-node=8 " in full[0] and "8 processes (fsdp_full_8gpu)" in full[0]
    evals = [x for x in lines if "harness.eval_job" in x]
    assert len(evals) == 9 * 10 + 1 and all("--gpus-per-node=1 " in x for x in evals)  # 10 checkpoints each + SFT
    for flag in ("--partition=gpu", "--account=nlp", "--time=720", "--mem=65536M", "--qos=high", "--signal=USR2@120"):
        assert all(flag in x for x in lines), flag
    assert f"dry run, executor slurm: {len(lines)} jobs" in out.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results" / "records").exists()  # nothing started
    offline = subprocess.run([PY, "-m", "harness", "reproduce", "--figure", "1", "--preset", "smoke", "--executor",
                              "slurm", "--dry-run", "--runs", str(tmp_path / "r"), "--results", str(tmp_path / "s")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0 and "--gpus-per-node" not in offline.stdout and "sbatch " in offline.stdout
    bad = subprocess.run([PY, "-m", "harness", "reproduce", "--figure", "1", "--preset", "smoke", "--executor",
                          "slurm", "--dry-run", "--slurm-option", "qos"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "--slurm-option 'qos': expected NAME=VALUE, e.g. qos=high")


def test_smoke_grid_through_slurm(slurm, slurm_env, tmp_path):
    steps = ("--set", "steps=2", "--set", "checkpoint_every=2")
    dry = subprocess.run(reproduce_argv(tmp_path, *steps, "--dry-run"), cwd=ROOT, env=slurm_env,
                         capture_output=True, text=True, timeout=300)
    planned = [x.strip() for x in dry.stdout.splitlines() if x.strip().startswith("sbatch ")]
    assert len(planned) == 3, dry.stdout  # the run, its evaluation at step 2, the SFT baseline's
    before = set(slurm.jobs())
    run = Output(reproduce(slurm_env, tmp_path, *steps))
    assert run.finish() == 0, run.text()[-3000:]
    assert "complete" in run.text()
    got = sorted((r["label"]["regularizer"] or "sft", r["step"], r["evaluator"]) for r in records(tmp_path))
    assert got == [("kl", 2, "winrate"), ("sft", 0, "winrate")]
    jobs = {jid: j for jid, j in slurm.jobs().items() if jid not in before}
    names = sorted(j["name"] for j in jobs.values())
    assert len(names) == 3 and names[0].startswith("harness:eval:kl-lora-s1-") and names[1].startswith(
        "harness:eval:sft:") and names[2].startswith("harness:kl-lora-s1-"), names
    assert all(j["state"] == "COMPLETED" for j in jobs.values())
    # what slurmctld granted is what the dry run planned
    train_id = next(jid for jid, j in jobs.items() if j["name"] == names[2])
    shown = slurm.command("scontrol", "show", "job", train_id)
    assert "NumCPUs=1 " in shown and "TimeLimit=1-00:00:00" in shown and "Partition=debug" in shown
    assert any(f"--job-name={names[2]} " in x and "--cpus-per-task=1 " in x and "--time=1440 " in x for x in planned)
    # the logs are in the run folder: the command's and submitit's own
    folder = next((tmp_path / "runs" / "smoke").glob("kl-lora-s1-*"))
    assert f"(SLURM job {train_id}): " in (folder / "train.log").read_text()
    assert (folder / "slurm" / "train" / f"{train_id}_0_log.out").is_file()
    assert not (folder / "slurm" / "train" / "submitted.json").exists()  # finished jobs are forgotten


def test_requeued_job_resumes_and_ends_as_the_uninterrupted_run(slurm, slurm_env, tmp_path, prompt_file):
    from harness.slurm import SlurmExecutor, SlurmSettings

    def job(out: Path) -> Job:
        argv = (PY, "-m", "harness", "train", "--preset", "smoke", "--set", "steps=8", "--set", "checkpoint_every=1",
                "--set", "threads=1", "--set", f"prompts={prompt_file}", "--set", "prompt_split=unlabeled",
                "--out", str(out), "--resume")
        out.mkdir(parents=True)
        return Job("requeued", argv, str(out / "train.log"), env=(("OMP_NUM_THREADS", "1"),))

    assert LocalExecutor(retries=0).run([job(tmp_path / "plain")])["requeued"].status == "done"
    events, result = [], {}
    executor = SlurmExecutor(SlurmSettings(cpus=1), retries=0, on_event=lambda *e: events.append(e))
    run = tmp_path / "requeued"
    thread = threading.Thread(target=lambda: result.update(executor.run([job(run)])))
    thread.start()
    try:
        wait_until(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 2, 180, "two steps on SLURM")
        job_id = events[0][2]["slurm_job"]
        slurm.command("scontrol", "requeue", job_id)  # SIGTERM now; the job runs again from the start
    finally:
        thread.join(timeout=300)
    outcome = result["requeued"]
    log = (run / "train.log").read_text()
    assert outcome.status == "done" and outcome.attempts == 1, log[-3000:]  # a requeue is not a failed attempt
    assert f"(SLURM job {job_id}, restart 1): " in log and "resumed from" in log
    assert [k for k, _, _ in events] == ["start", "done"]
    assert metrics(run) == metrics(tmp_path / "plain")


def test_usr2_checkpoints_requeues_and_resumes(slurm, slurm_env, tmp_path, prompt_file):
    """Preemption and the time limit arrive as USR2: submitit calls `checkpoint`, which stops the command; the job
    is requeued and resumes."""
    from harness.slurm import SlurmExecutor, SlurmSettings

    run = tmp_path / "run"
    run.mkdir()
    # 24 steps: still running when the signal arrives, however fast this machine trains (6 could all finish first)
    argv = (PY, "-m", "harness", "train", "--preset", "smoke", "--set", "steps=24", "--set", "checkpoint_every=1",
            "--set", "threads=1", "--set", f"prompts={prompt_file}", "--set", "prompt_split=unlabeled",
            "--out", str(run), "--resume")
    events, result = [], {}
    executor = SlurmExecutor(SlurmSettings(cpus=1, time_min=60), retries=0, on_event=lambda *e: events.append(e))
    thread = threading.Thread(target=lambda: result.update(executor.run([Job("p", argv, str(run / "train.log"))])))
    thread.start()
    try:
        # a complete checkpoint, not only a logged step: a signal between the two would leave nothing to resume
        wait_until(lambda: any((run / "checkpoints").glob("step-*")), 180, "a checkpoint on SLURM")
        slurm.command("scancel", "--signal=USR2", events[0][2]["slurm_job"])
    finally:
        thread.join(timeout=300)
    log = (run / "train.log").read_text()
    assert result["p"].status == "done" and result["p"].attempts == 1, log[-3000:]
    assert ", restart 1): " in log and "resumed from" in log
    assert [r["step"] for r in metrics(run)] == list(range(1, 25))


def test_restarted_reproduce_submits_nothing_twice_and_an_interrupted_one_cancels(slurm, slurm_env, tmp_path):
    steps = ("--set", "steps=24", "--set", "checkpoint_every=3")
    first = Output(reproduce(slurm_env, tmp_path, *steps))
    first.wait_for(r"\[train\] start kl-lora-s1-")
    name = re.search(r"\[train\] start (kl-lora-s1-\S+)", first.text()).group(1)
    folder = tmp_path / "runs" / "smoke" / name
    wait_until(lambda: (folder / "metrics.jsonl").is_file(), 180, "the first step")
    ours = lambda: {jid: j for jid, j in slurm.jobs().items() if j["name"] == f"harness:{name}"}  # noqa: E731
    slurm.command("scontrol", "suspend", *ours())  # with 24 steps to go: still running however fast this machine is
    first.proc.kill()  # no chance to cancel: its job goes on
    first.finish()
    assert [j["state"] for j in ours().values()] == ["SUSPENDED"]

    second = Output(reproduce(slurm_env, tmp_path, *steps))
    second.wait_for(r"\[train\] start kl-lora-s1-")
    time.sleep(2)
    assert len(ours()) == 1  # it waits on the job already running instead of submitting another
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish() == 128 + signal.SIGTERM
    wait_until(lambda: [j["state"] for j in ours().values()] == ["CANCELLED"], 60, "the job cancelled")
    assert not (folder / "slurm" / "train" / "submitted.json").exists()
    checkpointed = any((folder / "checkpoints").glob("step-*"))

    third = Output(reproduce(slurm_env, tmp_path, *steps))
    assert third.finish() == 0, third.text()[-3000:]
    assert len(ours()) == 2 and ("resumed from" in (folder / "train.log").read_text()) == checkpointed
    assert [r["step"] for r in metrics(folder)] == list(range(1, 25))


def test_a_node_that_cannot_see_the_results_fails_at_once_naming_it(slurm, slurm_env, tmp_path):
    from harness.slurm import SlurmExecutor, SlurmSettings

    hidden = tmp_path / "only-on-the-submitter" / "results"
    job = Job("blind", (PY, "-c", f"open({str(hidden / 'x')!r}, 'w')"), str(tmp_path / "run" / "eval.log"),
              shared=(str(hidden),))
    outcome = SlurmExecutor(SlurmSettings(cpus=1), retries=0).run([job])["blind"]
    assert outcome.status == "failed" and outcome.returncode == 2 and outcome.seconds < 30
    assert re.fullmatch(rf"harness executor: {re.escape(str(hidden))} is not visible on node \S+: run folders and "
                        r"the results store must be on storage every node sees \(a shared file system\)",
                        outcome.log_tail)
    assert not hidden.exists()


def test_a_failed_job_is_resubmitted_as_the_local_executor_retries(slurm, slurm_env, tmp_path):
    from harness.slurm import SlurmExecutor, SlurmSettings

    counter = tmp_path / "counter"
    flaky = (f"import os, sys; p = {str(counter)!r}; n = int(open(p).read()) if os.path.exists(p) else 0; "
             "open(p, 'w').write(str(n + 1)); print('run', n + 1); sys.exit(1 if n < 1 else 0)")
    jobs = [Job("flaky", (PY, "-c", flaky), str(tmp_path / "flaky" / "run.log")),
            Job("bad", (PY, "-c", "import sys; print('loss is nan'); sys.exit(3)"), str(tmp_path / "bad" / "run.log"))]
    events = []
    outcomes = SlurmExecutor(SlurmSettings(cpus=1), retries=1, on_event=lambda *e: events.append(e)).run(jobs)
    assert (outcomes["flaky"].status, outcomes["flaky"].attempts, outcomes["flaky"].returncode) == ("done", 2, 0)
    assert (outcomes["bad"].status, outcomes["bad"].attempts, outcomes["bad"].returncode) == ("failed", 2, 3)
    assert outcomes["bad"].log_tail.startswith("===== harness executor: bad attempt 2/2 at ")
    assert outcomes["bad"].log_tail.endswith("\nloss is nan")
    assert [k for k, r, _ in events if r == "flaky"] == ["start", "retry", "start", "done"]
    slurm_jobs = [info["slurm_job"] for k, r, info in events if r == "flaky" and k == "start"]
    assert len(set(slurm_jobs)) == 2  # each attempt its own SLURM job
    log = (tmp_path / "flaky" / "run.log").read_text()
    assert "attempt 1/2" in log and "attempt 2/2" in log and "run 2" in log
