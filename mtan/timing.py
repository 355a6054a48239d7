"""Choosing between ways of doing the same work by timing them on the machine at hand.

Which precision or schedule is fastest depends on the processor (bf16 convolutions run at twice
the float32 rate on some CPUs and half of it on others), so the project decides by measuring,
never from CPU flags. The trainer's ``--amp auto`` uses this on a CPU, and the inference copy
(:mod:`mtan.inference.fast`) its precision; the inference choice is remembered (:func:`remember_choice`) so
that a restart on the same machine does not measure again.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mtan.atomic import atomic_write


# A measurement is trusted (kept for later starts) only when it was quiet: each option's timings
# within this spread of their median, and the process got this share of the cores it asked for.
MAX_SPREAD = 0.3
MIN_CPU_SHARE = 0.5
# A remembered figure is used only while the same work still takes within this factor of it.
STALE_FACTOR = 1.5


@dataclass
class Measurement:
    """What :func:`measure` found: the fastest option, every option's median seconds, and how
    quiet the machine was while it measured."""

    best: str
    seconds: dict[str, float]
    spread: float              # the largest (max - min) / median of any option's timed runs
    cpu_share: float | None    # this process's CPU time / (wall time x its threads), 0..1
    load_average: float | None

    @property
    def quiet(self) -> bool:
        return self.spread <= MAX_SPREAD and (self.cpu_share is None or self.cpu_share >= MIN_CPU_SHARE)

    def record(self) -> dict:
        return {"seconds": self.seconds, "spread": round(self.spread, 3),
                "cpu_share": None if self.cpu_share is None else round(self.cpu_share, 3),
                "load_average": self.load_average, "quiet": self.quiet}


def measure(options: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
            margin: float = 0.1, give_up: float = 2.0, threads: int | None = None) -> Measurement:
    """Run each option ``warmup`` times untimed, then ``repeats`` times interleaved (so that a
    change in the machine's load hits every option alike); the fastest by median time. The first
    option is the reference: another is chosen only if it is faster by more than ``margin`` (10 %),
    so that noise does not flip the choice between options that are about as fast. An option whose
    first timed run is more than ``give_up`` times the fastest first run is not run again (it
    cannot win, and on some CPUs bf16 runs 15x slower than float32). Also measured: the spread of
    each option's runs and the share of the cores (``threads``, default torch's) the process got,
    which tell a busy machine from a quiet one (:attr:`Measurement.quiet`)."""
    if not options:
        raise ValueError("measure() needs at least one option")
    if threads is None:
        threads = torch.get_num_threads()
    for run in options.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in options}
    running = list(options)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for round_ in range(max(1, repeats)):
        for name in running:
            start = time.perf_counter()
            options[name]()
            times[name].append(time.perf_counter() - start)
        if round_ == 0:
            best_first = min(times[name][0] for name in running)
            running = [name for name in running if times[name][0] <= give_up * best_first]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    reference = next(iter(options))
    best = min(medians, key=lambda name: medians[name])
    if medians[best] > medians[reference] * (1 - margin):
        best = reference
    spread = max(((max(t) - min(t)) / medians[n] if medians[n] > 0 and len(t) > 1 else 0.0) for n, t in times.items())
    share = min(1.0, cpu / (wall * max(1, threads))) if wall > 0 else None
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load = None
    return Measurement(best, medians, spread, share, load)


def fastest(options: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
            margin: float = 0.1, give_up: float = 2.0) -> tuple[str, dict[str, float]]:
    """:func:`measure`'s choice and every option's median seconds."""
    m = measure(options, warmup, repeats, margin, give_up)
    return m.best, m.seconds


def still_fresh(recorded_seconds: float, run: Callable[[], object], repeats: int = 3) -> tuple[bool, float]:
    """Whether work that was measured at ``recorded_seconds`` still takes about that long here
    (within :data:`STALE_FACTOR` either way): one untimed run, then the median of ``repeats``."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    now = sorted(times)[len(times) // 2]
    fresh = recorded_seconds > 0 and recorded_seconds / STALE_FACTOR <= now <= recorded_seconds * STALE_FACTOR
    return fresh, now


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
