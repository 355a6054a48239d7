"""CPU inference: the app's forward pass (batch 1, 256x512), fast path against the naive path.

    python benchmarks/cpu_inference.py                        # default model + full-width model
    python benchmarks/cpu_inference.py --model runs/mtan --threads 2 --repeats 7
    python benchmarks/cpu_inference.py --tiny                 # 64x128, small models (for the tests)

Models: ``default`` is the folder ``weights/`` when it holds a model (else a width-0.25 MTAN with
random weights; ``--model DIR`` picks another folder or Hub id) and ``full-width`` is the paper's
2-task CityScapes MTAN (41.2 M parameters) with random weights (``--full-model DIR`` for trained
ones). A model whose BatchNorm statistics were never set (random or placeholder weights) gets
them from a few training-mode forwards on generated street frames first, so that activations
have realistic scales; its predictions still have near-ties that trained weights would not.

Paths, on the same weights and the same input (a generated 256x512 street frame):

* ``naive``: the model as loaded, eager fp32 NCHW, BatchNorm as separate layers;
* ``fast``: ``mtan.inference.fast.optimize_for_inference(model)`` as the app uses it (BatchNorm folded,
  conv + activation fused in oneDNN, channels-last, float32);
* ``fast_bf16``, ``fast_bf16_convs``, ``fast_int8``: the same in bf16, in bf16 convolutions with
  float32 attention masks and heads, and in int8 convolutions (activation scales calibrated on
  the ``--calibration-frames`` generated frames); ``auto_choice`` says which of the three ``precision="auto"`` picks on
  this machine when all three keep the model's quality (the app picks among those its
  ``precisions.json`` keeps);
* ``fast_compiled`` (``--compile``): ``optimize_for_inference(model, precision=<auto's choice>,
  compile=True)``; its compile time (minutes on 2 cores, per input size) is reported apart.

The paths run interleaved, ``--repeats`` times each after one warm-up run; the JSON has the
median and minimum wall time, the median CPU time of the process, the speed-ups and the
agreement of each fast path with the naive one: share of equal class labels, mean relative depth
difference |a - b| / |b| over pixels, max mask difference. Timings on a shared machine are noisy:
the load average before and after is reported; ``--threads 1`` is the most stable measure.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a machine whose
# cores other jobs also use, spinning threads wait for descheduled peers at every parallel op
# (a width-0.25 forward measured 4.5 s instead of 0.56 s with 2 threads on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time

import torch
from _common import REPO, emit, load_average, log, machine

from mtan import MTAN, count_parameters, preset_tasks
from mtan.data.common import parse_size
from mtan.inference.fast import (
    PRECISIONS,
    cpu_amx_bf16,
    cpu_bf16_support,
    optimize_for_inference,
    resolve_precision,
)
from mtan.inference.int8 import int8_available, int8_calibration

GOALS = {"speedup": 3.0, "label_agreement": 0.995, "depth_mean_rel_diff": 0.01, "default_model_forward_s": 0.3}


def street_frames(n: int, h: int, w: int, start: int = 0) -> torch.Tensor:
    """``n`` generated street frames (validation stream), N x 3 x H x W in [0, 1]."""
    from mtan.data.synthetic import render_frame

    frames = [render_frame(0, start + i, h, w, stream=1)["image"] for i in range(n)]
    return torch.stack([torch.from_numpy(f).permute(2, 0, 1).float().div(255) for f in frames])


def bn_untouched(model: MTAN) -> bool:
    """True when no BatchNorm has statistics yet (mean 0, variance 1 everywhere): random or placeholder weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
            if m.running_mean.abs().max() > 0 or (m.running_var - 1).abs().max() > 0:
                return False
    return True


def calibrate(model: MTAN, frames: torch.Tensor) -> None:
    """Set BatchNorm statistics from training-mode forwards (cumulative average over the frames)."""
    saved = {}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            saved[m] = m.momentum
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for k in range(0, len(frames), 2):
            model(frames[k:k + 2])
    for m, momentum in saved.items():
        m.momentum = momentum
    model.eval()


def load_model(source: str | None, width: float, label: str, calib: torch.Tensor) -> tuple[MTAN, dict]:
    info = {"name": label}
    if source:
        model = MTAN.from_pretrained(source)
        info["source"] = str(source)
    else:
        torch.manual_seed(0)
        model = MTAN(preset_tasks("cityscapes-7"), arch="mtan", width=width)
        info["source"] = f"random weights (seed 0), width {width:g}"
    model = model.float().eval()
    if bn_untouched(model):
        calibrate(model, calib)
        info["batchnorm"] = f"statistics set by training-mode forwards on {len(calib)} generated frames"
    else:
        info["batchnorm"] = "as loaded"
    info.update(arch=model.arch, width=model.width, tasks=model.task_names, parameters=count_parameters(model))
    return model, info


def agreement(out: dict, ref: dict, masks=None, ref_masks=None) -> dict:
    result = {}
    sem = [t for t in ref if ref[t].shape[1] > 1 and t != "normal"]
    for t in sem:
        result["label_agreement"] = float((out[t].argmax(1) == ref[t].argmax(1)).double().mean())
    if "depth" in ref:
        a, b = out["depth"].double(), ref["depth"].double()
        nonzero = b.abs() > 1e-6
        rel = (a - b).abs()[nonzero] / b.abs()[nonzero]
        result["depth_mean_rel_diff"] = float(rel.mean()) if rel.numel() else 0.0
        result["depth_median_rel_diff"] = float(rel.median()) if rel.numel() else 0.0
        result["depth_mean_abs_diff_over_mean_abs"] = float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))
    if "normal" in ref:
        cos = (out["normal"].double() * ref["normal"].double()).sum(1).clamp(-1, 1)
        result["normal_mean_angle_deg"] = float(torch.rad2deg(torch.acos(cos)).mean())
    if masks is not None:
        result["mask_max_abs_diff"] = max(float((m - r).abs().max()) for t in ref_masks for part in ref_masks[t]
                                          for m, r in zip(masks[t][part], ref_masks[t][part]))
    return result


def bench_model(model: MTAN, info: dict, x: torch.Tensor, args, calib: torch.Tensor) -> dict:
    paths = {"naive": model, "fast": optimize_for_inference(model, device="cpu", precision="fp32")}
    described = {"naive": "eager fp32 NCHW, BatchNorm layers (the model as loaded)", "fast": paths["fast"].describe()}
    scales = int8_calibration(model, calib) if int8_available() else None
    reduced = [p for p in PRECISIONS[1:] if p in args.precisions]
    for precision in reduced:  # every reduced precision asked for, for its speed and its drift from fp32
        if precision == "int8" and scales is None:
            continue
        key = "fast_" + precision.replace("-", "_")
        paths[key] = optimize_for_inference(model, device="cpu", precision=precision, int8_scales=scales)
        described[key] = paths[key].describe()
    auto = optimize_for_inference(model, device="cpu", allowed=["fp32"] + reduced, size=tuple(x.shape[-2:]),
                                  remember=False, int8_scales=scales)
    info["auto_choice"] = {"precision": auto.precision,
                           "median_s": {p: round(t, 4) for p, t in (auto.choice or {"seconds": {}})["seconds"].items()},
                           "note": "what precision=auto picks here if the model's precisions.json keeps every precision "
                                   "timed"}
    if args.compile:
        compiled = optimize_for_inference(model, device="cpu", precision=auto.precision, compile=True,
                                          int8_scales=scales)  # what auto picked, compiled
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(x, return_attention=True)
            compiled(x)
        info["compile_seconds"] = round(time.perf_counter() - t0, 1)
        if compiled.compile_error:
            info["compile_error"] = compiled.compile_error
        paths["fast_compiled"] = compiled
        described["fast_compiled"] = compiled.describe()
    outputs, walls, cpus = {}, {k: [] for k in paths}, {k: [] for k in paths}
    with torch.no_grad():
        for k, f in paths.items():  # warm-up (oneDNN primitive creation, allocator)
            outputs[k] = f(x, return_attention=True)
        for r in range(args.repeats):
            order = list(paths) if r % 2 == 0 else list(paths)[::-1]  # alternate, so drift hits all alike
            for k in order:
                t0, c0 = time.perf_counter(), time.process_time()
                paths[k](x)
                walls[k].append(time.perf_counter() - t0)
                cpus[k].append(time.process_time() - c0)
    ref, ref_masks = outputs["naive"]
    result = dict(info)
    for k in paths:
        row = {"path": described[k], "median_s": round(statistics.median(walls[k]), 4), "min_s": round(min(walls[k]), 4),
               "cpu_median_s": round(statistics.median(cpus[k]), 4), "runs": len(walls[k])}
        if k != "naive":
            row["speedup_median"] = round(statistics.median(walls["naive"]) / statistics.median(walls[k]), 2)
            row["speedup_min"] = round(min(walls["naive"]) / min(walls[k]), 2)
            row["speedup_cpu_time"] = round(statistics.median(cpus["naive"]) / statistics.median(cpus[k]), 2)
            out, masks = outputs[k]
            row.update(agreement(out, ref, masks, ref_masks))
        result[k] = row
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default model folder or Hub id (default: weights/ if it holds a model)")
    p.add_argument("--full-model", default=None, help="full-width model folder (default: random weights)")
    p.add_argument("--no-full-width", dest="full_width", action="store_false", help="skip the full-width model")
    p.add_argument("--size", default=None, help="HxW (default 256x512; tiny 64x128)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per path (default 5; tiny 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="also time the fast copy under torch.compile (minutes to compile)")
    p.add_argument("--calibration-frames", type=int, default=4)
    p.add_argument("--precisions", default=",".join(PRECISIONS[1:]),
                   help="reduced precisions to time, comma-separated (default: all; bf16 on a CPU without bf16 "
                        "units takes minutes a forward at full width)")
    p.add_argument("--tiny", action="store_true", help="64x128 input, width-1/8 'full-width' model, 2 repeats")
    args = p.parse_args(argv)
    args.precisions = [q.strip() for q in args.precisions.split(",") if q.strip()]
    unknown = [q for q in args.precisions if q not in PRECISIONS[1:]]
    if unknown:
        p.error(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS[1:])}")
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = parse_size(args.size or ("64x128" if args.tiny else "256x512"))
    args.repeats = args.repeats or (2 if args.tiny else 5)
    default_source = args.model
    if default_source is None and (REPO / "weights" / "config.json").is_file() \
            and (REPO / "weights" / "model.safetensors").is_file():
        default_source = str(REPO / "weights")
    info = machine(torch.device("cpu"))
    log(f"cpu_inference: {h}x{w}, {torch.get_num_threads()} threads, load {info['load_average']}")
    x = street_frames(1, h, w, start=100)
    calib = street_frames(args.calibration_frames, h, w, start=200)
    models = [("default", default_source, 0.25)]
    if args.full_width:
        models.append(("full-width", args.full_model, 0.125 if args.tiny else 1.0))
    results = []
    for label, source, width in models:
        model, minfo = load_model(source, width, label, calib)
        log(f"[{label}] {minfo}")
        row = bench_model(model, minfo, x, args, calib)
        log(f"[{label}] naive {row['naive']['median_s']} s, fast {row['fast']['median_s']} s")
        results.append(row)
    bf16, why = cpu_bf16_support()
    emit({"benchmark": "cpu_inference", "tiny": bool(args.tiny), **info, "load_average_after": load_average(),
          "input": [1, 3, h, w], "repeats": args.repeats,
          "bf16": {"native": bf16, "why": why, "amx": cpu_amx_bf16(),
                   "auto_precision": resolve_precision("auto")},
          "goals": GOALS, "models": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
