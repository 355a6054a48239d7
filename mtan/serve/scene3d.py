"""A photo's depth as a scene in 3D: every pixel placed in metres in front of a pinhole camera,
coloured by the photo (or its segmentation), written as a triangle mesh (GLB, for the page's 3D
viewer and any glTF viewer) and as a point cloud (PLY, for MeshLab, CloudCompare, Blender).

The camera is an assumption, not a measurement: a horizontal field of view (60 degrees by
default; a phone's main camera is about 65, the CityScapes camera 49) gives the focal length in
pixels, ``f = (width / 2) / tan(fov / 2)``. A pixel (u, v) at distance Z metres goes to
``x = (u - cx) Z / f``, ``y = -(v - cy) Z / f``, ``z = -Z`` (glTF's axes: x right, y up, the camera
looking down -z). The sky, pixels without depth and pixels beyond ``max_metres`` are left out.

So that the scene holds when it is turned, the mesh is cut where the photo has edges: no triangle
bridges a jump in depth (an object's outline against what lies behind it, :func:`depth_jumps`) or
joins two segments of the segmentation (a car and the road under it are separate surfaces); the
depth is smoothed within each segment and never across a jump (:func:`smooth_within_segments`);
and a triangle seen almost edge-on (its surface within 6 degrees of the line of sight), which a
depth map cannot place, is left out except on the ground. trimesh writes the files.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
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
GROUND_CLASSES = {"flat", "floor"}   # seen at a grazing angle by nature: kept however steep
SEGMENT_SMOOTHING = 5         # the depth averaged over a 5 x 5 window, within a segment and without crossing a jump
MIN_VIEW_COSINE = 0.1         # a triangle whose surface is within ~6 degrees of the line of sight is left out


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
        if not len(self.points):
            return (f"Nothing in this photo lies within the distance limit (the sky left out: {self.dropped_sky:,} "
                    f"points; beyond the limit: {self.dropped_far:,}), so there is no 3D scene to show: raise the limit.")
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
    limit = _jump_limit(inverse)
    corners = np.stack([inverse[:-1, :-1], inverse[:-1, 1:], inverse[1:, :-1], inverse[1:, 1:]])
    return corners.max(axis=0) - corners.min(axis=0) > limit


def _jump_limit(inverse: np.ndarray) -> float:
    """The step in inverse distance that counts as a jump (see :func:`depth_jumps`)."""
    steps = np.maximum(np.abs(np.diff(inverse, axis=0))[:, :-1], np.abs(np.diff(inverse, axis=1))[:-1])
    return max(EDGE_JUMP * float(np.median(steps)) if steps.size else 0.0, MIN_JUMP)


def smooth_within_segments(inverse: np.ndarray, labels: np.ndarray | None, window: int = SEGMENT_SMOOTHING,
                           limit: float | None = None) -> np.ndarray:
    """Each value replaced by the mean of its ``window`` x ``window`` neighbours that share its
    segment (``labels``; all, without) and differ from it by less than the jump ``limit``: the
    depth's noise goes within a surface, its outlines stay where they are."""
    limit = _jump_limit(inverse) if limit is None else limit
    k = window // 2
    pad = np.pad(inverse, k, mode="edge")
    lab = np.pad(labels, k, mode="edge") if labels is not None else None
    h, w = inverse.shape
    total, count = np.zeros_like(inverse), np.zeros_like(inverse)
    for dy in range(window):
        for dx in range(window):
            other = pad[dy:dy + h, dx:dx + w]
            take = np.abs(other - inverse) < limit
            if lab is not None:
                take &= lab[dy:dy + h, dx:dx + w] == labels
            total += np.where(take, other, 0.0)
            count += take
    return total / np.maximum(count, 1)


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
    labels = _nearest(pred.labels[sem.name], (gh, gw)) if sem is not None else None
    inverse = np.where(valid, 1 / np.maximum(metres, 1e-6), 0.0)
    inverse = smooth_within_segments(inverse, np.where(valid, labels if labels is not None else 0, -1))
    metres = np.where(valid, 1 / np.maximum(inverse, 1e-9), metres).astype(np.float32)
    near = valid & (metres <= max_metres)
    dropped_far = int((valid & ~near).sum())
    keep = near
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
    ground = np.zeros((gh, gw), bool)
    if labels is not None:  # no triangle joins two segments; the ground may be steep to the eye
        cell &= (labels[a] == labels[b]) & (labels[a] == labels[c]) & (labels[a] == labels[d])
        ground = np.isin(labels, [k for k, name in enumerate(sem.class_set.classes) if name in GROUND_CLASSES])
    index = np.full((gh, gw), -1, np.int64)
    index[keep] = np.arange(int(keep.sum()))
    ia, ib, ic, id_ = index[a][cell], index[b][cell], index[c][cell], index[d][cell]
    faces = np.concatenate([np.stack([ia, ic, ib], 1), np.stack([ib, ic, id_], 1)]).astype(np.int64)
    points = xyz[keep].astype(np.float32)
    on_ground = np.concatenate([ground[a][cell], ground[a][cell]])
    faces = faces[on_ground | facing_camera(points, faces)].astype(np.uint32)
    return Scene3D(points=points, colours=np.ascontiguousarray(colours[keep], np.uint8),
                   faces=faces, grid=(gh, gw), focal=focal, fov=float(fov), dropped_sky=dropped_sky,
                   dropped_far=dropped_far, seconds=time.perf_counter() - start)


def facing_camera(points: np.ndarray, faces: np.ndarray, min_cosine: float = MIN_VIEW_COSINE) -> np.ndarray:
    """Per triangle, whether its surface faces the camera (at the origin) enough to be trusted:
    |cos| of the angle between its normal and the line of sight to its centre at least ``min_cosine``."""
    if not len(faces):
        return np.zeros(0, bool)
    corners = points[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centre = corners.mean(axis=1)
    cosine = np.abs((normal * centre).sum(1)) / np.maximum(np.linalg.norm(normal, axis=1) * np.linalg.norm(centre, axis=1),
                                                            1e-12)
    return cosine >= min_cosine


def write_ply(scene: Scene3D, path: str | Path) -> Path:
    """The points as a binary little-endian PLY (x, y, z float; red, green, blue, alpha uchar),
    written by trimesh."""
    path = Path(path)
    rgba = np.concatenate([scene.colours, np.full((len(scene.colours), 1), 255, np.uint8)], axis=1)
    path.write_bytes(trimesh.PointCloud(scene.points, colors=rgba).export(file_type="ply", encoding="binary"))
    return path


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


def _unlit(tree: dict) -> None:
    """glTF: one unlit, double-sided material for every primitive, so the photo's colours show as
    they are from either side (``KHR_materials_unlit``)."""
    tree["materials"] = [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                   "roughnessFactor": 1.0},
                          "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}]
    tree["extensionsUsed"] = sorted(set(tree.get("extensionsUsed", [])) | {"KHR_materials_unlit"})
    for mesh in tree.get("meshes", []):
        for primitive in mesh["primitives"]:
            primitive["material"] = 0


def write_glb(scene: Scene3D, path: str | Path, anchored: bool = True) -> Path:
    """The mesh (or, with no triangles, the points) as binary glTF 2.0, written by trimesh:
    positions, vertex colours, 32-bit indices and an unlit double-sided material. ``anchored``:
    with :func:`viewer_anchors` after the points (not for a point-only file, where every vertex
    is drawn)."""
    path = Path(path)
    points, colours = scene.points, scene.colours
    if anchored and len(scene.faces):
        points = np.concatenate([points, viewer_anchors(points)])
        colours = np.concatenate([colours, np.zeros((4, 3), np.uint8)])
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    if len(scene.faces):
        geometry = trimesh.Trimesh(points, scene.faces.astype(np.int64), vertex_colors=rgba, process=False)
    else:
        geometry = trimesh.PointCloud(points, colors=rgba)
    path.write_bytes(geometry.export(file_type="glb", tree_postprocessor=_unlit))
    return path
