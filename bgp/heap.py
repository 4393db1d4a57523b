"""HeapTrimmer: gives the heap that a burst of routes freed back to the kernel, once the burst is over.

Stage: beside the speaker's loop (``bgp.speaker``), which reports the prefixes each flush handled and each
quiet second; nothing else depends on it.

Owns: the count of prefixes handled since the last trim and the decision to trim.

Complicating factors:
- A 100k-route burst allocates far more than it keeps (ExaBGP's JSON text, lists and sets per batch, the
  kernel's messages). CPython keeps a 256 KiB arena while any object in it lives and glibc keeps freed
  chunks below the top of its heap, so after the burst the process holds that memory: about 18 MiB per 100k
  learned routes (``python -m bench.rib_memory``'s rig; measured with and without the trim). What it cannot
  give back is memory still in use or arenas pinned by a few survivors (a kernel read-back's, see
  bench/results/changes.md).
  ``malloc_trim(0)`` returns every free page (glibc 2.8+ madvises the holes, not only the top).
- The trim walks the heap (milliseconds at 100k routes), so it runs once the burst is over, on the first
  quiet second after at least ``threshold`` prefixes were handled, never per flush: a node whose routes
  change one at a time never pays it.
- Only glibc has ``malloc_trim``; elsewhere (musl, macOS) the trimmer does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Prefixes handled before a quiet second trims: well above a pod's churn, well below a burst worth trimming.
TRIM_AFTER = 20_000


def libc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    def __init__(self, threshold: int = TRIM_AFTER, trim: Callable[[], object] | None = None) -> None:
        self._threshold = threshold
        self._trim = trim
        self._handled = 0
        self.trims = 0

    @classmethod
    def for_this_process(cls, threshold: int = TRIM_AFTER) -> HeapTrimmer:
        return cls(threshold, libc_trim())

    def handled(self, prefixes: int) -> None:
        """A flush handled ``prefixes`` (selected, compared or written)."""
        self._handled += prefixes

    def quiet(self) -> bool:
        """A second passed without work; trims if a burst came before it. True when it trimmed."""
        if self._handled < self._threshold or self._trim is None:
            return False
        self._handled = 0
        self._trim()
        self.trims += 1
        log.debug("heap trimmed after a burst")
        return True
