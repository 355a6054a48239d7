"""Command line for the datasets: list them, validate one, measure the in-memory loader.

    python -m mtan.data list
    python -m mtan.data validate cityscapes --root data/cityscapes --split train --option labels=label_19
    python -m mtan.data benchmark --frames 3000 --size 128x256 --batch 8
"""
from __future__ import annotations

import argparse
import ast
import sys
import time

import torch

from mtan.data import DATASETS, MIXTURE_HELP, DatasetError, build_dataset, bytes_per_frame, validate
from mtan.data.memory import InMemoryDataset, measure_throughput
from mtan.tasks import preset_tasks


def _options(pairs: list[str]) -> dict:
    """``["labels=label_19", "classes=11"]`` -> ``{"labels": "label_19", "classes": 11}``."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _benchmark(args) -> None:
    """Time ``iter_batches`` on random CityScapes-like data (images, 7-class labels, p/65535 depth)."""
    h, w = args.size
    tasks = preset_tasks("cityscapes-7")
    g = torch.Generator().manual_seed(0)
    n = args.frames
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    labels = torch.randint(-1, 7, (n, h, w), dtype=torch.int8, generator=g)
    depth = torch.randint(-32768, 32768, (n, 1, h, w), dtype=torch.int32, generator=g).to(torch.int16)
    memory = InMemoryDataset(images, {"semantic": labels, "depth": depth}, tasks, name="random").to(args.device)
    print(memory)
    print(f"bytes for {n} frames at {h}x{w}: {memory.nbytes:,} "
          f"(= {n} x {bytes_per_frame(h, w, tasks):,} per frame; {memory.nbytes / 2**20:.1f} MiB)")
    torch.set_num_threads(args.threads)
    for augment in (False, True):
        rate = measure_throughput(memory, args.batch, augment=augment, seconds=args.seconds)
        print(f"iter_batches on {memory.device}, batch {args.batch}, {h}x{w}, augment={augment}, "
              f"{torch.get_num_threads()} threads: {rate:,.0f} images/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtan.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the dataset names")
    v = sub.add_parser("validate", help="check every file of a dataset")
    v.add_argument("name")
    v.add_argument("--root")
    v.add_argument("--split", default="train")
    v.add_argument("--size")
    v.add_argument("--option", action="append", default=[], help="key=value, e.g. labels=label_19 (repeatable)")
    b = sub.add_parser("benchmark", help="in-memory footprint and loader images/s on random data")
    b.add_argument("--frames", type=int, default=3000)
    b.add_argument("--size", default="128x256")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=torch.get_num_threads())
    b.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, text in DATASETS.items():
            print(f"{name:15s} {text}")
        print(MIXTURE_HELP)
        return 0
    if args.command == "benchmark":
        from mtan.data.common import parse_size

        args.size = parse_size(args.size)
        _benchmark(args)
        return 0
    try:
        t0 = time.perf_counter()
        dataset = build_dataset(args.name, root=args.root, split=args.split, size=args.size, **_options(args.option))
        n = validate(dataset, full=True)
    except (DatasetError, ValueError, TypeError) as e:  # bad names or options too: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{dataset!r}: {n} frames OK ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
