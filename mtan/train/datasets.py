"""A run's data: the training split and one validation set per part of a mixture, with the
options each builder takes, held in memory on the training device."""
from __future__ import annotations

import torch

from mtan.data import build_dataset, to_memory
from mtan.data.registry import spec
from mtan.train.config import TrainConfig


def builder_options(config: TrainConfig, part: str, split: str) -> dict:
    """The options ``split`` of one part of the run's data is built with: what its spec takes from
    the run's settings (validation: generated scenes seeded 0, depth as the data has it), then the
    run's ``--data-option`` values for that part."""
    train = split == "train"
    options = spec(part).split_options(split, labels=config.data.labels, seed=config.engine.seed if train else 0,
                                       frames=config.data.train_frames if train else config.data.val_frames,
                                       pseudo_depth=config.data.pseudo_depth)
    options.update(config.data.options.get(part, {}))
    return options


def build_split(config: TrainConfig, split: str, name: str | None = None, root="config"):
    """``split`` of the run's data (or of one part ``name`` of a mixture, with its own ``root``)."""
    name = name or config.data.name
    root = config.data.root if root == "config" else root
    parts = name.split("+")
    if len(parts) == 1:
        options = builder_options(config, name, split)
    else:  # per-part options, e.g. synthetic={"num_frames": 96}
        options = {p: builder_options(config, p, split) for p in parts}
    return build_dataset(name, root=root, split=split, size=config.data.size, **options)


def validation_parts(config: TrainConfig) -> list[tuple[str, str | None, dict]]:
    """Each part of the training data with its root and the options its validation split is
    built with (``synthetic+camvid`` -> both, reported apart)."""
    parts = config.data.name.split("+")
    if len(parts) == 1:
        return [(config.data.name, config.data.root, builder_options(config, config.data.name, "val"))]
    roots = (config.data.root or "").split("+") if isinstance(config.data.root, str) else [None] * len(parts)
    roots = roots if len(roots) == len(parts) else [None] * len(parts)
    return [(p, r or None, builder_options(config, p, "val")) for p, r in zip(parts, roots)]


def validation_sets(config: TrainConfig) -> dict[str, object]:
    """One validation set per part of the training data, as :func:`validation_parts` lists them."""
    return {part: build_dataset(part, root=root, split="val", size=config.data.size, **options)
            for part, root, options in validation_parts(config)}


def load_into_memory(dataset, device: torch.device, progress: bool, workers: int = 0):
    return to_memory(dataset, device=device, progress=progress, workers=workers)
