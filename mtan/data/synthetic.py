"""Procedural CityScapes-like street frames with exact labels and depth.

Every frame is a small 3-D street built from simple primitives (a ground plane, axis-aligned
boxes, vertical and horizontal cylinders, ellipsoids) and ray-cast from a camera mounted on a
car.  The renderer returns, for every pixel, the colour, the CityScapes 7-category label of the
nearest surface, and its inverse depth in the convention of the MTAN CityScapes release
(``v = 1.85 / z`` with ``z`` the distance in metres along the optical axis; sky = 0).

How a frame is made (read the code in this order):

1. :func:`_build_scene` draws a street from a per-frame random generator: road width and lanes,
   sidewalks with kerbs, building facades (or walls, fences, parks, parking lots, cross streets)
   on both sides, trees, street lamps, signs and traffic lights, pedestrians and cyclists,
   parked and moving vehicles, a distant backdrop, the sun, the sky and the camera.
2. :func:`_cast` intersects camera rays with all primitives.  Each primitive is first bounded
   by its screen-space rectangle, so a ray is only tested against the few primitives that can
   cover its pixel; the tests run as flat numpy arrays of (ray, primitive) pairs and the nearest
   hit wins.
3. :func:`_shade` looks up procedural textures (window grids, paving, lane markings, foliage,
   car lights...), lights them with the sun (Lambert, exact cast shadows from shadow rays,
   bounded the same way in the plane perpendicular to the sun: :func:`_visibility`) and the
   sky (darker under cars and trees), mirrors the sky in glass and paint, and adds haze.
4. :func:`_develop` plays the camera: auto exposure with jitter, white balance, tone curve,
   slight blur, vignetting and sensor noise.

Everything is vectorised numpy (no per-pixel Python loops) and deterministic: frame ``index``
of ``seed`` always comes from ``numpy.random.default_rng([seed, index])`` and does not depend
on the output size (only the pixel grid changes).

Command line (``python -m mtan.data.synthetic --help``)::

    python -m mtan.data.synthetic --out data/synthetic --train 3000 --val 500 --size 128x256
    python -m mtan.data.synthetic --preview docs/synthetic_preview.png
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

#: CityScapes 7 categories (``mtan.tasks.CITYSCAPES_7``): label values.
FLAT, CONSTRUCTION, OBJECT, NATURE, SKY, HUMAN, VEHICLE = range(7)
NUM_CLASSES = 7

#: Stored inverse depth is ``INVERSE_DEPTH_SCALE / metres`` (CityScapes release convention).
INVERSE_DEPTH_SCALE = 1.85
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


# --------------------------------------------------------------------------------------
# Street layout
# --------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Street-wide choices shared by the helpers that populate a frame."""

    b: _SceneBuilder
    road_half: float
    kerb: float  # sidewalk height
    sidewalk: tuple  # width of the left and right sidewalk
    z_end: float  # where the street ends at a building across it (inf: it goes on)
    crossings: list = field(default_factory=list)  # cross streets (z0, z1)
    zebras: list = field(default_factory=list)  # zebra crossings painted on the road (z0, z1)
    mats: dict = field(default_factory=dict)  # shared materials

    def outer(self, side: int) -> float:
        """|x| of the outer sidewalk edge on ``side`` (0 left, 1 right)."""
        return self.road_half + self.sidewalk[side]

    def in_crossing(self, z0, z1, margin=0.0) -> bool:
        return any(z0 < c1 + margin and z1 > c0 - margin for c0, c1 in self.crossings)


def _sign(side: int) -> int:
    return -1 if side == 0 else 1


def _add_building(L: _Layout, side, z0, z1, setback, height, depth, rng, far=False):
    """A facade box with its own window pattern; its street face is at ``outer + setback``."""
    s = _sign(side)
    x_face = s * (L.outer(side) + setback)
    floor_h = rng.uniform(2.9, 3.6)
    ground_h = floor_h * rng.uniform(1.0, 1.4)
    spacing = rng.uniform(1.8, 3.6)
    win_w = rng.uniform(0.35, 0.7)
    win_h = rng.uniform(0.4, 0.65)
    shop = float(rng.random() < 0.5 and not far)
    ledge = float(rng.random() < 0.5)
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.12, 0.35))
    trim = _jitter(_pick(rng, [(0.85, 0.85, 0.82), (0.3, 0.3, 0.3), (0.55, 0.5, 0.45)]), rng)
    mat = L.b.material(CONSTRUCTION, FACADE, _facade_colour(rng), glass, trim,
                       (floor_h, ground_h, spacing, win_w, win_h, shop, ledge, rng.uniform(0.05, 0.25)))
    L.b.box((x_face, 0.0, z0), (x_face + s * depth, height, z1), mat)
    if rng.random() < 0.3 and not far:  # a penthouse or roof structure, set back from the facade
        top = L.b.material(CONSTRUCTION, FACADE, _facade_colour(rng), glass, trim,
                           (floor_h, 0.0, spacing, win_w, win_h, 0, ledge, 0.1))
        inset = rng.uniform(1.5, 4.0)
        top_h = height + rng.uniform(2.5, 6)
        L.b.box((x_face + s * inset, height, z0 + 0.5), (x_face + s * depth, top_h, z1 - 0.5), top)


def _add_tree(L: _Layout, x, z, y0, rng, scale=1.0):
    """Trunk (vertical cylinder) and a crown of one to three ellipsoids."""
    trunk_h = rng.uniform(1.8, 3.5) * scale
    r = rng.uniform(0.1, 0.2) * scale
    bark_rgb = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.35))
    bark = L.b.material(NATURE, PLAIN, bark_rgb, params=(0.3,))
    L.b.vcyl(x, z, r, y0, y0 + trunk_h + 0.5, bark)
    leaves = L.b.material(NATURE, FOLIAGE, _green(rng), _green(rng, (0.35, 0.6)), params=(rng.uniform(3, 6),))
    R = rng.uniform(1.3, 2.8) * scale
    cy = y0 + trunk_h + R * 0.8
    L.b.ellipsoid((x, cy, z), (R, R * rng.uniform(0.9, 1.4), R), leaves)
    for _ in range(rng.integers(0, 3)):
        d = rng.normal(0, 0.5 * R, 3)
        L.b.ellipsoid((x + d[0], cy + abs(d[1]) * 0.5, z + d[2]), (R * 0.7,) * 3, leaves)


def _add_pole(L: _Layout, x, z, y0, height, r, mat):
    L.b.vcyl(x, z, r, y0, y0 + height, mat)


def _add_street_lamp(L: _Layout, side, z, rng):
    s = _sign(side)
    x = s * (L.road_half + rng.uniform(0.3, 0.6))
    h = rng.uniform(6, 9)
    mat = L.mats["pole"]
    _add_pole(L, x, z, L.kerb, h, rng.uniform(0.07, 0.12), mat)
    arm = rng.uniform(1.0, 2.5)
    L.b.box((x, L.kerb + h - 0.12, z - 0.05), (x - s * arm, L.kerb + h, z + 0.05), mat)
    L.b.box((x - s * (arm - 0.6), L.kerb + h - 0.25, z - 0.2), (x - s * (arm + 0.1), L.kerb + h - 0.05, z + 0.2), mat)


def _add_sign(L: _Layout, side, z, rng):
    """A pole with a plate facing the camera (round, triangular or square; see SIGN texture)."""
    s = _sign(side)
    x = s * (L.road_half + rng.uniform(0.3, 0.8))
    h = rng.uniform(2.0, 2.8)
    _add_pole(L, x, z, L.kerb, h + 0.3, 0.035, L.mats["pole"])
    size = rng.uniform(0.5, 0.8)
    kind = _pick(rng, ["prohibit", "mandatory", "warning", "info", "street"])
    shape = {"prohibit": 0, "mandatory": 0, "warning": 1, "info": 2, "street": 2}[kind]
    inner, border = {
        "prohibit": ((0.95, 0.95, 0.95), (0.8, 0.08, 0.08)),
        "mandatory": ((0.1, 0.3, 0.75), (0.9, 0.9, 0.9)),
        "warning": ((0.95, 0.95, 0.9), (0.85, 0.1, 0.1)),
        "info": ((0.1, 0.3, 0.75), (0.95, 0.95, 0.95)),
        "street": ((0.95, 0.95, 0.95), (0.2, 0.2, 0.2)),
    }[kind]
    mat = L.b.material(OBJECT, SIGN, inner, border, (0.5, 0.5, 0.5), (shape,))
    w = size * (1.8 if kind == "street" else 1.0)
    cx = x - s * (0.0 if kind != "street" else w / 2)
    L.b.box((cx - w / 2, L.kerb + h - size / 2, z - 0.02), (cx + w / 2, L.kerb + h + size / 2, z + 0.02), mat)


def _add_traffic_light(L: _Layout, side, z, rng, over_road=False):
    s = _sign(side)
    x = s * (L.road_half + rng.uniform(0.3, 0.7))
    lit = rng.integers(0, 3)  # which lamp is on: 0 red, 1 amber, 2 green
    housing = L.b.material(OBJECT, TRAFFIC_LIGHT, (0.08, 0.08, 0.08), params=(lit,))
    if over_road:  # a mast arm holding the lights over the lanes
        h = rng.uniform(5.5, 6.5)
        _add_pole(L, x, z, L.kerb, h + 0.3, 0.14, L.mats["pole"])
        arm = rng.uniform(0.5, 0.9) * L.road_half + 1.0
        L.b.box((x, L.kerb + h, z - 0.08), (x - s * arm, L.kerb + h + 0.16, z + 0.08), L.mats["pole"])
        hx = x - s * (arm - 0.5)
        L.b.box((hx - 0.17, L.kerb + h - 1.0, z - 0.17), (hx + 0.17, L.kerb + h, z + 0.17), housing)
    else:
        h = rng.uniform(2.4, 3.0)
        _add_pole(L, x, z, L.kerb, h, 0.06, L.mats["pole"])
        L.b.box((x - 0.16, L.kerb + h, z - 0.16), (x + 0.16, L.kerb + h + 0.9, z + 0.16), housing)


def _add_person(L: _Layout, x, z, y0, rng, height=None, riding=False):
    """Legs, torso, arms (cylinders / box) and a head (ellipsoid); everything is HUMAN."""
    H = height or rng.uniform(1.5, 1.95)
    top = L.b.material(HUMAN, PLAIN, _cloth_colour(rng), params=(0.1,))
    trousers = L.b.material(HUMAN, PLAIN, _cloth_colour(rng), params=(0.1,))
    skin = _skin_colour(rng)
    hair = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.5))
    head = L.b.material(HUMAN, HEAD, skin, hair)
    hip = 0.48 * H
    shoulder = 0.82 * H
    if riding:  # legs down to the pedals, torso leaning forward
        for dx in (-0.12, 0.12):
            L.b.vcyl(x + dx, z + 0.15, 0.065, y0 + 0.25, y0 + hip, trousers)
        L.b.box((x - 0.2, y0 + hip, z + 0.1), (x + 0.2, y0 + shoulder, z + 0.45), top)
        L.b.ellipsoid((x, y0 + 0.91 * H, z + 0.55), (0.09, 0.115, 0.1), head)
        return
    stride = rng.uniform(-0.18, 0.18)
    for dx, dz in ((-0.1, stride), (0.1, -stride)):
        L.b.vcyl(x + dx, z + dz, 0.075, y0, y0 + hip + 0.05, trousers)
    L.b.box((x - 0.2, y0 + hip, z - 0.12), (x + 0.2, y0 + shoulder, z + 0.12), top)
    for dx in (-0.25, 0.25):
        L.b.vcyl(x + dx, z + rng.uniform(-0.1, 0.1), 0.05, y0 + 0.5 * H, y0 + shoulder, top)
    L.b.ellipsoid((x, y0 + 0.91 * H, z), (0.09, 0.115, 0.1), head)


def _add_cyclist(L: _Layout, x, z, rng):
    """Bicycle (VEHICLE, as in CityScapes) ridden by a person (HUMAN), heading along +z."""
    frame = L.b.material(VEHICLE, PLAIN, _car_colour(rng), params=(0.1,))
    tyre = L.mats["tyre_thin"]
    r = 0.34
    for dz in (0.0, 1.05):
        L.b.xcyl(r, z + dz, r, x - 0.025, x + 0.025, tyre)
    L.b.box((x - 0.025, r, z + 0.15), (x + 0.025, r + 0.45, z + 0.95), frame)
    L.b.box((x - 0.3, 1.0, z + 0.95), (x + 0.3, 1.04, z + 1.0), frame)
    _add_person(L, x, z + 0.1, 0.0, rng, riding=True)


def _add_vehicle(L: _Layout, x, z0, heading, rng, kind="car"):
    """A car, van or bus whose rear is at ``z0`` (heading +1) or whose front is at ``z0`` (-1).

    Returns the vehicle length so that callers can queue vehicles.
    """
    b = L.b
    paint = _car_colour(rng)
    if kind == "bus":
        paint = _pick(rng, [(0.8, 0.1, 0.1), (0.9, 0.9, 0.88), (0.95, 0.75, 0.1), (0.15, 0.3, 0.7), (0.2, 0.5, 0.3)])
        length, width, height = rng.uniform(10, 12.5), 2.5, rng.uniform(2.9, 3.3)
    elif kind == "van":
        length, width, height = rng.uniform(4.8, 6.0), rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.5)
    else:
        length, width, height = rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9), rng.uniform(1.35, 1.55)
    wheel_r = 0.45 if kind == "bus" else rng.uniform(0.29, 0.35)
    clear = wheel_r * 0.8
    z1 = z0 + length
    lights = (heading,)
    if kind == "bus":
        mat = b.material(VEHICLE, BUS, paint, (0.1, 0.12, 0.15), (0.9, 0.9, 0.9), lights)
        b.box((x - width / 2, clear, z0), (x + width / 2, height, z1), mat)
    else:
        body_top = clear + (rng.uniform(0.55, 0.75) if kind == "car" else rng.uniform(0.6, 0.8))
        body = b.material(VEHICLE, CAR_BODY, paint, (0.75, 0.05, 0.05), (0.85, 0.85, 0.8), lights)
        cabin = b.material(VEHICLE, CAR_CABIN, paint, (0.05, 0.06, 0.08), (0, 0, 0), (float(kind == "van"), heading))
        b.box((x - width / 2, clear, z0), (x + width / 2, body_top, z1), body)
        inset = 0.08
        if kind == "van":
            cz0, cz1 = z0 + 0.05 * length, z1 - 0.2 * length
        else:
            cz0, cz1 = z0 + 0.12 * length, z1 - 0.3 * length
        if heading < 0:  # the bonnet is at the front, i.e. at low z when driving towards us
            cz0, cz1 = z0 + (z1 - cz1), z1 - (cz0 - z0)
        b.box((x - width / 2 + inset, body_top, cz0), (x + width / 2 - inset, height, cz1), cabin)
    tyre = L.mats["tyre"]
    for zw in (z0 + 0.17 * length, z1 - 0.17 * length):
        for sx in (-1, 1):
            b.xcyl(wheel_r, zw, wheel_r, x + sx * (width / 2 - 0.25), x + sx * (width / 2 + 0.01), tyre)
    return length


def _park_row(L: _Layout, side, z_from, z_to, rng):
    """Cars parked along the kerb (in the parking strip) with random gaps and empty spots."""
    s = _sign(side)
    z = z_from
    while z < z_to:
        length_guess = 6.0
        if L.in_crossing(z, z + length_guess, margin=3.0) or rng.random() < 0.3:
            z += rng.uniform(3, 8)
            continue
        kind = "van" if rng.random() < 0.12 else "car"
        width = 1.8 if kind == "car" else 2.0
        x = s * (L.road_half - 0.25 - width / 2)
        heading = s if rng.random() < 0.8 else -s
        length = _add_vehicle(L, x, z, heading, rng, kind)
        z += length + rng.uniform(0.6, 3.0)


def _lane_traffic(L: _Layout, lane_x, heading, z_from, z_to, rng, density, keep_clear=()):
    """Vehicles queued in one lane; ``heading`` -1 for oncoming traffic. No vehicle overlaps the
    ``keep_clear`` intervals of z (a cyclist's place)."""
    z = z_from + rng.exponential(15 / density)
    while z < z_to:
        kind = _pick(rng, ["car", "van", "bus"], [0.8, 0.12, 0.08])
        clash = [c1 for c0, c1 in keep_clear if z < c1 and z + 13 > c0]  # 13 m: the longest bus
        if clash:
            z = max(clash) + rng.uniform(1, 5)
            continue
        length = _add_vehicle(L, lane_x + rng.normal(0, 0.15), z, heading, rng, kind)
        z += length + rng.uniform(2.5, 8) + rng.exponential(25 / density)


def _side_segments(L: _Layout, side, district, rng):
    """Fill one side of the street with buildings, walls, fences, parks and parking lots.

    Returns the ground zones beyond the sidewalk as (z boundaries, zone types).
    """
    s = _sign(side)
    edges, zones = [], [ZONE_PAVED]
    flush = rng.random() < 0.6 if district == "urban" else rng.random() < 0.25
    base_h = rng.uniform(9, 24) if district == "urban" else rng.uniform(5, 11)
    probs = {"urban": [0.82, 0.04, 0.03, 0.06, 0.05], "suburb": [0.45, 0.15, 0.12, 0.18, 0.1]}[district]
    z = -30.0
    z_stop = min(L.z_end, STREET_DETAIL_DISTANCE)
    while z < z_stop:
        nxt = min([c0 for c0, c1 in L.crossings if c0 >= z] + [z_stop])
        if any(c0 <= z < c1 for c0, c1 in L.crossings):  # inside a cross street
            c1 = next(c1 for c0, c1 in L.crossings if c0 <= z < c1)
            edges.append(z), zones.append(ZONE_ROAD)
            z = c1
            continue
        kind = _pick(rng, ["building", "wall", "fence", "park", "parking"], probs)
        width = min(rng.uniform(6, 28) if kind == "building" else rng.uniform(10, 35), nxt - z)
        if width < 2.0:
            edges.append(z), zones.append(ZONE_PAVED)
            z = nxt
            continue
        z1 = z + width
        if kind == "building":
            setback = 0.0 if flush else rng.uniform(0, 6)
            h = float(np.clip(base_h * rng.uniform(0.7, 1.35), 4, 45))
            _add_building(L, side, z, z1, setback, h, rng.uniform(10, 20), rng)
            edges.append(z), zones.append(ZONE_PAVED if rng.random() < 0.7 else ZONE_GRASS)
        else:
            zone = {"wall": ZONE_GRASS, "fence": ZONE_GRASS, "park": ZONE_GRASS, "parking": ZONE_PAVED}[kind]
            edges.append(z), zones.append(zone)
            x_line = s * (L.outer(side) + rng.uniform(0, 1.0))
            if kind == "wall":
                h = rng.uniform(0.8, 2.6)
                coping = _jitter((0.6, 0.6, 0.58), rng)
                mat = L.b.material(CONSTRUCTION, WALL, _facade_colour(rng), coping, params=(rng.uniform(0.2, 0.5),))
                L.b.box((x_line, 0, z), (x_line + s * 0.3, h, z1), mat)
            elif kind == "fence":
                h = rng.uniform(1.0, 2.2)
                metal = rng.random() < 0.5
                rgb = (0.12, 0.12, 0.13) if metal else _hsv(0.08, 0.4, rng.uniform(0.3, 0.55))
                bars = (rng.uniform(0.1, 0.25), rng.uniform(0.2, 0.5))  # bar spacing (m), bar fraction
                mat = L.b.material(CONSTRUCTION, FENCE, _jitter(rgb, rng), params=bars)
                L.b.box((x_line, 0, z), (x_line + s * 0.06, h, z1), mat)
            elif kind == "park" and rng.random() < 0.6:
                hedge = L.b.material(NATURE, FOLIAGE, _green(rng), _green(rng, (0.3, 0.5)), params=(6.0,))
                thick, high = rng.uniform(0.6, 1.2), rng.uniform(0.7, 1.8)
                L.b.box((x_line, 0, z + 0.5), (x_line + s * thick, high, z1 - 0.5), hedge)
            if kind in ("wall", "fence", "park"):
                for tz in np.arange(z + rng.uniform(2, 6), z1 - 1, rng.uniform(5, 12)):
                    if rng.random() < 0.7:
                        tx = s * (L.outer(side) + rng.uniform(3, 12))
                        _add_tree(L, tx, tz, 0.0, rng, scale=rng.uniform(0.9, 1.5))
            if kind == "parking":
                for pz in np.arange(z + 1, z1 - 5, 2.6):
                    if rng.random() < 0.6:
                        x = s * (L.outer(side) + rng.uniform(3, 6))
                        _add_vehicle(L, x, pz, 1, rng)
            if rng.random() < 0.8:  # buildings farther back behind the wall / fence / park
                _add_building(L, side, z, z1, rng.uniform(10, 30), rng.uniform(6, 25), 15, rng, far=True)
        z = z1
    return edges, zones


def _cross_street(L: _Layout, c0, c1, rng):
    """Sidewalks, corner buildings and traffic lights of a cross street spanning z in [c0, c1]."""
    b = L.b
    sw = rng.uniform(1.5, 3.5)
    far = 120.0
    for side in (0, 1):
        s = _sign(side)
        for z0, z1 in ((c0, c0 + sw), (c1 - sw, c1)):
            b.box((s * L.road_half, 0, z0), (s * far, L.kerb, z1), L.mats["sidewalk"])
        x = L.outer(side) + rng.uniform(14, 22)
        while x < far:  # buildings lining the cross street, facing it
            w = rng.uniform(8, 25)
            for zf, depth in ((c0, -rng.uniform(10, 20)), (c1, rng.uniform(10, 20))):
                h = rng.uniform(6, 25)
                zf_set = zf + np.sign(depth) * rng.uniform(0, 2)
                col = L.b.material(CONSTRUCTION, FACADE, _facade_colour(rng), (0.15, 0.17, 0.2), (0.6, 0.6, 0.6),
                                   (3.2, 3.5, rng.uniform(2, 3.5), 0.5, 0.5, 0, 1, 0.1))
                b.box((s * x, 0, zf_set), (s * (x + w), h, zf_set + depth), col)
            x += w + rng.uniform(0, 4)
        if rng.random() < 0.85:
            _add_traffic_light(L, side, c0 - rng.uniform(0.5, 2.0), rng, over_road=(side == 1 and rng.random() < 0.4))
    if rng.random() < 0.7:
        L.zebras.append((c0 - 1.0 - rng.uniform(3, 5), c0 - 1.0))


def _backdrop(L: _Layout, rng):
    """Far geometry so that the horizon is not an endless plane: city blocks or tree lines."""
    b = L.b
    style = _pick(rng, ["city", "trees", "none"], [0.5, 0.35, 0.15])
    if style == "none":
        return
    z = L.z_end + rng.uniform(30, 150) if L.z_end < STREET_DETAIL_DISTANCE else rng.uniform(350, 600)
    if style == "city":
        x = -rng.uniform(100, 300)
        while x < 300:
            w = rng.uniform(15, 60)
            mat = b.material(CONSTRUCTION, FACADE, _facade_colour(rng), (0.2, 0.22, 0.26), (0.5, 0.5, 0.5),
                             (3.3, 3.3, 3.0, 0.5, 0.5, 0, 0, 0.1))
            zz = z + rng.uniform(0, 150)
            b.box((x, 0, zz), (x + w, rng.uniform(10, 70), zz + 30), mat)
            x += w + rng.uniform(-5, 20)
    else:
        mat = b.material(NATURE, FOLIAGE, _green(rng, (0.15, 0.3)), _green(rng, (0.25, 0.4)), params=(0.3,))
        for x in np.arange(-400, 400, rng.uniform(15, 35)):
            r = rng.uniform(8, 18)
            b.ellipsoid((x, rng.uniform(0, 4), z + rng.uniform(0, 40)), (r * 1.5, r, r), mat)


def _build_camera(L: _Layout, lanes_x, rng) -> Camera:
    x = _pick(rng, lanes_x) + rng.normal(0, 0.2)
    h = rng.uniform(1.2, 1.7)
    yaw, pitch, roll = np.radians([rng.uniform(-5, 5), np.clip(rng.normal(-1.5, 1.5), -5, 2), rng.uniform(-2, 2)])
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Camera(origin=np.array([x, h, 0.0]), R=Ry @ Rx @ Rz, hfov=math.radians(rng.uniform(42, 75)),
                  cx_frac=0.5 + rng.normal(0, 0.01), cy_frac=0.5 + rng.normal(0, 0.03))


def _build_lighting(rng) -> Lighting:
    overcast = rng.random() < 0.25
    elev = math.radians(rng.uniform(25, 70))
    azim = rng.uniform(0, 2 * math.pi)
    sun_dir = np.array([math.cos(elev) * math.sin(azim), math.sin(elev), math.cos(elev) * math.cos(azim)])
    warm = max(0.0, 1 - elev / math.radians(35))  # low sun is warmer
    sun_rgb = np.array([1.0, 0.93 - 0.1 * warm, 0.85 - 0.25 * warm]) * rng.uniform(2.6, 3.4)
    if overcast:
        grey = rng.uniform(0.55, 0.8)
        zenith = np.array(_jitter((grey, grey, grey * 1.04), rng, 0.03))
        horizon = zenith * rng.uniform(1.05, 1.2)
        sun_rgb = sun_rgb * rng.uniform(0.05, 0.2)
        cover = rng.uniform(0.85, 1.0)
    else:
        zenith = np.array(_hsv(rng.uniform(0.56, 0.63), rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.85)))
        horizon = np.array(_hsv(rng.uniform(0.55, 0.62), rng.uniform(0.05, 0.25), rng.uniform(0.8, 0.95)))
        cover = rng.uniform(0.0, 0.75)
    zenith, horizon = _lin(zenith), _lin(np.clip(horizon, 0, 1))
    sky_mean = 0.5 * zenith + 0.5 * horizon
    ambient = (0.4 * sky_mean + 0.6 * sky_mean.mean()) * rng.uniform(0.9, 1.3) * (1.6 if overcast else 1.0)
    return Lighting(sun_dir=sun_dir, sun_rgb=sun_rgb, ambient_rgb=ambient, zenith_rgb=zenith * 1.1,
                    horizon_rgb=horizon * 1.35, cloud_rgb=_lin(_jitter((0.92, 0.92, 0.93), rng, 0.03)) * 1.6,
                    cloud_cover=cover, cloud_scale=rng.uniform(0.05, 0.25),
                    haze_distance=rng.uniform(250, 1500) if not overcast else rng.uniform(150, 600))


def _build_scene(rng: np.random.Generator) -> Scene:
    """Lay out one random street (see the module docstring). Independent of the image size."""
    b = _SceneBuilder()
    n_lanes = int(_pick(rng, [1, 2, 2, 3, 4]))
    two_way = n_lanes >= 2 and rng.random() < 0.75
    lane_w = rng.uniform(2.9, 3.6)
    park_w = rng.uniform(2.0, 2.4) if rng.random() < 0.75 else 0.0
    road_half = n_lanes * lane_w / 2 + park_w
    district = "urban" if rng.random() < 0.65 else "suburb"
    z_end = rng.uniform(70, 250) if rng.random() < 0.35 else math.inf  # a building across, or open
    L = _Layout(b, road_half, kerb=rng.uniform(0.1, 0.17),
                sidewalk=(rng.uniform(1.5, 5), rng.uniform(1.5, 5)), z_end=z_end)
    # Materials used by many primitives.
    pole_rgb = _jitter(_pick(rng, [(0.35, 0.36, 0.38), (0.15, 0.17, 0.16), (0.6, 0.6, 0.6)]), rng)
    L.mats["pole"] = b.material(OBJECT, PLAIN, pole_rgb, params=(0.1,))
    L.mats["tyre"] = b.material(VEHICLE, WHEEL, (0.05, 0.05, 0.05), (0.55, 0.55, 0.57))
    L.mats["tyre_thin"] = b.material(VEHICLE, PLAIN, (0.05, 0.05, 0.05))
    paving = _jitter(_hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.2), rng.uniform(0.45, 0.7)), rng)
    kerb_rgb = _jitter((0.65, 0.65, 0.62), rng)
    L.mats["sidewalk"] = b.material(FLAT, SIDEWALK, paving, kerb_rgb, params=(rng.uniform(0.3, 0.8),))

    # Cross streets.
    z = rng.uniform(15, 60)
    while z < min(z_end, 220) and rng.random() < 0.6:
        width = rng.uniform(10, 18)
        L.crossings.append((z, z + width))
        z += width + rng.uniform(40, 100)

    # Sidewalks (broken by the cross streets) and the facades behind them.
    zone_edges, zone_types = [], []
    for side in (0, 1):
        s = _sign(side)
        z0 = -30.0
        z_last = min(z_end, STREET_DETAIL_DISTANCE)
        for c0, c1 in L.crossings + [(z_last, z_last)]:
            if c0 > z0:
                b.box((s * road_half, 0, z0), (s * L.outer(side), L.kerb, c0), L.mats["sidewalk"])
            z0 = c1
        edges, zones = _side_segments(L, side, district, rng)
        zone_edges.append(np.asarray(edges, dtype=np.float32))
        zone_types.append(np.asarray(zones, dtype=np.int8))
    for c0, c1 in L.crossings:
        _cross_street(L, c0, c1, rng)
    if math.isfinite(z_end):  # the street ends at a building across it
        lo = np.array([-150.0, 0.0, z_end + rng.uniform(8, 20)])
        mat = b.material(CONSTRUCTION, FACADE, _facade_colour(rng), (0.15, 0.17, 0.2), (0.6, 0.6, 0.6),
                         (3.2, 3.8, rng.uniform(2, 3.5), 0.5, 0.5, 1, 1, 0.1))
        b.box(lo, (150.0, rng.uniform(8, 30), lo[2] + 15), mat)
    _backdrop(L, rng)

    # Street furniture and vegetation along the kerbs.
    tree_sides = [side for side in (0, 1) if rng.random() < (0.45 if district == "urban" else 0.75)]
    for side in tree_sides:
        s = _sign(side)
        for tz in np.arange(rng.uniform(-5, 8), min(z_end, 250), rng.uniform(7, 15)):
            if not L.in_crossing(tz, tz, margin=2) and rng.random() < 0.85:
                _add_tree(L, s * (road_half + rng.uniform(0.6, 1.2)), tz, L.kerb, rng)
    for side in (0, 1):
        if rng.random() < 0.7:
            for lz in np.arange(rng.uniform(0, 20), min(z_end, 250), rng.uniform(20, 35)):
                if not L.in_crossing(lz, lz, margin=1):
                    _add_street_lamp(L, side, lz, rng)
    for _ in range(rng.integers(0, 7)):
        sz = rng.uniform(5, 70)
        if not L.in_crossing(sz, sz, margin=1):
            _add_sign(L, int(rng.integers(0, 2)), sz, rng)

    # People.
    for _ in range(rng.integers(2, 16)):
        side = int(rng.integers(0, 2))
        pz = rng.uniform(3, 70)
        px = _sign(side) * (road_half + rng.uniform(0.4, L.sidewalk[side] - 0.3))
        on_kerb = not L.in_crossing(pz, pz)
        _add_person(L, px, pz, L.kerb if on_kerb else 0.0, rng)
    for c0, c1 in L.zebras:
        for _ in range(rng.integers(0, 4)):
            _add_person(L, rng.uniform(-road_half, road_half), rng.uniform(c0, c1), 0.0, rng)

    # Vehicles: parked rows, traffic in our direction and oncoming.
    for side in (0, 1):
        if park_w > 0 and rng.random() < 0.65:
            _park_row(L, side, rng.uniform(-12, 5), min(z_end, 120), rng)
    lanes_x = [-n_lanes * lane_w / 2 + (k + 0.5) * lane_w for k in range(n_lanes)]
    right_hand = rng.random() < 0.7
    ours = [x for x in lanes_x if (x > 0) == right_hand] if two_way else lanes_x
    ours = ours or lanes_x
    camera = _build_camera(L, ours, rng)
    kerb_lane = ours[-1] if right_hand else ours[0]
    cyclist_clear = ()
    if rng.random() < 0.4:  # a cyclist at the edge of the outer lane, riding our way
        cx = kerb_lane + (1 if right_hand else -1) * (lane_w / 2 - 0.6)
        cz = rng.uniform(7, 40)
        _add_cyclist(L, cx, cz, rng)
        cyclist_clear = ((cz - 1.0, cz + 2.5),)
    density = rng.uniform(0.2, 1.0)
    for lx in lanes_x:
        oncoming = two_way and lx not in ours
        start = 6.0 if abs(lx - camera.origin[0]) < lane_w / 2 + 0.3 else -10.0
        _lane_traffic(L, lx, -1 if oncoming else 1, start, min(z_end, 150), rng, density,
                      keep_clear=cyclist_clear if lx == kerb_lane else ())

    street = Street(
        road_half=road_half, lane_w=lane_w, n_lanes=n_lanes, park_w=park_w, two_way=two_way,
        centre_double=rng.random() < 0.4,
        line_rgb=_lin(_jitter((0.85, 0.85, 0.82), rng, 0.04)),
        centre_rgb=_lin((0.85, 0.65, 0.15) if rng.random() < 0.2 else _jitter((0.85, 0.85, 0.82), rng, 0.04)),
        asphalt_rgb=_lin(_hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.06), rng.uniform(0.22, 0.42))),
        paved_rgb=_lin(_hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.15), rng.uniform(0.4, 0.6))),
        grass_rgb=_lin(_hsv(rng.uniform(0.17, 0.25), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.5))),
        dash_len=rng.uniform(2, 4), dash_period=rng.uniform(6, 12), edge_lines=rng.random() < 0.5,
        crossings=L.zebras, zone_edges=zone_edges, zone_types=zone_types,
    )
    noise = rng.random((NOISE_SIZE, NOISE_SIZE), dtype=np.float32)
    return b.finish(camera, _build_lighting(rng), street, noise)


# --------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------


class _Rays:
    """A bundle of rays; each of origin / direction is one float32 array per axis, or a scalar
    when all rays share it (camera rays share the origin, sun rays share the direction)."""

    def __init__(self, o, d):
        self.o = [np.asarray(v, dtype=np.float32) for v in o]
        # Exact zeros in a direction would make the box slabs 0 * inf = nan.
        self.d = [np.where(np.abs(v) < 1e-9, np.float32(1e-9), v).astype(np.float32) for v in d]

    @staticmethod
    def _take(v, idx):
        return v if v.ndim == 0 else v[idx]

    def take(self, idx):
        return [self._take(v, idx) for v in self.o], [self._take(v, idx) for v in self.d]


def _aabbs(scene: Scene) -> list:
    """Axis-aligned bounds (K, 2, 3) of every primitive, per type."""
    out = []
    for kind, P in enumerate(scene.prims):
        if kind == BOX:
            lo, hi = P[:, 0:3], P[:, 3:6]
        elif kind == VCYL:
            lo = np.stack([P[:, 0] - P[:, 2], P[:, 3], P[:, 1] - P[:, 2]], 1)
            hi = np.stack([P[:, 0] + P[:, 2], P[:, 4], P[:, 1] + P[:, 2]], 1)
        elif kind == XCYL:
            lo = np.stack([P[:, 3], P[:, 0] - P[:, 2], P[:, 1] - P[:, 2]], 1)
            hi = np.stack([P[:, 4], P[:, 0] + P[:, 2], P[:, 1] + P[:, 2]], 1)
        else:
            lo, hi = P[:, 0:3] - P[:, 3:6], P[:, 0:3] + P[:, 3:6]
        out.append(np.stack([lo, hi], 1).astype(np.float64))
    return out


_CORNERS = np.array([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=bool)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


def _screen_rects(aabb, cam: Camera, height, width):
    """Pixel rectangles [i0, i1) x [j0, j1) that cover each box's projection (near-plane clipped)."""
    K = len(aabb)
    if K == 0:
        return np.zeros((4, 0), dtype=np.int64)
    f, cx, cy = cam.intrinsics(height, width)
    corners = np.where(_CORNERS[None], aabb[:, 1:2], aabb[:, 0:1])  # (K, 8, 3)
    c = (corners - cam.origin) @ cam.R  # camera coordinates
    a, b = c[:, _EDGES[:, 0]], c[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - NEAR) * (zb - NEAR) < 0
    s = (NEAR - za) / np.where(crosses, zb - za, 1.0)
    pts = np.concatenate([c, a + s[..., None] * (b - a)], 1)  # corners + near-plane crossings
    valid = np.concatenate([c[..., 2] >= NEAR, crosses], 1)
    z = np.maximum(pts[..., 2], NEAR)
    u = cx + f * pts[..., 0] / z
    v = cy - f * pts[..., 1] / z
    inf = np.inf
    umin, umax = np.where(valid, u, inf).min(1), np.where(valid, u, -inf).max(1)
    vmin, vmax = np.where(valid, v, inf).min(1), np.where(valid, v, -inf).max(1)
    seen = valid.any(1)
    return _pixel_ranges(np.where(seen, vmin, inf), np.where(seen, vmax, -inf), umin, umax, height, width)


def _pixel_ranges(vmin, vmax, umin, umax, n_rows, n_cols):
    """Continuous bounds -> integer ranges of pixel centres (i + 0.5) inside them, clipped."""
    with np.errstate(invalid="ignore"):
        i0 = np.clip(np.floor(np.nan_to_num(vmin - 0.5, posinf=n_rows, neginf=0)), 0, n_rows)
        i1 = np.clip(np.ceil(np.nan_to_num(vmax - 0.5, posinf=n_rows, neginf=-1)) + 1, 0, n_rows)
        j0 = np.clip(np.floor(np.nan_to_num(umin - 0.5, posinf=n_cols, neginf=0)), 0, n_cols)
        j1 = np.clip(np.ceil(np.nan_to_num(umax - 0.5, posinf=n_cols, neginf=-1)) + 1, 0, n_cols)
    i1, j1 = np.maximum(i1, i0), np.maximum(j1, j0)
    return np.stack([i0, i1, j0, j1]).astype(np.int64)


def _pairs(rects, n_cols):
    """All (primitive, pixel) pairs of the rectangles, as flat index arrays."""
    i0, i1, j0, j1 = rects
    h, w = i1 - i0, j1 - j0
    n = h * w
    total = int(n.sum())
    prim = np.repeat(np.arange(len(n)), n)
    local = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    wp = w[prim]
    row = i0[prim] + local // np.maximum(wp, 1)
    col = j0[prim] + local % np.maximum(wp, 1)
    return prim, row * n_cols + col


def _hit_box(P, o, d):
    """Slab test. P: (6, n) lo/hi per pair. Returns the entry distance, inf on a miss."""
    tmin = np.full(np.broadcast(d[0], P[0]).shape, -np.inf, dtype=np.float32)
    tmax = np.full_like(tmin, np.inf)
    for ax in range(3):
        inv = 1.0 / d[ax]
        t1 = (P[ax] - o[ax]) * inv
        t2 = (P[ax + 3] - o[ax]) * inv
        np.maximum(tmin, np.minimum(t1, t2), out=tmin)
        np.minimum(tmax, np.maximum(t1, t2), out=tmax)
    hit = (tmax >= tmin) & (tmin > 1e-4)
    return np.where(hit, tmin, np.float32(np.inf))


def _quadratic_near(a, bh, c):
    """Smallest positive root of a t^2 + 2 bh t + c = 0 (inf if none)."""
    disc = bh * bh - a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0))
    t0 = (-bh - sq) / a
    t1 = (-bh + sq) / a
    t = np.where(t0 > 1e-4, t0, np.where(t1 > 1e-4, t1, np.inf))
    return np.where(ok, t, np.float32(np.inf)).astype(np.float32)


def _hit_vcyl(P, o, d):
    """Vertical cylinder (cx, cz, r, y0, y1): side and top cap."""
    ox, oz = o[0] - P[0], o[2] - P[1]
    a = d[0] * d[0] + d[2] * d[2]
    t = _quadratic_near(a, ox * d[0] + oz * d[2], ox * ox + oz * oz - P[2] * P[2])
    y = o[1] + t * d[1]
    t = np.where((y >= P[3]) & (y <= P[4]), t, np.inf)
    tc = (P[4] - o[1]) / d[1]
    px, pz = ox + tc * d[0], oz + tc * d[2]
    cap = (tc > 1e-4) & (px * px + pz * pz <= P[2] * P[2])
    return np.minimum(t, np.where(cap, tc, np.inf)).astype(np.float32)


def _hit_xcyl(P, o, d):
    """Cylinder along x (cy, cz, r, x0, x1): side and both caps (a wheel's faces)."""
    oy, oz = o[1] - P[0], o[2] - P[1]
    a = d[1] * d[1] + d[2] * d[2]
    t = _quadratic_near(a, oy * d[1] + oz * d[2], oy * oy + oz * oz - P[2] * P[2])
    x = o[0] + t * d[0]
    t = np.where((x >= P[3]) & (x <= P[4]), t, np.inf)
    for cap_x in (P[3], P[4]):
        tc = (cap_x - o[0]) / d[0]
        py, pz = oy + tc * d[1], oz + tc * d[2]
        cap = (tc > 1e-4) & (py * py + pz * pz <= P[2] * P[2])
        t = np.minimum(t, np.where(cap, tc, np.inf))
    return t.astype(np.float32)


def _hit_ellipsoid(P, o, d):
    """Ellipsoid (centre, radii): scale to a unit sphere and solve."""
    oo = [(o[k] - P[k]) / P[k + 3] for k in range(3)]
    dd = [d[k] / P[k + 3] for k in range(3)]
    a = dd[0] * dd[0] + dd[1] * dd[1] + dd[2] * dd[2]
    bh = oo[0] * dd[0] + oo[1] * dd[1] + oo[2] * dd[2]
    c = oo[0] * oo[0] + oo[1] * oo[1] + oo[2] * oo[2] - 1
    return _quadratic_near(a, bh, c)


_HIT = (_hit_box, _hit_vcyl, _hit_xcyl, _hit_ellipsoid)


def _alpha_test(scene: Scene, mats, P, o, d, t):
    """Cut holes into see-through boxes: gaps between fence bars, corners of round signs."""
    kinds = scene.mat_kind[mats]
    cut = (kinds == FENCE) | (kinds == SIGN)
    if not cut.any():
        return t
    idx = np.nonzero(cut & np.isfinite(t))[0]
    tt = t[idx]
    p = [o[k][idx] if o[k].ndim else o[k] for k in range(3)]
    q = [d[k][idx] if d[k].ndim else d[k] for k in range(3)]
    hit = [p[k] + tt * q[k] for k in range(3)]
    lo = [P[k][idx] for k in range(3)]
    hi = [P[k + 3][idx] for k in range(3)]
    par = scene.mat_par[mats[idx]]
    keep = np.ones(len(idx), dtype=bool)
    fence = kinds[idx] == FENCE
    if fence.any():
        along_z = (hi[2] - lo[2]) > (hi[0] - lo[0])
        u = np.where(along_z, hit[2] - lo[2], hit[0] - lo[0])
        y = hit[1] - lo[1]
        spacing, bar = par[:, 0] + 0.05, par[:, 1]
        bars = np.mod(u, spacing) < bar * spacing
        rails = (y < 0.12) | (y > (hi[1] - lo[1]) - 0.1) | (np.abs(y - 0.5 * (hi[1] - lo[1])) < 0.04)
        keep &= ~fence | bars | rails
    sign = ~fence
    if sign.any():
        cx, cy = 0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])
        rx, ry = 0.5 * (hi[0] - lo[0]), 0.5 * (hi[1] - lo[1])
        u, v = (hit[0] - cx) / rx, (hit[1] - cy) / ry
        shape = par[:, 0]
        triangle = (np.abs(u) <= (1 - v) * 0.5 + 0.02) & (v >= -1)  # pointing up
        inside = np.where(shape == 0, u * u + v * v <= 1, np.where(shape == 1, triangle, True))
        keep &= ~sign | inside
    t = t.copy()
    t[idx[~keep]] = np.inf
    return t


def _cast(scene: Scene, rays: _Rays, rects: list, n_rays: int, n_cols: int, zbuf: np.ndarray):
    """Nearest hit of every ray against every primitive whose rectangle covers it.

    ``zbuf`` (n_rays,) starts with the ground hits (or inf) and ends with the nearest distance.
    Returns per ray the primitive type (-1 = none of them) and index.
    """
    hits = []
    for kind, (P, mats) in enumerate(zip(scene.prims, scene.prim_mat)):
        if len(P) == 0:
            hits.append(None)
            continue
        prim, pix = _pairs(rects[kind], n_cols)
        if len(prim) == 0:
            hits.append(None)
            continue
        Pp = np.ascontiguousarray(P.T)[:, prim]
        o, d = rays.take(pix)
        t = _HIT[kind](Pp, o, d)
        if kind == BOX:
            t = _alpha_test(scene, mats[prim], Pp, o, d, t)
        keep = t < zbuf[pix]
        prim, pix, t = prim[keep], pix[keep], t[keep]
        np.minimum.at(zbuf, pix, t)
        hits.append((prim, pix, t))
    ptype = np.full(n_rays, -1, dtype=np.int8)
    pidx = np.zeros(n_rays, dtype=np.int32)
    for kind, h in enumerate(hits):
        if h is None:
            continue
        prim, pix, t = h
        win = t == zbuf[pix]
        ptype[pix[win]] = kind
        pidx[pix[win]] = prim[win]
    return ptype, pidx


def _camera_rays(cam: Camera, height, width):
    """World-space ray directions scaled so that the ray parameter t is the optical-axis depth."""
    f, cx, cy = cam.intrinsics(height, width)
    j = (np.arange(width, dtype=np.float64) + 0.5 - cx) / f
    i = -(np.arange(height, dtype=np.float64) + 0.5 - cy) / f
    R = cam.R.astype(np.float32)
    d = (j.astype(np.float32)[None, :, None] * R[:, 0]) + (i.astype(np.float32)[:, None, None] * R[:, 1]) + R[:, 2]
    return d.reshape(-1, 3)  # (H*W, 3): camera direction (j, i, 1) in world axes


# --------------------------------------------------------------------------------------
# Surface attributes
# --------------------------------------------------------------------------------------


@dataclass
class _Hits:
    """Per-pixel surface attributes of hits on primitives (all arrays share their first axis).

    ``su, sv``: coordinates along the surface in metres (box faces: from the face's low corner,
    horizontally and vertically); ``fu, fv``: the same as fractions of the face (boxes), the
    radial position on a wheel's cap (``fu``, x-cylinders) or the height in an ellipsoid
    (``fv``, -1 bottom .. 1 top); ``axis``/``sgn``: the box face's axis and side (-1 otherwise);
    ``width``/``height``: a box face's size in metres; ``fine``/``coarse``: value noise at two
    scales for texture variation.
    """

    P: np.ndarray
    N: np.ndarray
    mat: np.ndarray
    su: np.ndarray
    sv: np.ndarray
    fu: np.ndarray
    fv: np.ndarray
    axis: np.ndarray
    sgn: np.ndarray
    width: np.ndarray  # box faces: size in metres along su / sv
    height: np.ndarray
    fine: np.ndarray = None
    coarse: np.ndarray = None

    def subset(self, idx) -> "_Hits":
        return _Hits(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def _surface(scene: Scene, ptype, pidx, P) -> _Hits:
    """Normals, materials and face coordinates of hit points P (n, 3) on primitives."""
    n = len(ptype)
    N = np.zeros((n, 3), dtype=np.float32)
    mat = np.zeros(n, dtype=np.int32)
    su = np.zeros(n, dtype=np.float32)
    sv = np.zeros(n, dtype=np.float32)
    fu = np.zeros(n, dtype=np.float32)
    fv = np.zeros(n, dtype=np.float32)
    axis = np.full(n, -1, dtype=np.int8)
    sgn = np.zeros(n, dtype=np.float32)
    width = np.ones(n, dtype=np.float32)
    height = np.ones(n, dtype=np.float32)
    for kind in range(4):
        sel = np.nonzero(ptype == kind)[0]
        if len(sel) == 0:
            continue
        Q = scene.prims[kind][pidx[sel]]
        mat[sel] = scene.prim_mat[kind][pidx[sel]]
        p = P[sel]
        if kind == BOX:
            lo, hi = Q[:, 0:3], Q[:, 3:6]
            rel = (p - 0.5 * (lo + hi)) / np.maximum(0.5 * (hi - lo), 1e-6)
            ax = np.argmax(np.abs(rel), 1)
            s = np.sign(rel[np.arange(len(sel)), ax])
            N[sel, ax] = s
            local, size = p - lo, np.maximum(hi - lo, 1e-6)
            hu = np.where(ax == 0, 2, 0)  # along-face horizontal axis
            hv = np.where(ax == 1, 2, 1)  # vertical axis (z on top faces)
            r = np.arange(len(sel))
            su[sel], sv[sel] = local[r, hu], local[r, hv]
            width[sel], height[sel] = size[r, hu], size[r, hv]
            fu[sel], fv[sel] = su[sel] / width[sel], sv[sel] / height[sel]
            axis[sel], sgn[sel] = ax, s
        elif kind == VCYL:
            dx, dz = p[:, 0] - Q[:, 0], p[:, 2] - Q[:, 1]
            cap = p[:, 1] > Q[:, 4] - 1e-3
            rr = np.maximum(np.hypot(dx, dz), 1e-6)
            N[sel] = np.where(cap[:, None], [0, 1, 0], np.stack([dx / rr, 0 * dx, dz / rr], 1))
            su[sel] = np.arctan2(dx, dz) * Q[:, 2]
            sv[sel] = p[:, 1] - Q[:, 3]
        elif kind == XCYL:
            dy, dz = p[:, 1] - Q[:, 0], p[:, 2] - Q[:, 1]
            rr = np.hypot(dy, dz)
            side = (p[:, 0] > Q[:, 3] + 1e-3) & (p[:, 0] < Q[:, 4] - 1e-3)
            capn = np.where(p[:, 0] < 0.5 * (Q[:, 3] + Q[:, 4]), -1.0, 1.0)
            rn = np.maximum(rr, 1e-6)
            N[sel] = np.where(side[:, None], np.stack([0 * dy, dy / rn, dz / rn], 1), np.stack([capn, 0 * dy, 0 * dy], 1))
            fu[sel] = np.where(side, 1.0, rr / Q[:, 2])  # radial position on the caps
            su[sel], sv[sel] = dz, dy
        else:
            g = (p - Q[:, 0:3]) / (Q[:, 3:6] ** 2)
            N[sel] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
            su[sel], sv[sel] = p[:, 0] + p[:, 2], p[:, 1]
            fv[sel] = (p[:, 1] - Q[:, 1]) / Q[:, 4]  # -1 bottom .. 1 top
    lat = scene.noise
    fine = _value_noise(lat, su * 5.3 + 11.0, sv * 5.3)
    coarse = _value_noise(lat, su * 0.4 + 57.0, sv * 0.4 + 3.0)
    return _Hits(P, N, mat, su, sv, fu, fv, axis, sgn, width, height, fine, coarse)


# --------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------


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


def _texture(scene: Scene, kind: int, h: _Hits):
    """Albedo (n, 3), sky reflectivity (n,) and emission (n, 3) of hits on one material kind."""
    mat, su, sv, fu, fv, axis, sgn, P = h.mat, h.su, h.sv, h.fu, h.fv, h.axis, h.sgn, h.P
    fine, coarse = h.fine, h.coarse
    rgb = scene.mat_rgb[mat]
    c1, c2, c3 = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    par = scene.mat_par[mat]
    lat = scene.noise
    n = len(mat)
    refl = np.zeros(n, dtype=np.float32)
    emit = np.zeros((n, 3), dtype=np.float32)
    vertical = axis != 1

    def shade(c, amount):
        return c * (1 + amount * (fine[:, None] - 0.5) + 0.5 * amount * (coarse[:, None] - 0.5))

    if kind == PLAIN:
        return shade(c1, 0.3 + par[:, 0:1]), refl, emit

    if kind == FACADE:
        floor_h, ground_h, spacing, win_w, win_h, shop, ledge, dirt = par.T
        face_w, face_h = h.width, h.height
        n_cols = np.floor(face_w / spacing)
        margin = 0.5 * (face_w - n_cols * spacing)
        cu = (su - margin) / spacing
        col = np.floor(cu)
        ku = cu - col
        cv = (sv - ground_h) / floor_h
        row = np.floor(cv)
        kv = cv - row
        in_grid = (col >= 0) & (col < n_cols) & (sv > ground_h) & (sv < face_h - 0.8)
        win = in_grid & (np.abs(ku - 0.5) < 0.5 * win_w) & (np.abs(kv - 0.5) < 0.5 * win_h)
        frame = in_grid & (np.abs(ku - 0.5) < 0.5 * win_w + 0.06) & (np.abs(kv - 0.5) < 0.5 * win_h + 0.05) & ~win
        shop_win = (shop > 0) & (sv < ground_h - 0.6) & (sv > 0.5) & (np.abs(np.mod(su, 5.0) - 2.5) < 2.0)
        band = (ledge > 0) & in_grid & (kv < 0.06)
        cornice = sv > face_h - 0.35
        wall = shade(c1, 0.25) * (1 - dirt[:, None] * np.clip(1 - sv / 3.0, 0, 1)[:, None])  # grime near the ground
        pane = _hash(lat, col + 17 * axis, row + 3 * np.round(face_w))
        glass = c2 * (0.5 + pane[:, None])
        albedo = np.where((win | shop_win)[:, None], glass, wall)
        albedo = np.where((frame | band | cornice)[:, None], c3, albedo)
        refl = np.where(win | shop_win, GLASS_REFLECTANCE, 0.0).astype(np.float32)
        roof = ~vertical
        albedo = np.where(roof[:, None], c3 * 0.45 + shade(c1, 0.3) * 0.1, albedo)
        return albedo, np.where(roof, 0.0, refl), emit

    if kind == SIDEWALK:
        tile = par[:, 0]
        top = ~vertical
        grout = (np.mod(su, tile) < 0.04) | (np.mod(sv, tile) < 0.04)
        albedo = shade(c1, 0.35) * np.where(grout, 0.75, 1.0)[:, None]
        return np.where(top[:, None], albedo, shade(c2, 0.3)), refl, emit

    if kind == FOLIAGE:
        freq = par[:, 0]
        leafy = _value_noise(lat, (P[:, 0] + P[:, 2]) * freq + 7.0, P[:, 1] * freq)
        leafy2 = _value_noise(lat, (P[:, 0] - P[:, 2]) * freq * 1.7 + 91.0, P[:, 1] * freq * 1.7 + 40.0)
        m = np.clip(leafy * 0.6 + leafy2 * 0.6 - 0.1, 0, 1)[:, None]
        albedo = c1 * (1 - m) + c2 * m
        albedo = albedo * (0.55 + 0.7 * leafy2[:, None])  # gaps between leaves are darker
        return albedo, refl, emit

    if kind == WALL:
        course = par[:, 0]
        joint = np.mod(sv, course) < 0.03
        top = (fv > 0.93) | ~vertical
        albedo = shade(c1, 0.35) * np.where(joint, 0.8, 1.0)[:, None]
        return np.where(top[:, None], c2, albedo), refl, emit

    if kind == FENCE:
        return shade(c1, 0.2), refl, emit

    if kind in (CAR_BODY, BUS):
        heading = par[:, 0]
        # The rear face is the low-z face for a car heading +z.
        end = vertical & (axis == 2)
        rear = end & (sgn == -heading)
        front = end & ~rear
        gloss = PAINT_REFLECTANCE
        albedo = shade(c1, 0.1)
        light_row = (fv > 0.55) & (fv < 0.8) if kind == CAR_BODY else (fv > 0.08) & (fv < 0.18)
        corner = (fu < 0.17) | (fu > 0.83)
        tail = rear & light_row & corner
        head = front & light_row & corner
        plate_v = (0.2, 0.42) if kind == CAR_BODY else (0.02, 0.07)
        plate = end & (np.abs(fu - 0.5) < 0.12) & (fv > plate_v[0]) & (fv < plate_v[1])
        grille = front & (np.abs(fu - 0.5) < 0.25) & (fv > 0.45) & (fv < 0.75) & ~plate
        bumper = vertical & (fv < (0.18 if kind == CAR_BODY else 0.05))
        sill = (axis == 0) & (fv < 0.2)
        albedo = np.where((bumper | sill | grille)[:, None], np.float32(0.02), albedo)
        albedo = np.where(plate[:, None], np.float32(0.75), albedo)
        albedo = np.where(tail[:, None], c2, albedo)
        albedo = np.where(head[:, None], c3, albedo)
        emit = np.where(tail[:, None], c2 * 0.15, emit)
        refl = np.where(bumper | sill, 0.0, gloss).astype(np.float32)
        if kind == BUS:  # band of side and end windows, a stripe under them
            win_band = vertical & (fv > 0.5) & (fv < 0.88)
            divider = (axis == 0) & (np.mod(su, 1.4) < 0.12)
            wide = end & (fv > 0.35) & (fv < 0.9) & (np.abs(fu - 0.5) < 0.44)
            glass = (win_band & ~divider & ~end) | wide
            stripe = vertical & (fv > 0.42) & (fv < 0.47)
            albedo = np.where(glass[:, None], c2, albedo)
            albedo = np.where(stripe[:, None], c3, albedo)
            refl = np.where(glass, GLASS_REFLECTANCE, refl).astype(np.float32)
        return albedo, refl, emit

    if kind == CAR_CABIN:
        van, heading = par[:, 0], par[:, 1]
        side = axis == 0
        end = axis == 2
        pillar = np.abs(fu - 0.5) < 0.035
        side_glass = side & (fu > 0.07) & (fu < 0.93) & (fv > 0.12) & (fv < 0.9) & ~pillar
        # Vans only have windows at the front of the side (front = high z when heading +z).
        front_frac = np.where(heading > 0, fu, 1 - fu)
        side_glass &= (van == 0) | (front_frac > 0.72)
        end_glass = end & (fu > 0.08) & (fu < 0.92) & (fv > 0.1) & (fv < 0.88)
        glass = side_glass | end_glass
        albedo = np.where(glass[:, None], c2, shade(c1, 0.1))
        refl = np.where(glass, GLASS_REFLECTANCE, PAINT_REFLECTANCE).astype(np.float32)
        return albedo, refl, emit

    if kind == SIGN:
        shape = par[:, 0]
        front = (axis == 2) & (sgn < 0)
        u, v = 2 * fu - 1, 2 * fv - 1
        # A "radius" that is 1 on the outline of the round / triangular / square plate.
        r = np.where(shape == 0, np.sqrt(u * u + v * v),
                     np.where(shape == 1, np.maximum(-v, 2 * np.abs(u) + v), np.maximum(np.abs(u), np.abs(v))))
        border = r > 0.75
        albedo = np.where(border[:, None], c2, c1)
        return np.where(front[:, None], albedo, c3), refl, emit

    if kind == TRAFFIC_LIGHT:
        lit = par[:, 0]
        front = (axis == 2) & (sgn < 0)
        slot = np.floor((1 - fv) * 3)
        v_in = (1 - fv) * 3 - slot
        lamp = front & (np.hypot(fu - 0.5, (v_in - 0.5) * 0.33 / 0.32) < 0.3)
        on = lamp & (slot == lit)
        colours = _lin_array([(0.95, 0.1, 0.05), (0.95, 0.6, 0.05), (0.1, 0.95, 0.45)])  # red, amber, green
        lamp_rgb = colours[np.clip(slot, 0, 2).astype(np.int64)]
        albedo = np.where(lamp[:, None], lamp_rgb * 0.15, c1)
        emit = np.where(on[:, None], lamp_rgb * 2.0, emit)
        return albedo, refl, emit

    if kind == WHEEL:
        hub = fu < 0.62
        return np.where(hub[:, None], c2, c1), np.where(hub, PAINT_REFLECTANCE, 0.0).astype(np.float32), emit

    if kind == HEAD:
        hair = fv > 0.25
        return np.where(hair[:, None], c2, c1), refl, emit

    raise ValueError(f"unknown material kind {kind}")


def _ground_albedo(scene: Scene, P):
    """Road with lane markings and zebra crossings, cross streets, paving and grass; and labels."""
    st = scene.street
    x, z = P[:, 0], P[:, 2]
    lat = scene.noise
    n = len(x)
    fine = _value_noise(lat, x * 6.1, z * 6.1 + 21.0)
    coarse = _value_noise(lat, x * 0.35 + 70.0, z * 0.35)
    side = (x > 0).astype(np.int64)
    zone = np.full(n, ZONE_ROAD, dtype=np.int8)
    beyond = np.abs(x) > st.road_half
    for s in (0, 1):
        sel = beyond & (side == s)
        if sel.any():
            k = np.searchsorted(st.zone_edges[s], z[sel], side="right")
            zone[sel] = st.zone_types[s][k]
    albedo = np.empty((n, 3), dtype=np.float32)
    road = zone == ZONE_ROAD
    asphalt = st.asphalt_rgb * (0.8 + 0.35 * coarse[:, None] + 0.25 * (fine[:, None] - 0.5))
    albedo[:] = asphalt
    # Lane lines between the driving lanes (dashed), the centre line and the edge lines.
    lanes_half = st.n_lanes * st.lane_w / 2
    q = (x + lanes_half) / st.lane_w
    k = np.round(q)
    dist = np.abs(q - k) * st.lane_w
    dashed = np.mod(z, st.dash_period) < st.dash_len
    inner = (k >= 1) & (k <= st.n_lanes - 1) & ~beyond
    centre = st.two_way & (k == st.n_lanes // 2) & (st.n_lanes % 2 == 0)
    if st.centre_double:
        centre_line = centre & inner & (np.abs(dist - 0.15) < 0.06)
    else:
        centre_line = centre & inner & (dist < 0.07)
    lane_line = inner & ~centre & (dist < 0.07) & dashed
    edge = st.edge_lines & (np.abs(np.abs(x) - lanes_half) < 0.07) & ~beyond
    zebra = np.zeros(n, dtype=bool)
    for c0, c1 in st.crossings:
        zebra |= (z > c0) & (z < c1) & (np.mod(x, 1.0) < 0.5) & ~beyond
    wear = (fine > 0.25)[:, None]
    albedo = np.where(((lane_line | edge | zebra) & road)[:, None] & wear, st.line_rgb, albedo)
    albedo = np.where((centre_line & road)[:, None] & wear, st.centre_rgb, albedo)
    paved = zone == ZONE_PAVED
    paved_rgb = st.paved_rgb * (0.8 + 0.3 * coarse[:, None] + 0.3 * (fine[:, None] - 0.5))
    albedo = np.where(paved[:, None], paved_rgb, albedo)
    grass = zone == ZONE_GRASS
    grass_rgb = st.grass_rgb * (0.6 + 0.5 * coarse[:, None] + 0.5 * (fine[:, None] - 0.5))
    albedo = np.where(grass[:, None], grass_rgb, albedo)
    label = np.where(grass, NATURE, FLAT).astype(np.int8)
    return albedo, label


def _sky(light: Lighting, lattice, d):
    """Sky radiance for unit directions d (n, 3): gradient, sun glow and clouds."""
    up = np.clip(d[:, 1], -1, 1)
    e = np.sqrt(np.clip(up, 0, 1))[:, None]
    rgb = light.horizon_rgb * (1 - e) + light.zenith_rgb * e
    cos_sun = np.clip(d @ light.sun_dir, -1, 1)
    glow = 0.35 * np.clip(cos_sun, 0, 1) ** 24 + 8.0 * (cos_sun > 0.9995)
    rgb = rgb + glow[:, None] * light.sun_rgb * (1 - light.cloud_cover) * 0.5
    if light.cloud_cover > 0.02:
        h = np.maximum(up, 0.02)
        u, v = d[:, 0] / h * light.cloud_scale * 8, d[:, 2] / h * light.cloud_scale * 8
        dens = (0.55 * _value_noise(lattice, u + 13.0, v) + 0.3 * _value_noise(lattice, 2.1 * u, 2.1 * v + 50)
                + 0.15 * _value_noise(lattice, 4.3 * u + 5, 4.3 * v))
        cover = np.clip((dens - (1 - light.cloud_cover)) * 3.5, 0, 1)
        cover *= np.clip(up * 12, 0, 1)  # clouds fade into the horizon haze
        shade = 0.75 + 0.35 * (dens[:, None] - 0.5)
        rgb = rgb * (1 - cover[:, None]) + light.cloud_rgb * shade * cover[:, None]
    return rgb.astype(np.float32)


# --------------------------------------------------------------------------------------
# Shadows
# --------------------------------------------------------------------------------------


def _cell_ranges(cmin, cmax, n):
    """Cells [floor(cmin), floor(cmax)] of a grid with n cells, as clipped half-open ranges."""
    c0 = np.clip(np.floor(cmin), 0, n)
    c1 = np.clip(np.floor(cmax) + 1, 0, n)
    return c0.astype(np.int64), np.maximum(c1, c0).astype(np.int64)


def _expand(lengths):
    """For segments of the given lengths: the segment of every element and its offset in it."""
    total = int(lengths.sum())
    seg = np.repeat(np.arange(len(lengths)), lengths)
    return seg, np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _visibility(scene: Scene, aabb, P, Ng, direction, grid=SHADOW_GRID):
    """1 where a point of P (n, 3) sees far along ``direction`` (towards the sun, or up), 0 where
    a primitive blocks the ray.

    Exact shadow rays. To test each ray against few primitives, points are binned into a grid
    in the plane perpendicular to the ray direction: a primitive can only shade the points in the cells
    covered by its projected bounding box. ``Ng`` (n, 3) are the geometric surface normals,
    used to start the rays just off the surface.
    """
    n = len(P)
    vis = np.ones(n, dtype=np.float32)
    if n == 0:
        return vis
    s = np.asarray(direction, dtype=np.float64)
    a = np.cross([0.0, 1.0, 0.0] if abs(s[1]) < 0.9 else [1.0, 0.0, 0.0], s)
    a /= np.linalg.norm(a)
    b = np.cross(s, a)
    O = P.astype(np.float64) + Ng * 0.02
    pa, pb = O @ a, O @ b
    a0, b0 = pa.min(), pb.min()
    da = max(pa.max() - a0, 1e-3) / grid * (1 + 1e-6)
    db = max(pb.max() - b0, 1e-3) / grid * (1 + 1e-6)
    cell_b = np.minimum((pb - b0) // db, grid - 1).astype(np.int64)
    cell = cell_b * grid + np.minimum((pa - a0) // da, grid - 1).astype(np.int64)
    order = np.argsort(cell, kind="stable")
    first = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=grid * grid))])  # first point of each cell
    Os = O[order].astype(np.float32)
    rays = _Rays([Os[:, 0], Os[:, 1], Os[:, 2]], [np.float32(s[0]), np.float32(s[1]), np.float32(s[2])])
    blocked = np.zeros(n, dtype=bool)
    for kind, box in enumerate(aabb):
        if len(box) == 0:
            continue
        casts = scene.mat_kind[scene.prim_mat[kind]] != SIDEWALK  # kerbs barely cast shadows
        c = np.where(_CORNERS[None], box[:, 1:2], box[:, 0:1])
        ca, cb = (c @ a - a0) / da, (c @ b - b0) / db
        j0, j1 = _cell_ranges(ca.min(1), ca.max(1), grid)
        i0, i1 = _cell_ranges(cb.min(1), cb.max(1), grid)
        i1 = np.where(casts, i1, i0)
        # (primitive, grid row) pairs, then the points of each row's run of cells.
        prim_r, k = _expand(i1 - i0)
        row = i0[prim_r] + k
        lo, hi = first[row * grid + j0[prim_r]], first[row * grid + j1[prim_r]]
        seg, k = _expand(hi - lo)
        prim, recv = prim_r[seg], lo[seg] + k
        if len(prim) == 0:
            continue
        Pp = np.ascontiguousarray(scene.prims[kind].T)[:, prim]
        o, d = rays.take(recv)
        t = _HIT[kind](Pp, o, d)
        if kind == BOX:
            t = _alpha_test(scene, scene.prim_mat[kind][prim], Pp, o, d, t)
        blocked[recv[np.isfinite(t)]] = True
    vis[order] = ~blocked
    return vis


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _shade(scene: Scene, D, t, ptype, pidx, height, width, aabb):
    """Linear radiance image, labels and the hit distances of one frame."""
    n = len(t)
    light = scene.light
    hit = np.isfinite(t)
    P = scene.camera.origin.astype(np.float32) + np.where(hit, t, 0)[:, None] * D  # sky: the camera
    N = np.zeros((n, 3), dtype=np.float32)
    Ng = np.zeros((n, 3), dtype=np.float32)  # geometric normals (N gets bumped on foliage)
    albedo = np.zeros((n, 3), dtype=np.float32)
    refl = np.zeros(n, dtype=np.float32)
    emit = np.zeros((n, 3), dtype=np.float32)
    label = np.full(n, SKY, dtype=np.int8)

    ground = hit & (ptype < 0)
    gi = np.nonzero(ground)[0]
    N[gi, 1] = Ng[gi, 1] = 1.0
    albedo[gi], label[gi] = _ground_albedo(scene, P[gi])

    oi = np.nonzero(ptype >= 0)[0]
    if len(oi):
        hits = _surface(scene, ptype[oi], pidx[oi], P[oi])
        N[oi] = Ng[oi] = hits.N
        label[oi] = scene.mat_label[hits.mat]
        kinds = scene.mat_kind[hits.mat]
        for kind in np.unique(kinds):
            k = np.nonzero(kinds == kind)[0]
            albedo[oi[k]], refl[oi[k]], emit[oi[k]] = _texture(scene, int(kind), hits.subset(k))
        foliage = kinds == FOLIAGE
        if foliage.any():  # bumpy normals make crowns and hedges look leafy
            f = oi[foliage]
            lat = scene.noise
            bump = np.stack([_value_noise(lat, P[f, 0] * 3 + 5 * c, (P[f, 1] + P[f, 2]) * 3) - 0.5 for c in range(3)], 1)
            nb = N[f] + 1.6 * bump
            N[f] = nb / np.maximum(np.linalg.norm(nb, axis=1, keepdims=True), 1e-6)

    # Make normals face the camera.
    flip = (np.einsum("ij,ij->i", Ng, D) > 0) & (ptype >= 0)
    N[flip] *= -1
    Ng[flip] *= -1

    f32 = np.float32
    sun = light.sun_dir.astype(f32)
    ray_len = np.sqrt(np.einsum("ij,ij->i", D, D))
    dist = t * ray_len
    Dn = D / ray_len[:, None]
    # Cast shadows, for sunlit surfaces in range.
    lambert = np.clip(N @ sun, 0, 1) * (Ng @ sun > 0)
    test = np.nonzero(hit & (dist < SHADOW_RANGE) & (lambert > 0))[0]
    lambert[test] *= _visibility(scene, aabb, P[test], Ng[test], light.sun_dir)
    # Sky light, darkened where something hangs overhead (under cars and tree crowns).
    sky_vis = 0.55 + 0.45 * N[:, 1]
    up = np.nonzero(hit & (dist < SHADOW_RANGE) & (Ng[:, 1] > 0.5))[0]
    sky_vis[up] *= 1 - OVERHEAD_OCCLUSION * (1 - _visibility(scene, aabb, P[up], Ng[up], (0.0, 1.0, 0.0)))
    irradiance = sky_vis[:, None] * light.ambient_rgb.astype(f32)
    irradiance += lambert[:, None] * light.sun_rgb.astype(f32)
    radiance = albedo * irradiance + emit
    # Glass and paint mirror the sky (no inter-reflections of other objects).
    ri = np.nonzero(refl > 0)[0]
    if len(ri):
        d, nr = Dn[ri], N[ri]
        cos = np.clip(-np.einsum("ij,ij->i", d, nr), 0, 1)
        k = refl[ri] + (1 - refl[ri]) * (1 - cos) ** 5  # Schlick's Fresnel: grazing views mirror more
        k = k[:, None]
        r = d + 2 * cos[:, None] * nr
        r[:, 1] = np.abs(r[:, 1])
        # Near-horizontal reflections see the street (darker) rather than the sky.
        w = np.clip(r[:, 1:2] / 0.35, 0, 1)
        mirrored = w * _sky(light, scene.noise, r) + (1 - w) * (0.12 * light.horizon_rgb).astype(f32)
        radiance[ri] = radiance[ri] * (1 - k) + k * mirrored
    # Aerial perspective: colours fade into the horizon colour with distance.
    fog = 1 - np.exp(-np.where(hit, dist, 0) / f32(light.haze_distance))
    radiance += fog[:, None] * (light.horizon_rgb.astype(f32) * f32(0.85) - radiance)
    miss = np.nonzero(~hit)[0]
    radiance[miss] = _sky(light, scene.noise, Dn[miss])
    return radiance.reshape(height, width, 3), label.reshape(height, width)


def _blur3(x, w):
    """Separable [w, 1 - 2w, w] blur of an H x W x C image, edges repeated."""
    p = np.pad(x, ((1, 1), (0, 0), (0, 0)), mode="edge")
    x = (1 - 2 * w) * x + w * (p[:-2] + p[2:])
    p = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (1 - 2 * w) * x + w * (p[:, :-2] + p[:, 2:])


def _develop(radiance, rng):
    """Camera response: exposure, white balance, tone curve, blur, vignetting, noise -> uint8."""
    H, W, _ = radiance.shape
    f32 = np.float32
    lum = radiance @ np.array([0.2126, 0.7152, 0.0722], dtype=f32)
    key = float(np.exp(np.mean(np.log(lum + 1e-4))))
    exposure = rng.uniform(0.16, 0.3) / key * 2 ** rng.normal(0, 0.25)
    gain = (exposure * np.exp(rng.normal(0, 0.05, 3))).astype(f32)  # exposure and white balance
    x = 1 - np.exp(f32(-1.6) * (radiance * gain))  # soft shoulder instead of hard clipping
    x **= f32(1 / 2.2)
    blur = rng.uniform(0.0, 0.25)
    if blur > 0.01:  # a little optical softness
        x = _blur3(x, f32(blur))
    yy = ((np.arange(H, dtype=f32) + 0.5) / H - 0.5) ** 2
    xx = ((np.arange(W, dtype=f32) + 0.5) / W - 0.5) ** 2
    x *= (1 - f32(rng.uniform(0, 0.5)) * (yy[:, None] + xx[None, :]))[..., None]  # vignetting
    sigma = f32(rng.uniform(0.004, 0.025))
    noise = rng.standard_normal((H, W, 1), dtype=f32) * sigma + rng.standard_normal((H, W, 3), dtype=f32) * (sigma / 2)
    x = x * f32(rng.uniform(0.95, 1.05)) + f32(rng.normal(0, 0.01)) + noise
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


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
        import multiprocessing as mp

        # Workers only run numpy code: forking is cheap and needs no re-import. The pool is made
        # before tqdm starts its monitor thread.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(min(workers, len(jobs)))
    bar = None
    if progress:
        from tqdm import tqdm

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


def _save_atomic(path: Path, array: np.ndarray):
    """np.save to a temporary file then rename, so an interrupted run leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_frame(args):
    """Render one frame and write its three release files (skipped when all exist)."""
    root, split, index, seed, height, width = args
    paths = [Path(root) / split / f / f"{index}.npy" for f in RELEASE_FIELDS]
    if all(p.exists() for p in paths):
        return False
    fr = render_frame(seed, index, height, width, stream=SPLIT_STREAMS[split])
    _save_atomic(paths[0], fr["image"].astype(np.float32) / 255.0)
    _save_atomic(paths[1], fr["label"].astype(np.float32))
    _save_atomic(paths[2], fr["depth"][..., None])
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
        from mtan.tasks import CITYSCAPES_7

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

    from mtan.tasks import CITYSCAPES_7

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


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 128x256, got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"height and width must be at least 8, got {text!r}")
    return h, w


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    v = _non_negative(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtan.data.synthetic",
        description="Render procedural street frames (image, CityScapes 7-category labels, inverse\n"
                    "depth 1.85/m with sky 0) in the MTAN CityScapes release layout, and/or a preview grid.",
        epilog="examples:\n"
               "  python -m mtan.data.synthetic --out data/synthetic --train 3000 --val 500 --workers 2\n"
               "  python -m mtan.data.synthetic --preview grid.png --size 256x512",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory ({train,val}/{image,label_7,depth}/{i}.npy); "
                                            "existing frames are kept, so an interrupted run can be resumed")
    p.add_argument("--train", type=_non_negative, default=0, metavar="N", help="number of training frames (default 0)")
    p.add_argument("--val", type=_non_negative, default=0, metavar="M", help="number of validation frames (default 0)")
    p.add_argument("--size", type=_size, default=(128, 256), metavar="HxW", help="frame size, e.g. 128x256 (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed; frame i of a seed is always the same (default 0)")
    p.add_argument("--workers", type=_positive, default=1, metavar="K", help="worker processes (default 1)")
    p.add_argument("--preview", type=Path, metavar="PNG", help="also save a grid of frames as a PNG")
    p.add_argument("--preview-frames", type=_positive, default=8, metavar="N", help="frames in the preview (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("nothing to do: give --out DIR with --train/--val, and/or --preview PNG")
    if args.out is not None and args.train + args.val == 0:
        parser.error("--out needs --train N and/or --val M greater than 0")
    h, w = args.size
    if args.out is not None:
        write_release(args.out, args.train, args.val, h, w, seed=args.seed, workers=args.workers,
                      progress=not args.quiet)
        print(f"wrote {args.train} train + {args.val} val frames of {h}x{w} to {args.out}")
    if args.preview is not None:
        preview(args.preview, n=args.preview_frames, seed=args.seed, height=h, width=w, workers=args.workers)
        print(f"wrote preview {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
