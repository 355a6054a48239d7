"""One frame (:func:`render_frame`), batches of frames, a dataset release on disk and a preview
sheet."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtan.atomic import atomic_save_npy
from mtan.data.synthetic.scene import (
    GENERATOR_VERSION, GROUND_MAX_DISTANCE, INVERSE_DEPTH_SCALE, MAX_INVERSE_DEPTH)
from mtan.data.synthetic.street import _build_scene
from mtan.data.synthetic.raycast import _Rays, _aabbs, _camera_rays, _cast, _screen_rects
from mtan.data.synthetic.shading import _develop, _shade
from mtan.tasks import CITYSCAPES_7


def render_frame(seed: int, index: int, height: int = 128, width: int = 256, *, stream: int = 0) -> dict:
    """Render frame ``index`` of ``seed``.

    Returns ``image`` (uint8 H x W x 3), ``label`` (int8 H x W, CityScapes 7 categories 0..6) and
    ``depth`` (float32 H x W: inverse depth ``1.85 / z`` clipped to ``MAX_INVERSE_DEPTH``, 0 for
    sky). ``stream`` selects an independent sequence of frames (0 for training, 1 for the
    validation split of :func:`write_release`).
    """
    if height < 2 or width < 2:
        raise ValueError(f"image size must be at least 2x2, got {height}x{width}")
    key = [int(seed), int(index)] if stream == 0 else [int(seed), int(index), int(stream)]
    rng = np.random.default_rng(key)
    scene = _build_scene(rng)
    cam = scene.camera
    D = _camera_rays(cam, height, width)
    n = height * width
    # The ground plane first: every primitive then only has to beat it.
    with np.errstate(divide="ignore"):
        tg = np.where(D[:, 1] < 0, -cam.origin[1] / D[:, 1], np.inf)
    zbuf = np.where(tg * np.linalg.norm(D, axis=1) < GROUND_MAX_DISTANCE, tg, np.inf).astype(np.float32)
    aabb = _aabbs(scene)
    rects = [_screen_rects(box, cam, height, width) for box in aabb]
    rays = _Rays(cam.origin, [D[:, 0], D[:, 1], D[:, 2]])
    ptype, pidx = _cast(scene, rays, rects, n, width, zbuf)
    radiance, label = _shade(scene, D, zbuf, ptype, pidx, height, width, aabb)
    image = _develop(radiance, np.random.default_rng(key + [7]))
    depth = np.where(np.isfinite(zbuf), INVERSE_DEPTH_SCALE / np.maximum(zbuf, 1e-6), 0.0)
    depth = np.minimum(depth, MAX_INVERSE_DEPTH).astype(np.float32).reshape(height, width)
    return {"image": image, "label": label, "depth": depth}


# --------------------------------------------------------------------------------------
# Batches, releases, previews
# --------------------------------------------------------------------------------------


def _render_args(args):
    seed, index, height, width, stream = args
    return render_frame(seed, index, height, width, stream=stream)


def _map(func, jobs, workers, progress, desc):
    """Yield ``func(job)`` for every job, in order; in a process pool when workers > 1, with a tqdm bar."""
    pool = None
    if workers > 1 and len(jobs) > 1:
        # Workers only run numpy code: forking is cheap and needs no re-import. The pool is made
        # before tqdm starts its monitor thread.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(min(workers, len(jobs)))
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), desc=desc, unit="frame")
    try:
        if pool is not None:
            results = pool.imap(func, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
        else:
            results = map(func, jobs)
        for out in results:
            if bar is not None:
                bar.update()
            yield out
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def generate(n: int, seed: int = 0, height: int = 128, width: int = 256, start: int = 0,
             workers: int = 1, progress: bool = False) -> dict:
    """Frames ``start .. start + n - 1`` of ``seed`` stacked: ``images`` uint8 N x H x W x 3,
    ``labels`` int8 N x H x W, ``depths`` float32 N x H x W. ``workers`` > 1 uses processes."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.zeros((n, height, width, 3), dtype=np.uint8)
    labels = np.zeros((n, height, width), dtype=np.int8)
    depths = np.zeros((n, height, width), dtype=np.float32)
    jobs = [(seed, start + i, height, width, 0) for i in range(n)]
    for i, fr in enumerate(_map(_render_args, jobs, workers, progress, "synthetic")):
        images[i], labels[i], depths[i] = fr["image"], fr["label"], fr["depth"]
    return {"images": images, "labels": labels, "depths": depths}


RELEASE_FIELDS = ("image", "label_7", "depth")
SPLIT_STREAMS = {"train": 0, "val": 1}


def _write_frame(args):
    """Render one frame and write its three release files (skipped when all exist)."""
    root, split, index, seed, height, width = args
    paths = [Path(root) / split / f / f"{index}.npy" for f in RELEASE_FIELDS]
    if all(p.exists() for p in paths):
        return False
    fr = render_frame(seed, index, height, width, stream=SPLIT_STREAMS[split])
    atomic_save_npy(paths[0], fr["image"].astype(np.float32) / 255.0)
    atomic_save_npy(paths[1], fr["label"].astype(np.float32))
    atomic_save_npy(paths[2], fr["depth"][..., None])
    return True


def write_release(out_dir, n_train: int, n_val: int, height: int = 128, width: int = 256,
                  seed: int = 0, workers: int = 1, progress: bool = False) -> Path:
    """Write frames in the MTAN CityScapes release layout::

        out_dir/{train,val}/image/{i}.npy    float32 H x W x 3 in [0, 1]
        out_dir/{train,val}/label_7/{i}.npy  float32 H x W, 0..6 (no void)
        out_dir/{train,val}/depth/{i}.npy    float32 H x W x 1, inverse depth, 0 = sky

    Validation frames come from a different random stream than training frames. Frames whose
    files already exist are skipped, so an interrupted run can simply be restarted; a
    ``synthetic.json`` records the settings and a restart with different settings is refused.
    """
    for name, v in (("n_train", n_train), ("n_val", n_val)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    root = Path(out_dir)
    settings = {"generator": "mtan.data.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
                "height": int(height), "width": int(width)}
    meta = root / "synthetic.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        old_settings = {k: old.get(k) for k in settings}
        if old_settings != settings:
            raise ValueError(f"{root} already holds synthetic frames made with {old_settings}, not {settings}; "
                             "use another output directory or delete it")
    for split in SPLIT_STREAMS:
        for f in RELEASE_FIELDS:
            (root / split / f).mkdir(parents=True, exist_ok=True)
    counts = {"train": int(n_train), "val": int(n_val)}
    if meta.exists():
        old = json.loads(meta.read_text())
        counts = {k: max(counts[k], int(old.get(k, 0))) for k in counts}
    meta.write_text(json.dumps({**settings, **counts}, indent=2) + "\n")
    jobs = [(str(root), split, i, int(seed), int(height), int(width))
            for split, count in (("train", n_train), ("val", n_val)) for i in range(count)]
    for _ in _map(_write_frame, jobs, workers, progress, "writing"):
        pass
    return root


def colourise_labels(label: np.ndarray, palette=None) -> np.ndarray:
    """H x W labels -> H x W x 3 uint8 colours (CityScapes category colours by default)."""
    if palette is None:
        palette = CITYSCAPES_7.palette
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(label).astype(np.int64) % 256]


def preview(path, n: int = 8, seed: int = 0, height: int = 128, width: int = 256, workers: int = 1) -> Path:
    """Save a PNG grid of ``n`` frames: image | coloured labels | inverse depth, with a legend.

    Frames are drawn pixel for pixel (small frames are enlarged by a whole factor).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    frames = generate(n, seed, height, width, workers=workers)
    dpi = 100
    zoom = max(1, 256 // width)
    pw, ph = width * zoom / dpi, height * zoom / dpi  # panel size in inches
    gap, top, bottom = 0.04, 0.25, 0.75
    fig_w, fig_h = 3 * pw + 4 * gap, n * ph + (n - 1) * gap + top + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    cmap = plt.get_cmap("magma").copy()
    cmap.set_bad("black")
    vmax = MAX_INVERSE_DEPTH
    titles = ("image", "labels (CityScapes 7)", "inverse depth 1.85 / m (sky: black)")
    for i in range(n):
        y = 1 - (top + i * (ph + gap) + ph) / fig_h
        panels = (frames["images"][i], colourise_labels(frames["labels"][i], CITYSCAPES_7.palette),
                  np.ma.masked_equal(frames["depths"][i], 0))
        for j, panel in enumerate(panels):
            ax = fig.add_axes([(gap + j * (pw + gap)) / fig_w, y, pw / fig_w, ph / fig_h])
            if j == 2:
                im = ax.imshow(panel, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    handles = [Patch(color=np.asarray(c) / 255, label=f"{k} {name}")
               for k, (name, c) in enumerate(zip(CITYSCAPES_7.classes, CITYSCAPES_7.palette))]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(gap / fig_w, 0.05 / fig_h), ncol=4,
               fontsize=7, frameon=False, handlelength=1.2, columnspacing=1.0)
    cax = fig.add_axes([(gap + 2 * (pw + gap)) / fig_w, 0.35 / fig_h, pw / fig_w, 0.1 / fig_h])
    cbar = fig.colorbar(im, cax=cax, orientation="horizontal")
    cbar.ax.tick_params(labelsize=6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
