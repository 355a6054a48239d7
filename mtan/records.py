"""What a model folder records of its own measurements, read by the app and written by the release.

* ``resolutions.json``: the model's mIoU at each processing resolution the app offers, measured by
  ``mtan.release``, and at the best one with the mirror average (the photo and its mirror image,
  averaged); the app offers the resolutions within ``RESOLUTION_TOLERANCE`` of the best, starts at
  the smallest within ``RESOLUTION_GAIN`` of the best (each step up is four times the pixels), and
  starts with the mirror average on where it gains at least ``MIRROR_GAIN`` there
  (:class:`ResolutionAdvice`).
* ``precisions.json``: which reduced precisions keep the model's quality, measured by
  ``mtan.precision`` (:func:`read_record`, :func:`allowed_precisions`, :func:`int8_scales`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

#: The precisions a model can run in (what each is: :mod:`mtan.inference.fast`); fp32 is the reference.
PRECISIONS = ("fp32", "bf16", "bf16-convs", "int8")

# Processing resolutions offered in the app (height x width); photos are fitted inside them.
RESOLUTIONS = ("128x256", "256x512", "512x1024")
DEFAULT_RESOLUTION = "256x512"
RESOLUTIONS_FILE = "resolutions.json"
RESOLUTION_TOLERANCE = 0.03
#: The mIoU a larger resolution must add over the smallest near the best for the app to start there
#: (each step up is four times the pixels, about four times the network's time).
RESOLUTION_GAIN = 0.01
#: The mIoU the mirror average must add, at the resolution the app starts at, for the app to start with it on
#: (it doubles the network's time).
MIRROR_GAIN = 0.005
PRECISIONS_FILE = "precisions.json"


@dataclass
class ResolutionAdvice:
    """Which processing resolutions to offer for a model, and why the others are not."""

    offered: list[str]
    default: str           # the smallest offered resolution within RESOLUTION_GAIN of the best
    reasons: dict[str, str] = field(default_factory=dict)   # resolution not offered -> why (for the page)
    mirror: bool = False   # start with the mirror average on (it gains at least MIRROR_GAIN at the default)

    @classmethod
    def from_record(cls, record: dict | None) -> "ResolutionAdvice":
        """From a model's resolutions.json (``{"dataset": ..., "scores": {"128x256": mIoU, ...},
        "mirror": {"256x512": mIoU}}``): every resolution within ``RESOLUTION_TOLERANCE`` of the
        best, the smallest within ``RESOLUTION_GAIN`` of the best as the default, and the mirror
        average on where it adds ``MIRROR_GAIN`` at the default; all resolutions and no mirror
        average without a record."""
        scores = {r: v for r, v in ((record or {}).get("scores") or {}).items()
                  if r in RESOLUTIONS and isinstance(v, (int, float)) and math.isfinite(v)}
        if not scores:
            return cls(list(RESOLUTIONS), DEFAULT_RESOLUTION)
        best = max(scores, key=scores.get)
        offered = [r for r in RESOLUTIONS if r in scores and scores[r] >= scores[best] - RESOLUTION_TOLERANCE]
        where = (record or {}).get("dataset") or "its validation photos"
        reasons = {r: (f"{r} is not offered: this model scores {scores[r]:.2f} mIoU there, against "
                       f"{scores[best]:.2f} at {best} ({where})") if r in scores else
                      f"{r} is not offered: it was not measured for this model"
                   for r in RESOLUTIONS if r not in offered}
        default = next(r for r in offered if scores[r] >= scores[best] - RESOLUTION_GAIN)
        mirrored = ((record or {}).get("mirror") or {}).get(default)
        mirror = (isinstance(mirrored, (int, float)) and math.isfinite(mirrored)
                  and mirrored >= scores[default] + MIRROR_GAIN)
        return cls(offered, default, reasons, mirror)

    @classmethod
    def of_folder(cls, folder: str | Path) -> "ResolutionAdvice":
        """From a model folder's ``resolutions.json`` (all resolutions without a readable one)."""
        return cls.from_record(_read_json(Path(folder) / RESOLUTIONS_FILE))


def _read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_record(folder: str | Path) -> dict | None:
    """``precisions.json`` of a model folder, or None (missing or unreadable)."""
    return _read_json(Path(folder) / PRECISIONS_FILE)


def write_record(folder: str | Path, record: dict) -> Path:
    path = Path(folder) / PRECISIONS_FILE
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def allowed_precisions(record: dict | None) -> tuple[str, ...]:
    """The precisions a ``precisions.json`` record keeps (float32 always; only float32 without one)."""
    kept = {"fp32"}
    if isinstance(record, dict) and isinstance(record.get("precisions"), dict):
        kept |= {p for p, r in record["precisions"].items() if p in PRECISIONS and isinstance(r, dict) and r.get("kept")}
    return tuple(p for p in PRECISIONS if p in kept)


def int8_scales(record: dict | None) -> dict | None:
    """int8's activation scales from a ``precisions.json`` record (None when it has none)."""
    try:
        scales = record["precisions"]["int8"]["calibration"]
    except (KeyError, TypeError):
        return None
    return scales if isinstance(scales, dict) else None
