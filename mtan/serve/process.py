"""The server process: glibc's malloc arenas and trimming, environment flags, and messages
with server paths taken out before visitors see them."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading
import time
from pathlib import Path

# An absolute path (not part of a URL or of a Hub id): /a/b/c -> its last part, for visitors' eyes.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`()<>]+)+/?")


def without_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last part (a folder's name), so
    that a message shown to visitors does not tell where things live on the server."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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
    """Set glibc's malloc for a server whose requests allocate the same large buffers again and
    again; each setting unless its environment variable is set. Call it early, before the worker
    threads start. False where not glibc.

    - ``M_ARENA_MAX`` = ``arenas``: glibc gives threads arenas of their own (up to 8 per core) and
      keeps what each one freed, so a server whose requests run on many worker threads holds the
      peak of every arena at once (under 20 concurrent clients the app peaked at 2.3 GB with
      glibc's default, 1.6 GB with two arenas); with one, a worker thread's large blocks also come
      from the main heap, which the next two settings keep.
    - ``M_MMAP_MAX`` = 0: large blocks (a 32 MB feature map) come from the heap instead of memory
      mapped for each and unmapped when freed, so the next request reuses them instead of taking
      page faults for fresh pages (the full-width network took 490,000 a forward pass).
    - ``M_TRIM_THRESHOLD`` at its largest: the heap is not shrunk as blocks are freed;
      :func:`release_memory` decides after each request what goes back to the OS.
    """
    lib = _libc()
    if lib is None:
        return False
    done = True
    for param, value in ((M_ARENA_MAX, int(arenas)), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)):
        if not os.environ.get(_MALLOPT_ENV[param]):
            done = bool(lib.mallopt(param, value)) and done
    return done


# How much memory freed by requests the process keeps for the next ones (the app's
# --keep-freed-memory): a request at the default resolution frees 150-300 MB, which the next one
# reuses instead of taking 50,000 page faults to get it back from the OS (0.1 s a photo on 2 cores).
KEEP_FREED_BYTES = 512 * 2**20
_KEEP = [KEEP_FREED_BYTES]


def freed_memory_for(width: float) -> int:
    """How much freed memory to keep for a network of this width (``--keep-freed-memory auto``): a
    request frees memory in proportion to the network's channels: 150-300 MB for width 0.25, about
    2 GB for the full width at 256x512; at least :data:`KEEP_FREED_BYTES`."""
    return max(KEEP_FREED_BYTES, int(3 * 2**30 * float(width)))


def keep_freed_memory(nbytes: int) -> None:
    """Set how much freed memory :func:`release_memory` leaves to the process (bytes, 0 or more)."""
    if nbytes < 0:
        raise ValueError(f"the memory to keep must be 0 or more bytes, got {nbytes}")
    _KEEP[0] = int(nbytes)


_TRIM_LOCK = threading.Lock()
_AFTER_TRIM: list[int] = []  # the resident memory not in use, measured after the last trim


def unused_resident_bytes() -> int | None:
    """Resident memory of this process that glibc's heap holds but no object uses: the resident
    size (``/proc/self/statm``) minus the bytes in use by malloc (``mallinfo2``). It also counts
    everything outside malloc (code, Python's own arenas), so only its changes mean something.
    None where not Linux with glibc 2.33 or later."""
    lib = _libc()
    if lib is None or not hasattr(lib, "mallinfo2"):
        return None
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
    info = lib.mallinfo2()
    return resident - info.uordblks - info.hblkhd


def release_memory(keep_bytes: int | None = None) -> bool:
    """After a request: give the heap memory freed since the last trim back to the OS (glibc
    ``malloc_trim``) once it exceeds ``keep_bytes`` (default: :func:`keep_freed_memory`'s, 512 MB),
    e.g. after a large photo; below that the memory stays for the next request. The first call
    always trims (it sets the level to measure from), and so does every call where the memory
    held cannot be measured. Returns whether it trimmed."""
    lib = _libc()
    if lib is None:
        return False
    if keep_bytes is None:
        keep_bytes = _KEEP[0]
    with _TRIM_LOCK:
        unused = unused_resident_bytes()
        if unused is not None and _AFTER_TRIM and unused - _AFTER_TRIM[0] <= keep_bytes:
            return False
        lib.malloc_trim(0)
        after = unused_resident_bytes()
        _AFTER_TRIM[:] = [after] if after is not None else []
        return True


class Activity:
    """Requests running now and when the last one ended: background work (the compile warm-up)
    waits for a quiet server instead of taking the cores from visitors."""

    def __init__(self, poll_s: float = 0.25):
        self._lock = threading.Lock()
        self.running = 0
        self.last_end = time.monotonic()
        self.poll_s = poll_s

    def begin(self) -> None:
        with self._lock:
            self.running += 1

    def end(self) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            self.last_end = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last request ended (0 while one runs)."""
        with self._lock:
            return 0.0 if self.running else time.monotonic() - self.last_end

    def wait_until_idle(self, quiet_s: float = 10.0) -> None:
        """Return once no request has run for ``quiet_s`` seconds."""
        while self.idle_for() < quiet_s:
            time.sleep(self.poll_s)


ACTIVITY = Activity()
