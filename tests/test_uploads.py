"""Hostile and unusual uploads, end to end: the real `python app.py`, driven with gradio_client.

Every bad upload gets a clear message (gradio_client raises ``AppError`` carrying our text, which
the page shows as a toast), and the app answers a normal request right after. Unusual but valid
photos (1x1, a 20000x50 panorama, CMYK, 16-bit, palette, animated, 40 megapixels) are processed.

One app serves the module: the tiny CityScapes model, the default ``--max-pixels`` (4,000,000),
a 10 MB upload limit and a 20,000,000-pixel decode ceiling (``--max-image-pixels``).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from apphelpers import REPO, TEST_ENV, app_process, predict, proc_status_kb, size_of, street_image, write_photo
from PIL import Image

MAX_IMAGE_PIXELS = 20_000_000
MAX_FILE_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4_000_000  # serving.DEFAULT_MAX_PIXELS: the app below runs with the default


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    env = {"MTAN_MODEL": models["city"], "MTAN_DEFAULT_MODEL": models["city"], "MTAN_MODELS": "",
           "MTAN_MAX_PIXELS": "", "MTAN_MAX_FILE_SIZE": "10mb", "MTAN_MAX_VIDEO_SIZE": "10mb",
           "MTAN_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS)}
    with app_process(env, tmp_path_factory.mktemp("log") / "app.log") as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


@pytest.fixture(scope="module")
def normal_photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("normal") / "normal.jpg"
    street_image(200, 320).save(p, quality=90)
    return p


def refused(client, path, match: str):
    """The upload is refused with an AppError whose message matches ``match`` (our text, not 'Error')."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match) as info:
        predict(client, path, resolution="128x256")
    return str(info.value)


def still_serving(client, photo: Path):
    out = predict(client, photo, resolution="128x256")
    assert size_of(out["segmentation"]) == (320, 200) and "photo 320x200" in out["summary"]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a tiny body (a few hundred
    bytes on disk): decoding it would allocate width * height * 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    body = zlib.compress(b"\0" * 4096)  # a few empty rows
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------------------
# Refused, with a clear message; the app keeps serving
# --------------------------------------------------------------------------------------


def test_empty_file(client, tmp_path, normal_photo):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    refused(client, p, r"The file is empty \(0 bytes\)")
    still_serving(client, normal_photo)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_truncated_image(client, tmp_path, normal_photo, fmt):
    full = tmp_path / f"full.{fmt}"
    street_image(400, 640).save(full, format=fmt.upper())
    data = full.read_bytes()
    p = tmp_path / f"truncated.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    refused(client, p, "damaged or truncated")
    still_serving(client, normal_photo)


@pytest.mark.parametrize("content", [b"hello, I am text, not a photo\n" * 10, bytes(range(256)) * 40,
                                     b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"],
                         ids=["text", "noise", "postscript"])
def test_not_an_image(client, tmp_path, normal_photo, content):
    p = tmp_path / "photo.jpg"  # the name says JPEG; the bytes (text, noise, PostScript) do not
    p.write_bytes(content)
    refused(client, p, "not an image that can be read: upload a JPEG, PNG")
    still_serving(client, normal_photo)


def test_decompression_bomb_is_refused_from_its_header(app, client, tmp_path, normal_photo):
    p = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)  # 2.5 gigapixels: 7.5 GB decoded
    assert p.stat().st_size < 1000
    pid = app[1].pid
    peak_before = proc_status_kb(pid, "VmHWM")
    # 2.5 G is so far over this app's 20 M ceiling that PIL's own check (at 64x) refuses it first
    message = refused(client, p, r"too large: 2,500,000,000 pixels is over this app's limit")
    assert f"{MAX_IMAGE_PIXELS:,}" in message
    assert proc_status_kb(pid, "VmHWM") - peak_before < 100_000  # nothing near 7.5 GB (nor 100 MB) allocated
    still_serving(client, normal_photo)


def test_decode_ceiling_is_configurable(client, tmp_path, normal_photo):
    """--max-image-pixels (here 20,000,000): 5000x5000 (25 MP) is refused before decoding."""
    p = png_header_only(tmp_path / "25mp.png", 5000, 5000)
    refused(client, p, r"5000x5000 pixels \(25 megapixels\) is over this app's limit of 20,000,000")
    still_serving(client, normal_photo)


def test_upload_size_limit(app, client, tmp_path, normal_photo):
    """--max-file-size (here 10mb): gradio_client refuses before sending; a raw upload gets 413."""
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff\xd8" + b"\0" * (MAX_FILE_SIZE + 1024))
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {MAX_FILE_SIZE}"):
        predict(client, p)
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + p.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(app[0] + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413 and "maximum allowed size" in info.value.read().decode()
    still_serving(client, normal_photo)


def test_server_paths_are_refused(app, client, normal_photo):
    """A raw API call naming a file on the server (not uploaded) is refused: no server file is read."""
    inputs = [{"path": str(REPO / "examples" / "generate.py"), "meta": {"_type": "gradio.FileData"}},
              None, "128x256", 0.5, "inferno", "segmentation", "semantic", "encoder", 0, -1]
    request = urllib.request.Request(app[0] + "gradio_api/call/predict", data=json.dumps({"data": inputs}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(app[0] + f"gradio_api/call/predict/{event}", timeout=60) as r:
        answer = r.read().decode()
    assert "event: error" in answer and "not uploaded to this app" in answer and str(REPO) not in answer
    still_serving(client, normal_photo)


# --------------------------------------------------------------------------------------
# Unusual but valid: processed, with a note where the result is limited
# --------------------------------------------------------------------------------------


def test_one_pixel_image(client, tmp_path, normal_photo):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (90, 90, 95)).save(p)
    out = predict(client, p, resolution="128x256")
    for key in ("segmentation", "depth", "attention", "difference"):
        assert size_of(out[key]) == (1, 1), key
    assert "photo 1x1" in out["summary"] and "tiny" in out["summary"]
    still_serving(client, normal_photo)


def test_wide_panorama(client, tmp_path, normal_photo):
    """20000x50: fitted inside 128x256 with its aspect kept (256x1), padded by the model; the views
    come back at the upload's size."""
    p = tmp_path / "panorama.jpg"
    street_image(50, 20000).save(p, quality=85)
    out = predict(client, p, resolution="128x256")
    for key in ("segmentation", "depth", "attention"):
        assert size_of(out[key]) == (20000, 50), key
    assert "photo 20000x50" in out["summary"] and "network input 256x1" in out["summary"]
    assert "very wide" in out["summary"]
    depth = np.load(next(f for f in out["files"] if f.endswith("_depth.npy")))
    assert depth.shape == (50, 20000)
    still_serving(client, normal_photo)


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "png16", "palette"])
def test_unusual_modes(client, tmp_path, normal_photo, kind):
    path, size = write_photo(kind, tmp_path)
    out = predict(client, path, resolution="128x256")
    assert size_of(out["segmentation"]) == size and size_of(out["depth"]) == size
    still_serving(client, normal_photo)


def test_animated_gif_uses_the_first_frame(client, tmp_path, normal_photo):
    frames = [Image.new("RGB", (160, 100), colour) for colour in ((220, 30, 30), (30, 220, 30), (30, 30, 220))]
    p = tmp_path / "animated.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = predict(client, p, resolution="128x256")
    before, _ = out["slider"]
    with Image.open(before) as im:
        r, g, b = im.convert("RGB").getpixel((80, 50))
    assert r > 150 and g < 100 and b < 100  # red: the first frame
    assert size_of(out["segmentation"]) == (160, 100) and "first was used" in out["summary"]
    still_serving(client, normal_photo)


def test_40_megapixel_photo(app, client, tmp_path, normal_photo):
    """7744x5163: decoded at half scale (JPEG draft; 10 MP, under the 20 MP decode ceiling although
    the header says 40 MP), downscaled to --max-pixels; every view and download at that size."""
    a = np.asarray(street_image(5163 // 8, 7744 // 8).resize((7744, 5163), Image.Resampling.NEAREST))
    p = tmp_path / "40mp.jpg"
    Image.fromarray(a).save(p, quality=85)
    del a
    assert p.stat().st_size < MAX_FILE_SIZE
    pid = app[1].pid
    rss_before = proc_status_kb(pid, "VmRSS")
    out = predict(client, p, resolution="128x256")
    peak = proc_status_kb(pid, "VmHWM")
    w, h = size_of(out["segmentation"])
    assert w * h <= DEFAULT_MAX_PIXELS and (w, h) == (2449, 1633)  # aspect kept: 7744 / 5163 = 1.4999
    for key in ("depth", "attention", "difference"):
        assert size_of(out[key]) == (w, h), key
    assert "7744x5163" in out["summary"] and "downscaled to 2449x1633" in out["summary"]
    files = {Path(f).name.split("_", 1)[1]: f for f in out["files"]}
    assert size_of(files["semantic_class_ids.png"]) == (w, h) and np.load(files["depth.npy"]).shape == (h, w)
    assert "attention.npz" not in files  # written only when asked for:
    masks, _ = client.predict(api_name="/attention_masks")
    assert Path(masks).stat().st_size < 4_000_000  # masks at the processing size (128x256), not the photo's
    # Peak memory of the whole server (torch, gradio, the model) after the request; one full-size
    # RGB copy of the photo alone would be 120 MB, and views and downloads at 40 MP over a GB.
    assert peak - rss_before < 500_000, (rss_before, peak)  # measured: +190 MB here, +1.4 GB at 40 MP
    still_serving(client, normal_photo)


# --------------------------------------------------------------------------------------
# In process: how large JPEGs are decoded; settings are checked at start
# --------------------------------------------------------------------------------------


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from mtan.serve import load_image

    p = tmp_path / "big.jpg"
    street_image(1000, 1600).save(p, quality=80)
    decoded = []
    original = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    im, notes = load_image(p, max_pixels=100_000)
    assert decoded and decoded[0] == (400, 250)  # 1/4 scale: the smallest draft scale still >= 100,000 pixels
    assert im.size == (400, 250) and "downscaled" in notes[0]


def test_invalid_settings_stop_the_app_with_a_clear_message():
    result = subprocess.run([sys.executable, str(REPO / "app.py"), "--max-pixels", "lots"], cwd=REPO,
                            env=os.environ | TEST_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--max-pixels: expected a whole number, got 'lots'" in result.stderr
    result = subprocess.run([sys.executable, str(REPO / "app.py"), "--downloads-space", "all of it"], cwd=REPO,
                            env=os.environ | TEST_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--downloads-space: expected a size such as 25mb" in result.stderr
    result = subprocess.run([sys.executable, str(REPO / "app.py")], cwd=REPO, capture_output=True, text=True,
                            env=os.environ | TEST_ENV | {"MTAN_KEEP_FREED_MEMORY": "half"}, timeout=120)
    assert result.returncode == 2 and "--keep-freed-memory: expected a size such as 25mb" in result.stderr


def test_a_photo_sent_as_text_is_checked_before_it_is_decoded(tmp_path):
    """The MCP tool's photo: a data URL within the limit, or an example's name; a web address,
    another kind of data, bad base64 or an over-long text are refused with their own message."""
    import base64

    from mtan.serve.uploads import UploadRefused, inline_photo, inline_photo_chars

    example = tmp_path / "street.jpg"
    example.write_bytes(b"\xff\xd8 a jpeg")
    examples = {"street.jpg": example}
    payload = bytes(range(256)) * 4
    url = "data:image/png;base64," + base64.b64encode(payload).decode()
    assert inline_photo(url, 1024, examples) == (payload, "photo.png")
    assert inline_photo(" street.jpg ", 1024, examples) == (b"\xff\xd8 a jpeg", "street.jpg")
    assert len(url) <= inline_photo_chars(1024) < len(url) + 100
    refusals = {"https://example.com/a.jpg": "does not fetch web addresses",
                "file:///etc/passwd": "does not fetch web addresses",
                "data:text/html;base64,PGI+": "must be a data URL of a JPEG, PNG or WebP",
                "data:image/png;base64,@@@@": "not valid base64",
                "": "Send the photo as a data URL",
                "data:image/jpeg;base64," + "A" * inline_photo_chars(1024): "larger than this app's limit"}
    for text, words in refusals.items():
        with pytest.raises(UploadRefused, match=words):
            inline_photo(text, 1024, examples)
    with pytest.raises(UploadRefused, match="larger than"):  # decodes to 1,026 bytes: within the text's bound
        inline_photo("data:image/png;base64," + base64.b64encode(bytes(1026)).decode(), 1024, examples)
