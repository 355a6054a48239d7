"""Evaluate a saved model on a dataset split and print its metrics as one JSON object.

    python -m mtan.evaluate --model runs/smoke --data synthetic --split val
    python -m mtan.evaluate --model user/mtan-cityscapes --data cityscapes --data-root data/cityscapes --out m.json

Keys: ``semantic.miou``, ``semantic.pixel_acc``, ``depth.abs_err``, ``depth.rel_err``,
``normal.mean_deg``, ``normal.median_deg``, ``normal.within_11.25`` ... and ``loss.<task>``.
Only the tasks that both the model and the data have are scored.

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

import torch


def evaluate(model, data: str, data_root=None, split: str = "val", size: str | None = None,
             batch_size: int = 8, device: str = "auto", labels: str = "label_7", frames: int | None = None,
             seed: int = 0, options: dict | None = None, progress: bool = False) -> dict:
    """Metrics of ``model`` (an MTAN, a folder or a Hub repo id) on a dataset split."""
    from mtan.data import build_dataset, to_memory, validate
    from mtan.engine import evaluate_model
    from mtan.model import MTAN

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if not isinstance(model, MTAN):
        model = MTAN.from_pretrained(model)
    model = model.to(dev).eval()
    opts = dict(options or {})
    if data in ("cityscapes", "cityscapes-raw"):
        opts.setdefault("labels", labels)
    if data == "synthetic":
        opts.setdefault("seed", seed)
        if frames is not None:
            opts.setdefault("num_frames", frames)
    dataset = build_dataset(data, root=data_root, split=split, size=size, **opts)
    validate(dataset, full=True, progress=progress)
    memory = to_memory(dataset, device=dev, progress=progress)
    result = evaluate_model(model, memory, batch_size)
    result.update(depth_order(model, memory, batch_size))
    return result


def depth_order(model, memory, batch_size: int = 8) -> dict:
    """``depth_order.*`` keys for a street model (7 categories + inverse depth) on labelled data; else {}."""
    from mtan.metrics import DepthOrderMetric

    semantic = next((t for t in model.tasks if t.kind == "semantic" and t.class_set.name == "cityscapes-7"), None)
    depth = next((t for t in model.tasks if t.kind == "depth" and t.depth_kind == "inverse"), None)
    if semantic is None or depth is None or semantic.name not in memory.targets:
        return {}
    metric = DepthOrderMetric(semantic.num_classes)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(memory), batch_size):
            batch = memory.batch(torch.arange(start, min(start + batch_size, len(memory)), device=memory.device))
            metric.update(model(batch["image"])[depth.name], batch[semantic.name])
    return {f"depth_order.{k}": v for k, v in metric.compute().items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (save_pretrained / a run folder) or Hub repo id")
    p.add_argument("--data", required=True, help="dataset name: cityscapes, nyuv2, camvid, synthetic, ...")
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for synthetic)")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--size", default=None, help="HxW to load the data at (default: the dataset's own)")
    p.add_argument("--labels", default="label_7", help="CityScapes labels: label_7, label_19, label_2")
    p.add_argument("--frames", type=int, default=None, help="synthetic: number of frames of the split")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed of the split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    from mtan.data import DatasetError
    from mtan.model import ModelConfigError

    try:
        result = evaluate(args.model, args.data, args.data_root, args.split, args.size, args.batch_size,
                          args.device, args.labels, args.frames, args.seed, progress=sys.stderr.isatty())
    except (DatasetError, ModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
