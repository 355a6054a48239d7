"""CityScapes: the MTAN release format, and a converter from the official download.

Release format (what MTAN and most multi-task papers train on; 2975 train / 500 val)::

    ROOT/{train,val}/image/{i}.npy                  float H x W x 3 in [0, 1]
    ROOT/{train,val}/{label_7,label_19,label_2}/{i}.npy   float H x W, -1 = void
    ROOT/{train,val}/depth/{i}.npy                  float H x W x 1, inverse depth, 0 = invalid

Converting the official download (``leftImg8bit``, ``gtFine``, ``disparity``, ``camera``)::

    python -m mtan.data.cityscapes prepare --root RAW --out DIR --size 128x256 --classes 7 19 2

Labels come from the official table in ``cityscapesscripts.helpers.labels``: 7 classes =
categoryId - 1 (void -> -1); 19 classes = trainId (255 / -1 -> -1); 2 classes = human or
vehicle category -> 1, any other non-void category -> 0, void -> -1.

Depth (``--depth``), from the 16-bit disparity PNG value p (p = 0: no measurement -> 0):

* ``release`` (default): p / 65535, the convention of the MTAN release (about 1.85 / metres);
* ``disparity``: disparity in pixels of the *output* image, (p - 1) / 256 * out_width / raw_width;
* ``metres``: baseline * fx / disparity, from each frame's ``camera`` JSON (``extrinsic.baseline``,
  ``intrinsic.fx``), or the typical values 0.209313 m and 2262.52 px when it is absent.

The conversion is resumable: it records the source of every index in ``{split}/sources.txt``
and the settings in ``prepare.json``, and skips frames whose files already exist.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mtan.atomic import atomic_save_npy
from mtan.data.common import DatasetError, Field, ReleaseDataset, parse_size
from mtan.tasks import CITYSCAPES_INVERSE_DEPTH_SCALE

LABEL_FOLDERS = {"label_7": "cityscapes-7", "label_19": "cityscapes-19", "label_2": "cityscapes-2"}
CLASS_COUNTS = (7, 19, 2)

# Typical CityScapes stereo camera, used for --depth metres when a frame has no camera JSON.
DEFAULT_BASELINE_M = 0.209313
DEFAULT_FX_PX = 2262.52

DEPTH_MODES = ("release", "disparity", "metres")

RAW_PACKAGES = ("leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip, disparity_trainvaltest.zip "
                "(and camera_trainvaltest.zip) from https://www.cityscapes-dataset.com/downloads/")

HOW_TO_GET = ("Download the MTAN-preprocessed CityScapes release, or convert the official download with "
              "`python -m mtan.data.cityscapes prepare --root RAW --out DIR --size 128x256`.")


def label_folder(labels) -> str:
    """Accept ``'label_7'``, ``'7'`` or ``7`` (also 19 and 2) -> the release folder name."""
    name = f"label_{labels}" if isinstance(labels, int) or str(labels).isdigit() else str(labels)
    if name not in LABEL_FOLDERS:
        raise ValueError(f"CityScapes labels must be one of {', '.join(LABEL_FOLDERS)} (or 7, 19, 2), got {labels!r}")
    return name


def depth_task_config(settings: dict | None) -> dict:
    """The depth task a release holds: read from ``prepare.json`` when it exists, else the
    MTAN release convention (inverse depth, about 1.85 / metres)."""
    if settings and settings.get("depth_kind") == "metric":
        return {"name": "depth", "kind": "depth", "depth_kind": "metric"}
    scale = (settings or {}).get("depth_scale", CITYSCAPES_INVERSE_DEPTH_SCALE)
    return {"name": "depth", "kind": "depth", "depth_kind": "inverse", "scale": float(scale)}


def read_settings(out: Path) -> dict | None:
    path = Path(out) / "prepare.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the conversion settings ({e}); delete the file and "
                           "re-run `python -m mtan.data.cityscapes prepare` with --overwrite.") from e


class CityScapesDataset(ReleaseDataset):
    """A split of the CityScapes release: image + ``semantic`` (7, 19 or 2 classes) + ``depth``.

    ``labels``: ``"label_7"`` (default), ``"label_19"`` or ``"label_2"``; ``size=(H, W)``
    resizes on load (``None`` keeps the stored 128x256 / 256x512); ``depth=False`` drops the
    depth task.
    """

    how_to_get = HOW_TO_GET

    def __init__(self, root, split: str = "train", labels="label_7", size=None, depth: bool = True,
                 name: str = "cityscapes"):
        folder = label_folder(labels)
        tasks = [{"name": "semantic", "kind": "semantic", "class_set": LABEL_FOLDERS[folder]}]
        fields = [Field("image", "image", "image"), Field("semantic", folder, "semantic")]
        if depth:
            tasks.append(depth_task_config(read_settings(root) if root is not None else None))
            fields.append(Field("depth", "depth", "depth"))
        self.labels = folder
        super().__init__(root, split, fields, tasks, name, size)


# --------------------------------------------------------------------------------------
# Converting the official download
# --------------------------------------------------------------------------------------


def label_lookup_tables() -> dict[int, np.ndarray]:
    """labelId (0..255) -> target class for 7, 19 and 2 classes, built from the official table."""
    from cityscapesscripts.helpers.labels import labels as official_labels

    tables = {k: np.full(256, -1, dtype=np.int16) for k in CLASS_COUNTS}
    for lab in official_labels:
        if not 0 <= lab.id < 256:  # "license plate" has id -1 and never occurs in labelIds PNGs
            continue
        if lab.categoryId > 0:  # category 0 is "void"
            tables[7][lab.id] = lab.categoryId - 1
            tables[2][lab.id] = 1 if lab.category in ("human", "vehicle") else 0
        if 0 <= lab.trainId < 255:
            tables[19][lab.id] = lab.trainId
    return tables


@dataclass(frozen=True)
class RawFrame:
    """The files of one frame of the official download (``camera`` may be absent)."""

    key: str  # "city/city_000000_000019"
    image: Path
    labels: Path
    disparity: Path
    camera: Path | None


@dataclass
class PrepareReport:
    """What a conversion did: frames written, frames already done, and frames skipped with why."""

    written: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    default_camera: int = 0  # frames converted to metres without a camera JSON
    removed_stale: int = 0
    frames: dict[str, int] = field(default_factory=dict)  # split -> frames in the output

    def skipped_reason(self, path: str) -> str:
        return next((reason for p, reason in reversed(self.skipped) if p == path), "")

    def summary(self) -> str:
        lines = [f"written {self.written} frame(s); skipped {self.already_done} already converted and "
                 f"{len(self.skipped)} with problems; output: "
                 + ", ".join(f"{s} {n} frames" for s, n in self.frames.items())]
        if self.removed_stale:
            lines.append(f"removed {self.removed_stale} stale file(s) left by an earlier run with other sources")
        if self.default_camera:
            lines.append(f"{self.default_camera} frame(s) had no camera JSON: used baseline {DEFAULT_BASELINE_M} m "
                         f"and fx {DEFAULT_FX_PX} px (download camera_trainvaltest.zip for exact values)")
        for path, reason in self.skipped[:20]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def find_frames(root: Path, split: str) -> tuple[list[RawFrame], list[tuple[str, str]]]:
    """Pair every ``leftImg8bit`` image with its labelIds, disparity and camera files.

    Returns the complete frames (sorted by city, then name) and the skipped images with why.
    Missing top-level folders raise a :class:`DatasetError` saying which package to download.
    """
    folders = {"leftImg8bit": root / "leftImg8bit" / split, "gtFine": root / "gtFine" / split,
               "disparity": root / "disparity" / split}
    for folder in folders.values():
        if not folder.is_dir():
            raise DatasetError(f"CityScapes raw: folder {folder} is missing. The converter needs "
                               f"leftImg8bit/, gtFine/ and disparity/ under {root}: download {RAW_PACKAGES} "
                               "and unzip them into that folder.")
    frames, skipped = [], []
    for image in sorted(folders["leftImg8bit"].glob("*/*_leftImg8bit.png")):
        city, base = image.parent.name, image.name[: -len("_leftImg8bit.png")]
        labels = folders["gtFine"] / city / f"{base}_gtFine_labelIds.png"
        disparity = folders["disparity"] / city / f"{base}_disparity.png"
        camera = root / "camera" / split / city / f"{base}_camera.json"
        if not labels.is_file():
            skipped.append((str(image), f"no labelIds file {labels}"))
        elif not disparity.is_file():
            skipped.append((str(image), f"no disparity file {disparity}"))
        else:
            frames.append(RawFrame(f"{city}/{base}", image, labels, disparity, camera if camera.is_file() else None))
    if not frames and not skipped:
        skipped.append((str(folders["leftImg8bit"]), "no CITY/*_leftImg8bit.png images in this folder"))
    return frames, skipped


def read_camera(path: Path | None) -> tuple[float, float, bool]:
    """(baseline m, fx px at the raw width, whether the defaults were used)."""
    if path is None:
        return DEFAULT_BASELINE_M, DEFAULT_FX_PX, True
    try:
        cam = json.loads(path.read_text())
        return float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"]), False
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: cannot read extrinsic.baseline / intrinsic.fx ({e})") from e


def disparity_to_depth(p: np.ndarray, mode: str, raw_width: int, out_width: int,
                       baseline: float = DEFAULT_BASELINE_M, fx: float = DEFAULT_FX_PX) -> np.ndarray:
    """Official 16-bit disparity values ``p`` -> the stored depth (float32, 0 = invalid)."""
    p = p.astype(np.float64)
    valid = p > 0
    if mode == "release":
        out = p / 65535.0
    elif mode == "disparity":
        out = (p - 1.0) / 256.0 * (out_width / raw_width)
    elif mode == "metres":
        ratio = out_width / raw_width
        disparity = (p - 1.0) / 256.0 * ratio  # pixels at the output width ...
        valid &= disparity > 0
        out = baseline * (fx * ratio) / np.where(valid, disparity, 1.0)  # ... and fx scaled alike
    else:
        raise ValueError(f"depth mode must be one of {DEPTH_MODES}, got {mode!r}")
    return np.where(valid, out, 0.0).astype(np.float32)


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"unreadable file {path} ({type(e).__name__}: {e})") from e


def convert_frame(frame: RawFrame, size: tuple[int, int], folders: list[str], depth: str,
                  tables: dict[int, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """Read one raw frame and produce the requested release arrays (``folders``).

    Returns ``({folder: array}, used_default_camera)``; raises :class:`DatasetError` on a problem.
    """
    h, w = size
    image = _open(frame.image)
    raw_w, raw_h = image.size
    out: dict[str, np.ndarray] = {}
    if "image" in folders:
        rgb = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)  # antialiased when shrinking
        out["image"] = np.asarray(rgb, dtype=np.float32) / 255.0
    label_folders = [f for f in folders if f.startswith("label_")]
    if label_folders:
        ids = _open(frame.labels)
        if ids.size != (raw_w, raw_h):
            raise DatasetError(f"{frame.labels} is {ids.size[1]}x{ids.size[0]} but its image is {raw_h}x{raw_w}")
        if ids.mode not in ("L", "P"):
            raise DatasetError(f"{frame.labels}: expected an 8-bit labelIds PNG, got mode {ids.mode}")
        ids = np.asarray(ids.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
        for folder in label_folders:
            out[folder] = tables[int(folder.split("_")[1])][ids].astype(np.float32)
    used_default = False
    if "depth" in folders:
        disp = _open(frame.disparity)
        if disp.size != (raw_w, raw_h):
            raise DatasetError(f"{frame.disparity} is {disp.size[1]}x{disp.size[0]} but its image is {raw_h}x{raw_w}")
        if disp.mode not in ("I", "I;16", "I;16B", "I;16L"):
            raise DatasetError(f"{frame.disparity}: expected a 16-bit disparity PNG, got mode {disp.mode}")
        p = np.asarray(disp.resize((w, h), Image.Resampling.NEAREST)).astype(np.int64)
        baseline, fx, used_default = read_camera(frame.camera) if depth == "metres" else (0.0, 0.0, False)
        out["depth"] = disparity_to_depth(p, depth, raw_w, w, baseline, fx)[..., None]
    return out, used_default


def _convert_job(job) -> tuple[int, str | None, bool]:
    """Worker: convert one frame and write its missing files. Returns (index, error, default camera)."""
    index, frame, split_dir, folders, size, depth, tables = job
    try:
        arrays, used_default = convert_frame(frame, size, folders, depth, tables)
    except DatasetError as e:
        return index, str(e), False
    for folder, array in arrays.items():
        atomic_save_npy(split_dir / folder / f"{index}.npy", array)
    return index, None, used_default


def _settings(size, depth) -> dict:
    settings = {"format": "mtan-cityscapes-release", "size": list(size), "depth": depth}
    if depth == "metres":
        settings.update(depth_kind="metric")
    elif depth == "disparity":
        # approximate metres = scale / value, for the typical camera at this output width
        settings.update(depth_kind="inverse", depth_scale=DEFAULT_BASELINE_M * DEFAULT_FX_PX * size[1] / 2048)
    else:
        settings.update(depth_kind="inverse", depth_scale=CITYSCAPES_INVERSE_DEPTH_SCALE)
    return settings


def _remove_stale(split_dir: Path, folders: list[str], old: list[str] | None, new: list[str]) -> int:
    """Delete output files whose index now refers to another source frame (or to none)."""
    removed = 0
    for folder in folders:
        d = split_dir / folder
        if not d.is_dir():
            continue
        for path in d.iterdir():
            stem = path.name.split(".")[0]
            if path.name.endswith(".part"):
                path.unlink()
                continue
            if not stem.isdigit():
                continue
            i = int(stem)
            if i >= len(new) or old is None or i >= len(old) or old[i] != new[i]:
                path.unlink()
                removed += 1
    return removed


def _drop_failed_before(frames: list[RawFrame], failed_file: Path, report: PrepareReport) -> list[RawFrame]:
    """Leave out frames that failed to convert in an earlier run (listed in ``failed.txt``), so
    that the indices of the others stay stable; delete that file to retry them."""
    if not failed_file.is_file():
        return frames
    failed = dict(line.split("\t", 1) for line in failed_file.read_text().splitlines() if "\t" in line)
    kept = []
    for frame in frames:
        if frame.key in failed:
            report.skipped.append((str(frame.image), f"failed in an earlier run ({failed[frame.key]}); "
                                                     f"delete {failed_file} to retry"))
        else:
            kept.append(frame)
    return kept


def _renumber(split_dir: Path, folders: list[str], keys: list[str], failed: set[int]) -> list[str]:
    """Close the gaps left by frames that failed: shift later files down; return the new key list."""
    kept = [i for i in range(len(keys)) if i not in failed]
    for new_i, old_i in enumerate(kept):
        if new_i == old_i:
            continue
        for folder in folders:
            src = split_dir / folder / f"{old_i}.npy"
            if src.exists():
                src.replace(split_dir / folder / f"{new_i}.npy")
    for folder in folders:  # anything at or past the new end is a failed frame's partial output
        for i in range(len(kept), len(keys)):
            (split_dir / folder / f"{i}.npy").unlink(missing_ok=True)
    return [keys[i] for i in kept]


ALL_FOLDERS = ["image", "depth"] + list(LABEL_FOLDERS)


def _prepare_split(root: Path, split_dir: Path, split: str, wanted: list[str], size, depth: str, tables,
                   workers: int, progress: bool, report: PrepareReport) -> int:
    """Convert one split into ``split_dir``; returns the number of frames in the output."""
    frames, skipped = find_frames(root, split)
    report.skipped += skipped
    frames = _drop_failed_before(frames, split_dir / "failed.txt", report)
    keys = [f.key for f in frames]
    manifest = split_dir / "sources.txt"
    old_keys = manifest.read_text().splitlines() if manifest.is_file() else None
    report.removed_stale += _remove_stale(split_dir, ALL_FOLDERS, old_keys, keys)
    for folder in wanted:
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(k + "\n" for k in keys))

    jobs = []
    for i, frame in enumerate(frames):
        missing = [f for f in wanted if not (split_dir / f / f"{i}.npy").exists()]
        if missing:
            jobs.append((i, frame, split_dir, missing, size, depth, tables))
        else:
            report.already_done += 1
    failed: set[int] = set()
    bar = tqdm(total=len(jobs), desc=f"cityscapes {split}", unit="frame", disable=not progress or not jobs)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.map(_convert_job, jobs, chunksize=4) if pool else map(_convert_job, jobs)
        for index, error, used_default in results:
            bar.update(1)
            if error:
                failed.add(index)
                report.skipped.append((str(frames[index].image), error))
            else:
                report.written += 1
                report.default_camera += used_default
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    if failed:
        keys = _renumber(split_dir, ALL_FOLDERS, keys, failed)
        manifest.write_text("".join(k + "\n" for k in keys))
        with open(split_dir / "failed.txt", "a") as f:  # so that the next run keeps the same indices
            for i in sorted(failed):
                reason = report.skipped_reason(str(frames[i].image)).replace("\t", " ").replace("\n", " ")
                f.write(f"{frames[i].key}\t{reason}\n")
    return len(keys)


def prepare(root, out, size=(128, 256), classes=CLASS_COUNTS, depth: str = "release",
            splits=("train", "val"), workers: int = 1, overwrite: bool = False, progress: bool = True,
            log=print) -> PrepareReport:
    """Convert the official CityScapes download under ``root`` into the release format in ``out``.

    Resumable: frames whose output files exist (for the same source frame and settings) are
    skipped, so an interrupted run continues where it stopped, and adding a class set later
    (e.g. ``classes=(19,)``) writes only the new label folder. Different ``size`` or ``depth``
    than an existing output needs ``overwrite=True`` (which deletes the old converted files).
    """
    root, out = Path(root).expanduser(), Path(out).expanduser()
    size = parse_size(size)
    classes = tuple(int(c) for c in classes)
    if depth not in DEPTH_MODES:
        raise ValueError(f"depth must be one of {DEPTH_MODES}, got {depth!r}")
    bad = [c for c in classes if c not in CLASS_COUNTS]
    if bad:
        raise ValueError(f"classes must be among {CLASS_COUNTS}, got {bad}")
    if not root.is_dir():
        raise DatasetError(f"CityScapes raw root {root} does not exist. Download {RAW_PACKAGES}.")

    settings = _settings(size, depth)
    old = read_settings(out)
    if old and (old.get("size") != settings["size"] or old.get("depth") != settings["depth"]):
        if not overwrite:
            raise DatasetError(f"{out} holds a conversion with size {old.get('size')} and depth "
                               f"{old.get('depth')!r}, not {list(size)} and {depth!r}. Use another --out "
                               "folder, or pass --overwrite to replace it.")
    if overwrite:  # wipe every split this folder holds, so no frame of the old settings survives
        for split in set(splits) | set((old or {}).get("splits", {})):
            for folder in ALL_FOLDERS + ["sources.txt", "failed.txt"]:
                target = out / split / folder
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    settings["source"] = str(root)
    settings["splits"] = dict((old or {}).get("splits", {})) if not overwrite else {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").write_text(json.dumps(settings, indent=2))

    tables = label_lookup_tables()
    wanted = ["image", "depth"] + [f"label_{c}" for c in classes]
    report = PrepareReport()
    for split in splits:
        n = _prepare_split(root, out / split, split, wanted, size, depth, tables, workers, progress, report)
        report.frames[split] = n
        done_classes = set(settings["splits"].get(split, {}).get("classes", [])) | set(classes)
        settings["splits"][split] = {"frames": n, "classes": sorted(done_classes)}
        (out / "prepare.json").write_text(json.dumps(settings, indent=2))
    if log:
        log(report.summary())
    return report


def is_prepared(out, size, classes=(7,), depth: str = "release", splits=("train", "val")) -> bool:
    """Whether ``out`` holds a finished conversion with these settings (used by ``cityscapes-raw``)."""
    settings = read_settings(Path(out))
    if not settings or settings.get("size") != list(parse_size(size)) or settings.get("depth") != depth:
        return False
    done = settings.get("splits", {})
    return all(s in done and set(classes) <= set(done[s].get("classes", [])) for s in splits)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtan.data.cityscapes",
                                     description="Convert the official CityScapes download into the MTAN release format.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert leftImg8bit + gtFine + disparity (+ camera) into .npy files")
    p.add_argument("--root", required=True, help="folder holding leftImg8bit/, gtFine/, disparity/ (camera/)")
    p.add_argument("--out", required=True, help="output folder (created; resumable)")
    p.add_argument("--size", default="128x256", help="output HxW, e.g. 128x256 or 256x512 (default 128x256)")
    p.add_argument("--classes", type=int, nargs="+", default=list(CLASS_COUNTS), choices=CLASS_COUNTS,
                   help="label sets to write: 7 (categories), 19 (trainIds), 2 (human+vehicle vs rest); default all")
    p.add_argument("--depth", choices=DEPTH_MODES, default="release",
                   help="release: p/65535 (default, as the MTAN release); disparity: pixels at the output "
                        "width; metres: baseline*fx/disparity")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        prepare(args.root, args.out, args.size, args.classes, args.depth, args.splits,
                args.workers, args.overwrite, progress=not args.quiet)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
