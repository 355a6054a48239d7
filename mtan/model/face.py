"""What every network of this project answers to, the trained :class:`MTAN` and its inference
copy (:class:`mtan.inference.fast.InferenceModel`) alike: its tasks by name, its config, the
input it takes, and :meth:`TaskNetwork.predict` for images of any size."""
from __future__ import annotations

import torch

from mtan.model.blocks import MULTIPLE
from mtan.model.geometry import crop, pad
from mtan.tasks import Task


class TaskNetwork:
    """A mixin for a ``torch.nn.Module`` with ``tasks``, ``arch`` and ``width`` attributes whose
    ``forward(x, return_attention=False)`` takes N x 3 x H x W images with sides multiples of 32."""

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
        param = next(self.parameters())
        x = pad(image.to(device=param.device, dtype=param.dtype if param.is_floating_point() else torch.float32))
        was_training = self.training
        self.eval()
        try:
            result = self(x, return_attention=return_attention)
        finally:
            self.train(was_training)
        size, padded = (h, w), tuple(x.shape[-2:])
        if return_attention:
            outputs, masks = result
            masks = {k: {part: [crop(m, size, padded) for m in ms] for part, ms in v.items()} for k, v in masks.items()}
            return {k: crop(v, size, padded) for k, v in outputs.items()}, masks
        return {k: crop(v, size, padded) for k, v in result.items()}
