"""Executors: run a grid's jobs as commands (never as functions), so a crash never takes the orchestrator down.

A `Job` is an argv (typically `python -m harness train --config C --out RUN --resume`) plus its log file and
resources. Every attempt appends to the job's log after a header line; a non-zero exit is retried up to
`retries` times with the same argv (its `--resume` continues from the last checkpoint), then reported failed
with the log's tail. `processes > 1` launches the command through `accelerate launch` with a shipped config
(`harness/accelerate/*.yaml`) and a free rendezvous port per attempt, so that several multi-process jobs can
share a host.

- `LocalExecutor(workers, retries)`: one subprocess per job, up to `workers` at a time, each in its own
  process group; Ctrl-C / SIGTERM of the orchestrator terminates every group before it returns.
- `RayExecutor(address, retries)`: each attempt is a Ray task (`num_cpus=job.cpus, num_gpus=job.gpus`) that runs
  the same subprocess and returns (returncode, seconds, tail); results are gathered with `ray.wait`, so events
  arrive as runs finish. A task whose node dies is a failed attempt, retried on a node still alive.
- `harness.slurm.SlurmExecutor`: each attempt a SLURM job submitted through submitit.

On a cluster (Ray or SLURM), nodes need this package installed, and the job's log folder and `job.shared` on storage
every node sees: a remote attempt checks that they exist before it starts and fails at once with one line naming
the path and the node, instead of creating them on the node's own disk.

`on_event(kind, run_id, info)` reports "start", "retry", "done" and "failed"; a live view reads progress from the
run folders itself.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ACCELERATE_DIR = Path(__file__).parent / "accelerate"
TAIL_LINES = 40
HEADER = "===== harness executor:"  # starts the line that opens each attempt in a log
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
EventHook = Callable[[str, str, dict], None]


def shipped_accelerate_configs() -> dict[str, Path]:
    """The accelerate configs shipped with the harness, by name (file stem)."""
    return {p.stem: p for p in sorted(ACCELERATE_DIR.glob("*.yaml"))}


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A shipped config's name (`ddp_lora_2gpu`, with or without `.yaml`) or a path to a YAML file."""
    shipped = shipped_accelerate_configs()
    stem = name_or_path.removesuffix(".yaml")
    if stem in shipped:
        return shipped[stem]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise ValueError(f"accelerate_config={name_or_path!r} is neither a shipped config ({', '.join(shipped)}) "
                     "nor an existing file")


@dataclass(frozen=True, slots=True)
class Job:
    """One run to execute: a command, its log and its resources."""

    run_id: str
    argv: tuple[str, ...]  # e.g. (sys.executable, "-m", "harness", "train", "--config", C, "--out", RUN, "--resume")
    log_path: str  # stdout+stderr appended here, one file per run; attempts separated by a header line
    cpus: int = 1  # Ray: CPUs reserved for the task
    gpus: int = 0  # Ray: GPUs reserved; local: CUDA_VISIBLE_DEVICES picked from the executor's free devices
    processes: int = 1  # > 1: `accelerate launch --config_file <yaml> --num_processes N ...`
    accelerate_config: str | None = None  # shipped name or path; default cpu_gloo_2proc (gpus=0) / ddp_lora_2gpu
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables
    shared: tuple[str, ...] = ()  # folders it reads or writes besides its log's: on a cluster, every node must see them

    def __post_init__(self) -> None:
        errors = []
        if not self.run_id:
            errors.append("run_id is empty")
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            errors.append(f"argv={self.argv!r} must be a non-empty tuple of strings")
        if self.cpus < 0 or self.gpus < 0 or self.processes < 1:
            errors.append(f"cpus={self.cpus}, gpus={self.gpus} must be >= 0 and processes={self.processes} >= 1")
        if self.accelerate_config is not None:
            try:
                resolve_accelerate_config(self.accelerate_config)
            except ValueError as e:
                errors.append(str(e))
        if errors:
            raise ValueError(f"invalid job {self.run_id!r}: " + "; ".join(errors))

    def config_file(self) -> Path:
        if self.accelerate_config is not None:
            return resolve_accelerate_config(self.accelerate_config)
        return shipped_accelerate_configs()["ddp_lora_2gpu" if self.gpus else "cpu_gloo_2proc"]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended, after its retries."""

    run_id: str
    status: Literal["done", "failed"]
    attempts: int
    returncode: int | None  # of the last attempt; None when its process or Ray task died without one
    seconds: float  # wall time of all attempts together
    log_tail: str  # the log's last lines


# ---- one attempt: the command, its log, its process group --------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(job: Job, port: int | None = None) -> list[str]:
    """The command of one attempt: the job's argv, wrapped in `accelerate launch` when processes > 1."""
    if job.processes == 1:
        return list(job.argv)
    argv = list(job.argv)
    python = Path(argv[0]).name.startswith("python") and len(argv) > 1
    # accelerate starts every process with the interpreter that runs it: the job's own when it is a Python command
    head = [argv[0] if python else sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(job.config_file()), "--num_processes", str(job.processes),
            "--main_process_port", str(port or free_port())]
    if not python:
        return head + ["--no_python", *argv]
    return head + (["-m", *argv[2:]] if argv[1] == "-m" and len(argv) > 2 else argv[1:])


def _header(job: Job, attempt: int, attempts: int, argv: list[str], where: str = "") -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    where = f" on {where}" if where else ""
    return f"\n{HEADER} {job.run_id} attempt {attempt}/{attempts} at {stamp}{where}: {shlex.join(argv)}\n"


def unseen_storage(job: Job, node: str | None = None) -> str | None:
    """On a cluster node: one line naming the first of the job's folders (its log's, then `job.shared`) that this
    node cannot see, or None. A remote attempt never creates them: results would stay on the node's own disk."""
    for folder in (str(Path(job.log_path).parent), *job.shared):
        if not Path(folder).is_dir():
            return (f"harness executor: {folder} is not visible on node {node or platform.node()}: run folders and "
                    "the results store must be on storage every node sees (a shared file system)")
    return None


def _ending_with_this_thread():
    """Linux: a function that makes the child get SIGTERM when the thread starting it dies, even by SIGKILL, so
    that a killed orchestrator leaves no job running (and holding its run folder's lock). The signal follows the
    starting thread, not the process: used only from the main thread."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None

    def set_parent_death_signal() -> None:
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return set_parent_death_signal


def start_attempt(job: Job, attempt: int, attempts: int, extra_env: dict[str, str] | None = None,
                  where: str = "") -> subprocess.Popen:
    """Start one attempt in a new session (its own process group), stdout and stderr appended to the log.
    `where` (a cluster node) is named in the attempt's header; there the log's folder must already exist."""
    argv = launch_argv(job)
    log = Path(job.log_path)
    if not where:
        log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict(job.env), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    with log.open("a") as f:
        f.write(_header(job, attempt, attempts, argv, where))
        f.flush()
        try:
            return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, preexec_fn=_ending_with_this_thread())
        except OSError as e:  # a missing executable is a failed attempt, not an orchestrator crash
            f.write(f"harness executor: could not start {argv[0]!r}: {e}\n")
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(127)"], stdin=subprocess.DEVNULL,
                                    start_new_session=True)


def terminate(procs: Iterable[subprocess.Popen], grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group of each process still running, SIGKILL every group after `grace` seconds (or
    at once for those already ended: what a launcher left behind in its group), and reap the processes."""
    procs = list(procs)
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        _killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _killpg(p.pid, signal.SIGKILL)
        p.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: str | Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of the log's last attempt, its header line included when within them."""
    path = Path(path)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 256 * lines))
        text = f.read().decode("utf-8", errors="replace")
    kept = text.splitlines()[-lines:]
    starts = [i for i, line in enumerate(kept) if line.startswith(HEADER)]
    return "\n".join(kept[starts[-1]:] if starts else kept)


def ray_node() -> str:
    """This host and, inside a Ray task, the Ray node's id (several nodes can share a host)."""
    try:
        import ray

        if ray.is_initialized():
            return f"{platform.node()} (ray node {ray.get_runtime_context().get_node_id()})"
    except Exception:  # not in Ray: the host alone
        pass
    return platform.node()


def run_attempt(job: Job, attempt: int, attempts: int) -> tuple[int, float, str]:
    """Run one attempt to its end on a cluster node (the body of a Ray task): (returncode, seconds, log tail).
    A node that cannot see the job's folders fails at once (exit status 2) with one line naming them.

    An interruption (Ray's cancellation raises KeyboardInterrupt here) terminates the attempt's process group."""
    node = ray_node()
    if (unseen := unseen_storage(job, node)) is not None:
        return 2, 0.0, unseen
    t0 = time.monotonic()
    proc = start_attempt(job, attempt, attempts, where=node)
    try:
        while (code := proc.poll()) is None:  # short sleeps, not one blocking wait: Ray's cancellation is
            time.sleep(0.2)                    # delivered between bytecodes
    finally:
        terminate([proc])
    return code, time.monotonic() - t0, log_tail(job.log_path)


# ---- bookkeeping shared by the executors --------------------------------------------------------------------
@dataclass
class _Track:
    job: Job
    attempt: int = 0
    seconds: float = 0.0


def _validate(jobs: Iterable[Job]) -> list[Job]:
    jobs = list(jobs)
    seen: set[str] = set()
    dupes = sorted({j.run_id for j in jobs if j.run_id in seen or seen.add(j.run_id)})
    if dupes:
        raise ValueError(f"duplicate run_id(s) {dupes}: each job needs its own run folder and log")
    return jobs


class _Base:
    def __init__(self, retries: int = 1, on_event: EventHook | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries} must be >= 0")
        self.retries, self.on_event = retries, on_event

    def _emit(self, kind: str, run_id: str, **info) -> None:
        if self.on_event is not None:
            self.on_event(kind, run_id, info)

    def _finished(self, t: _Track, code: int | None, seconds: float, tail: str,
                  outcomes: dict[str, JobOutcome]) -> bool:
        """Record an attempt's end; True when the job should run again."""
        t.seconds += seconds
        if code == 0:
            outcomes[t.job.run_id] = JobOutcome(t.job.run_id, "done", t.attempt, 0, t.seconds, tail)
            self._emit("done", t.job.run_id, attempts=t.attempt, returncode=0, seconds=t.seconds, log_tail=tail)
            return False
        if t.attempt <= self.retries:
            self._emit("retry", t.job.run_id, attempt=t.attempt, returncode=code, seconds=seconds, log_tail=tail)
            return True
        outcomes[t.job.run_id] = JobOutcome(t.job.run_id, "failed", t.attempt, code, t.seconds, tail)
        self._emit("failed", t.job.run_id, attempts=t.attempt, returncode=code, seconds=t.seconds, log_tail=tail)
        return False


class _Interrupted(BaseException):
    """SIGTERM (or SIGHUP) of the orchestrator, turned into an exception so that cleanup runs."""


class _TerminationSignals:
    """While active (main thread only), SIGTERM and SIGHUP raise `_Interrupted` instead of killing us."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self):
        self.saved = {}
        if sys.platform != "win32" and _main_thread():
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    @staticmethod
    def _raise(signum, frame):
        raise _Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _reraise_as_exit(e: _Interrupted) -> None:
    raise SystemExit(128 + e.args[0]) from None


# ---- local -------------------------------------------------------------------------------------------------
class LocalExecutor(_Base):
    """Up to `workers` jobs at a time as subprocesses of this process."""

    def __init__(self, workers: int = 1, retries: int = 1, on_event: EventHook | None = None,
                 gpu_ids: list[int] | None = None, poll_s: float = 0.1) -> None:
        super().__init__(retries, on_event)
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        self.workers, self.gpu_ids, self.poll_s = workers, gpu_ids, poll_s

    def _gpus(self) -> list[int]:
        if self.gpu_ids is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is not None:
                self.gpu_ids = [int(x) for x in visible.split(",") if x.strip().isdigit()]
            else:
                import torch

                self.gpu_ids = list(range(torch.cuda.device_count()))
        return list(self.gpu_ids)

    def run(self, jobs: Iterable[Job]) -> dict[str, JobOutcome]:
        jobs = _validate(jobs)
        free_gpus = self._gpus() if any(j.gpus for j in jobs) else []
        too_big = [j.run_id for j in jobs if j.gpus > len(free_gpus)]
        if too_big:
            raise ValueError(f"job(s) {too_big} need more GPUs than this machine's {len(free_gpus)}")
        pending = deque(_Track(j) for j in jobs)
        running: dict[int, tuple[_Track, subprocess.Popen, float, list[int]]] = {}
        outcomes: dict[str, JobOutcome] = {}
        try:
            with _TerminationSignals():
                while pending or running:
                    self._start_fitting(pending, running, free_gpus)
                    time.sleep(self.poll_s)
                    for pid, (t, proc, t0, gpus) in list(running.items()):
                        code = proc.poll()
                        if code is None:
                            continue
                        del running[pid]
                        terminate([proc], grace=0)  # what a launcher that died left behind in its group
                        free_gpus.extend(gpus)
                        if self._finished(t, code, time.monotonic() - t0, log_tail(t.job.log_path), outcomes):
                            pending.appendleft(t)
        except _Interrupted as e:
            _reraise_as_exit(e)  # after the `finally` below has terminated the children
        finally:
            terminate([p for _, p, _, _ in running.values()])
        return {j.run_id: outcomes[j.run_id] for j in jobs}

    def _start_fitting(self, pending: deque, running: dict, free_gpus: list[int]) -> None:
        for t in list(pending):
            if len(running) >= self.workers:
                return
            if t.job.gpus > len(free_gpus):
                continue
            pending.remove(t)
            gpus = [free_gpus.pop(0) for _ in range(t.job.gpus)]
            extra = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}
            t.attempt += 1
            proc = start_attempt(t.job, t.attempt, self.retries + 1, extra)
            running[proc.pid] = (t, proc, time.monotonic(), gpus)
            self._emit("start", t.job.run_id, attempt=t.attempt, log_path=t.job.log_path, command=list(proc.args))


# ---- Ray ---------------------------------------------------------------------------------------------------
class RayExecutor(_Base):
    """Each attempt a Ray task; this process submits, waits with `ray.wait` and resubmits failures."""

    def __init__(self, address: str | None = None, retries: int = 1, on_event: EventHook | None = None,
                 num_cpus: int | None = None, cancel_grace_s: float = KILL_GRACE_S + 5) -> None:
        super().__init__(retries, on_event)
        self.address, self.num_cpus, self.cancel_grace_s = address, num_cpus, cancel_grace_s
        self._started_ray = False

    def _ray(self):
        import ray

        if not ray.is_initialized():
            kw = {} if self.address else {"num_cpus": self.num_cpus}
            ray.init(address=self.address or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **kw)
            self._started_ray = True
        return ray

    def shutdown(self) -> None:
        """Stop the local Ray instance if this executor started it."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def run(self, jobs: Iterable[Job]) -> dict[str, JobOutcome]:
        jobs = _validate(jobs)
        ray = self._ray()
        task = ray.remote(max_retries=0)(run_attempt)  # retries are ours: they append to the log and emit events
        inflight: dict = {}
        outcomes: dict[str, JobOutcome] = {}

        def submit(t: _Track) -> None:
            t.attempt += 1
            Path(t.job.log_path).parent.mkdir(parents=True, exist_ok=True)  # here, on the storage nodes share
            ref = task.options(num_cpus=t.job.cpus, num_gpus=t.job.gpus).remote(t.job, t.attempt, self.retries + 1)
            inflight[ref] = (t, time.monotonic())
            self._emit("start", t.job.run_id, attempt=t.attempt, log_path=t.job.log_path, command=list(t.job.argv))

        try:
            with _TerminationSignals():
                for j in jobs:
                    submit(_Track(j))
                while inflight:
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    t, t0 = inflight.pop(ready[0])
                    try:
                        code, seconds, tail = ray.get(ready[0])
                    except Exception as e:  # the task died (worker crash, node lost): a failed attempt
                        code, seconds = None, time.monotonic() - t0
                        tail = (log_tail(t.job.log_path) + f"\nharness executor: Ray task failed: {e!r}").strip()
                    if self._finished(t, code, seconds, tail, outcomes):
                        submit(t)
        except _Interrupted as e:
            self._cancel(ray, inflight)
            _reraise_as_exit(e)
        except BaseException:
            self._cancel(ray, inflight)
            raise
        return {j.run_id: outcomes[j.run_id] for j in jobs}

    def _cancel(self, ray, inflight: dict) -> None:
        """Cancel running attempts: Ray raises KeyboardInterrupt in each task, whose `finally` kills its group."""
        refs = list(inflight)
        for ref in refs:
            ray.cancel(ref, force=False)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=self.cancel_grace_s)


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **kw) -> LocalExecutor | RayExecutor:
    """An executor by name: 'local' (workers, retries, on_event) or 'ray' (address, retries, on_event); SLURM's
    is `harness.slurm.SlurmExecutor`."""
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ValueError(f"executor={name!r} is not known; valid: {', '.join(EXECUTORS)}") from None
    return cls(**kw)
