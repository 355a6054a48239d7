"""Pieces shared by every dataset: the sample contract, errors, resizing and the release reader.

The sample contract (what the trainer and the evaluator rely on)
-----------------------------------------------------------------
Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts:

* ``image``: float32 ``3 x H x W`` in [0, 1];
* one target per task, keyed by the task's name:
  ``semantic`` int64 ``H x W`` (-1 = ignore), ``depth`` float32 ``1 x H x W`` (0 = invalid),
  ``normal`` float32 ``3 x H x W`` (all-zero = invalid).

Datasets also expose ``task_configs`` (task dicts as in :mod:`mtan.tasks`), ``tasks`` (the
built :class:`mtan.tasks.Task` objects), ``name`` and ``size`` (``(H, W)`` of every sample).

The MTAN release format
-----------------------
The preprocessed CityScapes and NYUv2 releases store one ``.npy`` file per frame and field::

    ROOT/{train,val}/image/{i}.npy      float H x W x 3 in [0, 1]
    ROOT/{train,val}/<label>/{i}.npy    float H x W, class index, -1 = void
    ROOT/{train,val}/depth/{i}.npy      float H x W x 1, 0 = invalid
    ROOT/{train,val}/normal/{i}.npy     float H x W x 3, unit vectors, 0 = invalid (NYUv2)

:class:`ReleaseDataset` reads that layout for any set of fields.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mtan.tasks import Task, tasks_from_config


class DatasetError(ValueError):
    """A dataset is missing, incomplete or malformed. The message names the file and what to do."""


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def parse_size(size, minimum: int = 1) -> tuple[int, int] | None:
    """``None``, ``(H, W)``, ``[H, W]``, ``"128x256"`` or ``"128,256"`` -> ``(H, W)`` or ``None``.
    The project's one reader of sizes: the trainer's, the evaluator's, the app's and the tools'."""
    if size is None:
        return None
    given = size
    if isinstance(size, str):
        parts = re.split(r"[x,X*× ]+", size.strip())
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"size must look like '128x256' (height x width), got {size!r}")
        size = (int(parts[0]), int(parts[1]))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"size must be positive, got {given!r}" if minimum == 1 else
                         f"height and width must be at least {minimum}, got {given!r}")
    return h, w


def numeric_sort_key(name: str):
    """Sort ``2.npy`` before ``10.npy``; non-numeric stems after the numeric ones, by name."""
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_npy(folder: Path) -> list[str]:
    """The ``*.npy`` file names in ``folder``, numerically sorted."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if e.name.endswith(".npy") and e.is_file()]
    return sorted(names, key=numeric_sort_key)


# --------------------------------------------------------------------------------------
# Converting arrays into sample tensors (with shape checks that name the file)
# --------------------------------------------------------------------------------------


def image_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    """H x W x 3 array (float in [0, 1] or uint8) -> float32 3 x H x W."""
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{where}: an image must be H x W x 3, got shape {arr.shape}. "
                           "Re-create this file (channel-last RGB).")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(f"{where}: an image must be float in [0, 1] or uint8, got dtype {arr.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()


def label_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    """H x W (or H x W x 1) class indices, float or integer, negative = void -> int64 H x W, -1 = void."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{where}: a label map must be H x W, got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{where}: a label map must hold numbers, got dtype {arr.dtype}.")
    labels = torch.from_numpy(np.ascontiguousarray(arr))
    if labels.is_floating_point():
        rounded = labels.round()
        if not torch.equal(rounded, labels):  # also catches NaN
            raise DatasetError(f"{where}: label values must be whole numbers (class indices, -1 = void); "
                               "this map holds fractions or NaN, as if it was resized with interpolation: "
                               "resize label maps with nearest and re-create this file.")
        labels = rounded
    labels = labels.long()
    return labels.clamp_(min=-1)  # every negative value means void


def depth_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    """H x W x 1 (or H x W) float depth -> float32 1 x H x W."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{where}: a depth map must be H x W x 1, got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{where}: a depth map must be float, got dtype {arr.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]


def normal_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    """H x W x 3 float normals -> float32 3 x H x W."""
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{where}: a normal map must be H x W x 3, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(f"{where}: a normal map must be float, got dtype {arr.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()


TENSOR_FROM_ARRAY: dict[str, Callable[[np.ndarray, str], torch.Tensor]] = {
    "image": image_tensor, "semantic": label_tensor, "depth": depth_tensor, "normal": normal_tensor,
}


# --------------------------------------------------------------------------------------
# Value checks (used on every item, cheaply, and by validate(full=True))
# --------------------------------------------------------------------------------------


def check_target(task: Task, target: torch.Tensor, where: str, full: bool = False) -> None:
    """Raise a :class:`DatasetError` naming ``where`` if ``target`` holds values the task cannot
    learn from. ``full=False``: the cheap checks made on every item (labels within the classes)."""
    problem = task.target_problem(target, full=full)
    if problem:
        raise DatasetError(f"{where}: {problem}")


def check_sample_values(sample: dict, tasks: Sequence[Task], where: Callable[[str], str]) -> None:
    """Full value checks of one sample; ``where(key)`` names the file that ``key`` came from."""
    lo, hi = (float(v) for v in torch.aminmax(sample["image"]))
    if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # also false for NaN
        raise DatasetError(f"{where('image')}: image values must be finite and in [0, 1] "
                           f"(found min {lo:.4g}, max {hi:.4g}). "
                           "If the file holds 0..255 values, divide by 255 when writing it.")
    for task in tasks:
        check_target(task, sample[task.name], where(task.name), full=True)


# --------------------------------------------------------------------------------------
# Resizing and cropping whole samples
# --------------------------------------------------------------------------------------


def resize_sample(sample: dict, tasks: Sequence[Task], size: tuple[int, int]) -> dict:
    """Resize a sample to ``size``: image bilinear with antialiasing, targets nearest.

    "nearest-exact" picks the source pixel under each output pixel's centre (as Pillow does),
    so labels, depth and normals stay aligned with each other and with the image.
    """
    h, w = sample["image"].shape[-2:]
    if (h, w) == tuple(size):
        return sample
    out = dict(sample)
    out["image"] = F.interpolate(sample["image"][None], size=size, mode="bilinear",
                                 align_corners=False, antialias=True)[0].clamp_(0, 1)
    for task in tasks:
        t = sample[task.name]  # H x W labels or C x H x W maps
        moved = F.interpolate(t.reshape(1, -1, *t.shape[-2:]).float(), size=size, mode="nearest-exact")
        out[task.name] = moved.reshape(*t.shape[:-2], *size).to(t.dtype)
    return out


def crop_sample(sample: dict, tasks: Sequence[Task], top: int, left: int, height: int, width: int) -> dict:
    """Crop every field of a sample to the same window."""
    out = dict(sample)
    for key in ["image"] + [t.name for t in tasks]:
        out[key] = sample[key][..., top:top + height, left:left + width]
    return out


def center_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred window of aspect ratio ``aspect`` (width / height): (top, left, h, w)."""
    if width / height > aspect:  # too wide: trim the sides
        w = max(1, round(height * aspect))
        return 0, (width - w) // 2, height, w
    h = max(1, round(width / aspect))
    return (height - h) // 2, 0, h, width


# --------------------------------------------------------------------------------------
# The release-format reader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One per-frame folder of a release: sample ``key`` (``image`` or a task name), its
    ``folder`` under the split directory, and its ``kind`` (image/semantic/depth/normal)."""

    key: str
    folder: str
    kind: str


class ReleaseDataset(torch.utils.data.Dataset):
    """One split of a folder-per-field ``.npy`` release (see the module docstring).

    On open it checks cheaply: the split and field folders exist, every folder holds the same
    file names, and the first frame's files have the right shapes and dtypes. Every item is
    shape-checked when loaded; :func:`mtan.data.validate` checks all values of all files.

    ``size=(H, W)`` resizes on load (image bilinear, targets nearest); ``None`` keeps the
    stored size.
    """

    #: shown in errors: how to obtain the data (overridden by the concrete datasets)
    how_to_get = "Check the dataset root folder."

    def __init__(self, root, split: str, fields: Sequence[Field], task_configs: list[dict], name: str,
                 size=None):
        if root is None:
            raise DatasetError(f"{name}: no root folder given. {self.how_to_get}")
        self.root = Path(root).expanduser()
        self.split = split
        self.fields = list(fields)
        self.name = name
        self.task_configs = [dict(t) for t in task_configs]
        self.tasks = tasks_from_config(self.task_configs)
        self.files = self._check_structure()
        self.native_size = self._check_first_frame()
        self.size = parse_size(size) or self.native_size

    # -- structure --------------------------------------------------------------------------

    @property
    def split_dir(self) -> Path:
        return self.root / self.split

    def path(self, index: int, key: str) -> Path:
        field = next(f for f in self.fields if f.key == key)
        return self.split_dir / field.folder / self.files[index]

    def _layout(self) -> str:
        return f"{{train,val}}/{{{','.join(f.folder for f in self.fields)}}}/{{i}}.npy"

    def _check_structure(self) -> list[str]:
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: root folder {self.root} does not exist. {self.how_to_get}")
        if not self.split_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DatasetError(f"{self.name}: split folder {self.split_dir} is missing (found: {present or 'nothing'}). "
                               f"Expected the layout ROOT/{self._layout()}. {self.how_to_get}")
        listings = {}
        for f in self.fields:
            folder = self.split_dir / f.folder
            if not folder.is_dir():
                present = sorted(p.name for p in self.split_dir.iterdir() if p.is_dir())
                raise DatasetError(f"{self.name}: folder {folder} is missing (found in {self.split_dir}: "
                                   f"{present or 'nothing'}). Expected the layout ROOT/{self._layout()}. "
                                   f"{self.how_to_get}")
            listings[f.folder] = list_npy(folder)
        first = self.fields[0].folder
        files = listings[first]
        if not files:
            raise DatasetError(f"{self.name}: {self.split_dir / first} holds no .npy files. {self.how_to_get}")
        reference = set(files)
        for folder, names in listings.items():
            if folder == first or set(names) == reference:
                continue
            missing = sorted(reference - set(names), key=numeric_sort_key)
            extra = sorted(set(names) - reference, key=numeric_sort_key)
            detail = []
            if missing:
                detail.append(f"missing {len(missing)} file(s) that {first}/ has, e.g. "
                              f"{self.split_dir / folder / missing[0]}")
            if extra:
                detail.append(f"{len(extra)} file(s) that {first}/ lacks, e.g. {self.split_dir / first / extra[0]}")
            raise DatasetError(f"{self.name}: {self.split_dir / folder} has {len(names)} files but "
                               f"{self.split_dir / first} has {len(files)}: {'; '.join(detail)}. Every frame "
                               "needs one file in each folder; restore the missing files (re-download or "
                               "re-run the conversion) or remove the extra ones.")
        return files

    def _check_first_frame(self) -> tuple[int, int]:
        """Read only the headers of frame 0 (memory-mapped) and check shapes and dtypes."""
        shapes = {}
        for f in self.fields:
            path = self.path(0, f.key)
            arr = self._read(path, mmap=True)
            corner = np.array(arr[:1, :1] if arr.ndim >= 2 else arr)  # a copy of one pixel: dtype/ndim check
            TENSOR_FROM_ARRAY[f.kind](corner, str(path))
            shapes[f.key] = arr.shape[:2]
        h, w = shapes["image"]
        for key, hw in shapes.items():
            if hw != (h, w):
                raise DatasetError(f"{self.name}: {self.path(0, key)} is {hw[0]}x{hw[1]} but its image "
                                   f"{self.path(0, 'image')} is {h}x{w}; every field of a frame must have "
                                   "the image's size.")
        return h, w

    @staticmethod
    def _read(path: Path, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
            raise DatasetError(f"{path}: cannot read this .npy file ({type(e).__name__}: {e}). "
                               "The file is damaged or not a NumPy array: re-download it or re-run "
                               "the conversion that wrote it.") from e

    # -- items ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        """The sample at its stored size, shape-checked (no value checks beyond label range)."""
        if not 0 <= index < len(self.files):
            raise IndexError(f"{self.name}: index {index} out of range (0..{len(self.files) - 1})")
        sample = {}
        for f in self.fields:
            path = self.path(index, f.key)
            sample[f.key] = TENSOR_FROM_ARRAY[f.kind](self._read(path), str(path))
        h, w = sample["image"].shape[-2:]
        if (h, w) != self.native_size:
            raise DatasetError(f"{self.path(index, 'image')} is {h}x{w} but the dataset's first frame is "
                               f"{self.native_size[0]}x{self.native_size[1]}; all frames of a release must "
                               "have one size.")
        for f in self.fields:
            if sample[f.key].shape[-2:] != (h, w):
                hh, ww = sample[f.key].shape[-2:]
                raise DatasetError(f"{self.path(index, f.key)} is {hh}x{ww} but its image is {h}x{w}; "
                                   "every field of a frame must have the image's size.")
        for task in self.tasks:
            check_target(task, sample[task.name], str(self.path(index, task.name)))
        return sample

    def __getitem__(self, index: int) -> dict:
        return resize_sample(self.load(index), self.tasks, self.size)

    def check_item(self, index: int) -> None:
        """Full checks of one frame's files (used by :func:`mtan.data.validate`)."""
        check_sample_values(self.load(index), self.tasks, lambda key: str(self.path(index, key)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, split={self.split!r}, "
                f"frames={len(self)}, size={self.size})")


def option_value(text: str):
    """A dataset option's value from the command line: ``true``/``false``, a number, or the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def options_from_text(items) -> dict:
    """``["splits=blocks", "classes=11"]`` (the ``--data-option`` flags) as a dict of option values;
    a ValueError naming the item that is not ``KEY=VALUE``."""
    options = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        if not eq or not key:
            raise ValueError(f"--data-option {item!r}: expected KEY=VALUE, e.g. splits=blocks")
        options[key] = option_value(value)
    return options
