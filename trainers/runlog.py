"""A run folder's files: the per-step `metrics.jsonl`, peak memory, progress lines."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.errors import UserError
from trainers.io import atomic_write_text

if TYPE_CHECKING:  # reading a metrics log (reproduce, report) must not load torch
    import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        import torch  # already loaded by whoever holds a CUDA device

        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory_within_a_phase() -> bool:
    """Let glibc reuse freed memory within a phase instead of returning it to the OS at once.

    By default glibc serves allocations above a (dynamic) threshold with fresh mmaps and gives them back
    when freed, and returns the heap's free top above 128 KiB: every activation of every micro-batch then
    page-faults in anew; this setting removes most of those faults for a little more peak memory
    (`python -m benchmarks.profile_step --no-profile` counts them; docs/performance.md). With the mmap
    threshold at its 32 MiB maximum and the trim threshold
    at 1 GiB, freed memory is reused within a phase, and `release_host_memory` still returns it between
    phases. True if applied (glibc only).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))


def release_host_memory() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim).

    A PPO step frees gigabytes of activations and vocabulary-sized logits per phase; glibc keeps the
    freed pages in its arenas and, with tensors of varying sizes, the next phase cannot always reuse
    them, so the resident set climbs phase after phase. Trimming at phase boundaries keeps the peak at
    weights + the largest single phase. A no-op where glibc is absent.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def read_metrics(path: str | Path) -> list[dict]:
    """The steps of a `metrics.jsonl`. Only the last line may be cut short (a crash while appending: that step is
    redone on resume); a damaged line anywhere else is an error naming the file and line, since dropping it, or
    everything after it, would lose steps without a word."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); the metrics log is damaged") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)  # a complete record always ends in a newline
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if last:
                break
            raise UserError(f"{path}, line {number}: not a JSON record ({e}); the metrics log is damaged: "
                            "repair or remove that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if last:
                break
            raise UserError(f"{path}, line {number}: a record needs an integer 'step'; the metrics log is damaged")
        records.append(row)
    return records


class MetricsLog:
    """`metrics.jsonl`: one JSON object per PPO step, appended and flushed as each step ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep the steps <= `step` (those a checkpoint covers); later ones are redone on resume."""
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


class Progress:
    """One line per step on stderr: step, reward, KL, speed and ETA."""

    def __init__(self, total: int, start: int, stream=sys.stderr) -> None:
        self.total, self.start, self.stream = total, start, stream
        self.t0 = time.perf_counter()

    def update(self, step: int, m: dict) -> None:
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        self.stream.write(
            f"step {step}/{self.total} | score {m['objective/scores']:+.3f} | true_kl {m['objective/true_kl']:.4f}"
            f" | len {m['rollout/response_length']:.1f} | {m['time/step']:.1f} s/step"
            f" | {m['time/tokens_per_s']:.0f} tok/s | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}\n"
        )
        self.stream.flush()
