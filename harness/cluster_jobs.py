"""What `reproduce` asks of a cluster (Ray or SLURM) for each job, and its dry run.

- `ClusterJobs.job`: a grid job with its run's GPUs and processes (`grid.job_resources`: 2 GPUs per LoRA run and
  8 per full fine-tune at the paper preset, 1 per evaluation there, none offline), its CPUs (4 per GPU; SLURM: the
  request's, with as many OpenMP threads) and the folders every node must see (the results store for an
  evaluation).
- `dry_run`: the jobs `reproduce` would start, one line each (for SLURM, the `sbatch` request), and nothing started:
  no preparation, no files written.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness import grid as G
from trainers.runfolder import RunFolder

if TYPE_CHECKING:
    from harness.reproduce_config import ReproduceConfig
    from harness.slurm import SlurmSettings

HARNESS = (sys.executable, "-m", "harness")
EVAL_JOB = (sys.executable, "-m", "harness.eval_job")


class ClusterJobs:
    def __init__(self, g: G.Grid, slurm: SlurmSettings | None, threads: int) -> None:
        """`slurm`: the request of every SLURM job; None on Ray."""
        self.g, self.default_cpus = g, threads
        self.settings = slurm
        self.gpus = None if self.settings is None else self.settings.gpus

    def resources(self, run: G.Run | None) -> G.Resources:
        return G.job_resources(self.g.spec, run, self.gpus)

    def threads(self, run: G.Run) -> int | None:
        """The training threads of the run's job (None: the run's own setting)."""
        if self.settings is None:
            return None
        return self.settings.cpus_for(self.resources(run).gpus, self.default_cpus)

    def job(self, job, run: G.Run | None, shared: tuple[str, ...] = ()):
        res = self.resources(run)
        cpus, env = job.cpus, job.env
        if self.settings is None and res.gpus:  # Ray: not this machine's cores, which may be a whole node's
            from harness.slurm import CPUS_PER_GPU

            cpus = CPUS_PER_GPU * res.gpus
        elif self.settings is not None:
            cpus = self.settings.cpus_for(res.gpus, self.default_cpus)
            env = (("OMP_NUM_THREADS", str(cpus)), ("MKL_NUM_THREADS", str(cpus)))
        return dataclasses.replace(job, gpus=res.gpus, processes=res.processes,
                                   accelerate_config=res.accelerate_config, cpus=cpus, env=env, shared=shared)


def dry_run(g: G.Grid, config: ReproduceConfig, runs: list[G.Run], cells: list[tuple], cluster: ClusterJobs | None, threads: int,
            store_root) -> int:
    """Print the jobs `reproduce` would start now: the training of `runs` and the evaluations of `cells` ((run_id,
    run, step, evaluator), `reproduce.eval_plan`'s); start nothing."""
    from harness.executors import Job

    lines = []
    for run in runs:
        folder = RunFolder(G.run_dir(config.runs, g.preset, run.run_id))
        job = Job(run.run_id, (*HARNESS, "train", "--config", str(folder.grid_config_path), "--out", str(folder),
                               "--resume"), str(folder.train_log_path), cpus=threads)
        lines.append(_line(job if cluster is None else cluster.job(job, run), config))
    log_dir = Path(config.runs) / g.preset / "eval-logs"
    for rid, run, step, ev in cells:
        name = f"{rid.replace(':', '_').replace('/', '_')}-{step}-{ev}"
        job = Job(f"eval:{rid}:{step}:{ev}", (*EVAL_JOB, str(log_dir / f"{name}.json")), str(log_dir / f"{name}.log"),
                  cpus=threads)
        lines.append(_line(job if cluster is None else cluster.job(job, None, shared=(str(store_root),)), config))
    provisional = " (run ids provisional: the reward model is not prepared yet)" if g.provisional else ""
    print(f"dry run, executor {config.executor}: {len(lines)} jobs{provisional}; nothing started")
    for line in lines:
        print(f"  {line}")
    return 0


def _line(job, config: ReproduceConfig) -> str:
    if config.slurm is not None:
        from harness.slurm import format_request

        return format_request(job, config.slurm)
    what = f"[cpus={job.cpus} gpus={job.gpus}{f' processes={job.processes}' if job.processes > 1 else ''}]"
    argv = [a if a != sys.executable else "python" for a in job.argv]
    return f"{job.run_id} {what} {shlex.join(argv)}"
