"""The attention branches of every task at once: the tasks' BatchNorm, 1x1 convolutions and masks
run as one batched call each (the same arithmetic as a loop over the tasks, fewer kernel launches)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtan.model.blocks import ConvBNReLU


def plain_norm(module: nn.Module) -> bool:
    """A plain BatchNorm2d (not a subclass such as SyncBatchNorm), or a folded-away Identity."""
    return type(module) in (nn.BatchNorm2d, nn.Identity)


def norm_signature(module: nn.Module):
    """What must agree between the tasks' norms for them to run batched (None: not batchable)."""
    if type(module) is nn.Identity:
        return "identity"
    if type(module) is not nn.BatchNorm2d:
        return None
    return (module.training, module.track_running_stats, module.running_mean is None, module.affine,
            module.eps, module.momentum)


def task_batch_norm(x: torch.Tensor, tasks: int, norms) -> torch.Tensor:
    """BatchNorm of ``x`` (T*N x C x H x W, T tasks stacked task-major) with per-task statistics.

    ``norms``: one ``BatchNorm2d`` shared by all tasks, or a list with one per task. Gives what
    calling the module(s) on each task's N rows separately gives: in training mode each task's
    rows are normalised with their own batch mean and (biased) variance, and the running
    statistics are updated as the separate calls would (a shared module: T updates in task
    order; one module per task: one update each). Statistics are computed in float32 (or the
    input's float64); the result has the input's dtype.
    """
    shared = isinstance(norms, nn.BatchNorm2d)
    mods = [norms] if shared else list(norms)
    ref = mods[0]
    nt, c = x.shape[:2]
    x5 = x.unflatten(0, (tasks, nt // tasks))
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    batch_stats = ref.training or ref.running_mean is None
    if batch_stats:
        xf = x5.to(dtype)
        var, mean = torch.var_mean(xf, dim=(1, 3, 4), correction=0)  # T x C, biased
        count = x5.numel() // (tasks * c)
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{list(x5.shape[1:])} per task")
        if ref.training and ref.track_running_stats:
            update_running_stats(mods, shared, mean.detach(), var.detach() * (count / (count - 1)))
    else:
        mean = (ref.running_mean if shared else torch.stack([m.running_mean for m in mods])).to(dtype)
        var = (ref.running_var if shared else torch.stack([m.running_var for m in mods])).to(dtype)
    scale = torch.rsqrt(var + ref.eps)
    if ref.affine:
        scale = scale * (ref.weight if shared else torch.stack([m.weight for m in mods])).to(dtype)
    shift = -mean * scale
    if ref.affine:
        shift = shift + (ref.bias if shared else torch.stack([m.bias for m in mods])).to(dtype)
    scale = scale.expand(tasks, c)[:, None, :, None, None]
    shift = shift.expand(tasks, c)[:, None, :, None, None]
    if batch_stats:
        y = xf * scale + shift
    else:  # x * scale promotes a bfloat16 input to float32 without a separate copy
        y = torch.addcmul(shift, x5, scale)
    return y.to(x.dtype).flatten(0, 1)


@torch.no_grad()
def update_running_stats(mods, shared: bool, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Momentum updates of running statistics from per-task batch statistics (T x C each)."""
    tasks = mean.shape[0]
    steps = [(mods[0], t) for t in range(tasks)] if shared else [(m, t) for t, m in enumerate(mods)]
    momenta = {m.momentum for m, _ in steps}
    if not shared and len(momenta) == 1 and None not in momenta:  # one fused update for all tasks
        f = float(momenta.pop())
        buffers = [m.running_mean for m in mods] + [m.running_var for m in mods]
        values = list(mean.unbind(0)) + list(var.unbind(0))
        values = [v.to(b.dtype) for v, b in zip(values, buffers)]
        torch._foreach_mul_(buffers, 1 - f)
        torch._foreach_add_(buffers, values, alpha=f)
        counters = [m.num_batches_tracked for m in mods if m.num_batches_tracked is not None]
        if counters:
            torch._foreach_add_(counters, 1)
        return
    for m, t in steps:  # in task order, as successive calls would
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.add_(1)
        f = m.momentum if m.momentum is not None else 1.0 / m.num_batches_tracked.to(mean.dtype)
        for buf, value in ((m.running_mean, mean[t]), (m.running_var, var[t])):
            buf.mul_(1 - f).add_(value.to(buf.dtype) * f)


def task_conv1x1(x: torch.Tensor, tasks: int, convs) -> torch.Tensor:
    """Per-task 1x1 convolutions of ``x`` (T*N x C x H x W, task-major) as one batched matrix
    product: conv k is applied to task k's rows. Keeps channels-last inputs channels-last."""
    nt, c, h, w = x.shape
    weight = torch.stack([cv.weight.flatten(1) for cv in convs])  # T x O x C
    bias = torch.stack([cv.bias for cv in convs]) if convs[0].bias is not None else None
    out_c = weight.shape[1]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        xm = x.permute(0, 2, 3, 1).reshape(tasks, (nt // tasks) * h * w, c)  # a view: T x NHW x C
        wt = weight.transpose(1, 2)
        out = torch.matmul(xm, wt) if bias is None else torch.baddbmm(bias[:, None, :], xm, wt)
        return out.view(nt, h, w, out_c).permute(0, 3, 1, 2)
    xm = x.reshape(tasks, nt // tasks, c, h * w)
    out = torch.matmul(weight[:, None], xm)  # T x N x O x HW
    if bias is not None:
        out = out + bias[:, None, :, None].to(out.dtype)
    return out.reshape(nt, out_c, h, w)


def task_mask(x: torch.Tensor, masks) -> torch.Tensor:
    """Each task's :class:`AttentionMask` on its rows of ``x`` (T*N rows, task-major)."""
    tasks = len(masks)
    y = task_conv1x1(x, tasks, [m.first_conv for m in masks])
    if isinstance(masks[0].first_norm, nn.BatchNorm2d):  # (the inference copy folds it into the conv)
        y = task_batch_norm(y, tasks, [m.first_norm for m in masks])
    y = task_conv1x1(F.relu(y), tasks, [m.second_conv for m in masks])
    if isinstance(masks[0].second_norm, nn.BatchNorm2d):
        y = task_batch_norm(y, tasks, [m.second_norm for m in masks])
    return torch.sigmoid(y)


def shared_conv(x: torch.Tensor, tasks: int, block: ConvBNReLU) -> torch.Tensor:
    """A shared :class:`ConvBNReLU` on T tasks' stacked rows, BatchNorm statistics per task."""
    conv, norm = block[0], block[1]
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return F.relu(task_batch_norm(conv(x), tasks, norm))
    return block(x)  # per-row arithmetic (running statistics or folded): stacking changes nothing


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------
