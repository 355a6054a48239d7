"""The photo's depth in 3D (mtan.serve.scene3d): points in metres from a pinhole camera, the sky
and far pixels left out, no triangle across a jump in depth; the GLB and PLY files valid (read
back by our own parser of the formats and by trimesh)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from mtan import preset_tasks
from mtan.serve.prediction import Prediction
from mtan.serve.scene3d import VIEW_PIVOT, Scene3D, build_scene, grid_size, write_glb, write_ply
from mtan.tasks import CITYSCAPES_INVERSE_DEPTH_SCALE, tasks_from_config


def prediction(metres: np.ndarray, sky_rows: int = 0, size: tuple[int, int] | None = None) -> Prediction:
    """A CityScapes-style prediction whose depth is ``metres`` (inverse depth stored), the top
    ``sky_rows`` labelled sky, the rest road; a photo of ``size`` (default: the depth's)."""
    tasks = tasks_from_config(preset_tasks("cityscapes-7"))
    h, w = size or metres.shape
    labels = np.zeros((h, w), np.uint8)  # flat
    labels[:sky_rows] = tasks[0].class_set.classes.index("sky")
    photo = Image.fromarray(np.dstack([np.full((h, w), 200, np.uint8), np.tile(np.arange(w, dtype=np.uint8), (h, 1)),
                                       np.zeros((h, w), np.uint8)]))
    depth = (CITYSCAPES_INVERSE_DEPTH_SCALE / metres).astype(np.float32)
    return Prediction(photo=photo, stem="t", processing_size=metres.shape, tasks=list(tasks),
                      labels={"semantic": labels}, depth={"depth": depth})


def test_points_lie_at_their_distance_in_front_of_the_camera():
    scene = build_scene(prediction(np.full((40, 60), 10.0)), fov=90)
    assert scene.grid == (40, 60) and len(scene.points) == 40 * 60
    assert np.allclose(scene.points[:, 2], -10.0, atol=1e-3)
    # 90 degrees: the picture spans 2 x 10 m x tan(45) = 20 m across, 20 x 40 / 60 m high
    x, y = scene.points[:, 0], scene.points[:, 1]
    assert math.isclose(x.max() - x.min(), 20 * 59 / 60, rel_tol=1e-3)
    assert math.isclose(y.max() - y.min(), 20 * 39 / 60, rel_tol=1e-3)
    assert y[0] > 0 > y[-1] and x[0] < 0 < x[59]  # first pixel top left, y up
    assert len(scene.faces) == 2 * 39 * 59


def test_sky_far_and_depth_jumps_are_left_out():
    metres = np.full((40, 60), 10.0)
    metres[:, 30:] = 30.0          # a jump: left half at 10 m, right half at 30 m
    metres[36:] = 500.0            # far (bands: the depth's 5 x 5 median keeps straight outlines as they are)
    scene = build_scene(prediction(metres, sky_rows=5), fov=60, max_metres=100)
    assert scene.dropped_sky == 5 * 60 and scene.dropped_far == 4 * 60
    assert len(scene.points) == 40 * 60 - 300 - 240
    z = -scene.points[:, 2]
    corners = z[scene.faces.astype(np.int64)]
    assert (corners.max(1) - corners.min(1) < 1e-3).all()  # no triangle bridges 10 m to 30 m
    assert set(np.round(np.unique(z))) == {10.0, 30.0}
    assert "of sky" in scene.describe() and "beyond the distance limit" in scene.describe()


def test_a_road_to_the_horizon_stays_whole_and_a_wall_beyond_is_cut_out():
    """A flat road seen from 1.5 m up (distance = 1.5 f / (v - horizon)) runs from 2 m to 60 m with
    ever larger steps between rows: one surface. A wall seen beyond it is a surface of its own."""
    h, w, f = 60, 80, 80.0
    rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
    road = np.repeat(1.5 * f / (rows + 2.0), w, axis=1)  # the horizon just above the top row
    scene = build_scene(prediction(road), fov=2 * math.degrees(math.atan(w / 2 / f)), max_metres=1000)
    assert len(scene.faces) == 2 * (h - 1) * (w - 1)
    boxed = road.copy()
    boxed[20:40] = 30.0  # a wall 30 m away across the picture, seen over the road (2.8-5.5 m away in those rows)
    scene = build_scene(prediction(boxed), fov=60, max_metres=1000)
    z = -scene.points[:, 2]
    corners = z[scene.faces.astype(np.int64)]
    on_box = np.isclose(corners, 30.0, rtol=1e-4)
    assert not (on_box.any(1) & ~on_box.all(1)).any()  # no triangle joins the wall to the road
    assert on_box.all(1).sum() == 2 * 19 * (w - 1)


def test_a_large_photo_gets_a_bounded_grid_and_segmentation_colours():
    pred = prediction(np.full((32, 64), 8.0), size=(1500, 3000))  # depth at the network's size, photo at 4.5 MP
    scene = build_scene(pred, colouring="segmentation", max_vertices=20_000)
    assert scene.grid == grid_size((1500, 3000), 20_000) and scene.grid[0] * scene.grid[1] <= 20_000
    road = np.asarray(pred.tasks[0].class_set.palette[0], np.uint8)
    assert (scene.colours == road).all()


def test_bad_settings_and_models_without_depth():
    pred = prediction(np.full((8, 8), 5.0))
    with pytest.raises(ValueError, match="field of view must be between 10 and 150"):
        build_scene(pred, fov=170)
    with pytest.raises(ValueError, match="distance limit must be above 0"):
        build_scene(pred, max_metres=0)
    pred.tasks = [t for t in pred.tasks if t.kind != "depth"]
    with pytest.raises(ValueError, match="no depth"):
        build_scene(pred)


def read_glb(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    doc = json.loads(data[20: 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0" and 28 + json_len + bin_len == len(data)
    return doc, data[28 + json_len:]


def test_glb_is_valid_gltf(tmp_path):
    metres = np.full((30, 50), 12.0)
    metres[:, 25:] = 40.0
    scene = build_scene(prediction(metres, sky_rows=3))
    doc, blob = read_glb(write_glb(scene, tmp_path / "s.glb"))
    prim = doc["meshes"][0]["primitives"][0]
    pos, col, idx = (doc["accessors"][i] for i in (prim["attributes"]["POSITION"], prim["attributes"]["COLOR_0"],
                                                    prim["indices"]))
    n = len(scene.points)
    assert pos["count"] == col["count"] == n + 4 and idx["count"] == scene.faces.size
    view = doc["bufferViews"][pos["bufferView"]]
    points = np.frombuffer(blob, "<f4", count=3 * pos["count"], offset=view["byteOffset"]).reshape(-1, 3)
    assert np.array_equal(points[:n], scene.points)
    # four vertices no triangle uses centre the bounding box straight ahead, where the page's viewer turns
    assert int(scene.faces.max()) < n
    assert np.allclose((np.array(pos["min"]) + pos["max"]) / 2, [0, 0, -VIEW_PIVOT], atol=1e-4)
    assert (np.array(pos["min"]) <= scene.points.min(0)).all() and (np.array(pos["max"]) >= scene.points.max(0)).all()
    assert all(v["byteOffset"] % 4 == 0 for v in doc["bufferViews"]) and prim["mode"] == 4
    mesh = trimesh.load(tmp_path / "s.glb", force="mesh", process=False, skip_materials=True)
    assert len(mesh.vertices) == n + 4 and len(mesh.faces) == len(scene.faces)
    colours = np.asarray(mesh.visual.vertex_colors)[:n]  # COLOR_0 (trimesh reads it as such without the material)
    assert np.array_equal(colours[:, :3], scene.colours) and (colours[:, 3] == 255).all()


def test_points_only_glb_and_ply(tmp_path):
    scene = Scene3D(points=np.array([[0, 0, -1], [1, 2, -3]], np.float32), colours=np.array([[1, 2, 3], [250, 0, 9]],
                    np.uint8), faces=np.zeros((0, 3), np.uint32), grid=(1, 2), focal=1.0, fov=60.0)
    doc, _ = read_glb(write_glb(scene, tmp_path / "p.glb"))
    assert doc["meshes"][0]["primitives"][0]["mode"] == 0 and "indices" not in doc["meshes"][0]["primitives"][0]
    data = write_ply(scene, tmp_path / "p.ply").read_bytes()
    header, body = data.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in header and b"element vertex 2" in header
    rows = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    assert np.array_equal(rows["xyz"], scene.points) and np.array_equal(rows["rgb"], scene.colours)
    cloud = trimesh.load(tmp_path / "p.ply")
    assert np.allclose(cloud.vertices, scene.points) and np.array_equal(cloud.colors[:, :3], scene.colours)
