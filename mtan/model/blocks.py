"""The building blocks of SegNet-MTAN: convolution layers, attention masks, heads, the encoder and
decoder stages, and the per-task attention branches with their shared 3x3 convolutions."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES = ("mtan", "split", "single")
BASE_WIDTHS = (64, 128, 256, 512, 512)
NUM_STAGES = 5
MULTIPLE = 2 ** NUM_STAGES  # input sides must be multiples of 32


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

    # The layers by what they are (their positions keep the original checkpoint's tensor names).
    @property
    def first_conv(self) -> nn.Module:
        return self[0]

    @property
    def first_norm(self) -> nn.Module:
        return self[1]

    @property
    def second_conv(self) -> nn.Module:
        return self[3]

    @property
    def second_norm(self) -> nn.Module:
        return self[4]


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
