"""Shared pieces of the benchmarks: machine description, timing, the naive (original-style) bookkeeping.

Every benchmark prints ONE JSON object on stdout (progress goes to stderr) and measures, in the
same run, our fast path against a naive path doing the same math the way the original
implementation does it (fp32, eager, NCHW, attention task by task, and a host sync with
``.item()`` metrics on every batch).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

from mtan.timing import cpu_name  # noqa: E402 (after the path above)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cpu": cpu_name(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": load_average()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit(result: dict) -> None:
    """The one JSON object on stdout."""
    print(json.dumps(result, default=_jsonable))
    sys.stdout.flush()


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": len(times)}


# --------------------------------------------------------------------------------------
# The original's per-batch bookkeeping (host syncs every step)
# --------------------------------------------------------------------------------------


def naive_batch_metrics(tasks, outputs: dict, batch: dict, losses: dict) -> dict:
    """What the original computes on the host after every batch: each loss as a Python float and
    the batch's metrics (segmentation mIoU and pixel accuracy, depth absolute / relative error,
    normal mean angle), each read with ``.item()``."""
    row = {f"loss.{name}": float(loss.item()) for name, loss in losses.items()}
    for task in tasks:
        pred, target = outputs[task.name].detach().float(), batch[task.name]
        if task.kind == "semantic":
            label = pred.argmax(1)
            valid = target >= 0
            k = task.num_classes
            conf = torch.bincount(target[valid] * k + label[valid], minlength=k * k).view(k, k).cpu().double()
            tp = conf.diag()
            union = conf.sum(0) + conf.sum(1) - tp
            present = union > 0
            row[f"{task.name}.miou"] = float((tp[present] / union[present]).mean().item()) if present.any() else 0.0
            row[f"{task.name}.pixel_acc"] = float((tp.sum() / conf.sum().clamp_min(1)).item())
        elif task.kind == "depth":
            valid = target != 0
            n = valid.sum().item()
            err = (pred - target).abs()[valid]
            row[f"{task.name}.abs_err"] = float(err.sum().item() / max(n, 1))
            row[f"{task.name}.rel_err"] = float((err / target[valid].abs()).sum().item() / max(n, 1))
        elif task.kind == "normal":
            valid = (target != 0).any(1)
            cos = (pred * target).sum(1).clamp(-1, 1)[valid]
            row[f"{task.name}.mean_deg"] = float(torch.rad2deg(torch.acos(cos)).mean().item()) if cos.numel() else 0.0
    return row


def mean_rows(rows: list[dict]) -> dict:
    """The original's epoch figures: the mean over batches of the per-batch values."""
    keys = rows[0].keys() if rows else []
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def rel_diff(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(b), 1e-12)
