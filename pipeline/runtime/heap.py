"""Let a training process reuse the memory it frees instead of faulting it in afresh.

Why: a meta-step allocates and frees the same few-MB tensors (per-step gate buffers, the
gathered input projection, the HVP's R buffers) every inner step. glibc serves blocks that
large with a fresh `mmap` and, once freed, unmaps them (or trims them off the heap's top), so
the next step faults every page in again: 4,000-18,000 minor page faults per chargru
meta-step, up to ~15% of its time (bench/RESULTS.md, "the C heap"). Raising glibc's mmap and trim
thresholds keeps those blocks on the heap for reuse. It is process-wide and changes no
arithmetic, so only the processes that train or evaluate (Train workers, Tune trials,
`metaray evaluate`, `local_train`) set it; the peak RSS stays the same (measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
_M_MMAP_THRESHOLD = -3
_TRIM_FACTOR = 4  # freed memory kept at the heap's top, in multiples of the mmap threshold


def reuse_freed_memory(mb: int) -> bool:
    """Serve allocations up to `mb` MiB from the heap, and keep up to 4x that freed at its top
    (glibc's `mallopt`). -> whether it took effect: False for mb=0 (glibc's own defaults
    kept) and on a C library that is not glibc (macOS, musl), where it is a no-op."""
    if mb <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    size = mb << 20
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, size) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, min(size * _TRIM_FACTOR, 2**31 - 1)) == 1
    return ok_mmap and ok_trim
