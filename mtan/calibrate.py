"""A per-class bias on the segmentation's class scores, fitted on labelled photos after training and
stored with the model: ``python -m mtan.calibrate MODEL_DIR --data camvid``.

Why: a network trained with class balancing (median-frequency weights) learned a prior in which
rare classes (people, poles and signs) are many times more likely than they are, so on new photos
it paints them where they are not. Adding a constant to each class's score moves the decision
between classes without touching anything else; the bias that scores best on labelled photos
undoes most of that prior. Seven numbers fitted on hundreds of photos transfer to other photos far
better than anything with more free values.

How: the model runs each photo as the app does (fitted inside ``--app-resolution``, outputs back
at the photo's size); the class scores of every ``--stride``-th pixel are kept (float16); then
coordinate ascent on the mean IoU over those pixels: for each class in turn, the bias from a grid
of steps (``--steps``) that scores best is kept, for ``--sweeps`` rounds, with shrinking steps.
The bias is stored in the model folder's ``config.json`` (the semantic task's ``class_bias``, which
every path that reads the model's classes applies: ``MTAN.predict``, the app's photos, clips and
webcam, ``mtan.evaluate``), and what it was fitted on and what it changed in ``calibration.json``.
A bias already stored is the starting point (its figures are reported as "before").
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mtan.atomic import atomic_write
from mtan.cli import help_text
from mtan.data import build_dataset, to_memory
from mtan.data.common import options_from_text
from mtan.inference import PhotoView, Resolution
from mtan.malloc import tune_malloc
from mtan.model import MTAN
from mtan.tasks import find_task, task_from_config

CALIBRATION_FILE = "calibration.json"
DEFAULT_STEPS = (1.0, 0.5, 0.25, 0.1, 0.05)


@dataclass
class Scores:
    """Class scores (N x C float16, ``stride``-subsampled pixels) and their labels (N, -1 = none)."""

    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]


def collect_scores(model, dataset, resolution: tuple[int, int] | None, stride: int = 4, batch_size: int = 4,
                   progress: bool = False) -> Scores:
    """Class scores of the model's semantic task on every labelled pixel of ``dataset`` on a grid
    of ``stride``, as the app computes them (``resolution``: the box photos are fitted in; None: as
    they are). Any bias the model holds is taken out again: the scores are the network's own."""

    sem = find_task(model.tasks, "semantic")
    if sem is None:
        raise ValueError("this model has no segmentation task: there is nothing to calibrate")
    memory = to_memory(dataset, device="cpu", progress=progress)
    view = PhotoView(model.eval(), resolution)
    held = torch.tensor(sem.class_bias or [0.0] * sem.num_classes).view(1, -1, 1, 1)
    logits, labels = [], []
    order = torch.arange(len(memory))
    with torch.inference_mode():
        for batch in tqdm(memory.batches(order, batch_size), total=-(-len(memory) // batch_size),
                          desc="scores", disable=not progress):
            out = view(batch["image"])[sem.name].float() - held
            target = batch[sem.name]
            out, target = out[..., ::stride, ::stride], target[..., ::stride, ::stride]
            keep = target.reshape(-1) >= 0
            logits.append(out.permute(0, 2, 3, 1).reshape(-1, sem.num_classes)[keep].half())
            labels.append(target.reshape(-1)[keep].to(torch.int8))
    return Scores(torch.cat(logits), torch.cat(labels))


def confusion(scores: Scores, bias: torch.Tensor, chunk: int = 2_000_000) -> torch.Tensor:
    """The C x C confusion matrix (rows: labels, columns: predictions) of ``scores + bias``."""
    c = scores.num_classes
    out = torch.zeros(c * c, dtype=torch.int64)
    bias = bias.to(torch.float32)
    for start in range(0, len(scores.labels), chunk):
        pred = (scores.logits[start:start + chunk].float() + bias).argmax(1)
        out += torch.bincount(scores.labels[start:start + chunk].long() * c + pred, minlength=c * c)
    return out.view(c, c)


def miou(matrix: torch.Tensor) -> tuple[float, list[float | None]]:
    """Mean IoU over the classes present in labels or predictions, and each class's IoU."""
    tp = matrix.diag().double()
    union = matrix.sum(0).double() + matrix.sum(1).double() - tp
    ious = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(len(tp))]
    present = [v for v in ious if v is not None]
    return (sum(present) / len(present) if present else 0.0), ious


def fit_class_bias(scores: Scores, start: torch.Tensor | None = None, steps=DEFAULT_STEPS,
                   sweeps_per_step: int = 2, log=None) -> torch.Tensor:
    """The per-class bias (mean 0) that maximises the mean IoU of ``scores``: coordinate ascent
    from ``start``, each class moved by +-step while that improves the score, for each step size."""
    c = scores.num_classes
    bias = torch.zeros(c) if start is None else start.clone().float()
    best, _ = miou(confusion(scores, bias))
    for step in steps:
        for _ in range(sweeps_per_step):
            moved = False
            for k in range(c):
                for direction in (1.0, -1.0):
                    while True:
                        trial = bias.clone()
                        trial[k] += direction * step
                        score, _ = miou(confusion(scores, trial))
                        if score <= best + 1e-6:
                            break
                        bias, best, moved = trial, score, True
            if not moved:
                break
        if log:
            log(f"step {step:g}: mIoU {best:.4f}, bias {[round(v, 3) for v in bias.tolist()]}")
    return bias - bias.mean()


def store(model_dir: Path, bias: torch.Tensor, record: dict) -> None:
    """Write ``bias`` into the model folder's config.json (the semantic task's ``class_bias``) and
    ``record`` into its calibration.json (atomically, each)."""
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for task in config["tasks"]:
        if task.get("kind", task.get("name")) == "semantic":
            task["class_bias"] = [round(float(v), 4) for v in bias]
            task_from_config(task)  # checked before it is written
    atomic_write(config_path, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
    atomic_write(model_dir / CALIBRATION_FILE,
                 lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))


def fit(model, fit_data, check_data=None, app_resolution: str | None = "256x512", stride: int = 4,
        progress: bool = False, log=print) -> tuple[torch.Tensor, dict]:
    """The class bias of ``model``'s segmentation fitted on the photos of ``fit_data`` (run as the
    app runs them at ``app_resolution``), scored also on ``check_data`` (photos not fitted on), and
    the record of both: what it was fitted on, mIoU and per-class IoU with and without it, and each
    class's share of the pixels predicted against labelled."""
    sem = find_task(model.tasks, "semantic")
    if sem is None:
        raise ValueError("this model has no segmentation task: there is nothing to calibrate")
    resolution = Resolution.parse(app_resolution) if app_resolution else None
    names = list(sem.class_set.classes)
    zero = torch.zeros(sem.num_classes)

    def shares(s: Scores, b: torch.Tensor) -> dict:
        m = confusion(s, b)
        predicted, labelled = m.sum(0).double() / m.sum(), m.sum(1).double() / m.sum()
        return {n: {"predicted": round(float(p), 4), "labelled": round(float(q), 4)}
                for n, p, q in zip(names, predicted, labelled)}

    def scored(s: Scores, b: torch.Tensor) -> dict:
        without, without_iou = miou(confusion(s, zero))
        with_, with_iou = miou(confusion(s, b))
        return {"miou_without": round(without, 4), "miou_with": round(with_, 4),
                "iou_without": dict(zip(names, without_iou)), "iou_with": dict(zip(names, with_iou)),
                "shares_without": shares(s, zero), "shares_with": shares(s, b)}

    log(f"calibrating on {len(fit_data)} photos at {app_resolution or 'their own size'}")
    scores = collect_scores(model, fit_data, resolution, stride, progress=progress)
    start = torch.tensor(sem.class_bias) if sem.class_bias else None
    bias = fit_class_bias(scores, start, log=log)
    record = {"class_bias": dict(zip(names, [round(float(v), 4) for v in bias])),
              "fitted_on": {"data": getattr(fit_data, "name", type(fit_data).__name__), "photos": len(fit_data),
                            "app_resolution": app_resolution, "pixel_stride": stride},
              "fit": scored(scores, bias)}
    log(f"fitted on: mIoU {record['fit']['miou_without']:.4f} without the bias, {record['fit']['miou_with']:.4f} "
        "with it; bias " + ", ".join(f"{n} {v:+.2f}" for n, v in zip(names, bias.tolist())))
    if check_data is not None:
        record["check"] = {"photos": len(check_data), **scored(collect_scores(model, check_data, resolution, stride,
                                                                             progress=progress), bias)}
        log(f"not fitted on ({len(check_data)} photos): mIoU {record['check']['miou_without']:.4f} without the "
            f"bias, {record['check']['miou_with']:.4f} with it")
    return bias, record


def calibrate(model_dir, data: str = "camvid", data_root=None, split: str = "train", options: dict | None = None,
              app_resolution: str | None = "256x512", check_split: str | None = None, stride: int = 4,
              progress: bool = False, write: bool = True, log=print) -> dict:
    """Fit the class bias of the model in ``model_dir`` on ``split`` of ``data`` (see :func:`fit`),
    score it also on ``check_split``, and store it unless ``write`` is False. Returns the record
    (also written to calibration.json)."""
    model_dir = Path(model_dir)
    model = MTAN.from_pretrained(model_dir)
    opts = dict(options or {})
    fit_data = build_dataset(data, root=data_root, split=split, **opts)
    check = build_dataset(data, root=data_root, split=check_split, **opts) if check_split else None
    bias, record = fit(model, fit_data, check, app_resolution, stride, progress, log)
    record["fitted_on"].update({"data": data, "split": split, "options": opts})
    if check_split:
        record["check"]["split"] = check_split
    if write:
        store(model_dir, bias, record)
        log(f"stored in {model_dir / 'config.json'} (class_bias) and {model_dir / CALIBRATION_FILE}")
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.calibrate", description=help_text(__doc__.split("\n\n")[0]),
                                epilog="Example: python -m mtan.calibrate weights --data camvid --split train "
                                       "--check-split val")
    p.add_argument("model", help="a model folder (config.json and model.safetensors); its config.json is updated")
    p.add_argument("--data", default="camvid", help="labelled photos (a dataset name, default camvid)")
    p.add_argument("--data-root", default=None, help="the dataset's folder (default: found as training finds it)")
    p.add_argument("--split", default="train", help="the photos the bias is fitted on (default train)")
    p.add_argument("--check-split", default=None, help="photos to score it on that were not fitted on, e.g. val")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the dataset's builder, e.g. splits=blocks (repeatable)")
    p.add_argument("--app-resolution", default="256x512", help="the box photos are fitted in, as the app runs them")
    p.add_argument("--stride", type=int, default=4, help="every STRIDE-th pixel in each direction is used")
    p.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    tune_malloc()  # each batch's feature maps reuse the last one's memory: no fresh pages per batch

    try:
        options = options_from_text(args.data_option)
    except ValueError as e:
        p.error(str(e))
    try:
        record = calibrate(args.model, args.data, args.data_root, args.split, options, args.app_resolution,
                           args.check_split, args.stride, progress=args.progress, write=not args.dry_run,
                           log=lambda m: print(m, file=sys.stderr))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
