"""Wall time of one CityScapes-sized training epoch plus its validation pass, fast vs naive.

    python benchmarks/epoch_time.py                          # 2,975 + 500 generated 128x256 frames
    python benchmarks/epoch_time.py --cache /data/mtan-cache --no-compile
    python benchmarks/epoch_time.py --tiny                   # 64 + 16 frames at 32x64 (for the tests)

Data: procedural street frames (``mtan.data.synthetic``, CityScapes 7-class + inverse depth),
written once in the CityScapes release layout to ``--cache`` (default
``~/.cache/mtan/epoch-time-HxW-seedS``; generating 3,475 frames takes minutes on a CPU, about a
minute with 16 worker processes) and read by the trainer exactly as a real release would be.

Fast path = what ``train.py`` does: a :class:`mtan.train.Engine` (data validated and held in
memory on the device, ``BatchAugment`` on whole batches, bf16 autocast + channels-last + fused
Adam on CUDA, ``torch.compile`` with ``--compile`` (default on CUDA), losses and metrics kept on
the device), with the batched attention branches (``MTAN.set_batched_attention``) on CUDA as train.py; one
``train_epoch`` and ``evaluate`` on the validation split. A first epoch is run to compile / warm
up (on a CPU the first full-width epoch is 20-45 % slower) and the second one is timed (both
are reported); the naive path runs after it, on a warm process.

Naive path = the original's way on the same in-memory data and the same batches (the engine's
batch order and augmentation): fp32, eager, NCHW, attention task by task, foreach Adam, and the
losses and per-batch metrics read on the host with ``.item()`` after every batch (training and
validation).

Agreement: both paths start from the same weights and see the same batches, so their epoch-mean
training losses agree (closely in fp32 on a CPU; bf16 on a GPU moves them by about 1 %); and on
the naive model's final weights the engine's validation losses equal the naive bookkeeping's.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a machine whose
# cores other jobs also use, spinning threads wait for descheduled peers at every parallel op
# (a width-0.25 forward measured 4.5 s instead of 0.56 s with 2 threads on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    emit,
    load_average,
    log,
    machine,
    mean_rows,
    naive_batch_metrics,
    rel_diff,
    sync,
)

from mtan.scoring import evaluate_model
from mtan.train import Engine, TrainConfig
from mtan.runtime import pick_device
from mtan.train.weighting import build_weighting

FULL = {"train": 2975, "val": 500, "size": (128, 256)}
TINY = {"train": 64, "val": 16, "size": (32, 64)}


def ensure_frames(cache: Path, n_train: int, n_val: int, h: int, w: int, seed: int, workers: int) -> float:
    """Write (or complete) the generated release in ``cache``; returns the seconds it took."""
    from mtan.data.synthetic import write_release

    t0 = time.perf_counter()
    have = [len(list((cache / s / "image").glob("*.npy"))) if (cache / s / "image").is_dir() else 0
            for s in ("train", "val")]
    if have[0] < n_train or have[1] < n_val:
        log(f"generating {n_train} + {n_val} frames of {h}x{w} into {cache} ({workers} workers)...")
        write_release(cache, n_train, n_val, h, w, seed=seed, workers=workers, progress=False)
    return time.perf_counter() - t0


def naive_epoch(engine: Engine, model, epoch: int) -> tuple[float, dict]:
    """One epoch the original's way, over the engine's own batches (order and augmentation)."""
    cfg, device = engine.config, engine.runtime.device
    model.train()
    weighting = build_weighting(cfg.optim.weighting, model.task_names, cfg.optim.temperature).to(device)
    weighting.begin_epoch(epoch)
    params = list(model.parameters()) + list(weighting.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    rows = []
    sync(device)
    t0 = time.perf_counter()
    for batch in engine._batches(engine.train_data, cfg.optim.batch_size, epoch, cfg.data.augment):
        batch = dict(batch, image=batch["image"].contiguous())  # NCHW
        outputs = model(batch["image"])
        losses = {t.name: t.loss(outputs[t.name], batch[t.name]) for t in model.tasks}
        total = weighting.combine(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        rows.append(naive_batch_metrics(model.tasks, outputs, batch, losses))
    sync(device)
    return time.perf_counter() - t0, mean_rows(rows)


@torch.no_grad()
def naive_eval(engine: Engine, model, data) -> tuple[float, dict]:
    device = engine.runtime.device
    model.eval()
    rows = []
    sync(device)
    t0 = time.perf_counter()
    bs = engine.config.engine.eval_batch_size or engine.config.optim.batch_size
    for start in range(0, len(data), bs):
        batch = data.batch(torch.arange(start, min(start + bs, len(data)), device=data.device))
        outputs = model(batch["image"])
        losses = {t.name: t.loss(outputs[t.name], batch[t.name]) for t in model.tasks}
        rows.append(naive_batch_metrics(model.tasks, outputs, batch, losses))
    sync(device)
    model.train()
    return time.perf_counter() - t0, mean_rows(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="64 + 16 frames at 32x64, width 1/16 (for the tests)")
    p.add_argument("--cache", type=Path, default=None, help="folder for the generated frames")
    p.add_argument("--train-frames", type=int, default=None)
    p.add_argument("--val-frames", type=int, default=None)
    p.add_argument("--width", type=float, default=None, help="model width (default 1.0; tiny 1/16)")
    p.add_argument("--batch-size", type=int, default=8, help="the protocol's 8 by default")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="fast path with torch.compile (default: on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--batched-attention", choices=["auto", "on", "off"], default="auto",
                   help="the tasks' attention branches as one computation: auto = on CUDA only, as train.py "
                        "(on a CPU it is about 2x slower than task by task)")
    p.add_argument("--no-batched-attention", dest="batched_attention", action="store_const", const="off",
                   help="same as --batched-attention off")
    p.add_argument("--no-naive", dest="naive", action="store_false", help="time the fast path only")
    p.add_argument("--workers", type=int, default=None, help="processes generating frames (default: all cores)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = TINY if args.tiny else FULL
    h, w = spec["size"]
    n_train, n_val = args.train_frames or spec["train"], args.val_frames or spec["val"]
    cache = args.cache or Path.home() / ".cache" / "mtan" / f"epoch-time-{h}x{w}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    gen_s = ensure_frames(cache, n_train, n_val, h, w, args.seed, args.workers or os.cpu_count() or 1)

    device_name = str(pick_device(args.device))
    cuda = device_name.startswith("cuda")
    compile_model = cuda if args.compile is None else args.compile
    if cuda:
        torch.backends.cudnn.benchmark = True
    width = args.width or (1 / 16 if args.tiny else 1.0)
    with tempfile.TemporaryDirectory(prefix="mtan-epoch-time-") as out:
        config = TrainConfig.from_flags(data="synthetic", data_root=str(cache), size=f"{h}x{w}", train_frames=n_train,
                             val_frames=n_val, arch="mtan", width=width, weighting="dwa", batch_size=args.batch_size,
                             augment=True, epochs=2, seed=args.seed, device=device_name, compile=compile_model,
                             # fp32 on a CPU: the path compared with the naive one, whatever --amp auto would time
                             amp="auto" if cuda else "off",
                             batched_attention=args.batched_attention,
                             out=out, progress=False, command="benchmarks/epoch_time.py")
        t0 = time.perf_counter()
        engine = Engine(config, log=log)
        setup_s = time.perf_counter() - t0
        device = engine.runtime.device
        batched = engine.model.batched_attention  # the engine's choice, as in train.py
        initial = copy.deepcopy(engine.model.state_dict())
        info = machine(device)
        log(f"epoch_time: {len(engine.train_data)} train + {sum(len(v) for v in engine.val_data.values())} val "
            f"frames of {h}x{w} on {device}; load {info['load_average']}")

        # fast: the engine (a warm-up epoch first where compiling / autotuning happens)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        epochs = []
        for epoch in range(2):  # the first compiles / autotunes / warms the allocator; the second is timed
            engine.weighting.begin_epoch(epoch)
            epochs.append(engine.train_epoch(epoch))
            log(f"fast epoch {epoch}: {epochs[-1]['seconds']:.2f} s")
        sync(device)
        t0 = time.perf_counter()
        fast_val = {name: engine.evaluate(data) for name, data in engine.val_data.items()}
        sync(device)
        fast_eval_s = time.perf_counter() - t0
        fast = {"path": ("Engine: in-memory data on the device, BatchAugment, "
                         + ("bf16 autocast, channels-last, fused Adam, " if cuda else "fp32, ")
                         + ("torch.compile, " if compile_model else "eager, ")
                         + ("batched attention, " if batched else "attention task by task, ")
                         + "metrics on the device"),
                "train_epoch_s": round(epochs[-1]["seconds"], 3), "eval_s": round(fast_eval_s, 3),
                "total_s": round(epochs[-1]["seconds"] + fast_eval_s, 3),
                "images_per_s": round(epochs[-1]["images"] / epochs[-1]["seconds"], 2),
                "train_loss": epochs[0]["loss"], "val": fast_val}
        if len(epochs) > 1:
            fast["first_epoch_s"] = round(epochs[0]["seconds"], 3)
            fast["timed_epoch"] = "the second (the first compiles / warms up)"
        if cuda:
            fast["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

        result = {"benchmark": "epoch_time", "tiny": bool(args.tiny), **info, "frames": {"train": n_train, "val": n_val},
                  "size": [h, w], "width": width, "batch_size": args.batch_size, "augment": True,
                  "cache": str(cache), "generate_s": round(gen_s, 2), "engine_setup_s": round(setup_s, 2), "fast": fast}

        if args.naive:
            from mtan import MTAN

            model = MTAN([t.to_config() for t in engine.model.tasks], arch=config.model.arch, width=config.model.width).to(device)
            model.load_state_dict(initial)
            naive_train_s, naive_train = naive_epoch(engine, model, 0)
            log(f"naive epoch: {naive_train_s:.2f} s")
            naive_eval_s, naive_val = 0.0, {}
            for name, data in engine.val_data.items():
                s, naive_val[name] = naive_eval(engine, model, data)
                naive_eval_s += s
            result["naive"] = {"path": "fp32, eager, NCHW, attention task by task, foreach Adam, per-batch host "
                                       "metrics (.item()) in training and validation, same batches",
                               "train_epoch_s": round(naive_train_s, 3), "eval_s": round(naive_eval_s, 3),
                               "total_s": round(naive_train_s + naive_eval_s, 3),
                               "images_per_s": round(epochs[0]["images"] / naive_train_s, 2),
                               "train_loss": {t.name: naive_train[f"loss.{t.name}"] for t in model.tasks},
                               "val": naive_val}
            result["speedup_total"] = round(result["naive"]["total_s"] / fast["total_s"], 2)
            result["speedup_train"] = round(naive_train_s / fast["train_epoch_s"], 2)
            # agreement: the same start and batches -> the same epoch losses; the same weights -> the same val losses
            engine_on_naive = {name: evaluate_model(model, data, config.engine.eval_batch_size or config.optim.batch_size,
                                                    runtime=engine.runtime, autocast=engine._autocast,
                                                    prepare=engine._prepare)
                               for name, data in engine.val_data.items()}
            train_diff = {k: rel_diff(fast["train_loss"][k], v) for k, v in result["naive"]["train_loss"].items()}
            val_diff = {f"{name}/{t.name}": rel_diff(engine_on_naive[name][f"loss.{t.name}"],
                                                     naive_val[name][f"loss.{t.name}"])
                        for name in engine.val_data for t in model.tasks}
            result["agreement"] = {
                "train_loss_rel_diff": train_diff, "max_train_loss_rel_diff": max(train_diff.values()),
                "val_loss_rel_diff_same_weights": val_diff, "max_val_loss_rel_diff": max(val_diff.values()),
                "note": "epoch-0 mean training losses of both paths (same initial weights, same batches); "
                        "validation losses of the engine's evaluate_model vs the naive per-batch bookkeeping on "
                        "the naive model's weights" + (" (engine in bf16 autocast)" if cuda else " (both fp32)")}
        result["load_average_after"] = load_average()
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
