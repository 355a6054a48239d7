"""Shading: procedural textures, the ground and the sky, sun shadows, and the camera that develops
the radiance into an 8-bit photo."""
from __future__ import annotations


import numpy as np

from mtan.data.synthetic.scene import (
    BOX, BUS, CAR_BODY, CAR_CABIN, FACADE, FENCE, FLAT, FOLIAGE, GLASS_REFLECTANCE, HEAD, Lighting,
    NATURE, OVERHEAD_OCCLUSION, PAINT_REFLECTANCE, PLAIN, SHADOW_GRID, SHADOW_RANGE, SIDEWALK, SIGN,
    SKY, Scene, TRAFFIC_LIGHT, WALL, WHEEL, ZONE_GRASS, ZONE_PAVED, ZONE_ROAD, _hash, _lin_array,
    _value_noise)
from mtan.data.synthetic.raycast import _CORNERS, _HIT, _Hits, _Rays, _alpha_test, _surface


# --------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------



class _Surface:
    """What the texture of one material kind is drawn from: the hits on it (their material, place
    on the face, face direction, noise), the materials' colours and parameters, and the scene's
    noise lattice; ``refl`` and ``emit`` start at zero."""

    def __init__(self, scene: Scene, kind: int, h: _Hits):
        self.scene, self.kind, self.h = scene, kind, h
        self.mat, self.su, self.sv, self.fu, self.fv = h.mat, h.su, h.sv, h.fu, h.fv
        self.axis, self.sgn, self.P, self.fine, self.coarse = h.axis, h.sgn, h.P, h.fine, h.coarse
        rgb = scene.mat_rgb[h.mat]
        self.c1, self.c2, self.c3 = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        self.par, self.lat, self.n = scene.mat_par[h.mat], scene.noise, len(h.mat)
        self.refl = np.zeros(self.n, dtype=np.float32)
        self.emit = np.zeros((self.n, 3), dtype=np.float32)
        self.vertical = self.axis != 1

    def shade(self, c, amount):
        """Colour ``c`` varied by the fine and coarse noise, by ``amount``."""
        return c * (1 + amount * (self.fine[:, None] - 0.5) + 0.5 * amount * (self.coarse[:, None] - 0.5))


def _texture(scene: Scene, kind: int, h: _Hits):
    """Albedo (n, 3), sky reflectivity (n,) and emission (n, 3) of hits on one material kind."""
    if kind not in _TEXTURES:
        raise ValueError(f"unknown material kind {kind}")
    return _TEXTURES[kind](_Surface(scene, kind, h))


def _plain(t: _Surface):
    """Plain material: its colour varied by noise."""
    c1, par, refl, emit = t.c1, t.par, t.refl, t.emit
    shade = t.shade
    return shade(c1, 0.3 + par[:, 0:1]), refl, emit


def _facade(t: _Surface):
    """A building face: windows in a grid of floors, shop windows, ledges, a cornice, grime near
    the ground; a flat roof."""
    su, sv, axis, c1, c2, c3 = t.su, t.sv, t.axis, t.c1, t.c2, t.c3
    par, lat, refl, emit, vertical, h = t.par, t.lat, t.refl, t.emit, t.vertical, t.h
    shade = t.shade
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


def _sidewalk(t: _Surface):
    """Paving slabs with grout on top, the kerb in the second colour."""
    su, sv, c1, c2, par, refl, emit, vertical = t.su, t.sv, t.c1, t.c2, t.par, t.refl, t.emit, t.vertical
    shade = t.shade
    tile = par[:, 0]
    top = ~vertical
    grout = (np.mod(su, tile) < 0.04) | (np.mod(sv, tile) < 0.04)
    albedo = shade(c1, 0.35) * np.where(grout, 0.75, 1.0)[:, None]
    return np.where(top[:, None], albedo, shade(c2, 0.3)), refl, emit


def _foliage(t: _Surface):
    """Leaves: two noise layers between two greens, gaps darker."""
    P, c1, c2, par, lat, refl, emit = t.P, t.c1, t.c2, t.par, t.lat, t.refl, t.emit
    freq = par[:, 0]
    leafy = _value_noise(lat, (P[:, 0] + P[:, 2]) * freq + 7.0, P[:, 1] * freq)
    leafy2 = _value_noise(lat, (P[:, 0] - P[:, 2]) * freq * 1.7 + 91.0, P[:, 1] * freq * 1.7 + 40.0)
    m = np.clip(leafy * 0.6 + leafy2 * 0.6 - 0.1, 0, 1)[:, None]
    albedo = c1 * (1 - m) + c2 * m
    albedo = albedo * (0.55 + 0.7 * leafy2[:, None])  # gaps between leaves are darker
    return albedo, refl, emit


def _wall(t: _Surface):
    """Courses of blocks with joints, a coping on top."""
    sv, fv, c1, c2, par, refl, emit, vertical = t.sv, t.fv, t.c1, t.c2, t.par, t.refl, t.emit, t.vertical
    shade = t.shade
    course = par[:, 0]
    joint = np.mod(sv, course) < 0.03
    top = (fv > 0.93) | ~vertical
    albedo = shade(c1, 0.35) * np.where(joint, 0.8, 1.0)[:, None]
    return np.where(top[:, None], c2, albedo), refl, emit


def _fence(t: _Surface):
    """A fence: its colour varied by noise."""
    c1, refl, emit = t.c1, t.refl, t.emit
    shade = t.shade
    return shade(c1, 0.2), refl, emit


def _vehicle_body(t: _Surface):
    """A car or bus body: paint, bumpers, sills, grille, plate, tail and head lights; a bus adds
    its windows and stripe."""
    su, fu, fv, axis, sgn, c1 = t.su, t.fu, t.fv, t.axis, t.sgn, t.c1
    c2, c3, par, refl, emit, vertical = t.c2, t.c3, t.par, t.refl, t.emit, t.vertical
    shade = t.shade
    kind = t.kind
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


def _car_cabin(t: _Surface):
    """A car cabin: side and end windows between pillars (a van has side windows at the front only)."""
    fu, fv, axis, c1, c2, par, refl, emit = t.fu, t.fv, t.axis, t.c1, t.c2, t.par, t.refl, t.emit
    shade = t.shade
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


def _sign(t: _Surface):
    """A traffic sign: a round, triangular or square plate with a border on the front, its back plain."""
    fu, fv, axis, sgn, c1, c2 = t.fu, t.fv, t.axis, t.sgn, t.c1, t.c2
    c3, par, refl, emit = t.c3, t.par, t.refl, t.emit
    shape = par[:, 0]
    front = (axis == 2) & (sgn < 0)
    u, v = 2 * fu - 1, 2 * fv - 1
    # A "radius" that is 1 on the outline of the round / triangular / square plate.
    r = np.where(shape == 0, np.sqrt(u * u + v * v),
                 np.where(shape == 1, np.maximum(-v, 2 * np.abs(u) + v), np.maximum(np.abs(u), np.abs(v))))
    border = r > 0.75
    albedo = np.where(border[:, None], c2, c1)
    return np.where(front[:, None], albedo, c3), refl, emit


def _traffic_light(t: _Surface):
    """A traffic light: three lamps on the front, the lit one glowing."""
    fu, fv, axis, sgn, c1, par, refl, emit = t.fu, t.fv, t.axis, t.sgn, t.c1, t.par, t.refl, t.emit
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


def _wheel(t: _Surface):
    """A wheel: tyre with a shiny hub."""
    fu, c1, c2, emit = t.fu, t.c1, t.c2, t.emit
    hub = fu < 0.62
    return np.where(hub[:, None], c2, c1), np.where(hub, PAINT_REFLECTANCE, 0.0).astype(np.float32), emit


def _head(t: _Surface):
    """A head: face below, hair above."""
    fv, c1, c2, refl, emit = t.fv, t.c1, t.c2, t.refl, t.emit
    hair = fv > 0.25
    return np.where(hair[:, None], c2, c1), refl, emit


#: The texture of each material kind.
_TEXTURES = {
    PLAIN: _plain, FACADE: _facade, SIDEWALK: _sidewalk, FOLIAGE: _foliage, WALL: _wall,
    FENCE: _fence, CAR_BODY: _vehicle_body, BUS: _vehicle_body, CAR_CABIN: _car_cabin, SIGN: _sign,
    TRAFFIC_LIGHT: _traffic_light, WHEEL: _wheel, HEAD: _head
}


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
