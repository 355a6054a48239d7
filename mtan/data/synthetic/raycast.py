"""Ray casting: camera rays, screen-space bounds of each primitive, the intersection tests and the
surface at each hit."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtan.data.synthetic.scene import BOX, Camera, FENCE, NEAR, SIGN, Scene, VCYL, XCYL, _value_noise


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
