"""The server process: glibc's malloc arenas and trimming, environment flags, and messages
with server paths taken out before visitors see them."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from mtan.malloc import _libc, tune_malloc  # noqa: F401 (the server's settings; re-exported)

# An absolute path (not part of a URL or of a Hub id): /a/b/c -> its last part, for visitors' eyes.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`()<>]+)+/?")


def without_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last part (a folder's name), so
    that a message shown to visitors does not tell where things live on the server."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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
