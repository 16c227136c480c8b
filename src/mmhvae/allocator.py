"""Keep freed CPU memory inside the process, so that large tensors reuse pages instead of faulting in fresh ones.

glibc serves every allocation above its mmap threshold (128 KiB, rising to 32 MiB as it adapts) with fresh
pages from the kernel and hands them back on free, and it trims the top of its heap once enough of it is free.
At 192x192 a forward pass, and more so a training step, allocates and frees gigabytes of activations, so each
one page-faults and zero-fills them again. Measured at the paper setting, 2 cores, float32: 27.8 million minor
faults for the inference figures of `mmhvae benchmark` (batch 1 and 16, the 15-subset slab) without the
settings below, 0.8 million with them; batch-16 inference went from 745 to 222 ms per slice, and a training
step of batch 4 (T = 3, activation checkpointing of 6 levels) from 16 s with 1.5-2 million faults to 8.9 s
with almost none after its first two steps.

The cost: the process keeps its peak heap until it ends (its resident memory no longer shrinks after the
peak), and fragmentation raises that peak where tensor sizes vary a lot (training at batch 16 with
checkpointing, float32: 17.5 GB against 10.4 GB, for a step of 50 s against 163 s). Nothing computed changes.
MMHVAE_KEEP_FREED_MEMORY=0 in the environment keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

SWITCH = "MMHVAE_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
NEVER_TRIM_BELOW = 2**31 - 1  # mallopt takes an int: trim only above 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Tell glibc never to mmap chunks directly and to keep its free heap (mallopt). Returns whether it applied:
    False off Linux, with another C library or with MMHVAE_KEEP_FREED_MEMORY=0, where nothing is changed."""
    if not sys.platform.startswith("linux") or os.environ.get(SWITCH, "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM_BELOW))
