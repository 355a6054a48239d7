"""Training speed on this CPU for each network width and precision: which network a run of a few
hours (or days) on this machine can afford.

    python benchmarks/cpu_training_speed.py                           # widths 0.25, 0.375, 0.5; fp32 and bf16
    python benchmarks/cpu_training_speed.py --widths 0.25,1 --crop 128x256 --steps 6
    python benchmarks/cpu_training_speed.py --widths 0.5 --layouts nchw,channels-last   # both memory layouts

Each (width, precision) trains a street MTAN (7 classes + inverse depth) on random images and
targets of the street recipe's crop (192x256, batch 8, channels-last, AdamW): ``--warmup`` steps
untimed, then ``--steps`` timed; the precisions of one width are timed in turns (interleaved), so a
change in the machine's load hits both alike. Prints one JSON object: images per second for each
(width, precision), and bf16's speed-up against fp32 per width. ``--layouts nchw,channels-last``
times each memory layout (what ``train.py --channels-last auto`` chooses between on a CPU): the
results of a width are then keyed by layout.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from _common import log, machine

from mtan import MTAN, preset_tasks


def one_step(model, optimizer, batch, dtype) -> None:
    image, labels, depth = batch
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = model(image)
    loss = F.cross_entropy(out["semantic"].float(), labels, ignore_index=-1) + \
        (out["depth"].float() - depth).abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(width: float, crop: tuple[int, int], batch: int, steps: int, warmup: int, precisions: list[str],
            channels_last: bool = True) -> dict:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = MTAN(preset_tasks("cityscapes-7"), width=width).to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    h, w = crop
    data = (torch.rand(batch, 3, h, w).contiguous(memory_format=layout),
            torch.randint(0, 7, (batch, h, w)), torch.rand(batch, 1, h, w) * 0.3)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for name in precisions:
        for _ in range(warmup):
            one_step(model, optimizer, data, dtypes[name])
    times: dict[str, list[float]] = {name: [] for name in precisions}
    for _ in range(steps):
        for name in precisions:  # interleaved
            start = time.perf_counter()
            one_step(model, optimizer, data, dtypes[name])
            times[name].append(time.perf_counter() - start)
    result = {name: {"images_per_second": round(batch / statistics.median(t), 2),
                     "seconds_per_step": round(statistics.median(t), 3),
                     "spread": round((max(t) - min(t)) / statistics.median(t), 2)} for name, t in times.items()}
    if {"fp32", "bf16"} <= set(result):
        result["bf16_speedup"] = round(result["bf16"]["images_per_second"] / result["fp32"]["images_per_second"], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="0.25,0.375,0.5")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--crop", default="192x256", help="training crop HxW (the street recipe's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layouts", default="channels-last", help="memory layouts to time: channels-last, nchw or both")
    args = p.parse_args()
    crop = tuple(int(v) for v in args.crop.lower().split("x"))
    out = {"machine": machine(torch.device("cpu")), "crop": args.crop, "batch_size": args.batch_size, "widths": {}}
    for width in (float(v) for v in args.widths.split(",")):
        log(f"width {width:g} ...")
        layouts = args.layouts.split(",")
        if not set(layouts) <= {"channels-last", "nchw"}:
            p.error(f"--layouts {args.layouts!r}: each must be channels-last or nchw")
        found = {layout: measure(width, crop, args.batch_size, args.steps, args.warmup, args.precisions.split(","),
                                 channels_last=layout == "channels-last") for layout in layouts}
        out["widths"][f"{width:g}"] = found[layouts[0]] if len(layouts) == 1 else found
        log(json.dumps(out["widths"][f"{width:g}"]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
