"""Process-wide settings of a training process, applied once by its entry point (`harness train`, which every
`accelerate launch` worker runs too) before any model loads. They change how fast a run goes, never what it
computes.

- torch threads: the configured number, else this machine's cores shared by the training processes on it;
  processes whose OpenMP threads outnumber the cores spin against each other (`python -m benchmarks.ppo_modes
  --set threads=N` times a step at N threads).
- glibc's allocator keeps freed memory within a PPO phase on a CPU run (`trainers.host_memory`), unless
  `tune_host_allocator` is off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from trainers.execution import ExecutionConfig
from trainers.distributed import env_int
from trainers.host_memory import keep_freed_memory_within_a_phase


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    threads: int
    keep_freed_memory: bool  # glibc told to keep freed memory within a phase (a CPU run on glibc)


def torch_threads(configured: int, environ: Mapping[str, str] = os.environ) -> int:
    """`configured`, else this machine's cores divided among the processes of a multi-process run on it."""
    world = env_int("WORLD_SIZE", 1, environ)
    on_this_machine = env_int("LOCAL_WORLD_SIZE", world, environ) if world > 1 else 1
    return configured or max(1, (os.cpu_count() or 1) // on_this_machine)


def runs_on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def configure_training_process(execution: ExecutionConfig,
                               environ: Mapping[str, str] = os.environ) -> ProcessSettings:
    """Apply the process-wide settings `execution` asks for; returns what was applied."""
    threads = torch_threads(execution.threads, environ)
    torch.set_num_threads(threads)
    keep = execution.tune_host_allocator and runs_on_cpu(execution.device) and keep_freed_memory_within_a_phase()
    return ProcessSettings(threads, keep)
