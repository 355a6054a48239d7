"""The street grammar: a per-frame random street of buildings, trees, poles, signs, people and
vehicles (:func:`_build_scene`), with its camera and lighting."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mtan.data.synthetic.scene import (
    BUS, CAR_BODY, CAR_CABIN, CONSTRUCTION, Camera, FACADE, FENCE, FLAT, FOLIAGE, HEAD, HUMAN,
    Lighting, NATURE, NOISE_SIZE, OBJECT, PLAIN, SIDEWALK, SIGN, STREET_DETAIL_DISTANCE, Scene,
    Street, TRAFFIC_LIGHT, VEHICLE, WALL, WHEEL, ZONE_GRASS, ZONE_PAVED, ZONE_ROAD, _SceneBuilder,
    _car_colour, _cloth_colour, _facade_colour, _green, _hsv, _jitter, _lin, _pick, _skin_colour)


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

    zone_edges, zone_types = _streets_and_sides(L, district, rng)
    _furniture_and_trees(L, district, rng)
    _people(L, rng)
    camera = _vehicles_and_camera(L, n_lanes, lane_w, park_w, two_way, rng)
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


def _streets_and_sides(L: _Layout, district: str, rng: np.random.Generator):
    """Cross streets; the sidewalks (broken by them) and the facades behind them; a building
    across the street's end, if it has one; the backdrop. The zones of each side (their edges
    and types), for the ground's texture."""
    b, road_half, z_end = L.b, L.road_half, L.z_end
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
    return zone_edges, zone_types


def _furniture_and_trees(L: _Layout, district: str, rng: np.random.Generator) -> None:
    """Trees, street lamps and signs along the kerbs."""
    road_half, z_end = L.road_half, L.z_end
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


def _people(L: _Layout, rng: np.random.Generator) -> None:
    """People on the sidewalks (in the road where a cross street breaks them) and on the zebras."""
    road_half = L.road_half
    for _ in range(rng.integers(2, 16)):
        side = int(rng.integers(0, 2))
        pz = rng.uniform(3, 70)
        px = _sign(side) * (road_half + rng.uniform(0.4, L.sidewalk[side] - 0.3))
        on_kerb = not L.in_crossing(pz, pz)
        _add_person(L, px, pz, L.kerb if on_kerb else 0.0, rng)
    for c0, c1 in L.zebras:
        for _ in range(rng.integers(0, 4)):
            _add_person(L, rng.uniform(-road_half, road_half), rng.uniform(c0, c1), 0.0, rng)


def _vehicles_and_camera(L: _Layout, n_lanes: int, lane_w: float, park_w: float, two_way: bool,
                         rng: np.random.Generator):
    """Parked rows, traffic in our direction and oncoming, maybe a cyclist; the camera, in one of
    our lanes."""
    z_end = L.z_end
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
    return camera
