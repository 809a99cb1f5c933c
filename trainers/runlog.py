"""What a training reports as it goes: one progress line per step, and the peak memory a step row records."""

from __future__ import annotations

import resource
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is loaded by whoever holds a device
    import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        import torch  # already loaded by whoever holds a CUDA device

        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"


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
