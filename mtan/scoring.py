"""Scoring a model on an in-memory dataset: one pass in evaluation mode, every task's loss and
metrics accumulated on the device (summed across the processes of a distributed run). The
trainer's validation, ``mtan.evaluate`` and the release all score this way."""
from __future__ import annotations

import torch

from mtan.model import MTAN
from mtan.runtime import Runtime, all_reduce_, shard_order


def evaluate_model(model: MTAN, data, batch_size: int, runtime: Runtime | None = None, autocast=None,
                   prepare=None, batches=None, metrics_out: dict | None = None, observe=None) -> dict:
    """Validation losses and metrics of ``model`` on an in-memory dataset, as a flat dict
    (``semantic.miou``, ``semantic.iou.<class>``, ``depth.abs_err``, ``loss.semantic``, ...).
    Only the tasks the dataset provides with at least one valid pixel are scored.
    ``metrics_out``: receives each scored task's metric object (e.g. for its confusion matrix);
    ``observe(outputs, batch)``: called with every batch's outputs (for metrics beyond the tasks')."""
    runtime = runtime or Runtime(device=data.device)
    data_tasks = {t.name for t in data.tasks}
    tasks = [t for t in model.tasks if t.name in data_tasks]
    device = data.device
    metrics = {t.name: t.new_metric(device) for t in tasks}
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    loss_counts = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    autocast = autocast or (lambda: torch.autocast(device.type, enabled=False))
    if batches is None:
        def batches(d, bs):
            return d.batches(shard_order(len(d), runtime, None, d.device, drop_last=False), bs)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches(data, batch_size):
            batch = prepare(batch) if prepare else batch
            with autocast():
                outputs = model(batch["image"])
            if observe is not None:
                observe(outputs, batch)
            for k, t in enumerate(tasks):
                pred = outputs[t.name].float()
                metrics[t.name].update(pred, batch[t.name])
                has = t.has_valid(batch[t.name])
                loss_sums[k] += torch.where(has, t.loss(pred, batch[t.name]).double(), torch.zeros((), dtype=torch.float64, device=device))
                loss_counts[k] += has.double()
    model.train(was_training)
    for m in metrics.values():
        all_reduce_(m.state(), runtime)
    all_reduce_([loss_sums, loss_counts], runtime)
    result = {}
    for k, t in enumerate(tasks):
        if loss_counts[k] == 0:  # the set has no valid pixel for this task (e.g. CamVid depth): not scored
            continue
        for name, value in metrics[t.name].compute().items():
            result[f"{t.name}.{name}"] = None if value != value else value
        result[f"loss.{t.name}"] = float(loss_sums[k] / loss_counts[k])
        if metrics_out is not None:
            metrics_out[t.name] = metrics[t.name]
    return result
