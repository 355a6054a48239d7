"""Datasets for MTAN: CityScapes, NYUv2, CamVid, procedural scenes, and mixtures of them.

Every dataset yields dicts ``{"image": 3xHxW float in [0, 1], <task name>: target, ...}``
(see :mod:`mtan.data.common` for the contract) and exposes ``task_configs``, ``tasks``,
``name`` and ``size``. Build one by name::

    from mtan.data import build_dataset, validate, to_memory

    train = build_dataset("cityscapes", root="data/cityscapes", split="train", labels="label_7")
    validate(train)                                  # every file, with a progress bar
    memory = to_memory(train, device="cuda")         # compact, resident, thousands of images/s
    for batch in memory.iter_batches(8, shuffle=True, augment=True):
        ...

    mix = build_dataset("synthetic+camvid", root={"camvid": "data/camvid"}, size=(128, 256))
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
from pathlib import Path

from mtan.data.augment import AugmentParams, BatchAugment, augment_batch
from mtan.data.common import DatasetError, ReleaseDataset, parse_size
from mtan.data.memory import InMemoryDataset, bytes_per_frame, to_memory
from mtan.data.mixture import MixtureDataset
from mtan.data.nyuv2 import NYUv2Dataset
from mtan.data.synthetic_dataset import SyntheticDataset, synthetic_dataset
from mtan.data.validate import validate

DATASETS: dict[str, str] = {
    "cityscapes": "CityScapes, MTAN release (.npy): image + semantic (labels=label_7|label_19|label_2) "
                  "+ inverse depth; 2975 train / 500 val",
    "cityscapes-raw": "CityScapes official download (leftImg8bit, gtFine, disparity): converted once into "
                      "a cache folder (cache_dir=..., prepare=True), then read as 'cityscapes'",
    "nyuv2": "NYUv2, MTAN release (.npy, 288x384): 13-class semantic + metric depth + surface normals; "
             "795 train / 654 val",
    "camvid": "CamVid (SegNet version, 480x360): semantic only, classes=7 (CityScapes categories) or 11; "
              "depth filled invalid; 367 train / 101 val (splits=blocks: train and val split by time into "
              "398 train / 70 held-out val; splits=all: all 468 in train)",
    "synthetic": "procedural street scenes (7 categories + inverse depth): rendered on the fly "
                 "(num_frames=, seed=) or read from a written release (root=)",
}
MIXTURE_HELP = "mixtures: join names with '+' (e.g. 'synthetic+camvid'); roots as 'ROOT_A+ROOT_B' or a dict"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTAN_CACHE", Path.home() / ".cache" / "mtan")).expanduser()


def _cityscapes_raw(root, split="train", size=None, labels="label_7", depth="release", cache_dir=None,
                    prepare: bool = True, workers: int = 1):
    """The official download, converted on first use into ``cache_dir`` (one folder per root/size/depth)."""
    from mtan.data.cityscapes import CityScapesDataset, is_prepared, label_folder
    from mtan.data.cityscapes import prepare as prepare_cityscapes

    if root is None:
        raise DatasetError("cityscapes-raw: pass root= the folder holding leftImg8bit/, gtFine/ and disparity/.")
    size = parse_size(size) or (128, 256)
    folder = label_folder(labels)
    root_id = hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:8]
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / f"cityscapes-{size[0]}x{size[1]}-{depth}-{root_id}"
    classes = (int(folder.split("_")[1]),)
    if not is_prepared(cache, size, classes, depth, splits=(split,)):
        if not prepare:
            raise DatasetError(f"cityscapes-raw: {root} has not been converted for {size[0]}x{size[1]} yet. Run\n"
                               f"  python -m mtan.data.cityscapes prepare --root {root} --out {cache} "
                               f"--size {size[0]}x{size[1]} --depth {depth} --splits {split}\n"
                               "or build the dataset with prepare=True.")
        prepare_cityscapes(root, cache, size, (7, 19, 2), depth, splits=(split,), workers=workers)
    return CityScapesDataset(cache, split, labels=folder)


def _cityscapes(root, split="train", size=None, labels="label_7", depth=True):
    from mtan.data.cityscapes import CityScapesDataset

    return CityScapesDataset(root, split, labels=labels, size=size, depth=depth)


def _nyuv2(root, split="train", size=None, tasks=("semantic", "depth", "normal")):
    return NYUv2Dataset(root, split, size=size, tasks=tasks)


def _camvid(root, split="train", size=None, classes=7, fit="crop", depth=True, pseudo_depth=False, splits="standard"):
    from mtan.data.camvid import CamVidDataset

    return CamVidDataset(root, split, classes=int(classes), size=size, fit=fit, depth=depth, pseudo_depth=pseudo_depth,
                         splits=splits)


def _synthetic(root, split="train", size=None, num_frames=None, seed=0, cache=True, sky_depth=None):
    return synthetic_dataset(root, split, size, num_frames, seed, cache=cache, sky_depth=sky_depth)


BUILDERS = {"cityscapes": _cityscapes, "cityscapes-raw": _cityscapes_raw, "nyuv2": _nyuv2,
            "camvid": _camvid, "synthetic": _synthetic}


def _accepted_options(builder) -> set[str]:
    return set(inspect.signature(builder).parameters) - {"root", "split", "size"}


def _build_one(name: str, root, split: str, size, options: dict):
    builder = BUILDERS.get(name)
    if builder is None:
        known = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}; known: {known} ({MIXTURE_HELP})")
    unknown = set(options) - _accepted_options(builder)
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown option(s) {sorted(unknown)}; "
                         f"accepted: {sorted(_accepted_options(builder))}")
    return builder(root, split=split, size=size, **options)


def _split_roots(parts: list[str], root) -> list:
    if root is None:
        return [None] * len(parts)
    if isinstance(root, dict):
        unknown = set(root) - set(parts)
        if unknown:
            raise ValueError(f"root dict names {sorted(unknown)}, which are not parts of {'+'.join(parts)}")
        return [root.get(p) for p in parts]
    pieces = str(root).split("+")
    if len(pieces) != len(parts):
        raise ValueError(f"mixture {'+'.join(parts)} needs {len(parts)} roots joined by '+' "
                         f"(empty for a default), got {root!r}; or pass a dict {{name: root}}")
    return [p or None for p in pieces]


def build_dataset(name: str, root=None, split: str = "train", size=None, **options):
    """Build a dataset by name (see ``DATASETS``); ``a+b`` builds a :class:`MixtureDataset`.

    ``size``: ``(H, W)`` or ``"HxW"`` to resize on load (``None``: the stored size).
    ``options`` go to the dataset (e.g. ``labels="label_19"`` for cityscapes, ``classes=11`` for
    camvid, ``num_frames=``/``seed=`` for synthetic). For a mixture, an option goes to every
    part that accepts it, and ``<part name>={...}`` gives options to one part only, e.g.
    ``build_dataset("synthetic+camvid", camvid={"fit": "stretch"})``.
    """
    parts = [p.strip().lower() for p in name.split("+")]
    if len(parts) == 1:
        return _build_one(parts[0], root, split, size, options)
    for part in parts:
        if part not in BUILDERS:
            raise ValueError(f"unknown dataset {part!r} in {name!r}; known: {', '.join(DATASETS)}")
    own = {p: dict(options.pop(p)) for p in set(parts) if isinstance(options.get(p), dict)}
    shared = options
    unused = [k for k in shared if not any(k in _accepted_options(BUILDERS[p]) for p in parts)]
    if unused:
        raise ValueError(f"option(s) {unused} are accepted by none of {parts}")
    datasets = []
    for part, part_root in zip(parts, _split_roots(parts, root)):
        opts = {k: v for k, v in shared.items() if k in _accepted_options(BUILDERS[part])}
        opts.update(own.get(part, {}))
        datasets.append(_build_one(part, part_root, split, size, opts))
    return MixtureDataset(datasets, name="+".join(parts))


# The CamVid and CityScapes modules are also commands (python -m mtan.data.camvid ...): they are
# loaded when first used, not with the package, so that running them imports them only once.
_LAZY = {"CamVidDataset": ("mtan.data.camvid", "CamVidDataset"),
         "CityScapesDataset": ("mtan.data.cityscapes", "CityScapesDataset"),
         "PrepareReport": ("mtan.data.cityscapes", "PrepareReport"),
         "is_prepared": ("mtan.data.cityscapes", "is_prepared"),
         "prepare_cityscapes": ("mtan.data.cityscapes", "prepare")}


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'mtan.data' has no attribute {name!r}")


__all__ = [
    "DATASETS", "build_dataset", "validate", "DatasetError", "parse_size",
    "CityScapesDataset", "NYUv2Dataset", "CamVidDataset", "SyntheticDataset", "MixtureDataset",
    "ReleaseDataset", "synthetic_dataset", "prepare_cityscapes", "PrepareReport", "is_prepared",
    "InMemoryDataset", "to_memory", "bytes_per_frame",
    "AugmentParams", "BatchAugment", "augment_batch",
]
