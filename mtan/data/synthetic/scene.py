"""The scene: constants, camera, light, street and primitives, the colour palettes that the street
grammar (:mod:`.street`) draws from, and the value noise behind the textures."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from mtan.tasks import CITYSCAPES_INVERSE_DEPTH_SCALE


# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: CityScapes 7 categories (``mtan.tasks.CITYSCAPES_7``): label values.
FLAT, CONSTRUCTION, OBJECT, NATURE, SKY, HUMAN, VEHICLE = range(7)
NUM_CLASSES = 7

#: Stored inverse depth is ``INVERSE_DEPTH_SCALE / metres`` (CityScapes release convention).
INVERSE_DEPTH_SCALE = CITYSCAPES_INVERSE_DEPTH_SCALE
#: CityScapes never stores more than 0.4922; nearer geometry is clipped to this value (~3.8 m).
MAX_INVERSE_DEPTH = 0.49

#: Rays hit the ground plane out to this distance (m); beyond it the horizon is sky.
GROUND_MAX_DISTANCE = 2000.0
#: Facades line the street out to this distance (m); farther away only a backdrop.
STREET_DETAIL_DISTANCE = 320.0
#: Near clipping distance of the camera (m), used to bound primitives on screen.
NEAR = 0.05
#: Surfaces farther than this (m) get no shadow rays (haze hides their shadows anyway).
SHADOW_RANGE = 160.0
#: Reflectance at normal incidence of window glass and of car paint (they mirror the sky).
GLASS_REFLECTANCE = 0.06
PAINT_REFLECTANCE = 0.03
#: How much of the sky light a surface loses when something is right above it.
OVERHEAD_OCCLUSION = 0.75
#: Cells per side of the grid that bins shadow rays (see ``_visibility``).
SHADOW_GRID = 64
#: Side of the random lattice behind the value-noise textures (a power of two).
NOISE_SIZE = 128

#: Version of the generator written into ``synthetic.json`` of a release; bump it when frames change.
GENERATOR_VERSION = 1

# Primitive types.
BOX, VCYL, XCYL, ELLIPSOID = range(4)
PRIM_NAMES = ("box", "vcyl", "xcyl", "ellipsoid")
#: Parameter count per primitive type: box lo(3) hi(3); vertical cylinder cx cz r y0 y1;
#: cylinder along x cy cz r x0 x1; ellipsoid centre(3) radii(3).
PRIM_PARAMS = (6, 5, 5, 6)

# Material kinds (how a surface is textured; see ``_texture``).
(PLAIN, FACADE, SIDEWALK, FOLIAGE, WALL, FENCE, CAR_BODY, CAR_CABIN, BUS, SIGN,
 TRAFFIC_LIGHT, WHEEL, HEAD) = range(13)

# Ground zones beyond the sidewalks.
ZONE_ROAD, ZONE_PAVED, ZONE_GRASS = range(3)


def _lin(rgb) -> np.ndarray:
    """sRGB-ish colour in [0, 1] -> linear radiance units used by the renderer."""
    return np.array([min(max(float(c), 0.0), 1.0) ** 2.2 for c in rgb])


def _lin_array(rgb) -> np.ndarray:
    """:func:`_lin` for an array of colours (float32)."""
    return np.clip(np.asarray(rgb, dtype=np.float32), 0, 1) ** 2.2


# --------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------


@dataclass
class Camera:
    """A pinhole camera. ``R`` maps camera axes (x right, y up, z forward) to world axes."""

    origin: np.ndarray
    R: np.ndarray
    hfov: float  # horizontal field of view, radians
    cx_frac: float  # principal point as a fraction of the width / height
    cy_frac: float

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float]:
        f = 0.5 * width / math.tan(0.5 * self.hfov)
        return f, self.cx_frac * width, self.cy_frac * height


@dataclass
class Lighting:
    sun_dir: np.ndarray  # unit vector towards the sun
    sun_rgb: np.ndarray  # sun irradiance (linear)
    ambient_rgb: np.ndarray  # sky irradiance on an upward facing surface
    zenith_rgb: np.ndarray
    horizon_rgb: np.ndarray
    cloud_rgb: np.ndarray
    cloud_cover: float  # 0 clear .. 1 overcast
    cloud_scale: float
    haze_distance: float  # metres at which 63 % of the colour is haze


@dataclass
class Street:
    """What the ground plane needs to paint itself."""

    road_half: float  # road spans x in [-road_half, road_half]
    lane_w: float
    n_lanes: int
    park_w: float  # parking strip at each kerb, outside the driving lanes
    two_way: bool
    centre_double: bool
    line_rgb: np.ndarray
    centre_rgb: np.ndarray
    asphalt_rgb: np.ndarray
    paved_rgb: np.ndarray
    grass_rgb: np.ndarray
    dash_len: float
    dash_period: float
    edge_lines: bool
    crossings: list  # (z0, z1) zebra crossings
    zone_edges: list  # per side (left, right): sorted z boundaries
    zone_types: list  # per side: zone of each interval (len(edges) + 1)


@dataclass
class Scene:
    camera: Camera
    light: Lighting
    street: Street
    prims: list  # per primitive type: float32 (K, P) parameters
    prim_mat: list  # per primitive type: int32 (K,) material ids
    mat_label: np.ndarray  # (M,) int8
    mat_kind: np.ndarray  # (M,) int8
    mat_rgb: np.ndarray  # (M, 3, 3) three linear colours
    mat_par: np.ndarray  # (M, 8) kind-specific parameters
    noise: np.ndarray  # (NOISE_SIZE, NOISE_SIZE) float32 lattice in [0, 1]


class _SceneBuilder:
    """Collects materials and primitives while a street is laid out."""

    def __init__(self):
        self.prims = [[] for _ in PRIM_NAMES]
        self.mats = [[] for _ in PRIM_NAMES]
        self.materials = []

    def material(self, label, kind, rgb1, rgb2=(0, 0, 0), rgb3=(0, 0, 0), params=()) -> int:
        par = np.zeros(8)
        par[: len(params)] = params
        self.materials.append((label, kind, rgb1, rgb2, rgb3, par))
        return len(self.materials) - 1

    def box(self, lo, hi, mat):
        self.prims[BOX].append((*map(min, lo, hi), *map(max, lo, hi)))
        self.mats[BOX].append(mat)

    def vcyl(self, cx, cz, r, y0, y1, mat):
        self.prims[VCYL].append((cx, cz, r, y0, y1))
        self.mats[VCYL].append(mat)

    def xcyl(self, cy, cz, r, x0, x1, mat):
        self.prims[XCYL].append((cy, cz, r, min(x0, x1), max(x0, x1)))
        self.mats[XCYL].append(mat)

    def ellipsoid(self, centre, radii, mat):
        self.prims[ELLIPSOID].append((*centre, *radii))
        self.mats[ELLIPSOID].append(mat)

    def finish(self, camera, light, street, noise) -> Scene:
        prims = [np.asarray(p, dtype=np.float32).reshape(-1, n) for p, n in zip(self.prims, PRIM_PARAMS)]
        prim_mat = [np.asarray(m, dtype=np.int32) for m in self.mats]
        m = self.materials
        return Scene(
            camera, light, street, prims, prim_mat,
            mat_label=np.array([x[0] for x in m], dtype=np.int8),
            mat_kind=np.array([x[1] for x in m], dtype=np.int8),
            mat_rgb=_lin_array([[x[2], x[3], x[4]] for x in m]).reshape(-1, 3, 3),
            mat_par=np.array([x[5] for x in m], dtype=np.float32).reshape(-1, 8),
            noise=noise,
        )


# --------------------------------------------------------------------------------------
# Random appearance helpers
# --------------------------------------------------------------------------------------


def _hsv(h, s, v):
    """HSV (all in [0, 1], hue wraps) -> RGB tuple."""
    return colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))


def _facade_colour(rng):
    """Brick, render, stone, concrete or pastel: the common colours of European facades."""
    style = _pick(rng, ["brick", "beige", "grey", "white", "pastel", "dark"], [0.22, 0.25, 0.2, 0.13, 0.12, 0.08])
    if style == "brick":
        return _hsv(rng.uniform(0.0, 0.07), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.6))
    if style == "beige":
        return _hsv(rng.uniform(0.07, 0.13), rng.uniform(0.15, 0.4), rng.uniform(0.55, 0.85))
    if style == "grey":
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.08), rng.uniform(0.4, 0.7))
    if style == "white":
        return _hsv(rng.uniform(0.05, 0.15), rng.uniform(0, 0.08), rng.uniform(0.78, 0.92))
    if style == "pastel":
        return _hsv(rng.uniform(0, 1), rng.uniform(0.15, 0.35), rng.uniform(0.6, 0.85))
    return _hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.25), rng.uniform(0.15, 0.3))


def _car_colour(rng):
    style = _pick(rng, ["white", "black", "silver", "grey", "colour"], [0.22, 0.2, 0.2, 0.15, 0.23])
    if style == "white":
        return _hsv(0, 0, rng.uniform(0.8, 0.93))
    if style == "black":
        return _hsv(rng.uniform(0, 1), 0.1, rng.uniform(0.05, 0.12))
    if style == "silver":
        return _hsv(0.6, 0.03, rng.uniform(0.55, 0.72))
    if style == "grey":
        return _hsv(0.6, 0.05, rng.uniform(0.25, 0.45))
    return _hsv(_pick(rng, [0.0, 0.6, 0.63, 0.33, 0.1, 0.95]) + rng.uniform(-0.03, 0.03),
                rng.uniform(0.5, 0.85), rng.uniform(0.3, 0.7))


def _cloth_colour(rng):
    if rng.random() < 0.5:  # dark and muted clothes are the most common
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.08, 0.35))
    return _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.85))


def _skin_colour(rng):
    return _hsv(rng.uniform(0.04, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.85))


def _green(rng, v=(0.2, 0.45)):
    return _hsv(rng.uniform(0.17, 0.3), rng.uniform(0.45, 0.8), rng.uniform(*v))


def _pick(rng, options, p=None):
    """One of ``options`` (any objects), with probabilities ``p`` (uniform by default).

    Faster than ``rng.choice`` for the short lists used here, and it keeps tuples intact.
    """
    r = rng.random()
    if p is None:
        return options[min(int(r * len(options)), len(options) - 1)]
    acc = 0.0
    for option, prob in zip(options, p):
        acc += prob
        if r < acc:
            return option
    return options[-1]


def _jitter(rgb, rng, amount=0.05):
    return tuple(min(max(c * (1 + e), 0.0), 1.0) for c, e in zip(rgb, rng.normal(0, amount, 3)))




def _value_noise(lattice, u, v):
    """Smooth value noise in [0, 1] at (u, v), tiling every NOISE_SIZE units."""
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    mask = NOISE_SIZE - 1  # NOISE_SIZE is a power of two: "& mask" wraps negative cells too
    i0, j0 = iu.astype(np.int64) & mask, iv.astype(np.int64) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    flat = lattice.ravel()
    i0, i1 = i0 * NOISE_SIZE, i1 * NOISE_SIZE
    a, b = flat[i0 + j0], flat[i1 + j0]
    c, d = flat[i0 + j1], flat[i1 + j1]
    ab = a + (b - a) * fu
    return ab + ((c + (d - c) * fu) - ab) * fv


def _hash(lattice, i, j):
    """A random value in [0, 1) for integer cells (i, j)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    return lattice[np.mod(i * 7 + j * 31, NOISE_SIZE), np.mod(j * 13 + i * 3 + 5, NOISE_SIZE)]
