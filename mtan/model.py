"""SegNet-MTAN: the Multi-Task Attention Network (Liu, Johns, Davison, CVPR 2019).

One shared SegNet (VGG16-BN encoder, mirrored decoder with max-unpooling) builds a pool of
features. Each task owns a chain of small soft-attention masks, one per encoder and decoder
stage, that select from that pool what the task needs; the 3x3 convolutions between the
masks are shared by all tasks. Architectures:

- ``mtan``:   shared SegNet + per-task attention branches + per-task heads (the paper);
- ``split``:  shared SegNet + per-task heads (hard parameter sharing);
- ``single``: one task, plain SegNet + its head.

Widths are ``[64, 128, 256, 512, 512]`` times ``width``. Inputs are images in [0, 1], N x 3 x H x W
with H and W multiples of 32 (``predict`` pads any size).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from mtan.hub import CONFIG_NAME, WEIGHTS_NAME, ModelConfigError, model_card, resolve_model_files  # noqa: F401
from mtan.tasks import Task, tasks_from_config

ARCHITECTURES = ("mtan", "split", "single")
BASE_WIDTHS = (64, 128, 256, 512, 512)
NUM_STAGES = 5
MULTIPLE = 2 ** NUM_STAGES  # input sides must be multiples of 32


def fit_size(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """The largest (h, w) with the aspect of ``height`` x ``width`` that fits inside ``box`` (h, w):
    how a photo is sized for the network (the app, ``mtan.evaluate --app-resolution``)."""
    s = min(box[0] / height, box[1] / width)
    return max(1, round(height * s)), max(1, round(width * s))


def padded_forward(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``module(x)`` for N x 3 x H x W images of any size: H and W padded up to multiples of 32
    (edge replication), every output cropped back to H x W (as :meth:`MTAN.predict` does)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    if not (ph or pw):
        return module(x)
    out = module(F.pad(x, (0, pw, 0, ph), mode="replicate"))
    return {k: v[..., :h, :w] for k, v in out.items()}


def flip_average(tasks, out: dict, mirrored: dict) -> dict:
    """The mean of a model's outputs for an image and (mirrored back) for its mirror image; a
    normal's x component changes sign in the mirror. Test-time augmentation."""
    result = {}
    for t in tasks:
        back = t.mirror_values(mirrored[t.name].flip(-1))
        result[t.name] = (out[t.name] + back) / 2
    return result


def stage_widths(width: float) -> list[int]:
    return [max(1, int(round(c * width))) for c in BASE_WIDTHS]


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (padding 1, with bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AttentionMask(nn.Sequential):
    """A task's soft mask: 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )


class Head(nn.Sequential):
    """A task's prediction layer: 3x3 conv (no BN/ReLU) -> 1x1 conv to the task's channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
        )


class EncoderStage(nn.Module):
    """``first`` conv gives u (what the attention masks look at); ``refine`` convs give p."""

    def __init__(self, in_channels: int, out_channels: int, num_refine: int):
        super().__init__()
        self.first = ConvBNReLU(in_channels, out_channels)
        self.refine = nn.Sequential(*[ConvBNReLU(out_channels, out_channels) for _ in range(num_refine)])

    def forward(self, x):
        u = self.first(x)
        return u, self.refine(u)


class DecoderStage(nn.Module):
    """Max-unpool (done by the decoder) -> ``first`` conv (narrows the width) -> ``refine`` convs."""

    def __init__(self, in_channels: int, out_channels: int, num_refine: int):
        super().__init__()
        self.first = ConvBNReLU(in_channels, out_channels)
        self.refine = nn.Sequential(*[ConvBNReLU(out_channels, out_channels) for _ in range(num_refine)])

    def forward(self, x):
        return self.refine(self.first(x))


class Encoder(nn.Module):
    """VGG16-BN: 5 stages of 2, 2, 3, 3, 3 convs, each followed by a 2x2 max-pool with indices."""

    def __init__(self, widths: list[int], in_channels: int = 3):
        super().__init__()
        ins = [in_channels] + widths[:-1]
        self.stages = nn.ModuleList(
            EncoderStage(ins[j], widths[j], num_refine=1 if j < 2 else 2) for j in range(NUM_STAGES)
        )

    def forward(self, x):
        """Returns per-stage ``u`` and ``p`` (before pooling), the pool indices and the pooled output."""
        us, ps, indices = [], [], []
        for stage in self.stages:
            u, p = stage(x)
            x, idx = F.max_pool2d(p, kernel_size=2, stride=2, return_indices=True)
            us.append(u)
            ps.append(p)
            indices.append(idx)
        return us, ps, indices, x


class Decoder(nn.Module):
    """Mirror of the encoder. ``stages[i]`` runs i-th, at encoder level j = 4 - i (deepest first)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        stages = []
        for i in range(NUM_STAGES):
            j = NUM_STAGES - 1 - i
            out = widths[j - 1] if j > 0 else widths[0]
            stages.append(DecoderStage(widths[j], out, num_refine=1 if j < 2 else 2))
        self.stages = nn.ModuleList(stages)

    def forward(self, x, indices):
        """Returns per-stage ``up`` (after unpooling) and ``q`` (stage output)."""
        ups, qs = [], []
        for i, stage in enumerate(self.stages):
            idx = indices[NUM_STAGES - 1 - i]
            up = F.max_unpool2d(x, idx, kernel_size=2, stride=2)
            x = stage(up)
            ups.append(up)
            qs.append(x)
        return ups, qs


class TaskAttention(nn.Module):
    """One task's attention masks: ``encoder[j]`` for encoder stage j, ``decoder[i]`` for decoder stage i."""

    def __init__(self, widths: list[int]):
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList(
            [AttentionMask(w[0], w[0], w[0])] + [AttentionMask(2 * w[j], w[j], w[j]) for j in range(1, NUM_STAGES)]
        )
        decoder = []
        for i in range(NUM_STAGES):
            j = NUM_STAGES - 1 - i
            if j == 0:
                decoder.append(AttentionMask(2 * w[0], w[0], w[0]))
            else:
                decoder.append(AttentionMask(w[j] + w[j - 1], w[j - 1], w[j - 1]))
        self.decoder = nn.ModuleList(decoder)


class SharedAttentionConvs(nn.Module):
    """The 3x3 convs between a task's masks, shared by all tasks.

    ``encoder[j]`` takes a gated stage-j feature to the next stage's width (F[4] -> F[4] at the
    last stage); ``decoder[i]`` (level j = 4 - i) narrows the upsampled branch feature to the
    width of the decoder stage it will be concatenated with.
    """

    def __init__(self, widths: list[int]):
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList(ConvBNReLU(w[j], w[min(j + 1, NUM_STAGES - 1)]) for j in range(NUM_STAGES))
        decoder = []
        for i in range(NUM_STAGES):
            j = NUM_STAGES - 1 - i
            out = w[j] if j in (0, NUM_STAGES - 1) else w[j - 1]
            decoder.append(ConvBNReLU(w[j], out))
        self.decoder = nn.ModuleList(decoder)


# --------------------------------------------------------------------------------------
# Batched attention helpers (tasks stacked along the batch dimension, task-major)
# --------------------------------------------------------------------------------------


def _plain_norm(module: nn.Module) -> bool:
    """A plain BatchNorm2d (not a subclass such as SyncBatchNorm), or a folded-away Identity."""
    return type(module) in (nn.BatchNorm2d, nn.Identity)


def _norm_signature(module: nn.Module):
    """What must agree between the tasks' norms for them to run batched (None: not batchable)."""
    if type(module) is nn.Identity:
        return "identity"
    if type(module) is not nn.BatchNorm2d:
        return None
    return (module.training, module.track_running_stats, module.running_mean is None, module.affine,
            module.eps, module.momentum)


def _task_batch_norm(x: torch.Tensor, tasks: int, norms) -> torch.Tensor:
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
            _update_running_stats(mods, shared, mean.detach(), var.detach() * (count / (count - 1)))
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
def _update_running_stats(mods, shared: bool, mean: torch.Tensor, var: torch.Tensor) -> None:
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


def _task_conv1x1(x: torch.Tensor, tasks: int, convs) -> torch.Tensor:
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


def _task_mask(x: torch.Tensor, masks) -> torch.Tensor:
    """Each task's :class:`AttentionMask` on its rows of ``x`` (T*N rows, task-major)."""
    tasks = len(masks)
    y = _task_conv1x1(x, tasks, [m[0] for m in masks])
    if isinstance(masks[0][1], nn.BatchNorm2d):
        y = _task_batch_norm(y, tasks, [m[1] for m in masks])
    y = _task_conv1x1(F.relu(y), tasks, [m[3] for m in masks])
    if isinstance(masks[0][4], nn.BatchNorm2d):
        y = _task_batch_norm(y, tasks, [m[4] for m in masks])
    return torch.sigmoid(y)


def _shared_conv(x: torch.Tensor, tasks: int, block: ConvBNReLU) -> torch.Tensor:
    """A shared :class:`ConvBNReLU` on T tasks' stacked rows, BatchNorm statistics per task."""
    conv, norm = block[0], block[1]
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return F.relu(_task_batch_norm(conv(x), tasks, norm))
    return block(x)  # per-row arithmetic (running statistics or folded): stacking changes nothing


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class MTAN(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="mtan",
    tags=["multi-task-learning", "semantic-segmentation", "depth-estimation", "mtan"],
    paper_url="https://arxiv.org/abs/1803.10704",
    license="mit",
):
    """Multi-task SegNet with per-task attention (``arch='mtan'``), or its ``split``/``single`` baselines.

    Args:
        tasks: list of task dicts (see ``mtan.tasks``), e.g. ``preset_tasks("cityscapes-7")``.
        arch: ``"mtan"``, ``"split"`` or ``"single"`` (exactly one task).
        width: multiplier on the paper's widths 64..512 (1.0 = the paper).
    """

    def __init__(self, tasks: list[dict] | None = None, arch: str = "mtan", width: float = 1.0):
        super().__init__()
        if tasks is None:
            raise ModelConfigError("MTAN needs 'tasks', e.g. mtan.tasks.preset_tasks('cityscapes-7')")
        try:
            self.tasks: list[Task] = tasks_from_config(tasks)
        except ValueError as e:
            raise ModelConfigError(f"config field 'tasks': {e}") from None
        if arch not in ARCHITECTURES:
            raise ModelConfigError(f"config field 'arch': unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        if arch == "single" and len(self.tasks) != 1:
            raise ModelConfigError(f"config field 'arch': 'single' takes exactly one task, got {len(self.tasks)}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 8:
            raise ModelConfigError(f"config field 'width': must be a number in (0, 8], got {width!r}")
        self.arch = arch
        self.width = float(width)
        self.widths = stage_widths(self.width)

        self.encoder = Encoder(self.widths)
        self.decoder = Decoder(self.widths)
        if arch == "mtan":
            self.attention = nn.ModuleDict({t.name: TaskAttention(self.widths) for t in self.tasks})
            self.attention_convs = SharedAttentionConvs(self.widths)
        self.heads = nn.ModuleDict({t.name: Head(self.widths[0], t.out_channels) for t in self.tasks})
        self.reset_parameters()
        # How the attention branches run (a runtime option: not part of the config or the state_dict).
        self._batched_attention = False

    # ---- construction helpers -------------------------------------------------------

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"model has no task {name!r}; it has {self.task_names}")

    def config(self) -> dict:
        return {"tasks": [t.to_config() for t in self.tasks], "arch": self.arch, "width": self.width}

    def reset_parameters(self) -> None:
        """Xavier-normal conv weights, zero biases, BatchNorm weight 1 and bias 0 (as the original)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- forward --------------------------------------------------------------------

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MTAN expects images as an N x 3 x H x W tensor, got {shape}")
        h, w = x.shape[-2:]
        if h % MULTIPLE or w % MULTIPLE or h == 0 or w == 0:
            raise ValueError(
                f"MTAN needs height and width that are multiples of {MULTIPLE} (five 2x poolings), got {h}x{w}; "
                f"resize or pad the image (model.predict pads any size and crops the outputs back)"
            )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Returns ``{task: prediction}``; with ``return_attention=True`` also
        ``{task: {"encoder": [5 masks], "decoder": [5 masks]}}`` as a second value.

        Predictions: semantic logits N x K x H x W, depth N x 1 x H x W, normals N x 3 x H x W (unit).
        Masks have the shape of the shared feature they gate (decoder stage 0 is the deepest).
        """
        self.check_input(x)
        us, ps, indices, pooled = self.encoder(x)
        ups, qs = self.decoder(pooled, indices)
        if self.arch == "mtan":
            attend = self._attend_batched if self._use_batched_attention() else self._attend
            features, masks = attend(us, ps, ups, qs, keep_masks=return_attention)
        else:
            features, masks = {t.name: qs[-1] for t in self.tasks}, {}
        outputs = {t.name: t.finish(self.heads[t.name](features[t.name])) for t in self.tasks}
        return (outputs, masks) if return_attention else outputs

    def _attend(self, us, ps, ups, qs, keep_masks: bool):
        """Run each task's attention branch over the shared features."""
        convs = self.attention_convs
        features, all_masks = {}, {}
        for name, att in self.attention.items():
            enc_masks, dec_masks = [], []
            x = None
            for j in range(NUM_STAGES):
                a = att.encoder[j](us[j] if j == 0 else torch.cat((us[j], x), dim=1))
                x = F.max_pool2d(convs.encoder[j](a * ps[j]), kernel_size=2, stride=2)
                enc_masks.append(a)
            for i in range(NUM_STAGES):
                y = convs.decoder[i](F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
                a = att.decoder[i](torch.cat((ups[i], y), dim=1))
                x = a * qs[i]
                dec_masks.append(a)
            features[name] = x
            if keep_masks:
                all_masks[name] = {"encoder": enc_masks, "decoder": dec_masks}
        return features, all_masks

    # ---- batched attention (a faster schedule of the same math) ---------------------------

    @property
    def batched_attention(self) -> bool:
        """Whether the attention branches of all tasks run as one batched computation."""
        return getattr(self, "_batched_attention", False)

    def set_batched_attention(self, enabled: bool = True) -> "MTAN":
        """Run all tasks' attention branches as one batched computation (``True``) or task by task
        (``False``, the default and the original's schedule). Same outputs, gradients and BatchNorm
        running statistics either way (see :meth:`_attend_batched`); fewer, larger kernels when
        batched, which helps most at small batch sizes on a GPU. A runtime option: it is not saved
        in the config or the weights. Returns the model."""
        self._batched_attention = bool(enabled)
        return self

    def _use_batched_attention(self) -> bool:
        """Batched only when asked for, with several tasks, and every normalisation layer of the
        attention branches is a plain ``BatchNorm2d`` (or folded away): e.g. ``SyncBatchNorm``
        (which syncs statistics across processes) keeps the task-by-task loop."""
        if not self.batched_attention or len(self.attention) < 2:
            return False
        if not all(_plain_norm(block[1]) for block in [*self.attention_convs.encoder, *self.attention_convs.decoder]):
            return False
        atts = list(self.attention.values())
        for part in ("encoder", "decoder"):
            for j in range(NUM_STAGES):
                for k in (1, 4):  # the two norms of a mask: the same kind and settings in every task
                    signatures = {_norm_signature(getattr(att, part)[j][k]) for att in atts}
                    if len(signatures) != 1 or None in signatures:
                        return False
        return True

    def _attend_batched(self, us, ps, ups, qs, keep_masks: bool):
        """All tasks' attention branches at once: the T tasks' branch features are stacked along the
        batch dimension (task-major: rows ``t*N .. t*N+N-1`` are task t), the shared
        ``attention_convs`` run once on the stack and each stage's per-task 1x1 mask convolutions
        run as one batched matrix product over tasks.

        The math is that of :meth:`_attend`. In training mode every BatchNorm normalises each
        task's rows with that task's own batch statistics (the original calls the shared convs
        once per task), and the running statistics are updated exactly as the per-task calls
        would: a shared conv's BatchNorm takes T momentum updates per forward, in task order, and
        ``num_batches_tracked`` grows by T; a task's mask BatchNorm takes one. Results agree with
        the task-by-task loop to float round-off (the sums are ordered differently).
        """
        convs = self.attention_convs
        names = list(self.attention.keys())
        atts = list(self.attention.values())
        T, n = len(atts), us[0].shape[0]

        def per_task(a: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
            """Gate: the stacked masks ``a`` (T*N rows) times the shared feature (N rows)."""
            return (a.unflatten(0, (T, n)) * shared.unsqueeze(0)).flatten(0, 1)

        enc_masks, dec_masks = [], []
        x = None
        for j in range(NUM_STAGES):
            stacked_u = torch.cat([us[j]] * T)
            a = _task_mask(stacked_u if j == 0 else torch.cat((stacked_u, x), dim=1), [att.encoder[j] for att in atts])
            x = F.max_pool2d(_shared_conv(per_task(a, ps[j]), T, convs.encoder[j]), kernel_size=2, stride=2)
            enc_masks.append(a)
        for i in range(NUM_STAGES):
            y = _shared_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), T, convs.decoder[i])
            a = _task_mask(torch.cat((torch.cat([ups[i]] * T), y), dim=1), [att.decoder[i] for att in atts])
            x = per_task(a, qs[i])
            dec_masks.append(a)
        features = {name: x[k * n:(k + 1) * n] for k, name in enumerate(names)}
        all_masks = {}
        if keep_masks:
            for k, name in enumerate(names):
                all_masks[name] = {"encoder": [m[k * n:(k + 1) * n] for m in enc_masks],
                                   "decoder": [m[k * n:(k + 1) * n] for m in dec_masks]}
        return features, all_masks

    @torch.no_grad()
    def predict(self, image: torch.Tensor, return_attention: bool = False):
        """Inference on images of any size: pads H and W up to multiples of 32 (edge replication),
        runs the network in eval mode and crops every output (and mask) back.

        ``image``: 3 x H x W or N x 3 x H x W, float in [0, 1]. Returns what ``forward`` returns,
        with a batch dimension. The module's train/eval mode is restored afterwards.
        """
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"predict expects a 3 x H x W or N x 3 x H x W image, got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"predict got an empty image ({h}x{w})")
        ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
        param = next(self.parameters())
        x = image.to(device=param.device, dtype=param.dtype if param.is_floating_point() else torch.float32)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        was_training = self.training
        self.eval()
        try:
            result = self(x, return_attention=return_attention)
        finally:
            self.train(was_training)
        H, W = x.shape[-2:]

        def crop(t):
            sh, sw = t.shape[-2] / H, t.shape[-1] / W  # masks live at coarser scales
            return t[..., : max(1, math.ceil(h * sh)), : max(1, math.ceil(w * sw))]

        if return_attention:
            outputs, masks = result
            masks = {k: {part: [crop(m) for m in ms] for part, ms in v.items()} for k, v in masks.items()}
            return {k: crop(v) for k, v in outputs.items()}, masks
        return {k: crop(v) for k, v in result.items()}

    # ---- saving and loading -----------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / WEIGHTS_NAME))
        (Path(save_directory) / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")

    def generate_model_card(self, *args, **kwargs):
        return model_card(self, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, map_location: str | torch.device = "cpu",
                        revision: str | None = None, token: str | bool | None = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        local_files_only: bool = False, **overrides) -> "MTAN":
        """Load from a local folder or a Hub repo id (``config.json`` + ``model.safetensors``).

        Only safetensors weights are read: a folder holding only pickle weights (``.bin``, ``.pt``,
        ``.pth``, ``.ckpt``) is refused. The config is validated field by field and every tensor must
        match the architecture exactly (missing, unexpected or mis-shaped tensors are named).
        ``overrides`` replace config fields (rarely needed).
        """
        config_file, weights_file = resolve_model_files(
            pretrained_model_name_or_path, revision=revision, token=token, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only)
        config = read_config(config_file)
        config.update(overrides)
        try:
            model = cls(**config)
        except ModelConfigError as e:  # name the file the bad field came from
            raise ModelConfigError(f"{config_file}: {e}") from None
        load_safetensors_strict(model, weights_file)
        model.to(map_location)
        model.eval()
        return model


CONFIG_FIELDS = {"tasks", "arch", "width"}


def read_config(path: str | os.PathLike) -> dict:
    """Read and check a model ``config.json``: valid JSON, an object, only known fields."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"{path}: cannot read the model config ({e})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                               f"re-export the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{path}: the model config must be a JSON object, got {type(config).__name__}")
    unknown = set(config) - CONFIG_FIELDS
    if unknown:
        raise ModelConfigError(f"{path}: unknown config field(s) {sorted(unknown)}; known: {sorted(CONFIG_FIELDS)}")
    if "tasks" not in config:
        raise ModelConfigError(f"{path}: config field 'tasks' is missing")
    return config


def load_safetensors_strict(model: nn.Module, weights_file: str | os.PathLike) -> None:
    """Load a safetensors file into ``model``, requiring exactly the model's tensors and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelConfigError(f"{weights_file}: not a readable safetensors file ({e}); "
                               f"the file is truncated or damaged: download or export it again") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                   for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_short(unexpected)}")
        if wrong:
            parts.append(f"mis-shaped tensors: {_short(wrong)}")
        raise ModelConfigError(f"{weights_file} does not match its config.json "
                               f"(arch, width or tasks differ from the weights): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _short(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
