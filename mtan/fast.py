"""Fast inference: an optimised, read-only copy of a trained MTAN for answering photos.

``optimize_for_inference(model)`` returns an :class:`InferenceModel` that behaves like the model
in eval mode (``model(x, return_attention=...)`` and ``model.predict(image, return_attention=...)``
give the same dict structure, shapes and float32 dtypes) but runs faster:

* every BatchNorm is folded into the convolution before it (eval-mode arithmetic, exact up to
  float round-off); the copy has no BatchNorm left, the trainer's model is never touched;
* weights and activations in channels-last layout (what oneDNN / cuDNN convolutions prefer);
* on the CPU, each convolution and the ReLU / sigmoid after it run as one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` uses on CPUs), when this
  torch build has it;
* float32 by default; bfloat16 weights and activations on request (``precision="bf16"``),
  which pays on CPUs with AMX and on GPUs but moves predictions beyond the fidelity goals, and
  on CPUs with AVX-512 BF16 but no AMX is slower than float32 (see :func:`resolve_precision`).
  The bf16 copy is cast once, ahead of time (autocast would re-cast every weight on every call),
  and the prediction heads stay in float32. Outputs are always returned in float32;
* optionally (``compile=True``) ``torch.compile`` on top (fuses the remaining element-wise work;
  about a minute to compile per input size on a 2-core CPU, so off by default; falls back to
  eager execution if compiling fails);
* optionally (``batched_attention=True``) the tasks' attention branches batched together (see
  ``MTAN.set_batched_attention``; on a CPU at batch 1 the per-task loop is faster, so it is off).

Example (what the app does)::

    from mtan import MTAN
    from mtan.fast import optimize_for_inference

    model = MTAN.from_pretrained("weights")
    fast = optimize_for_inference(model)              # CPU, float32
    outputs, masks = fast.predict(image, return_attention=True)

``precision`` is ``"auto"`` (float32 unless the environment variable
``MTAN_INFERENCE_PRECISION=bf16``), ``"fp32"`` or ``"bf16"``.
"""
from __future__ import annotations

import copy
import os
from functools import lru_cache

import torch
import torch.nn as nn

from mtan.model import MTAN

PRECISIONS = ("auto", "fp32", "bf16")


# --------------------------------------------------------------------------------------
# What the processor supports
# --------------------------------------------------------------------------------------


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=None)
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), with the reason.

    Checks ``/proc/cpuinfo`` flags (``avx512_bf16``, ``amx_bf16``) where it exists, torch's CPU
    capability and oneDNN's own bf16 check.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpuinfo_flags()
    native = sorted({"avx512_bf16", "amx_bf16"} & flags)
    onednn = _onednn_bf16()
    if flags:
        if native and onednn:
            return True, f"cpu flags {native}, torch capability {capability}, oneDNN bf16"
        if not native:
            return False, f"no avx512_bf16 / amx_bf16 in /proc/cpuinfo (torch capability {capability})"
        return False, f"cpu flags {native} but oneDNN reports no bf16 support"
    # no /proc/cpuinfo (e.g. macOS, Windows): trust torch's capability and oneDNN
    if onednn and capability.startswith("AVX512"):
        return True, f"torch capability {capability}, oneDNN bf16"
    return False, f"torch capability {capability}, oneDNN bf16 {'yes' if onednn else 'no'}"


@lru_cache(maxsize=None)
def cpu_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles with bf16 (``amx_bf16`` + ``amx_tile``), where bf16
    convolutions are several times faster than float32 ones.

    AVX-512 BF16 alone is not enough to pick bf16 automatically: it runs on one port, and on an
    AVX-512 BF16 CPU without AMX (Xeon, 2 cores, oneDNN brgemm kernels) bf16 convolutions
    measured about half as fast as float32 ones (93 vs 172 GFLOP/s on one core).
    """
    flags = _cpuinfo_flags()
    return {"amx_bf16", "amx_tile"} <= flags and _onednn_bf16()


def resolve_precision(precision: str, device=None) -> str:
    """The precision ``"auto"`` stands for: the environment variable ``MTAN_INFERENCE_PRECISION``
    (``fp32`` / ``bf16``) when set, else ``"fp32"``.

    bf16 is opt-in, for two measured reasons: on CPUs without AMX (AVX-512 BF16 only) bf16
    convolutions run at about half the float32 speed (see :func:`cpu_amx_bf16`), and bf16
    activations drift far enough through MTAN's ~40 layers that labels and depth move beyond
    the fidelity goals (>= 99.5 % equal labels, < 1 % mean relative depth difference): about
    98 % equal labels and 4-10 % mean relative depth difference for a briefly trained width-0.25
    model, worse with random weights. On AMX CPUs or GPUs where speed matters more than exact
    agreement, ask for ``precision="bf16"``.
    """
    if precision == "auto":
        precision = os.environ.get("MTAN_INFERENCE_PRECISION", "").strip().lower() or "fp32"
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


# --------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    w' = w * g / sqrt(v + eps) per output channel; b' = (b - m) * g / sqrt(v + eps) + beta,
    computed in float64 and stored in the convolution's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                         device=w.device)
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            shift = shift + bn.bias.double()
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(w * scale.view(-1, *([1] * (w.dim() - 1))))
        folded.bias.copy_(b * scale + shift)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every ``Conv2d -> BatchNorm2d`` pair inside an
    ``nn.Sequential`` folded into one convolution (the BatchNorm replaced by ``nn.Identity``).

    Only valid for inference (eval-mode BatchNorm). ``model`` itself is left unchanged.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None:
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
    return folded


# --------------------------------------------------------------------------------------
# Convolution + activation in one oneDNN call (CPU)
# --------------------------------------------------------------------------------------

_ACTIVATIONS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


@lru_cache(maxsize=None)
def onednn_fusion_available() -> bool:
    """Whether ``torch.ops.mkldnn._convolution_pointwise`` (oneDNN convolution with a fused
    activation, what torch.compile uses on CPUs) exists and gives the right answer here."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
        w = torch.linspace(-1, 1, 5 * 3 * 3 * 3).view(5, 3, 3, 3)
        b = torch.linspace(-0.5, 0.5, 5)
        got = torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        want = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
        return bool(torch.allclose(got, want, atol=1e-5))
    except Exception:  # the op is missing from this build, or refuses: use the plain ops
        return False


class ConvAct(nn.Module):
    """``act(conv(x))`` with ``act`` one of ``"relu"``, ``"sigmoid"``, ``"none"``: on the CPU one
    fused oneDNN call (no extra pass over the output), elsewhere the plain ops."""

    def __init__(self, conv: nn.Conv2d, act: str):
        super().__init__()
        if act not in ("relu", "sigmoid", "none"):
            raise ValueError(f"unsupported activation {act!r}")
        self.conv, self.act = conv, act
        self.fused = (conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) and onednn_fusion_available())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if self.fused and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
                and c.weight.dtype == x.dtype and not torch.is_grad_enabled():
            return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, list(c.padding), list(c.stride),
                                                           list(c.dilation), c.groups, self.act, [], "")
        y = c(x)
        return torch.relu(y) if self.act == "relu" else torch.sigmoid(y) if self.act == "sigmoid" else y


def fuse_activations(model: nn.Module) -> nn.Module:
    """In place: every ``Conv2d -> [Identity] -> ReLU/Sigmoid`` run inside an ``nn.Sequential``
    (a folded ``ConvBNReLU`` or ``AttentionMask``) becomes one :class:`ConvAct`, the other
    members ``nn.Identity``. Returns ``model``."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        k = 0
        while k < len(names):
            conv = module._modules[names[k]]
            if type(conv) is nn.Conv2d:
                m = k + 1
                while m < len(names) and type(module._modules[names[m]]) is nn.Identity:
                    m += 1
                if m < len(names) and type(module._modules[names[m]]) in _ACTIVATIONS:
                    module._modules[names[k]] = ConvAct(conv, _ACTIVATIONS[type(module._modules[names[m]])])
                    module._modules[names[m]] = nn.Identity()
                    k = m
            k += 1
    return model


# --------------------------------------------------------------------------------------
# The inference model
# --------------------------------------------------------------------------------------


class _Float32Head(nn.Module):
    """Runs a head in float32 inside a bf16 network (input cast up, float32 weights)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head.float()

    def forward(self, x):
        return self.head(x.float())


class InferenceModel(nn.Module):
    """An optimised, inference-only copy of an :class:`~mtan.model.MTAN` (see the module docstring).

    ``forward(x, return_attention=False)`` and ``predict(image, return_attention=False)`` behave
    like the model's in eval mode; outputs and masks are float32, in the standard (contiguous)
    layout, on ``device``. Attributes ``tasks``, ``task_names``, ``arch``, ``width``, ``widths``,
    ``task(name)`` and ``config()`` mirror the source model.
    """

    def __init__(self, model: MTAN, device=None, precision: str = "auto", channels_last: bool = True,
                 batched_attention: bool = False, float32_heads: bool = True, fuse: bool = True,
                 compile: bool = False):
        super().__init__()
        if not isinstance(model, MTAN):
            raise TypeError(f"optimize_for_inference expects an MTAN model, got {type(model).__name__}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.channels_last = bool(channels_last)
        net = fold_batchnorm(model).to(device=device, dtype=torch.float32)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.dtype != torch.float32:
            net = net.to(self.dtype)
            if float32_heads:
                for name in list(net.heads.keys()):
                    net.heads[name] = _Float32Head(net.heads[name])
        # the batched attention path reads the masks' convolutions directly: fuse only without it
        self.fused_activations = bool(fuse and not batched_attention and device.type == "cpu"
                                      and onednn_fusion_available())
        if self.fused_activations:
            fuse_activations(net)
        net.set_batched_attention(batched_attention)
        net.requires_grad_(False)
        self.net = net.eval()
        self.float32_heads = bool(float32_heads and self.dtype != torch.float32)
        self.tasks, self.arch, self.width, self.widths = model.tasks, model.arch, model.width, model.widths
        self.compile_error: str | None = None
        self._compiled = None
        if compile:
            try:
                self._compiled = torch.compile(self.net)
            except Exception as e:
                self.compile_error = f"{type(e).__name__}: {e}"
        self.train(False)

    # mirror the source model's descriptive API
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str):
        return MTAN.task(self, name)

    def config(self) -> dict:
        return MTAN.config(self)

    check_input = staticmethod(MTAN.check_input)

    def train(self, mode: bool = True):
        """Always inference: the folded network has no training mode (the flag is kept for ``predict``)."""
        self.training = bool(mode)
        self.net.eval()
        return self

    def describe(self) -> str:
        parts = ["BatchNorm folded", f"{'bf16' if self.dtype == torch.bfloat16 else 'fp32'}"]
        if self.float32_heads:
            parts.append("fp32 heads")
        if self.fused_activations:
            parts.append("conv+activation fused (oneDNN)")
        parts.append("channels-last" if self.channels_last else "NCHW")
        parts.append("batched attention" if self.net.batched_attention else "per-task attention")
        if self._compiled is not None:
            parts.append("torch.compile")
        return ", ".join(parts) + f", {self.device}"

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Like ``MTAN.forward`` in eval mode: ``{task: prediction}`` (and the masks), float32."""
        self.check_input(x)
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            result = None
            if self._compiled is not None:
                try:
                    result = self._compiled(x, return_attention=return_attention)
                except Exception as e:
                    self.compile_error = f"{type(e).__name__}: {str(e)[:500]}"
                    self._compiled = None
            if result is None:
                result = self.net(x, return_attention=return_attention)

        def out(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float32).contiguous()

        if return_attention:
            outputs, masks = result
            return ({k: out(v) for k, v in outputs.items()},
                    {k: {part: [out(m) for m in ms] for part, ms in v.items()} for k, v in masks.items()})
        return {k: out(v) for k, v in result.items()}

    # The same padding / cropping as MTAN.predict (it calls self(...), i.e. the fast forward).
    predict = MTAN.predict

    def __repr__(self) -> str:
        return f"InferenceModel({self.arch} x{self.width:g}, tasks {self.task_names}; {self.describe()})"


def optimize_for_inference(model: MTAN, device=None, precision: str = "auto", channels_last: bool = True,
                           batched_attention: bool = False, float32_heads: bool = True,
                           fuse: bool = True, compile: bool = False) -> InferenceModel:
    """An optimised inference copy of ``model`` (BatchNorm folded, conv + activation fused,
    channels-last; see the module docstring). ``model`` is not modified. ``device``: where to run
    (default: the model's). ``precision``: ``"auto"`` (float32 unless ``MTAN_INFERENCE_PRECISION``
    says bf16), ``"fp32"`` or ``"bf16"``. ``compile``: also ``torch.compile`` it (slow start).
    """
    return InferenceModel(model, device=device, precision=precision, channels_last=channels_last,
                          batched_attention=batched_attention, float32_heads=float32_heads, fuse=fuse,
                          compile=compile)


__all__ = ["optimize_for_inference", "InferenceModel", "fold_batchnorm", "fold_conv_bn", "fuse_activations",
           "ConvAct", "cpu_bf16_support", "cpu_amx_bf16", "onednn_fusion_available", "resolve_precision"]
