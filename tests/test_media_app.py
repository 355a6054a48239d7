"""Video and 3D through the running app (`python app.py` with the default model), as an API client
sees them: a 3-second clip comes back with as many frames at the same rate; the 3D endpoint
returns a mesh (GLB) and a point cloud (PLY) of over 10,000 points; every kind of hostile media
gets a clear message, the server keeps serving and its memory stays bounded."""
from __future__ import annotations

import json
import struct
from fractions import Fraction

import numpy as np
import pytest
from apphelpers import REPO, app_process, proc_status_kb, street_image
from mediahelpers import count_frames, write_clip
from test_video import hostile

EXAMPLE = REPO / "examples" / "street_01.jpg"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    env = {"MTAN_MODEL": str(REPO / "weights"), "MTAN_DEFAULT_MODEL": str(REPO / "weights"), "MTAN_MODELS": "",
           "MTAN_MAX_FILE_SIZE": "1mb", "MTAN_MAX_VIDEO_SIZE": "3mb", "MTAN_MAX_VIDEO_SECONDS": "10"}
    log = tmp_path_factory.mktemp("log") / "app.log"
    with app_process(env, log) as (url, proc):
        yield url, proc, log


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def run_clip(client, path, resolution="128x256", layout="photo | segmentation | depth", smoothing=0.5):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), None, resolution, layout, smoothing, "inferno", 0.55,
                          api_name="/predict_video")


def test_a_3_second_clip_comes_back_with_as_many_frames_at_the_same_rate(client, tmp_path):
    clip = write_clip(tmp_path / "street.mp4", seconds=3, fps=10, size=(180, 320))
    video, summary = run_clip(client, clip)
    assert count_frames(video) == (30, Fraction(10), (180, 960))
    assert "30 frames at 10 frames/s" in summary and "network input 228x128" in summary
    video, _ = run_clip(client, clip, resolution="256x512", layout="depth", smoothing=0)
    assert count_frames(video) == (30, Fraction(10), (180, 320))


def test_a_ntsc_rate_is_kept(client, tmp_path):
    clip = write_clip(tmp_path / "ntsc.mp4", seconds=1, fps=Fraction(30000, 1001))
    video, _ = run_clip(client, clip, layout="segmentation")
    frames, fps, _ = count_frames(video)
    assert frames == 30 and fps == Fraction(30000, 1001)


def glb_points(path) -> int:
    data = open(path, "rb").read()
    assert data[:4] == b"glTF" and struct.unpack_from("<I", data, 8)[0] == len(data)
    (length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20: 20 + length])
    return doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["count"]


def ply_points(path) -> int:
    data = open(path, "rb").read()
    header, body = data.split(b"end_header\n", 1)
    count = int(header.split(b"element vertex ")[1].split(b"\n")[0])
    assert len(body) == count * 16  # 3 floats and 4 bytes (red, green, blue, alpha) a point
    return count


def test_the_3d_endpoint_returns_a_mesh_and_a_point_cloud(client):
    from gradio_client import handle_file

    model3d, files, caption = client.predict(handle_file(str(EXAMPLE)), None, "256x512", 60, 80, "photo", False,
                                             api_name="/predict_3d")
    glb, ply = sorted(files, key=lambda f: f.endswith(".ply"))
    assert model3d.endswith(".glb") and glb.endswith(".glb") and ply.endswith(".ply")
    assert glb_points(model3d) >= 10_000 and ply_points(ply) >= 10_000
    assert glb_points(glb) == ply_points(ply) + 4  # and the 4 unused vertices that place the viewer
    assert "60° horizontal field of view" in caption and "points" in caption
    # a narrower view and a nearer limit: fewer points, coloured by class
    _, files, caption = client.predict(handle_file(str(EXAMPLE)), None, "256x512", 30, 20, "segmentation", False,
                                       api_name="/predict_3d")
    assert ply_points(next(f for f in files if f.endswith(".ply"))) < ply_points(ply)
    assert "30° horizontal field of view" in caption


def test_the_readme_calls_run_as_written(client, tmp_path):
    """The documented calls with the file alone: every other input takes its control's default."""
    from gradio_client import handle_file

    clip = write_clip(tmp_path / "my_street.mp4", seconds=1, fps=10)
    video, summary = client.predict(handle_file(str(clip)), api_name="/predict_video")
    assert count_frames(video)[:2] == (10, Fraction(10)) and "network input" in summary
    mesh, (glb, ply), caption = client.predict(handle_file(str(EXAMPLE)), api_name="/predict_3d")
    assert mesh.endswith(".glb") and glb.endswith(".glb") and ply.endswith(".ply")
    assert "40.0 m" in caption  # the default distance limit


def test_3d_settings_out_of_range_are_refused(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="must be between 20 and 120"):
        client.predict(handle_file(str(EXAMPLE)), None, "256x512", 170, 80, "photo", False, api_name="/predict_3d")


def test_hostile_media_get_a_clear_message_and_the_server_keeps_serving(app, client, tmp_path):
    from gradio_client.exceptions import AppError

    _, proc, log = app
    cases = hostile(tmp_path)
    good = cases.pop("good")[0]
    run_clip(client, good)  # warm up before measuring memory
    before = proc_status_kb(proc.pid)
    for name, (path, message) in cases.items():
        with pytest.raises(AppError, match=message):
            run_clip(client, path)
    assert count_frames(run_clip(client, good)[0])[0] == 20
    grown_mb = (proc_status_kb(proc.pid) - before) / 1024
    assert grown_mb < 300, f"server memory grew by {grown_mb:.0f} MB"
    refusals = [line for line in log.read_text().splitlines() if "refused predict_video" in line]
    assert len(refusals) >= len(cases)


def test_size_limits_per_kind_of_upload(client, tmp_path):
    """Clips may be larger than photos: a 2 MB photo is refused with the photo limit; a clip over
    the clip limit is not even sent."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    photo = tmp_path / "big.png"
    street_image(200, 320).save(photo)
    photo.write_bytes(photo.read_bytes() + np.random.default_rng(0).bytes(2 * 1024 * 1024))
    with pytest.raises(AppError, match="accepts photos of up to 1 MB"):
        client.predict(handle_file(str(photo)), None, "256x512", 60, 80, "photo", False, api_name="/predict_3d")
    clip = tmp_path / "big.mp4"
    clip.write_bytes(write_clip(tmp_path / "c.mp4", seconds=1).read_bytes() + bytes(4 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        run_clip(client, clip)


def test_a_resolution_not_offered_for_clips(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not a processing resolution for clips; choose 128x256, 256x512"):
        run_clip(client, write_clip(tmp_path / "c.mp4", seconds=1), resolution="512x1024")
