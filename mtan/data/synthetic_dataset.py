"""Procedural street scenes as a dataset: rendered on the fly, or read from a written release.

The scenes come from :mod:`mtan.data.synthetic` (``render_frame(seed, index, height, width)``):
an RGB image, 7 CityScapes-category labels and inverse depth (0 = sky, i.e. invalid), the
same tasks as ``preset_tasks("cityscapes-7")``. A release written with
``mtan.data.synthetic.write_release`` has the CityScapes release layout and is read with
:class:`~mtan.data.cityscapes.CityScapesDataset`.
"""
from __future__ import annotations

import numpy as np
import torch

from mtan.data.common import DatasetError, check_sample_values, check_target, parse_size
from mtan.tasks import preset_tasks, tasks_from_config

DEFAULT_FRAMES = {"train": 500, "val": 100}
DEFAULT_SIZE = (128, 256)


class SyntheticDataset(torch.utils.data.Dataset):
    """``num_frames`` procedural frames of ``size``, rendered on first access and cached in memory.

    Frame ``i`` of a split is ``render_frame(seed, i, H, W, stream=...)`` with the split's own
    random stream (train 0, val 1), exactly as ``write_release`` writes them: the splits never
    share a frame, and rendering here or reading a written release gives the same frames.
    About 0.2 s per 128x256 frame on one core; with DataLoader workers each worker keeps its
    own cache, so for many epochs prefer ``to_memory(dataset)`` once.

    ``sky_depth``: a training target for sky pixels (whose stored inverse depth is 0 = invalid),
    e.g. :data:`mtan.data.pseudo_depth.SKY_INVERSE_DEPTH`, so that the network learns that sky is
    the farthest thing in view; None (default) keeps the CityScapes convention.
    """

    def __init__(self, split: str = "train", size=DEFAULT_SIZE, num_frames: int | None = None, seed: int = 0,
                 cache: bool = True, sky_depth: float | None = None, name: str = "synthetic"):
        from mtan.data.synthetic import SPLIT_STREAMS

        if split not in SPLIT_STREAMS:
            raise ValueError(f"synthetic split must be one of {list(SPLIT_STREAMS)}, got {split!r}")
        self.split, self.seed, self.name = split, int(seed), name
        if sky_depth is not None and not 0 < float(sky_depth) < 0.01:
            raise ValueError(f"sky_depth must be a small positive inverse depth (0 < v < 0.01), got {sky_depth!r}")
        self.sky_depth = None if sky_depth is None else float(sky_depth)
        self.stream = SPLIT_STREAMS[split]
        self.size = parse_size(size) or DEFAULT_SIZE
        self.num_frames = int(num_frames if num_frames is not None else DEFAULT_FRAMES[split])
        if self.num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames!r}")
        self.task_configs = preset_tasks("cityscapes-7")
        self.tasks = tasks_from_config(self.task_configs)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_frames

    def _render(self, index: int):
        from mtan.data.synthetic import render_frame

        h, w = self.size
        frame = render_frame(self.seed, index, h, w, stream=self.stream)
        return frame["image"], frame["label"], frame["depth"]

    def render_all(self, workers: int, progress: bool = False) -> None:
        """Render every frame not yet cached, in ``workers`` processes (the same frames as one by
        one: each depends only on seed, index and size)."""
        if self._cache is None:
            return
        from mtan.data.synthetic.frames import _map, _render_args

        todo = [i for i in range(self.num_frames) if i not in self._cache]
        jobs = [(self.seed, i, *self.size, self.stream) for i in todo]
        for i, frame in zip(todo, _map(_render_args, jobs, workers, progress, f"rendering {self.name} {self.split}")):
            self._cache[i] = (frame["image"], frame["label"], frame["depth"])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.name}: index {index} out of range (0..{self.num_frames - 1})")
        if self._cache is not None and index in self._cache:
            image, label, depth = self._cache[index]
        else:
            image, label, depth = self._render(index)
            if self._cache is not None:
                self._cache[index] = (image, label, depth)
        where = self._where(index)
        h, w = self.size
        if image.shape != (h, w, 3) or label.shape != (h, w) or depth.shape[:2] != (h, w):
            raise DatasetError(f"{where}: render_frame returned shapes image {image.shape}, label {label.shape}, "
                               f"depth {depth.shape}; expected {h}x{w}(x3).")
        labels = torch.from_numpy(np.asarray(label)).long().clamp_(min=-1)
        check_target(self.tasks[0], labels, where)
        depth = torch.from_numpy(np.array(depth, dtype=np.float32).reshape(h, w))[None]
        if self.sky_depth is not None:
            from mtan.data.synthetic import SKY

            depth[0][(labels == SKY) & (depth[0] == 0)] = self.sky_depth
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255),
            "semantic": labels,
            "depth": depth,
        }

    def check_item(self, index: int) -> None:
        check_sample_values(self[index], self.tasks, lambda key: f"{self._where(index)}, {key}")

    def _where(self, index: int) -> str:
        return f"{self.name} {self.split} frame {index} (seed {self.seed}, rendered)"

    def __repr__(self) -> str:
        return (f"SyntheticDataset(split={self.split!r}, frames={self.num_frames}, size={self.size}, "
                f"seed={self.seed}" + (f", sky_depth={self.sky_depth:g})" if self.sky_depth is not None else ")"))


def synthetic_dataset(root=None, split: str = "train", size=None, num_frames: int | None = None, seed: int = 0,
                      **options):
    """A written synthetic release under ``root`` (CityScapes layout), else frames rendered on the fly.

    With a ``root``, ``num_frames`` keeps the first frames of the split and ``seed`` is not used
    (the release's own seed is recorded in its ``synthetic.json``).
    """
    if root is None:
        return SyntheticDataset(split, size or DEFAULT_SIZE, num_frames, seed, **options)
    from mtan.data.cityscapes import CityScapesDataset

    options.pop("cache", None)
    if options.pop("sky_depth", None) is not None:
        raise ValueError("synthetic: sky_depth applies to frames rendered on the fly, not to a written release "
                         f"({root}); leave out the data root or the sky_depth option.")
    ds = CityScapesDataset(root, split, labels=options.pop("labels", "label_7"), size=size, name="synthetic",
                           **options)
    if num_frames is not None:
        if not 0 < num_frames <= len(ds):
            raise DatasetError(f"synthetic: num_frames={num_frames} but {ds.split_dir} holds {len(ds)} frames; "
                               "write more with `python -m mtan.data.synthetic` or ask for fewer.")
        ds.files = ds.files[:num_frames]
    return ds
