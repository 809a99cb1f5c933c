"""glibc's allocator on CPU runs: keep freed memory within a PPO phase, give it back between phases.

A PPO step frees gigabytes of activations and vocabulary-sized logits per phase. By default glibc serves large
allocations with fresh mmaps and returns them when freed, so every micro-batch page-faults its activations in
anew; and the pages it does keep, it cannot always reuse for the next phase's differently sized tensors, so the
resident set climbs phase after phase. `python -m benchmarks.profile_step --no-profile` counts the page faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


@functools.cache
def keep_freed_memory_within_a_phase() -> bool:
    """Let glibc reuse freed memory within a phase instead of returning it to the OS at once: the mmap threshold at
    its 32 MiB maximum, the trim threshold at 1 GiB (a little more peak memory for most of the page faults).
    Process-wide, so set once by the entry point. True if applied (glibc only)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))


def release_host_memory() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim) at a phase boundary, so the peak stays at the
    weights plus the largest single phase. A no-op where glibc is absent."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
