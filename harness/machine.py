"""The machine a measurement was taken on, in one line (CPU model, cores, architecture; GPUs when present)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), "") if cpuinfo.is_file() else ""
    text = f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores, {platform.machine()}"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return text + (f", CUDA_VISIBLE_DEVICES={gpus}" if gpus else "")
