"""Training throughput of SegNet-MTAN: our fast path against the original's way, in one run.

    python benchmarks/train_throughput.py                      # GPU: CityScapes + NYUv2, protocol batch + sweep
    python benchmarks/train_throughput.py --configs cityscapes --sweep 8,64,128
    python benchmarks/train_throughput.py --tiny               # CPU smoke size (automatic without CUDA)

Configurations (random images and targets on the device, DWA weighting at epoch 0, Adam 1e-4):

* ``cityscapes``: 7-class segmentation + inverse depth, full width, 128x256, protocol batch 8;
* ``nyuv2``: 13-class segmentation + depth + normals, full width, 288x384, protocol batch 2.

Paths:

* ``naive`` (the original's way): fp32, eager, NCHW, attention branches task by task, default
  (foreach) Adam, and after every step the losses and the batch's metrics read on the host
  with ``.item()`` (a device sync per step);
* ``fast``: bf16 autocast (CUDA), channels-last (CUDA), ``torch.compile`` (CUDA; falls back to
  eager if it fails), fused Adam (CUDA), the tasks' attention branches batched
  (``MTAN.set_batched_attention``), losses accumulated on the device, no host sync per step.

Measured per (path, batch): images/s over ``--steps`` steps after ``--warmup`` steps, peak GPU
memory, and the fraction of the GPU's bf16 peak reached by the FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward (per image). The peak
divided by is ``--peak-tflops`` (default 989.4: the H100 SXM dense bf16 spec; about 800 is
an achievable figure; pass ``--peak-tflops 800`` for that). In the tiny CPU mode
the same code runs a width-1/16 model at 32x64 for 2 steps (for the tests) and checks that
both paths give the same losses before and after one optimiser step.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a machine whose
# cores other jobs also use, spinning threads wait for descheduled peers at every parallel op
# (a width-0.25 forward measured 4.5 s instead of 0.56 s with 2 threads on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from _common import emit, log, machine, naive_batch_metrics, sync

from mtan import MTAN, count_parameters, preset_tasks
from mtan.data.common import parse_size
from mtan.runtime import pick_device
from mtan.train.weighting import build_weighting

CONFIGS = {
    "cityscapes": {"preset": "cityscapes-7", "size": "128x256", "batch": 8, "sweep": "8,16,32,64,128"},
    "nyuv2": {"preset": "nyuv2", "size": "288x384", "batch": 2, "sweep": "2,4,8,16,32,64"},
}
TINY = {"width": 1 / 16, "size": "32x64", "batch": 2, "sweep": "2", "steps": 2, "warmup": 1}
H100_BF16_DENSE_TFLOPS = 989.4


# --------------------------------------------------------------------------------------
# Data and paths
# --------------------------------------------------------------------------------------


def random_batch(tasks, n: int, h: int, w: int, device, seed: int = 0) -> dict:
    """Random images in [0, 1] and plausible targets (a few invalid pixels per task)."""
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(n, 3, h, w, generator=g)}
    for t in tasks:
        if t.kind == "semantic":
            label = torch.randint(t.num_classes, (n, h, w), generator=g)
            batch[t.name] = torch.where(torch.rand(n, h, w, generator=g) < 0.05, -1, label)
        elif t.kind == "depth":
            depth = torch.rand(n, 1, h, w, generator=g) * 0.4 + 0.01
            batch[t.name] = torch.where(torch.rand(n, 1, h, w, generator=g) < 0.05, 0.0, depth)
        else:
            normal = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
            batch[t.name] = torch.where(torch.rand(n, 1, h, w, generator=g) < 0.05, 0.0, normal)
    return {k: v.to(device) for k, v in batch.items()}


class Trainer:
    """One path's model, optimiser and step function."""

    def __init__(self, path: str, model: MTAN, device: torch.device, compile_model: bool, lr: float = 1e-4):
        self.path, self.device = path, device
        cuda = device.type == "cuda"
        self.fast = path.startswith("fast")
        self.model = model.to(device)
        self.channels_last = self.fast
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.set_batched_attention(path == "fast")  # fast_loop: the fast path, attention task by task
        self.model.train()
        self.tasks = self.model.tasks
        self.weighting = build_weighting("dwa", self.model.task_names).to(device)
        self.weighting.begin_epoch(0)
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr, **({"fused": True} if self.fast and cuda else {}))
        self.amp = torch.bfloat16 if (self.fast and cuda) else None
        self.forward = self.model
        self.compile_status = "off"
        if self.fast and compile_model:
            try:
                self.forward = torch.compile(self.model)
                self.compile_status = "on"
            except Exception as e:
                self.compile_status = f"failed ({type(e).__name__}: {e}); eager"
        self.loss_sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=device)
        self.rows: list[dict] = []

    def prepare(self, batch: dict) -> dict:
        if self.channels_last:
            batch = dict(batch, image=batch["image"].contiguous(memory_format=torch.channels_last))
        return batch

    def losses(self, batch: dict) -> tuple[dict, dict]:
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast(self.device.type, enabled=False)
        with ctx:
            outputs = self.forward(batch["image"])
        return outputs, {t.name: t.loss(outputs[t.name], batch[t.name]) for t in self.tasks}

    def step(self, batch: dict) -> None:
        try:
            self._step(batch)
        except Exception as e:
            if self.forward is self.model or isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            self.compile_status = f"failed ({type(e).__name__}: {str(e)[:200]}); eager"
            log(f"warning: torch.compile failed, running eagerly: {type(e).__name__}: {str(e)[:200]}")
            self.forward = self.model
            self._step(batch)

    def _step(self, batch: dict) -> None:
        outputs, losses = self.losses(batch)
        total = self.weighting.combine(losses)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.fast:  # on the device, read once at the end
            self.loss_sums += torch.stack([losses[t.name].detach().double() for t in self.tasks])
        else:  # the original: losses and batch metrics on the host, every step
            self.rows.append(naive_batch_metrics(self.tasks, outputs, batch, losses))


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def count_flops(template: MTAN, h: int, w: int, batched: bool, n: int = 2) -> int:
    """FLOPs of one training forward + backward per image, counted by FlopCounterMode (convolutions
    and matrix products) on the meta device: shapes only, so full-size models cost nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = MTAN([t.to_config() for t in template.tasks], arch=template.arch, width=template.width)
        x = torch.empty(n, 3, h, w)
    model.set_batched_attention(batched).train()
    with FlopCounterMode(display=False) as counter:
        outputs = model(x)
        sum(o.float().mean() for o in outputs.values()).backward()
    return int(counter.get_total_flops() // n)


def measure(path: str, template: MTAN, batch_size: int, spec: dict, args, device, flops: int,
            trainer: Trainer | None = None) -> tuple[dict, Trainer | None]:
    h, w = spec["hw"]
    row = {"path": path, "batch": batch_size}
    try:
        if trainer is None:
            trainer = Trainer(path, copy.deepcopy(template), device, compile_model=args.compile and device.type == "cuda")
        batch = trainer.prepare(random_batch(template.tasks, batch_size, h, w, device, seed=batch_size))
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            trainer.step(batch)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(batch)
        if trainer.fast:
            trainer.loss_sums.tolist()  # the one read at the end
        sync(device)
        seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
        trainer = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row, None
    ips = args.steps * batch_size / seconds
    row.update(status="ok", images_per_s=round(ips, 2), step_ms=round(1000 * seconds / args.steps, 2))
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    row["achieved_tflops"] = float(f"{flops * ips / 1e12:.4g}")
    row["fraction_of_peak"] = float(f"{flops * ips / 1e12 / args.peak_tflops:.4g}")
    if trainer.fast:
        row["compile"] = trainer.compile_status
    return row, trainer


def agreement(template: MTAN, spec: dict, device, args) -> dict:
    """Both paths from the same weights on the same batch: the losses before and after one step."""
    h, w = spec["hw"]
    batch = random_batch(template.tasks, spec["batch"], h, w, device, seed=12345)
    out = {}
    for path in ("naive", "fast"):
        trainer = Trainer(path, copy.deepcopy(template), device, compile_model=False)
        b = trainer.prepare(batch)
        _, before = trainer.losses(b)
        trainer.step(b)
        _, after = trainer.losses(b)
        out[path] = {"before": {k: float(v.detach()) for k, v in before.items()},
                     "after": {k: float(v.detach()) for k, v in after.items()}}
    for when in ("before", "after"):
        out[f"max_rel_diff_{when}"] = max(abs(out["fast"][when][k] - out["naive"][when][k])
                                          / max(abs(out["naive"][when][k]), 1e-12) for k in out["naive"][when])
    out["note"] = ("losses on one batch from the same weights, before and after one Adam step, eager"
                   + (", fast path in bf16 autocast" if device.type == "cuda" else ", both fp32")
                   + "; Adam's first step moves every weight by about lr * sign(gradient), so gradients that are "
                     "round-off noise (e.g. conv biases before BatchNorm) make 'after' differ more than 'before'")
    return out


def run_config(name: str, spec: dict, args, device) -> dict:
    tasks = preset_tasks(spec["preset"])
    torch.manual_seed(args.seed)
    template = MTAN(tasks, arch="mtan", width=spec["width"])
    h, w = spec["hw"]
    log(f"[{name}] {count_parameters(template):,} parameters, {h}x{w}, protocol batch {spec['batch']}")
    flops = count_flops(template, h, w, batched=False)
    flops_fast = count_flops(template, h, w, batched=True)
    result = {"tasks": [t.name for t in template.tasks], "size": [h, w], "width": spec["width"],
              "parameters": count_parameters(template), "protocol_batch": spec["batch"],
              "flops_per_image": flops, "flops_per_image_batched_attention": flops_fast,
              "gflops_per_image": round(flops / 1e9, 2), "runs": []}
    fast_batches = sorted({spec["batch"], *spec["sweep"]})
    batches = {"naive": sorted({spec["batch"], *args.naive_batches}) if device.type == "cuda" else [spec["batch"]],
               "fast": fast_batches, "fast_loop": fast_batches}
    paths = ["naive"] + {"batched": ["fast"], "loop": ["fast_loop"], "both": ["fast", "fast_loop"]}[args.attention]
    for path in paths:
        trainer = None  # one model (and compiled graph) per path, reused across batch sizes
        for bs in batches[path]:
            row, trainer = measure(path, template, bs, spec, args, device, flops, trainer)
            log(f"[{name}] {row}")
            result["runs"].append(row)
    ok = [r for r in result["runs"] if r["status"] == "ok"]
    for path in paths:
        rows = [r for r in ok if r["path"] == path]
        proto = [r for r in rows if r["batch"] == spec["batch"]]
        result[f"{path}_protocol"] = proto[0] if proto else None
        result[f"{path}_best"] = max(rows, key=lambda r: r["images_per_s"]) if rows else None
    fast = paths[1]  # the headline fast path: batched attention unless --attention loop
    if result["naive_protocol"] and result[f"{fast}_protocol"]:
        result["speedup_protocol_batch"] = round(result[f"{fast}_protocol"]["images_per_s"]
                                                 / result["naive_protocol"]["images_per_s"], 2)
    if result["naive_best"] and result[f"{fast}_best"]:
        result["speedup_best"] = round(result[f"{fast}_best"]["images_per_s"] / result["naive_best"]["images_per_s"], 2)
    result["agreement"] = agreement(template, spec, device, args)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="cityscapes,nyuv2", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--tiny", action="store_true", help="CPU smoke size: width 1/16, 32x64, 2 steps (automatic without CUDA)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--sweep", default=None, help="fast-path batch sizes to try (default per config: "
                   + "; ".join(f"{k} {v['sweep']}" for k, v in CONFIGS.items()) + ")")
    p.add_argument("--naive-batches", default="64", help="naive-path batch sizes besides the protocol's (GPU only)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; tiny 1)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="fast path without torch.compile")
    p.add_argument("--attention", choices=["batched", "loop", "both"], default="batched",
                   help="fast path's attention branches: batched (default), task by task ('fast_loop' rows), "
                        "or both to compare")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                   help="bf16 peak the achieved FLOP rate is divided by (default 989.4, H100 SXM dense spec; "
                        "about 800 is achievable)")
    p.add_argument("--width", type=float, default=None, help="model width (default 1.0; tiny 1/16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    args.steps = args.steps or (TINY["steps"] if tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (TINY["warmup"] if tiny else 5)
    args.naive_batches = [int(v) for v in args.naive_batches.split(",") if v]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    configs = {}
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            p.error(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
        spec = dict(CONFIGS[name])
        if tiny:
            spec.update(size=TINY["size"], batch=TINY["batch"], sweep=TINY["sweep"])
        spec["width"] = args.width or (TINY["width"] if tiny else 1.0)
        spec["hw"] = parse_size(spec["size"])
        spec["sweep"] = [int(v) for v in (args.sweep or spec["sweep"]).split(",") if v]
        configs[name] = spec
    info = machine(device)
    results = {name: run_config(name, spec, args, device) for name, spec in configs.items()}
    emit({"benchmark": "train_throughput", "tiny": tiny, **info, "load_average_after": machine(device)["load_average"],
          "steps": args.steps, "warmup": args.warmup, "peak_tflops": args.peak_tflops,
          "peak_note": ("fraction_of_peak = counted FLOPs per image x images/s / peak_tflops; "
                        f"peak_tflops {args.peak_tflops:g}"
                        + (" is the H100 SXM dense bf16 spec" if args.peak_tflops == H100_BF16_DENSE_TFLOPS else "")),
          "paths": {"naive": "fp32, eager, NCHW, attention task by task, foreach Adam, per-step host metrics (.item())",
                    "fast": ("bf16 autocast, channels-last, torch.compile, fused Adam, " if device.type == "cuda" else
                             "fp32 (no autocast on CPU), channels-last, eager, ")
                            + "batched attention, losses kept on the device",
                    "fast_loop": "the fast path with the attention branches task by task (--attention loop/both)"},
          "configs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
