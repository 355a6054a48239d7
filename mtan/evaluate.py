"""Evaluate a saved model on a dataset split and print its metrics as one JSON object.

    python -m mtan.evaluate --model runs/smoke                                     # a run, on its own validation data
    python -m mtan.evaluate --model runs/smoke --data synthetic --split val
    python -m mtan.evaluate --model weights --data camvid                          # CamVid at its own 360x480
    python -m mtan.evaluate --model weights --data camvid --app-resolution 256x512 # as the app sees photos
    python -m mtan.evaluate --model user/mtan-cityscapes --data cityscapes --data-root data/cityscapes --out m.json

Images of any size are scored on their own pixels: the network sees them padded to multiples of
32 (as ``MTAN.predict`` pads) and the padding is cut off its outputs. By default each dataset is
read at its own size (``--size`` resizes it first). ``--app-resolution HxW`` scores the way the
app runs a photo: fitted inside HxW (aspect kept, bilinear with antialiasing), run, and every
output brought back to the photo's size (bilinear) before it is compared with the labels.

With a run folder and no ``--data``, the run's own validation data is scored with the run's
settings (data, root, size, frames, labels), one JSON object per part of a mixture
(``{"synthetic": {...}, "camvid": {...}}``): the figures of the run's last validation.

Keys: ``semantic.miou``, ``semantic.pixel_acc``, ``semantic.iou.<class>`` (each class's IoU;
null for a class in neither prediction nor labels), ``depth.abs_err``, ``depth.rel_err``,
``normal.mean_deg``, ``normal.median_deg``, ``normal.within_11.25`` ... and ``loss.<task>``.
Only the tasks that both the model and the data have are scored. With ``--data``, each
segmentation task also gets ``semantic.precision.<class>`` (of the pixels called the class, the
share labelled so) and ``semantic.called_vs_labelled.<class>`` (pixels called the class over
pixels labelled so: 1 = called as often as it occurs). ``--confusion FILE`` writes each
segmentation task's confusion matrix (pixel counts, rows = labels, columns = predictions).

For a street model (CityScapes 7 categories + inverse depth) on data with labels, the ordering
of the predicted depth is scored too, which works without depth ground truth (CamVid):
``depth_order.ground_row_spearman`` (Spearman's rho between the inverse depth of road and
pavement pixels and their image row, averaged over images: 1 = the ground recedes towards the
horizon everywhere) and ``depth_order.sky_farthest`` (the share of images whose sky has a lower
mean inverse depth than every other class in view); see ``mtan.metrics.DepthOrderMetric``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtan.cli import help_text
from mtan.data import DatasetError, build_dataset, to_memory, validate
from mtan.data.common import options_from_text
from mtan.data.registry import spec
from mtan.inference.fast import optimize_for_inference
from mtan.inference.pipeline import PhotoView, Resolution
from mtan.malloc import tune_malloc
from mtan.metrics import DepthOrderMetric, with_delta_m
from mtan.model import MTAN, ModelConfigError
from mtan.records import PRECISIONS, read_record
from mtan.records import int8_scales as recorded_scales
from mtan.runtime import pick_device
from mtan.scoring import evaluate_model
from mtan.tasks import CITYSCAPES_7, find_task
from mtan.train import TrainConfig
from mtan.train.datasets import validation_parts

_LOADED: dict = {}  # the last two splits loaded (checked and in memory), by what was asked for


def evaluate(model, data: str, data_root=None, split: str = "val", size: str | None = None,
             batch_size: int = 8, device: str = "auto", labels: str = "label_7", frames: int | None = None,
             seed: int = 0, options: dict | None = None, progress: bool = False,
             app_resolution: str | None = None, metrics_out: dict | None = None, flip: bool = False,
             precision: str | None = None, int8_scales: dict | None = None) -> dict:
    """Metrics of ``model`` (an MTAN, a folder or a Hub repo id) on a dataset split, at the data's
    own size (or ``size``), or as the app sees photos with ``app_resolution`` ("256x512").
    ``metrics_out`` receives each task's metric object (see :func:`mtan.scoring.evaluate_model`).
    ``precision``: run through the app's inference copy (:mod:`mtan.inference.fast`) in this precision
    (``fp32``, ``bf16``, ``bf16-convs``, ``int8``) instead of the plain model; int8 takes its
    activation scales from ``int8_scales``, else from the model folder's ``precisions.json``."""
    dev = pick_device(device)
    if not isinstance(model, MTAN):
        if precision == "int8" and int8_scales is None:
            int8_scales = recorded_scales(read_record(model)) if Path(str(model)).is_dir() else None
            if int8_scales is None:
                raise ValueError(f"--precision int8: {model} has no int8 calibration in its precisions.json "
                                 "(python -m mtan.precision MODEL measures it)")
        model = MTAN.from_pretrained(model)
    model = model.to(dev).eval()
    opts = {**spec(data).split_options(split, labels=labels, frames=frames, seed=seed), **(options or {})}
    key = json.dumps([data, str(data_root), split, size, str(dev), opts], sort_keys=True, default=str)
    memory = _LOADED.get(key)
    if memory is None:
        dataset = build_dataset(data, root=data_root, split=split, size=size, **opts)
        validate(dataset, full=True, progress=progress)
        memory = to_memory(dataset, device=dev, progress=progress)
        while len(_LOADED) >= 2:  # the last two splits stay: scoring them again (other resolutions, precisions) reuses them
            _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = _LOADED.pop(key, memory)  # most recent last
    runner = optimize_for_inference(model, device=dev, precision=precision, int8_scales=int8_scales) \
        if precision else model
    view = PhotoView(runner, Resolution.parse(app_resolution) if app_resolution else None, flip=flip)
    order = DepthOrder.of(model, memory)
    result = evaluate_model(view, memory, batch_size, metrics_out=metrics_out,
                            observe=order.update if order else None)
    if order:
        result.update(order.compute())
    return result


class DepthOrder:
    """``depth_order.*`` keys for a street model (7 categories + inverse depth) on labelled data,
    fed with the outputs of the evaluation's own forward passes."""

    def __init__(self, semantic, depth):
        self.semantic, self.depth = semantic, depth
        self.metric = DepthOrderMetric(semantic.num_classes)

    @classmethod
    def of(cls, model, memory) -> "DepthOrder | None":
        semantic = find_task(model.tasks, "semantic", class_set=CITYSCAPES_7)
        depth = find_task(model.tasks, "depth", depth_kind="inverse")
        if semantic is None or depth is None or semantic.name not in memory.targets:
            return None
        return cls(semantic, depth)

    def update(self, outputs: dict, batch: dict) -> None:
        self.metric.update(outputs[self.depth.name].float(), batch[self.semantic.name])

    def compute(self) -> dict:
        return {f"depth_order.{k}": v for k, v in self.metric.compute().items()}


def evaluate_run(run, **kwargs) -> dict:
    """A run folder's model on the run's own validation data, with the run's settings: the
    figures of its last validation (one result per part of a mixture)."""
    path = Path(str(run)) / "train_config.json"
    if not Path(str(run)).exists():
        raise ValueError(f"{run} does not exist here: pass a run folder (train.py --out, e.g. runs/smoke); a model "
                         "folder or a Hub id USER/NAME needs --data too (e.g. --data camvid)")
    if not path.is_file():
        raise ValueError(f"--data is needed: {run} is not a run folder (it has no train_config.json), so it "
                         "says nothing about its data; e.g. --data camvid or --data synthetic")
    config = TrainConfig.from_dict(json.loads(path.read_text()))
    parts = validation_parts(config)
    results = {part: evaluate(str(run), part, root, "val", config.data.size, config.engine.eval_batch_size or config.optim.batch_size,
                              options=options, **kwargs) for part, root, options in parts}
    return results[config.data.name] if len(parts) == 1 else results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.evaluate", description=help_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (save_pretrained / a run folder) or Hub repo id")
    p.add_argument("--data", default=None, help="dataset name: cityscapes, nyuv2, camvid, synthetic, ... (default, "
                                                "for a run folder: the run's own validation data and settings)")
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for synthetic)")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--size", default=None, help="HxW to load the data at (default: the dataset's own, e.g. "
                                                "CamVid 360x480); any size works")
    p.add_argument("--app-resolution", default=None, metavar="HxW",
                   help="score as the app does at this processing resolution (e.g. 256x512): each image fitted "
                        "inside it, run, and the outputs brought back to the image's size")
    p.add_argument("--flip", action="store_true", help="test-time augmentation: average each image's outputs with "
                                                        "those of its mirror image")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="run through the app's inference copy in this precision (default: the plain fp32 model)")
    p.add_argument("--confusion", default=None, metavar="FILE",
                   help="write the confusion matrix of each segmentation task to this JSON file")
    p.add_argument("--labels", default="label_7", help="CityScapes labels: label_7, label_19, label_2")
    p.add_argument("--frames", type=int, default=None, help="synthetic: number of frames of the split")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed of the split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the dataset's builder, e.g. splits=blocks for CamVid (repeatable)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--baseline", nargs="+", default=None, metavar="MODEL",
                   help="single-task models (run folders, model folders or Hub ids) scored on the same data: adds "
                        "delta_m, the multi-task papers' Delta_m in percent (lower is better; negative beats the "
                        "baselines), and delta_m.changes, each metric's change against its baseline (positive = worse)")
    args = p.parse_args(argv)
    tune_malloc()  # each batch's feature maps reuse the last one's memory: no fresh pages per batch

    try:
        options = options_from_text(args.data_option)
    except ValueError as e:
        p.error(str(e))

    metrics: dict = {}
    try:
        if args.data is None:
            result = evaluate_run(args.model, device=args.device, progress=sys.stderr.isatty(),
                                  app_resolution=args.app_resolution, flip=args.flip, precision=args.precision)
        else:
            result = evaluate(args.model, args.data, args.data_root, args.split, args.size, args.batch_size,
                              args.device, args.labels, args.frames, args.seed, progress=sys.stderr.isatty(),
                              options=options, app_resolution=args.app_resolution, metrics_out=metrics,
                              flip=args.flip, precision=args.precision)
        if args.baseline:
            scored = []
            for base in args.baseline:
                if args.data is None:
                    scored.append(evaluate_run(base, device=args.device, app_resolution=args.app_resolution,
                                               flip=args.flip))
                else:
                    scored.append(evaluate(base, args.data, args.data_root, args.split, args.size, args.batch_size,
                                           args.device, args.labels, args.frames, args.seed, options=options,
                                           app_resolution=args.app_resolution, flip=args.flip))

            result = with_delta_m(result, scored)
        for name, metric in metrics.items():  # the model's own scores, not the baselines'
            if hasattr(metric, "class_balance"):
                result.update({f"{name}.{k}": v for k, v in metric.class_balance().items()})
    except (DatasetError, ModelConfigError, ValueError, KeyError) as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.confusion:
        tables = {name: m.confusion_table() for name, m in metrics.items() if hasattr(m, "confusion_table")}
        Path(args.confusion).write_text(json.dumps(tables, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
