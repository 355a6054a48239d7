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
import os
from pathlib import Path

from safetensors.torch import save_model
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from mtan.model.files import CONFIG_NAME, WEIGHTS_NAME, ModelConfigError, resolve_model_files
from mtan.model.batched import norm_signature, plain_norm, shared_conv, task_mask
from mtan.model.blocks import (ARCHITECTURES, NUM_STAGES, Decoder, Encoder, Head, SharedAttentionConvs,
                               TaskAttention, stage_widths)
from mtan.model.face import TaskNetwork
from mtan.model.storage import load_safetensors_strict, read_config
from mtan.tasks import Task, tasks_from_config


class MTAN(
    TaskNetwork,
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
        if not all(plain_norm(block[1]) for block in [*self.attention_convs.encoder, *self.attention_convs.decoder]):
            return False
        atts = list(self.attention.values())
        for part in ("encoder", "decoder"):
            for j in range(NUM_STAGES):
                for norm in ("first_norm", "second_norm"):  # the same kind and settings in every task
                    signatures = {norm_signature(getattr(getattr(att, part)[j], norm)) for att in atts}
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
            a = task_mask(stacked_u if j == 0 else torch.cat((stacked_u, x), dim=1), [att.encoder[j] for att in atts])
            x = F.max_pool2d(shared_conv(per_task(a, ps[j]), T, convs.encoder[j]), kernel_size=2, stride=2)
            enc_masks.append(a)
        for i in range(NUM_STAGES):
            y = shared_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), T, convs.decoder[i])
            a = task_mask(torch.cat((torch.cat([ups[i]] * T), y), dim=1), [att.decoder[i] for att in atts])
            x = per_task(a, qs[i])
            dec_masks.append(a)
        features = {name: x[k * n:(k + 1) * n] for k, name in enumerate(names)}
        all_masks = {}
        if keep_masks:
            for k, name in enumerate(names):
                all_masks[name] = {"encoder": [m[k * n:(k + 1) * n] for m in enc_masks],
                                   "decoder": [m[k * n:(k + 1) * n] for m in dec_masks]}
        return features, all_masks

    # ---- saving and loading -----------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        weights = Path(save_directory) / WEIGHTS_NAME
        save_model(self, str(weights))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(weights, 0o666 & ~umask)  # safetensors writes 0600; the folder's other files are 0644
        (Path(save_directory) / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")

    def generate_model_card(self, *args, **kwargs):
        from mtan.card import model_card  # publishing: loaded when a card is written, not with the network

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


