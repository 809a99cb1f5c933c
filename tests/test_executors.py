"""Executors run commands: parallel workers, retries with log headers and tails, no orphans when the orchestrator
is interrupted, and the same jobs on a local Ray instance."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.executors import (Job, LocalExecutor, RayExecutor, launch_argv, make_executor,
                               shipped_accelerate_configs)

PY = sys.executable


def py_job(run_id: str, tmp: Path, code: str, **kw) -> Job:
    return Job(run_id, (PY, "-c", textwrap.dedent(code)), str(tmp / "logs" / f"{run_id}.log"), **kw)


def writes(tmp: Path, name: str) -> str:
    return f"open({str(tmp / name)!r}, 'w').write('ok'); print('wrote {name}')"


def fails_twice(tmp: Path) -> str:
    """Exits 1 on its first two runs (a counter file), then 0."""
    counter = str(tmp / "counter")
    return f"""
        import os, sys
        n = int(open({counter!r}).read()) if os.path.exists({counter!r}) else 0
        open({counter!r}, "w").write(str(n + 1))
        print("run", n + 1)
        sys.exit(1 if n < 2 else 0)
    """


ALWAYS_FAILS = "import sys; print('loss is nan at step 7', file=sys.stderr); sys.exit(3)"


class Events(list):
    def __call__(self, kind, run_id, info):
        self.append((kind, run_id, info))

    def kinds(self, run_id):
        return [k for k, r, _ in self if r == run_id]


def check_outcomes(outcomes, tmp, events):
    assert outcomes["writer"].status == "done" and outcomes["writer"].attempts == 1
    assert (tmp / "made").read_text() == "ok" and "wrote made" in outcomes["writer"].log_tail
    flaky = outcomes["flaky"]
    assert (flaky.status, flaky.attempts, flaky.returncode) == ("done", 3, 0)
    log = (tmp / "logs" / "flaky.log").read_text()
    assert [f"attempt {i}/3" in log for i in (1, 2, 3)] == [True] * 3 and "run 3" in log
    assert events.kinds("flaky") == ["start", "retry", "start", "retry", "start", "done"]
    bad = outcomes["bad"]
    assert (bad.status, bad.attempts, bad.returncode) == ("failed", 3, 3)
    assert bad.log_tail.startswith("===== harness executor: bad attempt 3/3")  # the last attempt's lines
    assert bad.log_tail.endswith("\nloss is nan at step 7") and bad.log_tail.count("\nloss is nan") == 1
    assert events.kinds("bad")[-1] == "failed" and events[-1][2]["attempts"] in (1, 3)


# ---- local -------------------------------------------------------------------------------------------------
def test_local_runs_jobs_in_parallel_retries_and_reports_tails(tmp_path):
    # each of the pair waits for the other's file: they can only finish if they run at the same time
    meet = """
        import os, sys, time
        open({me!r}, "w").close()
        deadline = time.time() + 30
        while not os.path.exists({other!r}):
            if time.time() > deadline: sys.exit("never met")
            time.sleep(0.05)
    """
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    events = Events()
    jobs = [py_job("left", tmp_path, meet.format(me=a, other=b)), py_job("right", tmp_path, meet.format(me=b, other=a)),
            py_job("writer", tmp_path, writes(tmp_path, "made")), py_job("flaky", tmp_path, fails_twice(tmp_path)),
            py_job("bad", tmp_path, ALWAYS_FAILS)]
    outcomes = LocalExecutor(workers=2, retries=2, on_event=events).run(jobs)
    assert list(outcomes) == ["left", "right", "writer", "flaky", "bad"]
    assert outcomes["left"].status == outcomes["right"].status == "done"
    check_outcomes(outcomes, tmp_path, events)
    assert events[0][0] == "start" and events[0][2]["command"][:2] == [PY, "-c"]


def test_a_missing_program_is_a_failed_job_not_a_crash(tmp_path):
    job = Job("ghost", ("/no/such/program", "--flag"), str(tmp_path / "ghost.log"))
    outcome = LocalExecutor(retries=1).run([job])["ghost"]
    assert (outcome.status, outcome.attempts, outcome.returncode) == ("failed", 2, 127)
    assert "could not start '/no/such/program'" in outcome.log_tail


SLEEPER = """
import os, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "60"])
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {grandchild.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""  # a job with a grandchild, both in the job's process group; their pids written to argv[1]

ORCHESTRATOR = f"""
import sys
from harness.executors import Job, LocalExecutor
LocalExecutor().run([Job("sleeper", (sys.executable, "-c", {SLEEPER!r}, sys.argv[1]), sys.argv[2])])
"""


def as_from_a_terminal() -> None:
    """Ctrl-C's default for the orchestrator: a suite started in the background (`cmd &` in a script) runs with
    SIGINT ignored, and children inherit that, so Python would never raise KeyboardInterrupt in them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def assert_ended(pids: Path, seconds: float = 60) -> None:  # bounds, not targets: a loaded 2-core machine is slow
    child, grandchild = map(int, pids.read_text().split())
    deadline = time.time() + seconds
    while (alive(child) or alive(grandchild)) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child) and not alive(grandchild)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupting_the_orchestrator_leaves_no_child_alive(tmp_path, sig):
    script, pids = tmp_path / "orchestrate.py", tmp_path / "pids"
    script.write_text(ORCHESTRATOR)
    orchestrator = subprocess.Popen([PY, str(script), str(pids), str(tmp_path / "sleeper.log")],
                                    stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    deadline = time.time() + 60
    while not pids.exists():
        assert orchestrator.poll() is None, orchestrator.stderr.read()
        assert time.time() < deadline, "the job never started"
        time.sleep(0.05)
    child, grandchild = map(int, pids.read_text().split())
    assert alive(child) and alive(grandchild)
    orchestrator.send_signal(sig)
    code = orchestrator.wait(timeout=120)
    # SIGTERM: exit status 128 + 15; SIGINT: the KeyboardInterrupt propagates, Python then dies of SIGINT
    assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGINT), orchestrator.stderr.read()
    assert_ended(pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_orchestrator_takes_its_jobs_with_it(tmp_path):
    """SIGKILL gives the orchestrator no chance to stop its jobs: each job must end by itself, or it would go on
    writing (and locking) a run folder that the next `reproduce` needs."""
    script, pids = tmp_path / "orchestrate.py", tmp_path / "pids"
    script.write_text(ORCHESTRATOR)
    orchestrator = subprocess.Popen([PY, str(script), str(pids), str(tmp_path / "sleeper.log")],
                                    stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    wait_for(pids)
    child = int(pids.read_text().split()[0])
    assert alive(child)
    orchestrator.kill()
    orchestrator.wait(timeout=120)
    deadline = time.time() + 60
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


# ---- commands, names, validation ---------------------------------------------------------------------------
def test_multi_process_jobs_are_wrapped_in_accelerate_launch(tmp_path):
    assert {"cpu_gloo_2proc", "ddp_lora_2gpu", "fsdp_full_8gpu"} <= set(shipped_accelerate_configs())
    module = Job("m", (PY, "-m", "harness", "train", "--out", "r"), "log", processes=4, gpus=4)
    argv = launch_argv(module, port=1234)
    assert argv[:3] == [PY, "-m", "accelerate.commands.launch"] and argv[4].endswith("ddp_lora_2gpu.yaml")
    assert argv[5:9] == ["--num_processes", "4", "--main_process_port", "1234"]
    assert argv[9:] == ["-m", "harness", "train", "--out", "r"]
    script = Job("s", (PY, "train.py", "--x"), "log", processes=2, accelerate_config="fsdp_full_8gpu")
    wrapped = launch_argv(script, port=1)
    assert wrapped[4].endswith("fsdp_full_8gpu.yaml") and wrapped[-2:] == ["train.py", "--x"]
    shell = launch_argv(Job("b", ("bash", "run.sh"), "log", processes=2), port=1)
    assert shell[0] == PY and shell[-3:] == ["--no_python", "bash", "run.sh"]
    assert launch_argv(Job("one", ("echo", "hi"), "log")) == ["echo", "hi"]
    with pytest.raises(ValueError, match="accelerate_config='nope' is neither a shipped config .*cpu_gloo_2proc"):
        Job("x", ("echo",), "log", processes=2, accelerate_config="nope")
    with pytest.raises(ValueError, match="processes=0"):
        Job("x", ("echo",), "log", processes=0)
    with pytest.raises(ValueError, match="executor='slurm' is not known; valid: local, ray"):
        make_executor("slurm")  # harness.slurm.SlurmExecutor: imported only where chosen
    assert isinstance(make_executor("local", workers=3), LocalExecutor)
    with pytest.raises(ValueError, match="duplicate run_id"):
        LocalExecutor().run([Job("d", ("true",), str(tmp_path / "1")), Job("d", ("true",), str(tmp_path / "2"))])


# ---- Ray ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_runs_retries_and_reports_as_runs_finish(tmp_path, local_ray):
    events = Events()
    jobs = [py_job("writer", tmp_path, writes(tmp_path, "made")), py_job("flaky", tmp_path, fails_twice(tmp_path)),
            py_job("bad", tmp_path, ALWAYS_FAILS)]
    executor = RayExecutor(retries=2, on_event=events)
    outcomes = executor.run(jobs)
    assert list(outcomes) == ["writer", "flaky", "bad"]
    check_outcomes(outcomes, tmp_path, events)
    assert not executor._started_ray  # it used the running instance
    assert json.loads(json.dumps([e[:2] for e in events]))  # events are plain data


def test_ray_interruption_terminates_running_attempts(tmp_path, local_ray):
    pids = tmp_path / "pids"

    def interrupt_once_running(kind, run_id, info):
        if kind == "start":
            wait_for(pids)
            raise KeyboardInterrupt  # as Ctrl-C in the orchestrator's loop

    job = Job("sleeper", (PY, "-c", SLEEPER, str(pids)), str(tmp_path / "sleeper.log"))
    with pytest.raises(KeyboardInterrupt):
        RayExecutor(on_event=interrupt_once_running).run([job])
    assert_ended(pids)


def test_a_ray_node_that_cannot_see_a_jobs_folder_fails_at_once_naming_it(tmp_path, local_ray):
    hidden = tmp_path / "not-shared" / "results"
    job = Job("blind", (PY, "-c", f"open({str(hidden / 'x')!r}, 'w')"), str(tmp_path / "logs" / "blind.log"),
              shared=(str(hidden),))
    outcome = RayExecutor(retries=0).run([job])["blind"]
    assert (outcome.status, outcome.returncode) == ("failed", 2)
    assert re.fullmatch(rf"harness executor: {re.escape(str(hidden))} is not visible on node \S+ \(ray node "
                        r"[0-9a-f]+\): run folders and the results store must be on storage every node sees "
                        r"\(a shared file system\)", outcome.log_tail)
    assert not hidden.exists() and not (tmp_path / "logs" / "blind.log").exists()  # nothing written on the node
