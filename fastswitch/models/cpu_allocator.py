"""Keeping a CPU forward's freed memory in the process, so the next step does not fault it in again.

A forward allocates and frees the same large temporaries at every layer of every step: the MLP's
gate/up output alone is 25 MB for a 2048-token SmolLM2-135M chunk. glibc hands memory back to the
kernel when a freed block was mmapped (above M_MMAP_THRESHOLD, which it raises by itself only up to
the largest block freed so far) or sits at the top of the heap past M_TRIM_THRESHOLD; the next
allocation then takes a page fault per 4 KiB page, each zero-filled by the kernel. The benchmark
prompts of benchmarks/generate.py took about 500,000 such faults (1.1-1.4 s of system time in a
24 s run on one core); with the thresholds below, under 20,000 (0.01-0.13 s).

`keep_freed_memory` serves every block up to glibc's limit (32 MiB on 64-bit) from the heap and
lets up to TRIM_THRESHOLD_BYTES of free memory stay there. The setting is process-wide (it is how
vLLM's CPU backend and others get the same effect from a preloaded tcmalloc); the ModelRunner
applies it when its model is on a CPU. The cost: a process keeps up to that much freed memory.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds (once per process); False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "mallopt"):  # musl and other C libraries
        return False
    # mallopt returns 1 on success, 0 when glibc refuses the value.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
