"""Files written whole or not at all: the project's one way to write a file.

A file is written to a temporary name beside its target (``.NAME.tmp-PID``) and renamed over
the target when complete, so that a reader sees the old file or the new one, never half of one;
a crash or a full disk leaves the old file as it was. What a killed writer leaves behind is found
by :data:`TEMPORARY_RE` (the trainer removes it on resume).
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np

TEMPORARY_RE = re.compile(r"^\..+\.tmp-(\d+)$")  # what atomic_write leaves behind if killed


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write, durable: bool = True) -> None:
    """The project's one way to write a file: call ``write(tmp_path)`` on a temporary file beside
    ``path`` (named for this process and thread, so that two writers never share one), then
    rename it to ``path``: a reader sees the old file or the new one, never half of one.
    ``durable``: fsync the file and the folder too (checkpoints, run records), so that the rename
    survives a crash of the machine; downloads and generated datasets skip it.

    On any failure (including a full disk) the temporary file is removed and ``path`` keeps
    whatever it held before.
    """
    path = Path(path)
    thread = "" if threading.current_thread() is threading.main_thread() else f".{threading.get_ident()}"
    tmp = path.with_name(f".{path.name}{thread}.tmp-{os.getpid()}")  # (TEMPORARY_RE finds it after a crash)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_save_npy(path: Path, array) -> None:
    """``np.save`` through :func:`atomic_write` (not durable: for datasets written by the thousand)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write, durable=False)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
