"""glibc's malloc for processes that allocate the same large buffers again and again: the app's
server, and the commands that score a model on many photos (``mtan.evaluate``, ``mtan.calibrate``,
``mtan.release``, ``mtan.precision``).

Each batch of a scoring pass allocates feature maps of tens of MB and frees them; with glibc's
defaults every such block is memory mapped when allocated and unmapped when freed, so every batch
takes fresh pages from the OS again (page faults). :func:`tune_malloc` keeps them in the heap for
the next batch: the same figures, in well under half the time on 2 cores (docs/performance.md,
*Scoring a model*; ``benchmarks/scoring_memory.py``)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_LIBC: list = []


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    """glibc, loaded once (None where the C library is not glibc)."""
    if not _LIBC:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(lib, "mallinfo2"):  # glibc 2.33 and later
                lib.mallinfo2.restype = _MallInfo2
            _LIBC.append(lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


# glibc's mallopt parameters and the environment variables that set them instead
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_MALLOPT_ENV = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_MAX: "MALLOC_MMAP_MAX_",
                M_ARENA_MAX: "MALLOC_ARENA_MAX"}


def tune_malloc(arenas: int = 1) -> bool:
    """Set glibc's malloc for a process that allocates the same large buffers again and again (a
    server's requests, a scoring pass's batches); each setting unless its environment variable is
    set. Call it early, before the worker threads start. False where not glibc.

    - ``M_ARENA_MAX`` = ``arenas``: glibc gives threads arenas of their own (up to 8 per core) and
      keeps what each one freed, so a server whose requests run on many worker threads holds the
      peak of every arena at once (under 20 concurrent clients the app peaked at 2.3 GB with
      glibc's default, 1.6 GB with two arenas); with one, a worker thread's large blocks also come
      from the main heap, which the next two settings keep.
    - ``M_MMAP_MAX`` = 0: large blocks (a 32 MB feature map) come from the heap instead of memory
      mapped for each and unmapped when freed, so the next request reuses them instead of taking
      page faults for fresh pages (the full-width network took 490,000 a forward pass).
    - ``M_TRIM_THRESHOLD`` at its largest: the heap is not shrunk as blocks are freed;
      the server's ``mtan.serve.process.release_memory`` decides after each request what goes back
      to the OS; a scoring command keeps its peak until it exits.
    """
    lib = _libc()
    if lib is None:
        return False
    done = True
    for param, value in ((M_ARENA_MAX, int(arenas)), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)):
        if not os.environ.get(_MALLOPT_ENV[param]):
            done = bool(lib.mallopt(param, value)) and done
    return done
