"""Which reduced precisions keep a model's quality: measured once, when the model is released.

    python -m mtan.precision weights                      # the datasets its release scored
    python -m mtan.precision runs/street --data camvid --app-resolution 256x512

A reduced precision (bf16; bf16 convolutions with float32 attention masks and heads; int8
convolutions with activation scales calibrated on generated street scenes and training photos;
see :mod:`mtan.inference.fast`) is judged by what it does to the tasks, not by pixel-by-pixel agreement with
float32: each candidate scores the same validation sets through the app's inference path
(:func:`mtan.evaluate.evaluate` with ``precision=``), and it is *kept* when every mIoU stays within
``0.005`` of float32's and every depth error (``abs_err``, ``rel_err``) within 2 % of float32's,
relative. The record goes into the model folder as ``precisions.json``; the app and
:func:`mtan.inference.fast.optimize_for_inference` then time only the kept ones on the machine at hand
and run the fastest. A folder without the file runs in float32.
"""
from __future__ import annotations

import argparse
import sys

import torch

from mtan.cli import help_text
from mtan.data import DatasetError, build_dataset, parse_size
from mtan.evaluate import evaluate
from mtan.inference.int8 import int8_available, int8_calibration
from mtan.malloc import tune_malloc
from mtan.model import MTAN, ModelConfigError
from mtan.records import PRECISIONS, ResolutionAdvice, write_record

MIOU_TOLERANCE = 0.005      # absolute, mIoU below float32's
ERROR_TOLERANCE = 0.02      # relative, depth errors above float32's
ERROR_METRICS = ("abs_err", "rel_err")   # a depth task's <task>.abs_err, <task>.rel_err


def _scored(key: str) -> bool:
    return key.endswith(".miou") or (not key.startswith("loss.") and key.rsplit(".", 1)[-1] in ERROR_METRICS)


def verdict(reference: dict, candidate: dict) -> list[str]:
    """Why ``candidate``'s metrics fall short of ``reference``'s (float32's); empty when they keep it.
    Compares every ``*.miou`` (within ``MIOU_TOLERANCE``) and depth error (within ``ERROR_TOLERANCE``,
    relative) that both have; better is always fine."""
    reasons = []
    for key, ref in reference.items():
        got = candidate.get(key)
        if ref is None or got is None:
            continue
        if key.endswith(".miou") and got < ref - MIOU_TOLERANCE:
            reasons.append(f"{key} {got:.4f} against {ref:.4f} in fp32 (limit {MIOU_TOLERANCE:g} lower)")
        if key.rsplit(".", 1)[-1] in ERROR_METRICS and got > ref * (1 + ERROR_TOLERANCE) + 1e-12:
            reasons.append(f"{key} {got:.4f} against {ref:.4f} in fp32 (limit {ERROR_TOLERANCE:.0%} higher)")
    return reasons


def calibration_images(data: list[str], size: tuple[int, int], per_dataset: int = 4,
                       roots: list | None = None) -> tuple[torch.Tensor, str]:
    """Images for int8's activation scales: ``per_dataset`` training images of each of ``data``
    (generated street scenes are rendered; photos come from their training split, in ``roots``
    where given) at ``size``, and a line saying what they are."""
    from mtan.data.synthetic import render_frame

    images, words = [], []
    for part, root in zip(data, roots or [None] * len(data)):
        if part == "synthetic":
            frames = [render_frame(0, i, *size, stream=0)["image"] for i in range(per_dataset)]
            images += [torch.from_numpy(f).permute(2, 0, 1).float().div(255) for f in frames]
        else:
            dataset = build_dataset(part, root=root, split="train", size=f"{size[0]}x{size[1]}")
            step = max(1, len(dataset) // per_dataset)
            images += [dataset[i]["image"].float() for i in range(0, step * per_dataset, step)][:per_dataset]
        words.append(f"{per_dataset} {part} training images")
    return torch.stack(images), ", ".join(words) + f" at {size[0]}x{size[1]}"


def check_precisions(model, evaluations: list[dict], candidates=PRECISIONS, calibration=None, log=print) -> dict:
    """Score ``model`` in each of ``candidates`` (float32 first, the reference) on each evaluation
    (``{"name": ..., "kwargs": {...}}``, keyword arguments of :func:`mtan.evaluate.evaluate`) and
    return the record written to ``precisions.json``: per precision its metrics per evaluation,
    whether it is kept, and why not. ``calibration``: ``(images, description)`` for int8's
    activation scales (see :func:`calibration_images`); int8 is skipped without it, or where
    this torch has no quantised CPU engine."""
    candidates = ["fp32"] + [p for p in candidates if p != "fp32"]
    for p in candidates:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    scales = None
    if "int8" in candidates:
        if calibration is None or not int8_available():
            candidates.remove("int8")
        else:
            log(f"int8: activation scales from {calibration[1]} ...")
            scales = int8_calibration(model, calibration[0])
    results: dict[str, dict] = {p: {} for p in candidates}
    for ev in evaluations:  # each dataset loaded once, scored in every precision
        for p in candidates:
            log(f"precision {p}: {ev['name']} ...")
            results[p][ev["name"]] = evaluate(model, device="cpu", precision=p, int8_scales=scales, **ev["kwargs"])
    record = {"reference": "fp32", "tolerance": {"miou": MIOU_TOLERANCE, "depth_error_relative": ERROR_TOLERANCE},
              "evaluations": [ev["name"] for ev in evaluations], "precisions": {}}
    for p, scores in results.items():
        reasons = [f"{name}: {r}" for name in scores for r in verdict(results["fp32"][name], scores[name])]
        record["precisions"][p] = {"kept": not reasons, "reasons": reasons,
                                   "metrics": {name: {k: v for k, v in m.items() if _scored(k)}
                                               for name, m in scores.items()}}
        if p == "int8":
            record["precisions"][p].update(calibrated_on=calibration[1], calibration=scales)
    return record


def table(record: dict) -> str:
    """The record as a Markdown table (the model card's *Precision* section)."""
    names = record["evaluations"]
    keys = sorted({k for r in record["precisions"].values() for m in r["metrics"].values() for k in m})
    head = "| precision | kept | " + " | ".join(f"{n}: {k}" for n in names for k in keys
                                                  if k in record["precisions"]["fp32"]["metrics"][n]) + " |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for p, r in record["precisions"].items():
        cells = [f"{r['metrics'][n][k]:.4f}" if r["metrics"][n].get(k) is not None else "-"
                 for n in names for k in keys if k in record["precisions"]["fp32"]["metrics"][n]]
        rows.append(f"| {p} | {'yes' if r['kept'] else 'no'} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.precision", description=help_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (the record is written there)")
    p.add_argument("--data", action="append", help="a dataset to score on (repeatable; default: synthetic, and "
                   "camvid too when its photos are found)")
    p.add_argument("--data-root", help="the dataset's folder (as for mtan.evaluate)")
    p.add_argument("--app-resolution", default=None, help="score as the app runs photos at this resolution (default: "
                   "the model's best in its resolutions.json, else 256x512)")
    p.add_argument("--frames", type=int, default=None, help="generated frames to score (synthetic only)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="candidates, comma-separated")
    p.add_argument("--dry-run", action="store_true", help="print the record, do not write it")
    args = p.parse_args(argv)
    tune_malloc()  # each batch's feature maps reuse the last one's memory: no fresh pages per batch

    try:
        model = MTAN.from_pretrained(args.model).eval()
        if args.app_resolution is None:
            args.app_resolution = ResolutionAdvice.of_folder(args.model).default
        from mtan.data.camvid import default_root

        data = args.data or (["synthetic", "camvid"] if default_root() else ["synthetic"])
        evaluations = [{"name": f"{d} val at {args.app_resolution}",
                        "kwargs": {"data": d, "data_root": args.data_root, "app_resolution": args.app_resolution,
                                   "frames": args.frames}} for d in data]

        calibration = calibration_images(data, parse_size(args.app_resolution),
                                         roots=[args.data_root] * len(data) if args.data_root else None)
        record = check_precisions(model, evaluations, [c.strip() for c in args.precisions.split(",") if c.strip()],
                                  calibration=calibration)
    except (DatasetError, ModelConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(record))
    for name, r in record["precisions"].items():
        for reason in r["reasons"]:
            print(f"{name} not kept: {reason}")
    if not args.dry_run:
        print(f"wrote {write_record(args.model, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
