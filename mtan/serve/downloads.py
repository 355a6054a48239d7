"""The files a visitor can download for one photo (class ids, colours, 16-bit depth, ``.npy``,
normals, the attention masks' ``.npz``), each with a line saying how to read it; and the folders
they live in, cleaned by age and total size."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mtan.atomic import atomic_write
from mtan.serve.prediction import MASK_SCALE
from mtan.serve.render import colorize_labels, depth_limits, normals_to_rgb


def safe_stem(name: str | None, default: str = "photo") -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name or "").stem).strip("._")
    return stem[:60] or default


def depth_to_png16(depth: np.ndarray, task) -> tuple[np.ndarray, float, str]:
    """Depth -> uint16 with ``value = png / 65535 * max``. 0 stays "no value" (not finite), as in
    the datasets; a prediction at or below 0 (for inverse depth: the sky, farther than the scale
    reaches) is written as 1, the smallest step. Returns the array, ``max`` and that sentence."""
    d = depth.astype(np.float32)  # one full-size copy
    missing = ~np.isfinite(d)
    d[missing] = 0.0
    top = float(d.max()) if d.size and d.max() > 0 else 1.0
    d *= np.float32(65535 / top)
    np.clip(np.round(d, out=d), 1, 65535, out=d)
    d[missing] = 0.0
    png = d.astype(np.uint16)
    lowest = "as far as the scale goes (the sky)" if task.nearer_is_larger else "the nearest step"
    text = f"{task.name} = png_value / 65535 * {top:.6g} ({task.units}); 1 = {lowest}; 0 = no value"
    if task.metres_formula:
        text += f"; metres ~ {task.metres_formula.replace('value', task.name)}"
    return png, top, text


def depth_to_gray8(depth: np.ndarray, task, limits: tuple[float, float]) -> np.ndarray:
    """Depth -> an 8-bit grayscale picture, white near and black far, over the display range
    ``limits`` (the depth view's): for looking at and for tools that take a plain depth image."""
    lo, hi = limits
    v = (np.nan_to_num(depth.astype(np.float32), nan=lo) - lo) / np.float32(max(hi - lo, 1e-12))
    if not task.nearer_is_larger:
        v = 1.0 - v
    return (np.clip(v, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, array: np.ndarray, text: dict[str, str] | None = None, mode: str | None = None) -> Path:
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    im.save(path, pnginfo=info, compress_level=1)
    return path


MASKS_LAYOUT = ("key '<task>.<encoder|decoder>.stage<n>' -> C x h x w; stages are numbered as on the app's page, "
                "by scale: stage n is at 1/2**(n-1) of the processing resolution (stage 1 full size, stage 5 "
                "1/16; the encoder runs 1 -> 5, the decoder 5 -> 1); mask value = stored * scale (the app "
                "stores uint8: scale 1/255)")


def mask_key(task: str, part: str, index: int, stages: int) -> str:
    """The ``.npz`` key of ``part``'s mask number ``index`` (in the network's order), numbered by
    scale as the page numbers stages: the encoder's first mask and the decoder's last are stage 1."""
    level = index + 1 if part == "encoder" else stages - index
    return f"{task}.{part}.stage{level}"


def save_masks_npz(path: Path, arrays: dict[str, np.ndarray], info: dict, level: int = 0) -> Path:
    """Masks as an ``.npz`` readable with ``np.load``: one ``.npy`` per mask in a ZIP, and ``meta``,
    a JSON string with ``info``, the layout, dtype and scale. ``level`` 0 (the default) stores the
    masks uncompressed: a trained model's uint8 masks are fine-grained enough that deflate (level 1)
    saves only about 12 % of the bytes (12.5 MB against 14.2 MB at 256x512) for 40 times the time
    (1 s against 25 ms on a 2-core CPU); 1-9 deflate at that level."""
    meta = dict(info, layout=MASKS_LAYOUT, dtype=str(next(iter(arrays.values())).dtype) if arrays else "",
                scale=MASK_SCALE if all(a.dtype == np.uint8 for a in arrays.values()) else 1.0)
    method, extra = (zipfile.ZIP_DEFLATED, {"compresslevel": level}) if level else (zipfile.ZIP_STORED, {})
    with zipfile.ZipFile(path, "w", method, **extra) as z:
        for key, array in {"meta": np.array(json.dumps(meta)), **arrays}.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return path


def write_masks(pred, out_dir: str | os.PathLike) -> tuple[Path, str]:
    """Every attention mask of one prediction as ``<stem>_attention.npz`` (see :func:`save_masks_npz`),
    and a line describing it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {mask_key(t, part, i, len(ms)): m for t, parts in pred.masks.items() for part, ms in parts.items()
              for i, m in enumerate(ms)}
    name = f"{pred.stem}_attention.npz"
    info = {"tasks": list(pred.masks), "image_size": list(pred.size), "processing_size": list(pred.processing_size),
            "downsampled": bool(pred.mask_downsampled)}
    atomic_write(out / name, lambda tmp: save_masks_npz(tmp, arrays, info), durable=False)
    shrunk = " (area-averaged to fit)" if pred.mask_downsampled else ""
    return out / name, (f"`{name}`: every attention mask, `np.load(...)['<task>.<encoder|decoder>.stage<n>']`, "
                        f"uint8 C x h x w{shrunk}: mask value = stored / 255; stages numbered as on the page "
                        f"(stage 1 at the full processing size ... stage 5 at 1/16). Its `meta` entry (JSON) says so too.")


def write_downloads(pred, out_dir: str | os.PathLike, model_name: str = "",
                    masks: bool = True) -> tuple[list[str], list[str]]:
    """The downloads for one prediction, at the photo's size. Returns the file paths and lines
    describing them (the depth PNG's scale among them). ``masks``: the attention masks' ``.npz``
    too (the app writes it only when asked: :func:`write_masks`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem, size = pred.stem, pred.size
    files, notes = [], []
    meta = {"Software": "mtan app", "Model": model_name}
    for task in pred.tasks:
        if task.name in pred.labels:
            labels = pred.labels[task.name]
            classes = ", ".join(f"{i}={c}" for i, c in enumerate(task.class_set.classes))
            files.append(str(save_png(out / f"{stem}_{task.name}_class_ids.png", labels,
                                      meta | {"Classes": classes, "ClassSet": task.class_set.name})))
            files.append(str(save_png(out / f"{stem}_{task.name}_colour.png",
                                      colorize_labels(labels, task.class_set.palette), meta | {"Classes": classes})))
        elif task.name in pred.depth:
            small = Image.fromarray(pred.depth[task.name].astype(np.float32), "F")
            full = np.asarray(small.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)
            png, top, text = depth_to_png16(full, task)
            files.append(str(save_png(out / f"{stem}_{task.name}_16bit.png", png,
                                      meta | {"DepthScale": text, "DepthMax": f"{top:.9g}",
                                              "DepthKind": task.depth_kind, "Units": task.units})))
            files.append(str(save_png(out / f"{stem}_{task.name}_gray.png",
                                      depth_to_gray8(full, task, depth_limits(pred.depth[task.name])),
                                      meta | {"Encoding": "8-bit, white = near, black = far (display range)"})))
            # no distance where the prediction is at or below 0 (for inverse depth: the sky): NaN, never negative
            np.save(out / f"{stem}_{task.name}.npy", np.where(full > 0, full, np.float32("nan")))
            files.append(str(out / f"{stem}_{task.name}.npy"))
            notes.append(f"`{stem}_{task.name}_16bit.png`: {text}. `{stem}_{task.name}_gray.png`: a plain 8-bit "
                         f"picture, white near, black far. `{stem}_{task.name}.npy`: float32 {task.units}, NaN "
                         f"where the network gives no distance ({'the sky, ' if task.nearer_is_larger else ''}"
                         f"a prediction at or below 0).")
        elif task.name in pred.normals:
            files.append(str(save_png(out / f"{stem}_{task.name}.png",
                                      np.asarray(normals_to_rgb(pred.normals[task.name], size)),
                                      meta | {"Encoding": "RGB = (n + 1) / 2 * 255"})))
    if masks and pred.masks:
        path, note = write_masks(pred, out)
        files.append(str(path))
        notes.append(note)
    return files, notes


class DownloadFolders:
    """One fresh folder per prediction under ``root``; at most once a minute, folders older than
    ``max_age_s`` are removed, then the oldest until at most ``max_bytes`` remain."""

    def __init__(self, root: str | os.PathLike, max_age_s: float, max_bytes: int):
        self.root, self.max_age_s, self.max_bytes = Path(root), max_age_s, max_bytes
        self._last_clean = 0.0
        self._lock = threading.Lock()

    def clean(self, max_age_s: float | None = None, max_bytes: int | None = None) -> None:
        max_age_s = self.max_age_s if max_age_s is None else max_age_s
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        now, folders = time.time(), []
        for folder in self.root.iterdir():
            try:
                mtime = folder.stat().st_mtime
                if now - mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            except OSError:
                continue
            folders.append((mtime, size, folder))
        total = sum(size for _, size, _ in folders)
        for _, size, folder in sorted(folders, key=lambda t: t[0]):
            if total <= max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size

    def new(self) -> Path:
        """A fresh folder for one prediction's views and downloads."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if time.time() - self._last_clean > 60:
                self._last_clean = time.time()
                self.clean()
        out = self.root / uuid.uuid4().hex
        out.mkdir()
        return out

    def jpegs(self, stem: str, **images) -> list[str | None]:
        """Each PIL image (None: skipped) as a JPEG file of its own, ``<stem>_<name>.jpg`` in one
        fresh folder; their paths, in order.

        The app hands its views to gradio as files, not PIL images: gradio writes a PIL output to
        a path named after its content by truncating and rewriting that file, so two requests with
        the same output (two visitors, one example) can hand a client a file that is being
        rewritten (an empty or cut download, seen under load). A file is copied atomically instead.
        """
        folder = None
        paths = []
        for name, im in images.items():
            if im is None:
                paths.append(None)
                continue
            folder = folder or self.new()
            path = folder / f"{stem}_{name}.jpg"
            im.save(path, "JPEG")
            paths.append(str(path))
        return paths
