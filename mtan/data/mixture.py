"""Mixtures: several datasets concatenated, every item carrying the union of their tasks.

A task some part lacks (CamVid's depth, say) is filled with that task's invalid target
(``Task.missing_target``: labels -1, depth 0, normals 0), so the losses mask it out per sample
and items from different parts batch together. Tasks of the same name must agree (same kind,
same class set, same depth convention) and all parts must produce one image size.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import torch

from mtan.data.common import DatasetError
from mtan.tasks import Task, tasks_from_config


def _difference(a: Task, b: Task) -> str:
    """``"class_set: cityscapes-7 vs camvid-11"`` for the config fields where two tasks differ."""
    ca, cb = a.to_config(), b.to_config()
    return "; ".join(f"{k}: {ca.get(k)} vs {cb.get(k)}" for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k))


def union_tasks(datasets: Sequence) -> list[dict]:
    """The union of the parts' task configs (in order of first appearance); conflicts raise."""
    union: dict[str, tuple[dict, Task, str]] = {}
    for ds in datasets:
        for cfg, task in zip(ds.task_configs, tasks_from_config(ds.task_configs)):
            if task.name not in union:
                union[task.name] = (cfg, task, ds.name)
                continue
            _, seen, owner = union[task.name]
            if seen.to_config() != task.to_config():
                difference = _difference(seen, task)
                hint = ""
                if "class" in difference:
                    hint = (" Class sets must agree: e.g. use camvid with classes=7 to mix it with "
                            "CityScapes 7-class labels or synthetic scenes.")
                raise DatasetError(f"cannot mix {owner!r} and {ds.name!r}: their task {task.name!r} differs "
                                   f"({difference}).{hint}")
    return [dict(cfg) for cfg, _, _ in union.values()]


class MixtureDataset(torch.utils.data.Dataset):
    """The concatenation of ``datasets``, items filled up to the union of their tasks."""

    def __init__(self, datasets: Sequence, name: str | None = None):
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.name = name or "+".join(ds.name for ds in self.datasets)
        self.task_configs = union_tasks(self.datasets)
        self.tasks = tasks_from_config(self.task_configs)
        sizes = {tuple(ds.size) for ds in self.datasets}
        if len(sizes) > 1:
            listing = ", ".join(f"{ds.name} {ds.size[0]}x{ds.size[1]}" for ds in self.datasets)
            raise DatasetError(f"cannot mix datasets of different image sizes ({listing}): pass size=(H, W) "
                               "so that all parts are resized alike.")
        self.size = sizes.pop()
        self.offsets = []  # index of each part's first item
        total = 0
        for ds in self.datasets:
            self.offsets.append(total)
            total += len(ds)
        self._len = total

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[int, int]:
        """(part number, index within the part) of a mixture index."""
        if not 0 <= index < self._len:
            raise IndexError(f"{self.name}: index {index} out of range (0..{self._len - 1})")
        part = bisect.bisect_right(self.offsets, index) - 1
        return part, index - self.offsets[part]

    def __getitem__(self, index: int) -> dict:
        part, local = self.locate(index)
        sample = dict(self.datasets[part][local])
        h, w = sample["image"].shape[-2:]
        for task in self.tasks:
            if task.name not in sample:
                sample[task.name] = task.missing_target(h, w)
        return sample

    def check_item(self, index: int) -> None:
        part, local = self.locate(index)
        ds = self.datasets[part]
        if hasattr(ds, "check_item"):
            ds.check_item(local)
        else:
            ds[local]

    def __repr__(self) -> str:
        parts = ", ".join(repr(ds) for ds in self.datasets)
        return f"MixtureDataset(name={self.name!r}, frames={len(self)}, parts=[{parts}])"
