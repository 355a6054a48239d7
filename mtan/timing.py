"""Choosing between ways of doing the same work by timing them on the machine at hand.

Which precision or schedule is fastest depends on the processor (bf16 convolutions run at twice
the float32 rate on some CPUs and half of it on others), so the project decides by measuring,
never from CPU flags. The trainer's ``--amp auto`` uses this on a CPU.
"""
from __future__ import annotations

import time
from typing import Callable


def fastest(options: dict[str, Callable[[], object]], warmup: int = 1, repeats: int = 5,
            margin: float = 0.1) -> tuple[str, dict[str, float]]:
    """Run each option ``warmup`` times untimed, then ``repeats`` times interleaved (so that a
    change in the machine's load hits every option alike); return the name of the fastest by
    median time and every option's median in seconds. The first option is the reference: another
    is chosen only if it is faster by more than ``margin`` (10 %), so that noise does not flip the
    choice between options that are about as fast."""
    if not options:
        raise ValueError("fastest() needs at least one option")
    for run in options.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(max(1, repeats)):
        for name, run in options.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    reference = next(iter(options))
    best = min(medians, key=lambda name: medians[name])
    if medians[best] > medians[reference] * (1 - margin):
        best = reference
    return best, medians
