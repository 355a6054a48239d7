"""Forward time of an MTAN model on this machine's CPU (or GPU), printed as one JSON object.

    python benchmarks/forward_time.py --tasks cityscapes-7 --size 128x256 --batch 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from mtan import MTAN, count_parameters, preset_tasks  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="cityscapes-7", help="task preset: cityscapes-7, cityscapes-19, nyuv2")
    p.add_argument("--arch", default="mtan", choices=["mtan", "split", "single"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", default="128x256", help="HxW, multiples of 32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    tasks = preset_tasks(args.tasks)
    model = MTAN(tasks[:1] if args.arch == "single" else tasks, arch=args.arch, width=args.width).to(args.device).eval()
    x = torch.rand(args.batch, 3, h, w, device=args.device)
    times = []
    with torch.inference_mode():
        for i in range(args.repeats + 2):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # two warm-up runs
                times.append(time.perf_counter() - t0)
    print(json.dumps({
        "model": f"{args.arch} {args.tasks} width {args.width:g}", "parameters": count_parameters(model),
        "input": [args.batch, 3, h, w], "device": args.device, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "repeats": len(times),
        "path": "eager fp32 NCHW (the plain forward)",
    }))


if __name__ == "__main__":
    main()
