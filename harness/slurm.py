"""SLURM executor through submitit: each attempt of a job is one SLURM job that runs the job's command.

- The request: `SlurmSettings` (partition, account, time limit, CPUs, memory, extra `sbatch` options) and the
  job's own GPUs (from its run: `harness.grid.job_resources`) unless `gpus` overrides them; `sbatch_request` is
  what submitit is handed and `format_request` the `sbatch` line a dry run prints.
- The job: submitit runs `SlurmAttempt` on the node (the submitter's interpreter and environment, as `sbatch`
  exports it); it checks that the node sees the job's folders, runs the command as the local executor does, logs
  to the job's log (in the run folder) and returns (returncode, seconds, log tail). submitit's own files live in
  `<log folder>/slurm/<log name>/`.
- Preemption and time limits: submitit asks for `--signal=USR2@signal_delay_s` and on USR2 calls
  `SlurmAttempt.checkpoint`, which stops the command and requeues the same attempt; a requeue by the scheduler
  (`scontrol requeue`, SIGTERM) restarts the job from scratch. Either way the command runs again with `--resume`
  from the run's last checkpoint, so a requeued run ends with an uninterrupted run's metrics (work after the last
  checkpoint is redone). An attempt that the scheduler is ending returns nothing: the job is not over.
- The submitter: waits on result files and `squeue`, retries a failed job as the local executor does, records
  each submission (`submitted.json`) so that a restarted submitter waits on the jobs still queued or running
  instead of submitting them twice, and cancels its jobs (`scancel`) when it is interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.executors import (EventHook, Job, JobOutcome, _Base, _Interrupted, _TerminationSignals, _Track,
                               _reraise_as_exit, _validate, log_tail, start_attempt, terminate, unseen_storage)
from trainers.io import atomic_write_text

# states after which a job never runs again (squeue's long names); a job squeue no longer lists has ended too
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "SPECIAL_EXIT", "REVOKED"}
RECORD = "submitted.json"
CPUS_PER_GPU = 4  # a job's CPUs when it has GPUs and none are asked for (Ray and SLURM alike)
OPTION = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    """What every job asks of SLURM besides its GPUs (which come from its run unless `gpus` is set)."""

    partition: str | None = None  # --partition (None: the cluster's default)
    account: str | None = None  # --account
    time_min: int = 24 * 60  # --time, minutes: a requeued job starts its time limit again
    gpus: int | None = None  # --gpus-per-node for every job (None: the job's own, from its run)
    cpus: int | None = None  # --cpus-per-task (None: CPUS_PER_GPU per GPU, or the job's own CPUs without GPUs)
    mem_gb: float | None = None  # --mem (None: the partition's default)
    options: tuple[tuple[str, str], ...] = ()  # extra sbatch options, e.g. (("qos", "high"), ("constraint", "a100"))
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to stop and requeue

    def __post_init__(self) -> None:
        problems = []
        if self.time_min < 1:
            problems.append(f"--slurm-time={self.time_min}: minutes, an integer >= 1")
        for name, value in (("--slurm-gpus", self.gpus), ("--slurm-cpus", self.cpus)):
            if value is not None and value < (0 if name == "--slurm-gpus" else 1):
                problems.append(f"{name}={value}: an integer >= {0 if name == '--slurm-gpus' else 1}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            problems.append(f"--slurm-mem-gb={self.mem_gb}: a number of GiB > 0")
        for key, value in self.options:
            if not OPTION.match(key) or not value:
                problems.append(f"--slurm-option {key}={value}: expected NAME=VALUE with an sbatch long option name "
                                "(e.g. qos=high, constraint=a100)")
        if problems:
            raise ValueError("; ".join(problems))

    def gpus_of(self, job: Job) -> int:
        return job.gpus if self.gpus is None else self.gpus

    def cpus_of(self, job: Job) -> int:
        return self.cpus_for(self.gpus_of(job), job.cpus)

    def cpus_for(self, gpus: int, default: int) -> int:
        """CPUs of a job with `gpus` GPUs: `cpus`, else CPUS_PER_GPU per GPU, else `default`."""
        if self.cpus is not None:
            return self.cpus
        return CPUS_PER_GPU * gpus if gpus else max(1, default)


def parse_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    """`--slurm-option NAME=VALUE` items as pairs (validated by `SlurmSettings`)."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--slurm-option {item!r}: expected NAME=VALUE, e.g. qos=high")
        pairs.append((key.strip().removeprefix("--"), value.strip()))
    return tuple(pairs)


def settings_from_args(args) -> SlurmSettings:
    """The settings `reproduce` was given; raises on bad values and when submitit is missing (before any work)."""
    settings = SlurmSettings(partition=args.slurm_partition, account=args.slurm_account, time_min=args.slurm_time,
                             gpus=args.slurm_gpus, cpus=args.slurm_cpus, mem_gb=args.slurm_mem_gb,
                             options=parse_options(args.slurm_option))
    if not getattr(args, "dry_run", False):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError("--executor=slurm needs submitit: pip install -e '.[slurm]'") from None
    return settings


def add_arguments(parser) -> None:
    """`harness reproduce`'s SLURM options."""
    g = parser.add_argument_group("SLURM (--executor slurm)")
    g.add_argument("--slurm-partition", default=None, help="partition of every job (default: the cluster's)")
    g.add_argument("--slurm-account", default=None, help="account charged")
    g.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MINUTES",
                   help="time limit of each job, minutes (default 1440); a preempted or timed-out job is requeued "
                        "and resumes from its last checkpoint")
    g.add_argument("--slurm-gpus", type=int, default=None, metavar="N",
                   help="GPUs per job (default: the run's: 2 per LoRA and 8 per full fine-tune run at the paper "
                        "preset, 1 per paper evaluation, none offline)")
    g.add_argument("--slurm-cpus", type=int, default=None, metavar="N",
                   help=f"CPUs per job (default {CPUS_PER_GPU} per GPU; without GPUs, the cores of this machine)")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GIB", help="memory per job")
    g.add_argument("--slurm-option", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra sbatch option for every job, e.g. qos=high or constraint=a100 (repeatable)")


# ---- the request -----------------------------------------------------------------------------------------------
def job_name(job: Job) -> str:
    return f"harness:{job.run_id}"


def sbatch_request(job: Job, settings: SlurmSettings) -> dict[str, Any]:
    """The parameters submitit's `SlurmExecutor.update_parameters` takes for this job (one task on one node)."""
    request: dict[str, Any] = {"job_name": job_name(job), "nodes": 1, "ntasks_per_node": 1,
                               "cpus_per_task": settings.cpus_of(job), "time": settings.time_min,
                               "signal_delay_s": settings.signal_delay_s, "stderr_to_stdout": True}
    if gpus := settings.gpus_of(job):
        request["gpus_per_node"] = gpus
    if settings.partition:
        request["partition"] = settings.partition
    if settings.account:
        request["account"] = settings.account
    if settings.mem_gb is not None:
        request["mem"] = f"{max(1, round(settings.mem_gb * 1024))}M"
    if settings.options:
        request["additional_parameters"] = dict(settings.options)
    return request


def format_request(job: Job, settings: SlurmSettings) -> str:
    """The job's `sbatch` request as a command line (what a dry run prints), its command after `--wrap`."""
    request = sbatch_request(job, settings)
    flags = [f"--job-name={request['job_name']}", "--nodes=1", "--ntasks-per-node=1",
             f"--cpus-per-task={request['cpus_per_task']}"]
    flags += [f"--gpus-per-node={request['gpus_per_node']}"] if "gpus_per_node" in request else []
    flags += [f"--{k}={request[k]}" for k in ("partition", "account", "mem") if k in request]
    flags += [f"--time={request['time']}", f"--signal=USR2@{request['signal_delay_s']}",
              f"--output={submitit_folder(job) / '%j_0_log.out'}"]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in request.get("additional_parameters", {}).items()]
    launch = f"  # accelerate launch, {job.processes} processes ({job.config_file().stem})" if job.processes > 1 else ""
    return f"sbatch {' '.join(flags)} --wrap {shlex.quote(shlex.join(job.argv))}{launch}"


def submitit_folder(job: Job) -> Path:
    """submitit's files of a job (batch script, pickles, its own log): beside the job's log."""
    log = Path(job.log_path)
    return log.parent / "slurm" / log.stem


# ---- on the node -----------------------------------------------------------------------------------------------
class SlurmAttempt:
    """One attempt of a job, run by submitit on the node; `checkpoint` is submitit's hook for USR2."""

    def __init__(self, job: Job, attempt: int, attempts: int) -> None:
        self.job, self.attempt, self.attempts = job, attempt, attempts
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"job": self.job, "attempt": self.attempt, "attempts": self.attempts}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> tuple[int, float, str]:
        job_id = os.environ.get("SLURM_JOB_ID", "?")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        where = f"{platform.node()} (SLURM job {job_id}{f', restart {restarts}' if restarts else ''})"
        if (unseen := unseen_storage(self.job)) is not None:
            return 2, 0.0, unseen
        ending = []
        bypass = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):  # the scheduler ends this job (requeue, scancel, time limit)
            ending.append(signum)
            if callable(bypass):
                bypass(signum, frame)

        signal.signal(signal.SIGTERM, on_term)
        t0 = time.monotonic()
        self._proc = start_attempt(self.job, self.attempt, self.attempts, where=where)
        try:
            while (code := self._proc.poll()) is None:
                time.sleep(0.2)
        finally:
            terminate([self._proc])
        if ending and code != 0:
            # no result: the submitter would count this attempt failed while SLURM runs the job again (requeue) or
            # has cancelled it; SIGKILL follows after the cluster's KillWait
            while True:
                time.sleep(1)
        return code, time.monotonic() - t0, log_tail(self.job.log_path)

    def checkpoint(self, *args, **kwargs):
        """USR2 (preemption or the time limit near): stop the command and requeue this same attempt; it resumes
        from the run's last checkpoint."""
        from submitit.helpers import DelayedSubmission

        if self._proc is not None:
            terminate([self._proc])
        return DelayedSubmission(SlurmAttempt(self.job, self.attempt, self.attempts))


# ---- the submitter ---------------------------------------------------------------------------------------------
def squeue_states() -> dict[str, str] | None:
    """id -> state of this user's jobs that slurmctld still knows (None when squeue fails this time)."""
    try:
        out = subprocess.run(["squeue", f"--user={getpass.getuser()}", "-h", "-t", "all", "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


@dataclass
class _Submitted:
    track: _Track
    job: Any  # submitit.SlurmJob
    started: float
    ended_at: float | None = None  # when squeue first said it ended without a result file yet


class SlurmExecutor(_Base):
    """Submits each attempt as a SLURM job, waits on them, retries failures, cancels them when interrupted."""

    def __init__(self, settings: SlurmSettings | None = None, retries: int = 1, on_event: EventHook | None = None,
                 poll_s: float = 1.0, squeue_every_s: float = 5.0, result_grace_s: float = 30.0) -> None:
        super().__init__(retries, on_event)
        self.settings = settings or SlurmSettings()
        self.poll_s, self.squeue_every_s, self.result_grace_s = poll_s, squeue_every_s, result_grace_s

    def run(self, jobs) -> dict[str, JobOutcome]:
        jobs = _validate(jobs)
        inflight: dict[str, _Submitted] = {}
        outcomes: dict[str, JobOutcome] = {}
        try:
            with _TerminationSignals():
                states = squeue_states() or {}
                for j in jobs:
                    found = self._reattach(_Track(j), states)
                    if found is None:
                        self._submit(_Track(j), inflight)
                    else:
                        inflight[j.run_id] = found
                last_squeue = time.monotonic()
                while inflight:
                    time.sleep(self.poll_s)
                    if time.monotonic() - last_squeue >= self.squeue_every_s:
                        states, last_squeue = squeue_states(), time.monotonic()
                    else:
                        states = None
                    for run_id, sub in list(inflight.items()):
                        ended = self._ended(sub, states)
                        if ended is None:
                            continue
                        del inflight[run_id]
                        _record(sub.track.job).unlink(missing_ok=True)
                        if self._finished(sub.track, *ended, outcomes):
                            self._submit(sub.track, inflight)
        except _Interrupted as e:
            self._cancel(inflight)
            _reraise_as_exit(e)
        except BaseException:
            self._cancel(inflight)
            raise
        return {j.run_id: outcomes[j.run_id] for j in jobs}

    def _submit(self, t: _Track, inflight: dict[str, _Submitted]) -> None:
        import submitit

        t.attempt += 1
        folder = submitit_folder(t.job)
        folder.mkdir(parents=True, exist_ok=True)  # here, on the storage every node sees
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=1000)  # preemptions are not failures
        executor.update_parameters(**sbatch_request(t.job, self.settings))
        sjob = executor.submit(SlurmAttempt(t.job, t.attempt, self.retries + 1))
        atomic_write_text(_record(t.job), json.dumps({"job_id": sjob.job_id, "run_id": t.job.run_id,
                                                      "argv": list(t.job.argv), "attempt": t.attempt}))
        inflight[t.job.run_id] = _Submitted(t, sjob, time.monotonic())
        self._emit("start", t.job.run_id, attempt=t.attempt, log_path=t.job.log_path, command=list(t.job.argv),
                   slurm_job=sjob.job_id)

    def _reattach(self, t: _Track, states: dict[str, str]) -> _Submitted | None:
        """The job a previous submitter left queued or running for this same command, if any."""
        import submitit

        path = _record(t.job)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        state = states.get(str(record.get("job_id")))
        if record.get("argv") != list(t.job.argv) or state is None or state in ENDED:
            return None
        t.attempt = int(record.get("attempt", 1))
        sjob = submitit.SlurmJob(folder=submitit_folder(t.job), job_id=str(record["job_id"]))
        self._emit("start", t.job.run_id, attempt=t.attempt, log_path=t.job.log_path, command=list(t.job.argv),
                   slurm_job=sjob.job_id, reattached=True)
        return _Submitted(t, sjob, time.monotonic())

    def _ended(self, sub: _Submitted, states: dict[str, str] | None) -> tuple[int | None, float, str] | None:
        """(returncode, seconds, tail) once the job has ended, else None."""
        seconds = time.monotonic() - sub.started
        if sub.job.paths.result_pickle.exists():
            try:
                code, _, tail = sub.job.result()
                return code, seconds, tail
            except Exception as e:  # the job's Python failed outside the command (import, pickling)
                return None, seconds, f"{log_tail(sub.track.job.log_path)}\nharness executor: {e}".strip()
        if states is not None:
            state = states.get(sub.job.job_id)
            if state is not None and state not in ENDED:
                sub.ended_at = None  # queued or running (again: a requeue)
            elif sub.ended_at is None:
                sub.ended_at = time.monotonic()
        if sub.ended_at is not None and time.monotonic() - sub.ended_at >= self.result_grace_s:
            state = (states or {}).get(sub.job.job_id, "no longer listed by squeue")
            own = _tail(submitit_folder(sub.track.job) / f"{sub.job.job_id}_0_log.out")
            return None, seconds, "\n".join(x for x in (log_tail(sub.track.job.log_path), own,
                                                        f"harness executor: SLURM job {sub.job.job_id} ended "
                                                        f"({state}) without a result") if x)
        return None

    def _cancel(self, inflight: dict[str, _Submitted]) -> None:
        """scancel every job still queued or running, and forget them: a rerun submits them afresh."""
        ids = [sub.job.job_id for sub in inflight.values()]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
        for sub in inflight.values():
            _record(sub.track.job).unlink(missing_ok=True)


def _record(job: Job) -> Path:
    return submitit_folder(job) / RECORD


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
