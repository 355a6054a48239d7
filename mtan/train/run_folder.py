"""The run folder: its checks before a run starts, the per-epoch line and ``metrics.jsonl``, the
score that picks the best epoch, and the model exported beside the checkpoints."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from safetensors import SafetensorError

from mtan.atomic import fsync_dir
from mtan.checkpoint import CheckpointError, list_checkpoints
from mtan.model import MTAN


def monitor_score(record: dict) -> float | None:
    """Higher is better: the first validation set's mIoU minus its depth relative error (when present)."""
    val = record.get("val")
    if not val:
        return None
    first = next(iter(val.values()))
    score, parts = 0.0, 0
    if first.get("semantic.miou") is not None:
        score += first["semantic.miou"]
        parts += 1
    if first.get("depth.rel_err") is not None:
        score -= min(first["depth.rel_err"], 10.0)
        parts += 1
    return score if parts else None


def summary_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.2e}",
             "train " + " ".join(f"{k.removeprefix('loss.')} {v:.4f}" for k, v in record["train"].items()),
             "w " + " ".join(f"{v:.3f}" for v in record["weights"].values()),
             f"{record['images_per_second']:.1f} img/s"]
    for name, metrics in (record.get("val") or {}).items():
        shown = [f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and not k.startswith(("loss.", "delta_m."))
                 and k.split(".")[-1] in ("miou", "pixel_acc", "abs_err", "rel_err", "mean_deg", "delta_m")]
        parts.append(f"val[{name}] " + " ".join(shown))
    return " | ".join(parts)


def baseline_scores(runs: list[str]) -> dict[str, list[dict]]:
    """The last validation of each single-task run folder in ``runs``, per validation set:
    ``{set name: [scores of run 1, scores of run 2, ...]}`` (what Delta_m compares with)."""
    found: dict[str, list[dict]] = {}
    for run in runs:
        rows = [r for r in read_metrics(Path(run) / "metrics.jsonl") if r.get("val")]
        if not rows:
            raise ValueError(f"--baseline {run}: no validation in its metrics.jsonl; give a finished run folder "
                             f"(python train.py --arch single --task TASK ... --out {run})")
        for name, scores in rows[-1]["val"].items():
            found.setdefault(name, []).append(scores)
    return found


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything before it is good
    return rows


def export(model: MTAN, folder: Path, card: dict) -> None:
    """save_pretrained into ``folder`` (config, weights, model card with the latest results).

    The files are written into a temporary folder and renamed into place one by one, so a run
    killed mid-export never leaves a truncated ``model.safetensors``.
    """
    folder = Path(folder)
    staging = folder / ".export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    card = dict(card)
    extra = card.pop("extra_results", None)
    if extra and len(extra) > len(card.get("results") or {}):
        card["notes"] = ((card.get("notes") or "") + "\n\nAll validation sets:\n\n| metric | value |\n|---|---|\n"
                         + "\n".join(f"| {k} | {v:.4f} |" for k, v in extra.items() if v is not None)).strip()
    try:
        model.save_pretrained(staging, model_card_kwargs=card)
        for name in ("model.safetensors", "config.json", "README.md"):  # weights first, card last
            with open(staging / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staging / name, folder / name)
    except Exception as e:
        if isinstance(e, (OSError, SafetensorError)):  # a full disk surfaces as either
            short = f"could not export the model to {folder}: {getattr(e, 'strerror', None) or e}"
            raise CheckpointError(f"{short}; the files exported there before are intact", short=short) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(folder)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def check_run_folder(out: Path, resume: bool) -> None:
    """Fail early (before any data is read) when the run folder cannot be used.

    A new run needs a writable folder that does not already hold a run (its metrics would be
    mixed up and ``--resume`` would pick up the old checkpoints); ``--resume`` needs a checkpoint.
    """
    if resume:
        if not list_checkpoints(out / "checkpoints"):
            raise CheckpointError(f"{out}: no checkpoint to resume from (checkpoints/epoch_*.safetensors): the run "
                                  f"stopped before its first epoch ended, or its checkpoints were removed; start it "
                                  f"again without --resume")
        return
    if list_checkpoints(out / "checkpoints"):
        raise ValueError(f"--out {out} already holds a training run (checkpoints/epoch_*.safetensors); continue it "
                         f"with python train.py --resume {out}, or choose another --out (or delete the folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out}: the run folder cannot be written ({e.strerror or e}); choose another "
                         f"--out") from None
