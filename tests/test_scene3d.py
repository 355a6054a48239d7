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
    points = np.frombuffer(blob, "<f4", count=3 * pos["count"],
                           offset=view.get("byteOffset", 0) + pos.get("byteOffset", 0)).reshape(-1, 3)
    assert np.array_equal(points[:n], scene.points)
    # four vertices no triangle uses centre the bounding box straight ahead, where the page's viewer turns
    assert int(scene.faces.max()) < n
    assert np.allclose((np.array(pos["min"]) + pos["max"]) / 2, [0, 0, -VIEW_PIVOT], atol=1e-4)
    assert (np.array(pos["min"]) <= scene.points.min(0)).all() and (np.array(pos["max"]) >= scene.points.max(0)).all()
    assert all(v.get("byteOffset", 0) % 4 == 0 for v in doc["bufferViews"]) and prim.get("mode", 4) == 4
    material = doc["materials"][prim["material"]]  # the photo's colours as they are, from either side
    assert material["doubleSided"] and "KHR_materials_unlit" in material["extensions"]
    assert "KHR_materials_unlit" in doc["extensionsUsed"]
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
    rows = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4)])
    assert np.array_equal(rows["xyz"], scene.points) and np.array_equal(rows["rgba"][:, :3], scene.colours)
    assert (rows["rgba"][:, 3] == 255).all()
    cloud = trimesh.load(tmp_path / "p.ply")
    assert np.allclose(cloud.vertices, scene.points) and np.array_equal(cloud.colors[:, :3], scene.colours)


def test_segments_are_cut_apart_smoothed_inside_and_edge_on_triangles_dropped():
    """A car standing on the road at the same distance is a surface of its own; noise inside a
    segment is smoothed away while the outline against a farther wall stays sharp; a wall seen
    edge-on (a streak in the depth) is left out, while the ground, steep to the eye, stays."""
    tasks = tasks_from_config(preset_tasks("cityscapes-7"))
    classes = tasks[0].class_set.classes
    h, w = 40, 60
    rng = np.random.default_rng(0)
    metres = np.full((h, w), 10.0) * (1 + 0.02 * rng.standard_normal((h, w)))  # 2 % noise
    metres[:, 40:] = 30.0
    pred = prediction(metres)
    labels = pred.labels["semantic"]
    labels[10:30, 10:25] = classes.index("vehicle")
    scene = build_scene(pred, fov=60, max_metres=100)
    grid_labels = labels.reshape(-1)[np.flatnonzero(np.ones((h, w), bool))]
    face_labels = grid_labels[scene.faces.astype(np.int64)]
    assert (face_labels == face_labels[:, :1]).all()  # no triangle joins the car to the road
    assert (face_labels == classes.index("vehicle")).all(1).sum() == 2 * 19 * 14
    z = -scene.points[:, 2]
    left = z.reshape(h, w)[:, :40]
    assert left[2:-2, 2:37].std() < 0.3 * np.std(metres[:, :40])  # the noise smoothed within the segment
    assert np.allclose(z.reshape(h, w)[:, 40:], 30.0, rtol=1e-4)  # and nothing carried across the jump

    # a wall running away from the camera, seen almost edge-on through a narrow lens (its distance
    # grows steadily from 5 m to 100 m across the picture), and the same values labelled as ground
    slope = np.repeat(1 / np.linspace(0.2, 0.01, w)[None], h, axis=0)
    wall = prediction(slope)
    wall.labels["semantic"][:] = classes.index("construction")
    edge_on = build_scene(wall, fov=20, max_metres=1000)
    ground = build_scene(prediction(slope), fov=20, max_metres=1000)
    assert len(ground.faces) == 2 * (h - 1) * (w - 1)  # one surface, nothing cut
    assert 0 < len(edge_on.faces) < 0.8 * len(ground.faces)
    kept = -edge_on.points[edge_on.faces.astype(np.int64), 2].mean(1)
    assert kept.max() < 60  # the far, edge-on end is what goes


def test_a_photo_with_nothing_near_enough_gets_a_message():
    scene = build_scene(prediction(np.full((20, 30), 300.0), sky_rows=4), max_metres=40)
    assert len(scene.points) == 0 and len(scene.faces) == 0
    assert "Nothing in this photo lies within the distance limit" in scene.describe()
    assert "raise the limit" in scene.describe()
