"""``--amp auto`` and ``--channels-last auto`` on a CPU: which precision (float32 or bf16 autocast)
and which memory layout (NCHW or channels-last) train fastest on this machine.

bf16 is twice as fast as float32 on some CPUs and several times slower on others, and channels-last
halves a bf16 step on some: the only reliable answer is a measurement. :func:`choose` times a few
training steps in every combination still open and keeps the fastest (plain float32 NCHW unless
another is more than 10 % faster, the rule of :func:`mtan.timing.fastest`). A run resumed on the
same CPU keeps what its checkpoints record and times nothing; on another kind of CPU it times again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mtan.checkpoint import CheckpointError, list_checkpoints, read_header
from mtan.timing import cpu_identity, fastest


@dataclass(frozen=True)
class Speed:
    amp: str     # "off" or "bf16"
    layout: str  # "off" (NCHW) or "on" (channels-last)


def recorded(checkpoint_dir: Path) -> dict:
    """The precision, memory layout and CPU the newest checkpoint records (empty without one)."""
    found = list_checkpoints(checkpoint_dir)
    if not found:
        return {}
    try:
        header = read_header(found[0][1])  # the header alone: resuming reads the tensors
    except CheckpointError:
        return {}
    return {k: header.get(k) for k in ("amp", "channels_last", "cpu")}


def choose(amp: str, layout: str, record: dict, step: Callable[[Speed], None], log=print) -> Speed:
    """The precision and layout to train in. ``amp`` and ``layout`` are the options as given
    (``auto`` leaves that one to the measurement); ``record`` is what the run being resumed
    recorded (:func:`recorded`); ``step(speed)`` runs one training step in that speed and must
    leave no trace (the caller restores the model, the random state and the weighting)."""
    here = cpu_identity()
    same_cpu = record.get("cpu") in (None, here)
    amps = ["off", "bf16"] if amp == "auto" else [amp]
    layouts = ["off", "on"] if layout == "auto" else [layout]
    if same_cpu and amp == "auto" and record.get("amp"):
        amps = [record["amp"]]
        log(f"amp {amps[0]} (as the run being resumed chose on this CPU)")
    if same_cpu and layout == "auto" and record.get("channels_last"):
        layouts = [record["channels_last"]]
        log(f"channels-last {layouts[0]} (as the run being resumed chose on this CPU)")
    if not same_cpu:
        log(f"resuming on another CPU ({here}; the run so far: {record['cpu']}, amp {record.get('amp')}, "
            f"channels-last {record.get('channels_last', 'off')}): timing them again")
    if len(amps) * len(layouts) == 1:
        return Speed(amps[0], layouts[0])
    options = {(f"{a} channels-last" if l == "on" else a): Speed(a, l) for l in layouts for a in amps}
    choice, seconds = fastest({name: (lambda s=s: step(s)) for name, s in options.items()})
    chosen = options[choice]
    log("; ".join(([f"amp auto: {chosen.amp}"] if len(amps) > 1 else [])
                  + ([f"channels-last auto: {chosen.layout}"] if len(layouts) > 1 else []))
        + " (seconds per training step on this CPU: " + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()) + ")")
    return chosen
