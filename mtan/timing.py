"""Choosing between ways of doing the same work by timing them on the machine at hand.

Which precision or schedule is fastest depends on the processor (bf16 convolutions run at twice
the float32 rate on some CPUs and half of it on others), so the project decides by measuring,
never from CPU flags. The trainer's ``--amp auto`` uses this on a CPU, and the inference copy
(:mod:`mtan.fast`) its precision; the inference choice is remembered (:func:`remember_choice`) so
that a restart on the same machine does not measure again.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from mtan.checkpoint import atomic_write


def fastest(options: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
            margin: float = 0.1, give_up: float = 2.0) -> tuple[str, dict[str, float]]:
    """Run each option ``warmup`` times untimed, then ``repeats`` times interleaved (so that a
    change in the machine's load hits every option alike); return the name of the fastest by
    median time and every option's median in seconds. The first option is the reference: another
    is chosen only if it is faster by more than ``margin`` (10 %), so that noise does not flip the
    choice between options that are about as fast. An option whose first timed run is more than
    ``give_up`` times the fastest first run is not run again (it cannot win, and on some CPUs bf16
    runs 15x slower than float32: timing it five more times would cost minutes)."""
    if not options:
        raise ValueError("fastest() needs at least one option")
    for run in options.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in options}
    running = list(options)
    for round_ in range(max(1, repeats)):
        for name in running:
            start = time.perf_counter()
            options[name]()
            times[name].append(time.perf_counter() - start)
        if round_ == 0:
            best_first = min(times[name][0] for name in running)
            running = [name for name in running if times[name][0] <= give_up * best_first]
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    reference = next(iter(options))
    best = min(medians, key=lambda name: medians[name])
    if medians[best] > medians[reference] * (1 - margin):
        best = reference
    return best, medians


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_identity() -> str:
    """The CPU's model name and a digest of its feature flags: two CPUs sold under one name (an
    "AMD EPYC" with or without bf16 units) tell apart."""
    import hashlib

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return f"{cpu_name()} [{hashlib.sha1(flags.encode()).hexdigest()[:8]}]"


def choice_cache_path() -> Path:
    """Where measured choices are kept: ``$MTAN_CACHE_DIR`` or ``$XDG_CACHE_HOME/mtan`` or
    ``~/.cache/mtan``, file ``precision-choices.json``."""
    root = os.environ.get("MTAN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtan"
    return Path(root) / "precision-choices.json"


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_choice(key: str) -> dict | None:
    """The choice measured earlier for ``key`` (what the measurement depended on, as a string),
    or None; an entry without a ``seconds`` table is ignored."""
    found = _read_choices(choice_cache_path()).get(key)
    return found if isinstance(found, dict) and isinstance(found.get("seconds"), dict) else None


def remember_choice(key: str, choice: dict) -> None:
    """Keep ``choice`` for ``key``; a cache that cannot be written (read-only home) is skipped."""
    path = choice_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = _read_choices(path)
        choices[key] = {k: v for k, v in choice.items() if k != "remembered"}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(choices, indent=1) + "\n", encoding="utf-8"))
    except OSError:
        pass
