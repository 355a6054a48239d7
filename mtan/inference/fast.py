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
* a precision: ``fp32``; ``bf16`` (bfloat16 weights and activations, prediction heads in
  float32); or ``bf16-convs`` (the 3x3 convolutions of the encoder, decoder and attention branches
  in bfloat16, the attention masks' 1x1 convolutions and sigmoids and the heads in float32). A
  reduced precision is cast once, ahead of time (autocast would re-cast every weight on every
  call); outputs are always float32. Which precisions keep a model's quality is measured when it
  is released (:mod:`mtan.precision`, ``precisions.json`` in its folder); which of those is
  fastest depends on the processor (bf16 convolutions run at twice the float32 rate on some CPUs
  and at half of it on others), so ``precision="auto"`` times each allowed one on the machine at
  hand and keeps the fastest (see :func:`optimize_for_inference`); ``int8``: every 3x3
  convolution + ReLU of the encoder, decoder and attention branches as a quantised oneDNN / FBGEMM
  call (weights int8 per output channel, activations uint8 with the scales measured on
  calibration photos by PyTorch's histogram observers, :func:`mtan.inference.int8.int8_calibration`), the attention
  masks and heads in float32;
* optionally ``torch.compile`` on top: ``compile=True`` for every input size, or only for the
  sizes where :mod:`mtan.inference.compiled` measured it faster (what the app does); eager if it fails;
* optionally (``batched_attention=True``) the tasks' attention branches batched together (see
  ``MTAN.set_batched_attention``; on a CPU at batch 1 the per-task loop is faster, so it is off).

Example (what the app does)::

    from mtan import MTAN
    from mtan.inference.fast import optimize_for_inference

    model = MTAN.from_pretrained("weights")
    fast = optimize_for_inference(model)              # CPU, float32
    outputs, masks = fast.predict(image, return_attention=True)

``precision`` is ``"auto"`` (the environment variable ``MTAN_INFERENCE_PRECISION`` when set,
else the fastest of ``allowed`` on this machine, float32 when only float32 is allowed) or one of
``PRECISIONS``.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn as nn

from mtan.inference.folding import fold_batchnorm
from mtan.inference.int8 import int8_available, quantise_blocks
from mtan.model import MTAN, AttentionMask
from mtan.model.face import TaskNetwork
from mtan.records import PRECISIONS
from mtan.timing import cpu_identity, measure, remember_choice, remembered_choice, still_fresh



# ---- What the processor supports -------------------------------------------------------------


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


def resolve_precision(precision: str) -> str:
    """``precision`` checked: one of ``PRECISIONS``, or ``"auto"`` replaced by the environment
    variable ``MTAN_INFERENCE_PRECISION`` when it is set (``"auto"`` is returned otherwise, for the
    caller to measure)."""
    if precision == "auto":
        precision = os.environ.get("MTAN_INFERENCE_PRECISION", "").strip().lower() or "auto"
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}"
                         + (" (from MTAN_INFERENCE_PRECISION)" if os.environ.get("MTAN_INFERENCE_PRECISION") else ""))
    return precision


# ---- Convolution + activation in one oneDNN call (CPU) ---------------------------------------

_ACTIVATIONS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


@lru_cache(maxsize=None)
def onednn_fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``torch.ops.mkldnn._convolution_pointwise`` (oneDNN convolution with a fused
    activation, what torch.compile uses on CPUs) exists and gives the right answer here in
    ``dtype`` (oneDNN's bf16 convolution needs AVX-512 or AVX-NE-CONVERT, which some CPUs lack)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4).to(dtype)
        w = torch.linspace(-1, 1, 5 * 3 * 3 * 3).view(5, 3, 3, 3).to(dtype)
        b = torch.linspace(-0.5, 0.5, 5).to(dtype)
        got = torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        want = torch.relu(torch.nn.functional.conv2d(x.float(), w.float(), b.float(), padding=1))
        return bool(torch.allclose(got.float(), want, atol=1e-5 if dtype == torch.float32 else 5e-2))
    except Exception:  # the op is missing from this build, or refuses this dtype here: use the plain ops
        return False


class ConvAct(nn.Module):
    """``act(conv(x))`` with ``act`` one of ``"relu"``, ``"sigmoid"``, ``"none"``: on the CPU one
    fused oneDNN call (no extra pass over the output), elsewhere the plain ops."""

    def __init__(self, conv: nn.Conv2d, act: str):
        super().__init__()
        if act not in ("relu", "sigmoid", "none"):
            raise ValueError(f"unsupported activation {act!r}")
        self.conv, self.act = conv, act
        fusable = conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
        # the dtypes whose fused call works in this build, probed once here rather than in every forward
        self.fused_dtypes = tuple(d for d in (torch.float32, torch.bfloat16) if fusable and onednn_fusion_available(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.dtype in self.fused_dtypes and x.device.type == "cpu" and c.weight.dtype == x.dtype \
                and not torch.is_grad_enabled():
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
        children = list(module.named_children())
        k = 0
        while k < len(children):
            name, conv = children[k]
            if type(conv) is nn.Conv2d:
                m = k + 1
                while m < len(children) and type(children[m][1]) is nn.Identity:
                    m += 1
                if m < len(children) and type(children[m][1]) in _ACTIVATIONS:
                    setattr(module, name, ConvAct(conv, _ACTIVATIONS[type(children[m][1])]))
                    setattr(module, children[m][0], nn.Identity())
                    k = m
            k += 1
    return model


# ---- The inference model ---------------------------------------------------------------------


class _Float32Head(nn.Module):
    """Runs a head in float32 inside a bf16 network (input cast up, float32 weights)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head.float()

    def forward(self, x):
        return self.head(x.float())


class _Float32Island(nn.Module):
    """Runs ``block`` in float32 inside a bf16 network and hands its output back in the input's
    dtype (an attention mask: float32 logits and sigmoid, the gating product in bf16)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block.float()

    def forward(self, x):
        return self.block(x.float()).to(x.dtype)


class InferenceModel(TaskNetwork, nn.Module):
    """An optimised, inference-only copy of an :class:`~mtan.model.MTAN` (see the module docstring).

    ``forward(x, return_attention=False)`` and ``predict(image, return_attention=False)`` behave
    like the model's in eval mode; outputs and masks are float32, in the standard (contiguous)
    layout, on ``device`` (``float32_masks = False``: the masks as computed, in the network's
    precision and memory layout, for a caller that converts them itself). Attributes ``tasks``, ``task_names``, ``arch``, ``width``, ``widths``,
    ``task(name)`` and ``config()`` mirror the source model.
    """

    def __init__(self, model: MTAN, device=None, precision: str = "auto", channels_last: bool = True,
                 batched_attention: bool = False, float32_heads: bool = True, fuse: bool = True,
                 compile: bool = False, int8_scales: dict | None = None):
        super().__init__()
        if not isinstance(model, MTAN):
            raise TypeError(f"optimize_for_inference expects an MTAN model, got {type(model).__name__}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device = device
        self.precision = resolve_precision(precision)
        if self.precision == "auto":
            self.precision = "fp32"  # measuring is optimize_for_inference's job; a bare copy is float32
        self.dtype = torch.float32 if self.precision in ("fp32", "int8") else torch.bfloat16
        self.channels_last = bool(channels_last)
        net = fold_batchnorm(model).to(device=device, dtype=torch.float32)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.dtype != torch.float32:
            net = net.to(self.dtype)
            if float32_heads or self.precision == "bf16-convs":
                for name in list(net.heads.keys()):
                    net.heads[name] = _Float32Head(net.heads[name])
            if self.precision == "bf16-convs" and net.arch == "mtan":
                for att in net.attention.values():
                    for part in (att.encoder, att.decoder):
                        for k, block in enumerate(part):
                            if isinstance(block, AttentionMask):
                                part[k] = _Float32Island(block)
        if batched_attention and self.precision in ("bf16-convs", "int8"):
            raise ValueError(f"precision {self.precision} runs the attention masks one task at a time; "
                             "it cannot be combined with batched_attention")
        self.quantised_blocks = 0
        if self.precision == "int8":
            if device.type != "cpu" or not int8_available():
                raise ValueError("precision int8 runs on a CPU with a quantised engine (x86 / FBGEMM / oneDNN) only")
            if not int8_scales:
                raise ValueError("precision int8 needs the activation scales measured on calibration photos "
                                 "(int8_calibration; a model folder keeps them in precisions.json)")
            self.quantised_blocks = quantise_blocks(net, int8_scales)
        # the batched attention path reads the masks' convolutions directly: fuse only without it
        self.fused_activations = bool(fuse and not batched_attention and device.type == "cpu"
                                      and onednn_fusion_available())
        if self.fused_activations:
            fuse_activations(net)
        net.set_batched_attention(batched_attention)
        net.requires_grad_(False)
        self.net = net.eval()
        self.float32_heads = bool((float32_heads or self.precision == "bf16-convs") and self.dtype != torch.float32)
        self.choice: dict | None = None  # how optimize_for_inference chose the precision, when it measured
        self.tasks, self.arch, self.width, self.widths = model.tasks, model.arch, model.width, model.widths
        self.float32_masks, self.compile_error, self._compiled = True, None, None
        self.compiled_shapes: set | None = None  # input shapes the compiled network runs (None: all)
        if compile:
            try:
                self._compiled = torch.compile(self.net)
            except Exception as e:
                self.compile_error = f"{type(e).__name__}: {e}"
        self.train(False)

    def train(self, mode: bool = True):
        """Always inference: the folded network has no training mode (the flag is kept for ``predict``)."""
        self.training = bool(mode)
        self.net.eval()
        return self

    def describe(self) -> str:
        parts = ["BatchNorm folded", PRECISION_WORDS[self.precision].format(n=self.quantised_blocks)]
        if self.float32_heads and self.precision == "bf16":
            parts.append("fp32 heads")
        if self.fused_activations:
            parts.append("conv+activation fused (oneDNN)")
        parts.append("channels-last" if self.channels_last else "NCHW")
        parts.append("batched attention" if self.net.batched_attention else "per-task attention")
        if self._compiled is not None and self.compiled_shapes is None:
            parts.append("torch.compile")
        text = ", ".join(parts) + f", {self.device}"
        if self.choice:
            times = ", ".join(f"{p} {t * 1000:.0f} ms" for p, t in self.choice["seconds"].items())
            text += (f"; {self.precision} is the fastest of the precisions this model keeps its quality in "
                     f"({times} at {self.choice['size']}{', measured earlier' if self.choice.get('remembered') else ''})")
        return text

    def forward(self, x: torch.Tensor, return_attention: bool = False, use_compiled: bool | None = None):
        """Like ``MTAN.forward`` in eval mode: ``{task: prediction}`` (and the masks), float32.
        ``use_compiled``: None = compiled for the shapes in ``compiled_shapes``; True / False choose."""
        self.check_input(x)
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            result = None
            if use_compiled is None:
                use_compiled = self.compiled_shapes is None or tuple(x.shape) in self.compiled_shapes
            if self._compiled is not None and use_compiled:
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
            mask = out if self.float32_masks else (lambda m: m)
            return ({k: out(v) for k, v in outputs.items()},
                    {k: {part: [mask(m) for m in ms] for part, ms in v.items()} for k, v in masks.items()})
        return {k: out(v) for k, v in result.items()}


    def __repr__(self) -> str:
        return f"InferenceModel({self.arch} x{self.width:g}, tasks {self.task_names}; {self.describe()})"


PRECISION_WORDS = {"fp32": "fp32", "bf16": "bf16", "bf16-convs": "bf16 convolutions with fp32 attention masks and heads",
                   "int8": "int8 ({n} quantised 3x3 convolutions, fp32 attention masks and heads)"}


def optimize_for_inference(model: MTAN, device=None, precision: str = "auto", channels_last: bool = True,
                           batched_attention: bool = False, float32_heads: bool = True,
                           fuse: bool = True, compile: bool = False, allowed=("fp32",),
                           size: tuple[int, int] = (256, 512), remember: bool = True,
                           int8_scales: dict | None = None) -> InferenceModel:
    """An optimised inference copy of ``model`` (BatchNorm folded, conv + activation fused,
    channels-last; see the module docstring). ``model`` is not modified. ``device``: where to run
    (default: the model's). ``compile``: also ``torch.compile`` it (slow start).

    ``precision``: one of ``PRECISIONS``, or ``"auto"``: ``MTAN_INFERENCE_PRECISION`` when set,
    else the fastest of ``allowed`` (the precisions that keep this model's quality, from its
    ``precisions.json``; see :mod:`mtan.precision`) timed on a few forward passes at ``size``, a
    reduced precision only when it is more than 10 % faster than float32. The choice is
    remembered per processor, torch version, thread count and network shape (in
    :func:`mtan.timing.choice_cache_path`; ``remember=False`` measures afresh and keeps nothing), so that a
    restart is quick. The copy's ``choice`` and ``describe()`` say what was measured.
    ``int8_scales``: the activation scales int8 needs (:func:`mtan.inference.int8.int8_calibration`; in
    ``precisions.json``); without them int8 is not a candidate.
    """
    def build(p: str) -> InferenceModel:
        return InferenceModel(model, device=device, precision=p, channels_last=channels_last,
                              batched_attention=batched_attention, float32_heads=float32_heads, fuse=fuse,
                              compile=compile, int8_scales=int8_scales)

    precision = resolve_precision(precision)
    if precision != "auto":
        return build(precision)
    candidates = [p for p in PRECISIONS if p in set(allowed) | {"fp32"}]
    device_type = torch.device(device).type if device is not None else next(model.parameters()).device.type
    candidates = [p for p in candidates if not (
        (batched_attention and p in ("bf16-convs", "int8"))
        or (p == "int8" and (not int8_scales or device_type != "cpu" or not int8_available())))]
    if len(candidates) == 1:
        return build("fp32")
    key = choice_key(model, candidates, size, device)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))

    def timed(runner):
        def run():
            runner(x)
            if runner.device.type == "cuda":
                torch.cuda.synchronize(runner.device)
        return run

    known = remembered_choice(key) if remember else None
    stale = None
    if known is not None and known.get("precision") in candidates and known.get("quiet", True):
        runner = build(known["precision"])
        fresh, now = still_fresh(float(known["seconds"].get(known["precision"], 0)), timed(runner))
        if fresh:  # the remembered figures still hold here: no need to time every precision again
            runner.choice = dict(known, remembered=True)
            return runner
        stale = {"remembered_s": known["seconds"].get(known["precision"]), "now_s": round(now, 4)}
    runners = {p: build(p) for p in candidates}
    m = measure({p: timed(r) for p, r in runners.items()}, warmup=2, repeats=5)
    runner = runners[m.best]
    runner.choice = {"precision": m.best, "size": f"{size[0]}x{size[1]}", **m.record()}
    if stale:
        runner.choice["remeasured"] = stale
    if remember and m.quiet:  # a figure taken while the machine was busy is used now, never kept
        remember_choice(key, runner.choice)
    return runner


# ---- What a precision measurement depends on (the choices are kept by mtan.timing) -----------


def choice_key(model: MTAN, candidates, size, device=None) -> str:
    """What a speed measurement depends on: the processor (or GPU), torch, the threads, the network's
    shape (architecture, width, tasks) and the input size; not the weights' values."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_identity()
    tasks = ",".join(f"{t.name}:{t.kind}:{t.out_channels}" for t in model.tasks)
    return (f"{where} | torch {torch.__version__} | {torch.get_num_threads()} threads | {model.arch} "
            f"x{model.width:g} [{tasks}] | {size[0]}x{size[1]} | {'/'.join(candidates)}")


__all__ = ["optimize_for_inference", "InferenceModel", "PRECISIONS", "fuse_activations", "ConvAct",
           "cpu_bf16_support", "cpu_amx_bf16", "onednn_fusion_available", "resolve_precision"]
