"""Measure what each part of a training recipe is worth: train one variant per change, score each
on CamVid val at its own 360x480 (and at the app's processing resolutions), print one table.

    python recipes/ablation.py --out runs/ablation                  # the street recipe's changes
    python recipes/ablation.py --out runs/ablation --epochs 6 --init-from weights --only full,no-photometric

Every variant is the ``street`` preset with one change (``full`` is the preset itself; ``paper``
is the old recipe: zoom-in scales only, no photometric augmentation, Adam + StepLR, no smoothing).
Variants already trained in ``--out`` are not trained again, so a stopped ablation continues
where it left off. The table (markdown, and ``ablation.json`` in ``--out``) gives each variant's
mIoU, per-class IoU and ground-order figures at CamVid's own size, its mIoU at each app
resolution, and its training time. ``--tiny`` runs the same on a few generated frames (a test).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict] = {
    "full": {},
    "paper": dict(scale_range=None, crop=None, size="192x256", photometric=False, optimizer="adam",
                  schedule="step", step_size=1000, warmup_epochs=0.0, label_smoothing=0.0, depth_smoothness=0.0),
    "no-zoom-out": dict(scale_range="1.0,2.0"),
    "no-photometric": dict(photometric=False),
    "step-schedule": dict(optimizer="adam", schedule="step", step_size=1000, warmup_epochs=0.0),
    "no-class-weights": dict(class_weights="none"),
    "no-label-smoothing": dict(label_smoothing=0.0),
    "no-depth-smoothness": dict(depth_smoothness=0.0),
    "camvid-only": dict(data="camvid"),
}
APP_RESOLUTIONS = ("128x256", "256x512", "512x1024")
TINY = dict(data="synthetic", size="64x96", crop="32x64", train_frames=16, val_frames=8, width=0.0625, batch_size=4,
            epochs=1, eval_every=1, amp="off")


def run_variant(name: str, change: dict, args) -> Path:
    from mtan.train import apply_preset, train

    out = Path(args.out) / name
    if (out / "model.safetensors").is_file() and (out / "train_config.json").is_file():
        return out  # trained by an earlier call
    overrides = dict(TINY) if args.tiny else {}
    overrides.update(out=str(out), progress=False)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.init_from:
        overrides["init_from"] = args.init_from
    overrides.update({k: v for k, v in change.items() if not (args.tiny and k in ("data", "size"))})
    config = apply_preset("street", {k: v for k, v in overrides.items() if v is not None})
    for key in ("scale_range", "crop"):  # a None in the change means: the preset's setting is switched off
        if key in change and change[key] is None:
            setattr(config.data, key, None)
    config.command = f"python recipes/ablation.py --only {name}"
    start = time.perf_counter()
    train(config, log=lambda line: print(f"[{name}] {line}", flush=True))
    (out / "ablation_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return out


def score(folder: Path, tiny: bool) -> dict:
    from mtan.evaluate import evaluate

    if tiny:
        data = dict(data="synthetic", size="64x96", frames=8)
    else:
        data = dict(data="camvid")
    row = {"native": evaluate(str(folder), **data)}
    for resolution in APP_RESOLUTIONS[:1] if tiny else APP_RESOLUTIONS:
        row[resolution] = evaluate(str(folder), app_resolution=resolution, **data)["semantic.miou"]
    seconds = folder / "ablation_seconds.txt"
    row["train_hours"] = float(seconds.read_text()) / 3600 if seconds.is_file() else None
    return row


def table(rows: dict[str, dict]) -> str:
    classes = [k.split(".")[-1] for k in next(iter(rows.values()))["native"] if k.startswith("semantic.iou.")]
    resolutions = [r for r in APP_RESOLUTIONS if r in next(iter(rows.values()))]
    head = ["variant", "mIoU (native)", *classes, *(f"app {r}" for r in resolutions), "ground rho", "roughness",
            "CPU h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for name, row in rows.items():
        n = row["native"]
        cells = [name, f(n.get("semantic.miou")), *(f(n.get(f"semantic.iou.{c}")) for c in classes),
                 *(f(row.get(r)) for r in resolutions), f(n.get("depth_order.ground_row_spearman")),
                 f(n.get("depth_order.roughness")), f(row.get("train_hours"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation", help="one run folder per variant goes in here")
    p.add_argument("--only", help=f"comma-separated variants (default all: {', '.join(VARIANTS)})")
    p.add_argument("--epochs", type=int, help="epochs per variant (default: the preset's)")
    p.add_argument("--init-from", help="start every variant from this model (fine-tuning ablation)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long version on generated frames")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows = {}
    for name in names:
        rows[name] = score(run_variant(name, VARIANTS[name], args), args.tiny)
    Path(args.out, "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
