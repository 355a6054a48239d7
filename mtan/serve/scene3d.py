"""A photo's depth as a scene in 3D: every pixel placed in metres in front of a pinhole camera,
coloured by the photo (or its segmentation), written as a triangle mesh (GLB, for the page's 3D
viewer and any glTF viewer) and as a point cloud (PLY, for MeshLab, CloudCompare, Blender).

The camera is an assumption, not a measurement: a horizontal field of view (60 degrees by
default; a phone's main camera is about 65, the CityScapes camera 49) gives the focal length in
pixels, ``f = (width / 2) / tan(fov / 2)``. A pixel (u, v) at distance Z metres goes to
``x = (u - cx) Z / f``, ``y = -(v - cy) Z / f``, ``z = -Z`` (glTF's axes: x right, y up, the camera
looking down -z). The sky, pixels without depth and pixels beyond ``max_metres`` are left out;
a triangle is left out where it would bridge a jump in depth (an object's outline against what
lies behind it, see :func:`depth_jumps`).
"""
from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mtan.serve import render
from mtan.serve.prediction import Prediction

DEFAULT_FOV = 60.0            # degrees, horizontal
DEFAULT_MAX_METRES = 40.0     # farther pixels are left out (far depth is the roughest)
MAX_VERTICES = 150_000        # the grid of points is at most this many (about 5 MB of GLB)
EDGE_JUMP = 8.0               # a jump in 1 / distance 8 times the picture's typical step between neighbours is an edge
SMOOTHING = 5                 # the depth's speckles removed first: a 5 x 5 median at the network's resolution
MIN_JUMP = 0.002              # ... and at least this (1 / metres: 10 m against 10.2 m)
COLOURINGS = ("photo", "segmentation")
VIEW_PIVOT = 15.0             # metres ahead of the camera: the point the page's 3D view turns around
SKY_CLASSES = {"sky"}


@dataclass
class Scene3D:
    points: np.ndarray      # N x 3 float32, metres
    colours: np.ndarray     # N x 3 uint8
    faces: np.ndarray       # M x 3 uint32 (indices into points)
    grid: tuple[int, int]   # (h, w) of the grid the points come from
    focal: float            # pixels of that grid
    fov: float              # degrees, horizontal
    dropped_sky: int = 0
    dropped_far: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        left = [f"{self.dropped_sky:,} of sky" if self.dropped_sky else "",
                f"{self.dropped_far:,} beyond the distance limit" if self.dropped_far else ""]
        depth = -self.points[:, 2] if len(self.points) else np.zeros(1)
        return (f"{len(self.points):,} points and {len(self.faces):,} triangles from a {self.grid[1]}x{self.grid[0]} grid "
                f"(left out: {', '.join(t for t in left if t) or 'nothing'}); distances {float(depth.min()):.1f}-"
                f"{float(depth.max()):.1f} m; camera assumed: {self.fov:g}° horizontal field of view "
                f"(focal length {self.focal:.0f} px at this grid)")


def grid_size(size: tuple[int, int], max_vertices: int = MAX_VERTICES) -> tuple[int, int]:
    """The (h, w) of the point grid for a photo of ``size``: the photo's aspect, at most
    ``max_vertices`` points and never more than the photo's pixels."""
    h, w = size
    s = min(1.0, math.sqrt(max_vertices / max(1, h * w)))
    return max(2, int(h * s)), max(2, int(w * s))


def _resized(values: np.ndarray, size: tuple[int, int], median: int = 0) -> np.ndarray:
    """``values`` (h x w) bilinear to ``size``; first, with ``median`` (odd), each value replaced
    by the median of its ``median`` x ``median`` neighbourhood (speckles go, outlines stay)."""
    t = torch.from_numpy(np.ascontiguousarray(values, np.float32))[None, None]
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    if median > 1:
        k = median // 2
        windows = F.unfold(F.pad(t, (k, k, k, k), mode="replicate"), median)
        t = windows.median(dim=1).values.view_as(t)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST))


def depth_jumps(inverse: np.ndarray) -> np.ndarray:
    """For each grid cell (h - 1 x w - 1), whether its four corners straddle a jump in depth: in
    inverse distance (1 / metres), where a receding ground or wall changes evenly from pixel to
    pixel, the spread of the corners is over :data:`EDGE_JUMP` times the picture's median step
    (each pixel's larger step to its right or lower neighbour) and over :data:`MIN_JUMP`. An object's outline
    against what lies behind it is such a jump; a road running to the horizon is not."""
    steps = np.maximum(np.abs(np.diff(inverse, axis=0))[:, :-1], np.abs(np.diff(inverse, axis=1))[:-1])
    limit = max(EDGE_JUMP * float(np.median(steps)) if steps.size else 0.0, MIN_JUMP)
    corners = np.stack([inverse[:-1, :-1], inverse[:-1, 1:], inverse[1:, :-1], inverse[1:, 1:]])
    return corners.max(axis=0) - corners.min(axis=0) > limit


def build_scene(pred: Prediction, fov: float = DEFAULT_FOV, max_metres: float = DEFAULT_MAX_METRES,
                colouring: str = "photo", max_vertices: int = MAX_VERTICES) -> Scene3D:
    """The scene of one prediction (see the module's docstring). ``ValueError`` for a model
    without depth or settings out of range."""
    start = time.perf_counter()
    dep, sem = pred.first("depth"), pred.first("semantic")
    if dep is None:
        raise ValueError("This model estimates no depth, so there is no 3D scene to build.")
    if not 10 <= fov <= 150:
        raise ValueError(f"the field of view must be between 10 and 150 degrees, got {fov:g}")
    if not max_metres > 0:
        raise ValueError(f"the distance limit must be above 0 m, got {max_metres:g}")
    gh, gw = grid_size(pred.size, max_vertices)
    depth = _resized(pred.depth[dep.name], (gh, gw), median=SMOOTHING)
    metres = dep.to_metres(torch.from_numpy(depth)).numpy().astype(np.float32)
    valid = np.isfinite(metres) & (metres > 0)
    near = valid & (metres <= max_metres)
    dropped_far = int((valid & ~near).sum())
    keep = near
    labels = _nearest(pred.labels[sem.name], (gh, gw)) if sem is not None else None
    dropped_sky = 0
    if labels is not None:
        sky_ids = [k for k, name in enumerate(sem.class_set.classes) if name in SKY_CLASSES]
        sky = np.isin(labels, sky_ids)
        dropped_sky = int((keep & sky).sum())
        keep = keep & ~sky
    if colouring == "segmentation" and labels is not None:
        colours = render.colorize_labels(labels, sem.class_set.palette)
    else:
        colours = np.asarray(pred.photo.resize((gw, gh), Image.Resampling.BILINEAR, reducing_gap=2.0))
    focal = (gw / 2) / math.tan(math.radians(fov) / 2)
    v, u = np.mgrid[0:gh, 0:gw].astype(np.float32)
    z = np.where(keep, metres, 0.0).astype(np.float32)
    xyz = np.stack([(u + 0.5 - gw / 2) * z / focal, -(v + 0.5 - gh / 2) * z / focal, -z], axis=-1)

    # Two triangles per grid cell whose four corners are kept and lie at about the same distance.
    a, b, c, d = (slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)), \
        (slice(1, None), slice(None, -1)), (slice(1, None), slice(1, None))
    cell = np.stack([keep[a], keep[b], keep[c], keep[d]]).all(axis=0)
    cell &= ~depth_jumps(np.where(keep, 1 / np.maximum(metres, 1e-6), 0.0))
    index = np.full((gh, gw), -1, np.int64)
    index[keep] = np.arange(int(keep.sum()))
    ia, ib, ic, id_ = index[a][cell], index[b][cell], index[c][cell], index[d][cell]
    faces = np.concatenate([np.stack([ia, ic, ib], 1), np.stack([ib, ic, id_], 1)]).astype(np.uint32)
    return Scene3D(points=xyz[keep].astype(np.float32), colours=np.ascontiguousarray(colours[keep], np.uint8),
                   faces=faces, grid=(gh, gw), focal=focal, fov=float(fov), dropped_sky=dropped_sky,
                   dropped_far=dropped_far, seconds=time.perf_counter() - start)


def write_ply(scene: Scene3D, path: str | Path) -> Path:
    """The points as a binary little-endian PLY (x, y, z float; red, green, blue uchar)."""
    path = Path(path)
    rows = np.empty(len(scene.points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        rows[axis] = scene.points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        rows[channel] = scene.colours[:, i]
    header = ("ply\nformat binary_little_endian 1.0\ncomment mtan: a photo's depth in metres "
              f"(camera {scene.fov:g} deg horizontal field of view, looking down -z, y up)\n"
              f"element vertex {len(rows)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rows.tobytes())
    return path


def _padded(data: bytes, fill: bytes = b"\0") -> bytes:
    return data + fill * (-len(data) % 4)


def viewer_anchors(points: np.ndarray, pivot: float = VIEW_PIVOT) -> np.ndarray:
    """Four vertices that no triangle uses, placed so that the bounding box of the scene and them
    is centred ``pivot`` metres straight ahead of the camera: a viewer that turns around the
    centre of the bounding box (the page's) then turns around that point, and a viewer placed
    ``pivot`` metres back from it starts where the photo was taken."""
    lo, hi = (points.min(0), points.max(0)) if len(points) else (np.zeros(3), np.zeros(3))
    x, y = (float(max(abs(lo[i]), abs(hi[i]))) for i in (0, 1))
    z_lo = min(float(lo[2]), -2 * pivot - float(hi[2]))
    z_hi = -2 * pivot - z_lo
    return np.array([[-x, -y, z_lo], [x, y, z_hi], [-x, y, z_lo], [x, -y, z_hi]], np.float32)


def write_glb(scene: Scene3D, path: str | Path, anchored: bool = True) -> Path:
    """The mesh (or, with no triangles, the points) as binary glTF 2.0: positions, vertex colours
    (RGBA, normalised bytes), 32-bit indices; an unlit double-sided material so the photo's
    colours show as they are from either side. ``anchored``: with :func:`viewer_anchors` after
    the points (not for a point-only file, where every vertex is drawn)."""
    path = Path(path)
    points = scene.points
    colours = scene.colours
    if anchored and len(scene.faces):
        points = np.concatenate([points, viewer_anchors(points)])
        colours = np.concatenate([colours, np.zeros((4, 3), np.uint8)])
    n = len(points)
    positions = np.ascontiguousarray(points, "<f4").tobytes()
    rgba = np.concatenate([colours, np.full((n, 1), 255, np.uint8)], axis=1)
    colours = np.ascontiguousarray(rgba, np.uint8).tobytes()
    indices = np.ascontiguousarray(scene.faces, "<u4").tobytes()
    views, offset, blob = [], 0, b""
    for data, target in ((positions, 34962), (colours, 34962), (indices, 34963)):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        blob += _padded(data)
        offset = len(blob)
    lo = points.min(axis=0).tolist() if n else [0.0] * 3
    hi = points.max(axis=0).tolist() if n else [0.0] * 3
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3", "min": lo, "max": hi},
        {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"},
    ]
    primitive = {"attributes": {"POSITION": 0, "COLOR_0": 1}, "material": 0, "mode": 4 if len(scene.faces) else 0}
    if len(scene.faces):
        accessors.append({"bufferView": 2, "componentType": 5125, "count": int(scene.faces.size), "type": "SCALAR"})
        primitive["indices"] = 2
    else:
        views.pop()
    doc = {
        "asset": {"version": "2.0", "generator": "mtan"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "photo depth (metres)"}],
        "meshes": [{"primitives": [primitive]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0},
                       "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}],
        "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accessors,
    }
    text = _padded(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")
    total = 12 + 8 + len(text) + 8 + len(blob)
    with open(path, "wb") as f:
        f.write(struct.pack("<4sII", b"glTF", 2, total))
        f.write(struct.pack("<I4s", len(text), b"JSON") + text)
        f.write(struct.pack("<I4s", len(blob), b"BIN\0") + blob)
    return path
