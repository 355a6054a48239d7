"""Multi-task methods side by side on a CPU-sized street benchmark: each weighting of
``train.py --weighting`` trains the same MTAN, and single-task networks of the same width give the
baselines of Delta_m (the multi-task papers' summary: lower is better, negative beats them).

    python benchmarks/mtl_methods.py --tiny                  # seconds a run: what the tests run
    python benchmarks/mtl_methods.py --out ~/mtan-runs/mtl   # the CPU table (hours on 2 cores)
    python benchmarks/mtl_methods.py --seeds 0,1,2 --methods equal,dwa,pcgrad
    python benchmarks/mtl_methods.py --methods nash-mtl,nash-mtl/4   # /N: --solve-every N
    python benchmarks/mtl_methods.py --size 128x256 --width 1 --epochs 200 --data cityscapes \\
        --data-root data/cityscapes --device cuda           # the paper's settings, on a GPU

The data is generated street scenes (7 classes and exact inverse depth; ``--data`` takes any
dataset name of ``train.py``). One JSON object: per method its validation metrics (the mean over
seeds), Delta_m against the single-task runs, its median training seconds per epoch and its overhead
against equal weighting.

With ``--out DIR`` every run keeps its folder there: run the same command again after the machine
stopped and the runs already finished are read back, the one cut short resumes from its last
checkpoint (``train.py --resume``), and the rest start; a folder whose run had other settings is
refused. Without it the runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine  # noqa: E402

from mtan.metrics import DELTA_M_METRICS, delta_m, relative_changes  # noqa: E402
from mtan.train import TrainConfig, apply_preset, train  # noqa: E402
from mtan.train.run_folder import read_metrics  # noqa: E402
from mtan.train.weighting import METHODS  # noqa: E402

# Every weighting, and Nash-MTL finding its weights every 4th step only (--solve-every 4).
DEFAULT_METHODS = METHODS + ("nash-mtl/4",)
SETTINGS = {  # the CPU benchmark and its tiny version
    "full": dict(size="96x192", train_frames=400, val_frames=100, width=0.125, epochs=20, batch_size=8),
    "tiny": dict(size="32x64", train_frames=8, val_frames=4, width=1 / 16, epochs=1, batch_size=4),
}


def run(out: Path, data: str, data_root, settings: dict, seed: int, device: str, **changes) -> dict:
    """One training run's last validation metrics and seconds per epoch: read back from ``out``
    when the run finished there, resumed when it stopped part way, else trained."""
    config = apply_preset(None, dict(data=data, data_root=data_root, **settings, seed=seed, device=device,
                                     lr=1e-3, optimizer="adamw", schedule="cosine", out=str(out), progress=False,
                                     eval_every=settings["epochs"], amp="off", **changes))
    saved = out / "train_config.json"
    history = read_metrics(out / "metrics.jsonl")
    if saved.is_file():
        before = TrainConfig.from_dict(json.loads(saved.read_text()))
        before.command = config.command
        if before != config:
            raise SystemExit(f"{out} holds a run with other settings than this table's: remove it, or pass "
                             "another --out")
    if len(history) < settings["epochs"]:
        resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("epoch_*.safetensors"))
        history = train(config, resume=resume, log=lambda *a, **k: None)
    last = history[-1]
    metrics = next(iter(last["val"].values())) if last.get("val") else {}
    return {"metrics": {k: v for k, v in metrics.items() if k in DELTA_M_METRICS},
            "seconds_per_epoch": statistics.median(r["epoch_seconds"] for r in history)}


def mean_metrics(runs: list[dict]) -> dict:
    keys = set.intersection(*(set(r["metrics"]) for r in runs))
    return {k: statistics.mean(r["metrics"][k] for r in runs) for k in sorted(keys)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="seconds a run (what the tests run)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated --weighting values; METHOD/N adds --solve-every N (e.g. nash-mtl/4)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (metrics are their mean)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--size", default=None, help="HxW (default 96x192; tiny 32x64)")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="keep every run's folder here: run the command again to go on after a stop")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dict(SETTINGS["tiny" if args.tiny else "full"])
    for key in ("size", "width", "epochs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(m for m in methods if m.partition("/")[0] not in METHODS
                     or (m.partition("/")[2] and not m.partition("/")[2].isdigit()))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}, each optionally /N (--solve-every N)")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    results: dict = {"benchmark": "mtl_methods", "tiny": args.tiny, **machine(torch.device(args.device)),
                     "data": args.data, "settings": settings, "seeds": seeds}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.out.expanduser() if args.out else Path(scratch)
        baselines = {}
        for task in ("semantic", "depth"):
            log(f"single-task baseline: {task}")
            runs = [run(tmp / f"single-{task}-{s}", args.data, args.data_root, settings, s, args.device,
                        arch="single", task=task, weighting="equal") for s in seeds]
            baselines[task] = {"metrics": mean_metrics(runs),
                               "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in runs)}
        reference = {k: v for b in baselines.values() for k, v in b["metrics"].items()}
        table = {}
        for method in methods:
            log(f"method: {method}")
            name, _, every = method.partition("/")
            runs = [run(tmp / f"{name}-{every or 1}-{s}", args.data, args.data_root, settings, s, args.device,
                        weighting=name, solve_every=int(every or 1)) for s in seeds]
            metrics = mean_metrics(runs)
            shared = {k: v for k, v in reference.items() if k in metrics}
            table[method] = {"metrics": metrics, "delta_m": delta_m(metrics, shared, DELTA_M_METRICS),
                             "changes": relative_changes(metrics, shared, DELTA_M_METRICS),
                             "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in runs)}
        if "equal" in table:
            for row in table.values():
                row["overhead_vs_equal"] = row["seconds_per_epoch"] / table["equal"]["seconds_per_epoch"]
    results.update(baselines=baselines, methods=table, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
