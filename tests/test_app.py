"""The Gradio app, end to end: the real `python app.py` on a free port, driven with gradio_client.

Tiny models (1/16 width) are written to a temporary folder: nothing here depends on weights/.
One app process serves the module (two models offered via MTAN_MODELS); the Hub-fallback test
starts a second one.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtan import MTAN, preset_tasks

REPO = Path(__file__).resolve().parents[1]
MAX_PIXELS = 300_000  # the app under test downscales larger photos to this


# --------------------------------------------------------------------------------------
# Helpers (also used by test_browser.py)
# --------------------------------------------------------------------------------------


def make_models(folder: Path) -> dict[str, str]:
    """A 2-task CityScapes model and a 3-task NYUv2 model (with normals), 1/16 width."""
    torch.manual_seed(0)
    city, nyu = folder / "city", folder / "nyu"
    MTAN(preset_tasks("cityscapes-7"), width=1 / 16).save_pretrained(
        city, model_card_kwargs={"notes": "A tiny test model.", "training_command": "python train.py --test"})
    MTAN(preset_tasks("nyuv2"), width=1 / 16).save_pretrained(nyu)
    return {"city": str(city), "nyu": str(nyu)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env: dict[str, str], log: Path, timeout: float = 120.0, args: tuple[str, ...] = ()):
    """Start ``python app.py --port P`` with ``env`` added; yield its URL once the page answers."""
    port = free_port()
    full_env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "MTAN_DEVICE": "cpu",
                             "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", "MTAN_THREADS": "1"} | env
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                 *args], cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def page_config(url: str) -> str:
    with urllib.request.urlopen(url + "config", timeout=10) as r:
        return r.read().decode()


def street_image(height: int = 200, width: int = 320) -> Image.Image:
    """A crude street: sky, buildings, road with lane marks, a 'car'. Deterministic."""
    rng = np.random.default_rng(0)
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2] = (135, 180, 230)
    for x0 in range(0, width, width // 6):
        top = int(rng.integers(height // 8, height // 3))
        a[top: height // 2 + 10, x0: x0 + width // 7] = rng.integers(60, 200, 3)
    a[height // 2:] = (90, 90, 95)
    a[int(height * .75): int(height * .78), width // 2 - 4: width // 2 + 4] = 240
    a[int(height * .55): int(height * .8), int(width * .6): int(width * .85)] = (200, 30, 40)
    return Image.fromarray(a)


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def app_url(models, tmp_path_factory):
    env = {"MTAN_MODELS": f"{models['city']},{models['nyu']}", "MTAN_DEFAULT_MODEL": models["city"],
           "MTAN_MAX_PIXELS": str(MAX_PIXELS)}
    with running_app(env, tmp_path_factory.mktemp("log") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def run(client, path, **kwargs):
    from gradio_client import handle_file

    names = ["segmentation", "depth", "attention", "files", "legend", "colorbar", "normals", "slider",
             "difference", "caption", "download_notes", "summary"]
    out = client.predict(handle_file(str(path)), api_name="/predict", **kwargs)
    return dict(zip(names, out))


def size_of(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------------------
# Inputs of every kind come back at the upload's size
# --------------------------------------------------------------------------------------


def _write(kind: str, folder: Path) -> tuple[Path, tuple[int, int]]:
    """Write a test photo of ``kind``; return its path and the (width, height) outputs must have."""
    im = street_image(200, 320)
    if kind == "jpeg":
        p = folder / "photo.jpg"
        im.save(p, quality=90)
    elif kind == "rgba_png":
        a = np.dstack([np.asarray(im), np.full((200, 320), 128, np.uint8)])
        a[:50, :, 3] = 0  # a transparent band: composited on white
        p = folder / "rgba.png"
        Image.fromarray(a, "RGBA").save(p)
    elif kind == "grayscale":
        p = folder / "grey.png"
        im.convert("L").save(p)
    elif kind == "png16":
        g = (np.asarray(im.convert("L"), np.uint16) * 257)
        p = folder / "deep.png"
        Image.fromarray(g).save(p)
        with Image.open(p) as check:
            assert check.mode.startswith("I"), check.mode
    elif kind == "exif_rotated":  # stored 320 wide, 200 high; orientation 6 = shown rotated 90 degrees
        exif = Image.Exif()
        exif[0x0112] = 6
        p = folder / "rotated.jpg"
        im.save(p, exif=exif, quality=90)
        return p, (200, 320)
    elif kind == "palette":
        p = folder / "palette.png"
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(p, transparency=0)
    elif kind == "webp":
        p = folder / "photo.webp"
        im.save(p)
    elif kind == "bmp":
        p = folder / "photo.bmp"
        im.save(p)
    elif kind == "tiff":
        p = folder / "photo.tiff"
        im.save(p)
    elif kind == "cmyk_jpeg":
        p = folder / "cmyk.jpg"
        im.convert("CMYK").save(p)
    else:
        raise ValueError(kind)
    return p, (320, 200)


@pytest.mark.parametrize("kind", ["jpeg", "rgba_png", "grayscale", "png16", "exif_rotated", "palette", "webp",
                                  "bmp", "tiff", "cmyk_jpeg"])
def test_predict_returns_outputs_at_upload_size(client, tmp_path, kind):
    path, size = _write(kind, tmp_path)
    out = run(client, path)
    for key in ("segmentation", "depth", "attention", "difference"):
        assert size_of(out[key]) == size, (kind, key)
    assert [size_of(p) for p in out["slider"]] == [size, size]
    assert 'class="mtan-legend-item"' in out["legend"] and "cityscapes-7" in out["legend"]
    assert "inverse depth" in out["colorbar"] and "1.85 / value metres" in out["colorbar"]
    assert out["normals"] is None  # the CityScapes model has no normals head


def test_downloads(client, tmp_path):
    path, (w, h) = _write("jpeg", tmp_path)
    out = run(client, path, resolution="128x256")
    files = {Path(p).name: p for p in out["files"]}
    assert set(files) == {"photo_semantic_class_ids.png", "photo_semantic_colour.png", "photo_depth_16bit.png",
                          "photo_depth.npy", "photo_attention.npz"}
    with Image.open(files["photo_semantic_class_ids.png"]) as im:
        assert im.size == (w, h) and im.mode == "L"
        assert np.asarray(im).max() < 7 and "0=flat" in im.text["Classes"]
    with Image.open(files["photo_semantic_colour.png"]) as im:
        assert im.size == (w, h) and im.mode == "RGB"
    depth = np.load(files["photo_depth.npy"])
    assert depth.shape == (h, w) and depth.dtype == np.float32
    with Image.open(files["photo_depth_16bit.png"]) as im:
        assert im.size == (w, h) and im.mode.startswith("I;16")
        scale = im.text["DepthScale"]
        top = float(im.text["DepthMax"])
        assert "png_value / 65535" in scale and "1.85" in scale
        decoded = np.asarray(im, np.float64) / 65535 * top
    assert np.allclose(decoded, np.clip(depth, 0, None), atol=top / 65535 + 1e-9)
    assert "png_value / 65535" in out["download_notes"]
    with np.load(files["photo_attention.npz"]) as npz:
        meta = json.loads(str(npz["meta"]))
        assert meta["tasks"] == ["semantic", "depth"] and meta["image_size"] == [h, w]
        assert npz["semantic.encoder.0"].dtype == np.float16
        assert npz["depth.decoder.4"].shape[0] == npz["semantic.encoder.0"].shape[0]  # both at full width
        assert len([k for k in npz.files if k != "meta"]) == 20


def test_model_switching(client, models, tmp_path):
    path, size = _write("jpeg", tmp_path)
    nyu = run(client, path, model=models["nyu"], compare="normals", attention_task="normal")
    assert "nyuv2-13" in nyu["legend"] and "metres" in nyu["colorbar"]
    assert nyu["normals"] is not None and size_of(nyu["normals"]) == size
    assert "**normal**" in nyu["caption"]
    assert len([p for p in nyu["files"] if p.endswith("_normal.png")]) == 1
    city = run(client, path, model=models["city"])
    assert "cityscapes-7" in city["legend"] and city["normals"] is None


def test_large_photo_is_downscaled_with_a_note(client, tmp_path):
    p = tmp_path / "big.jpg"
    street_image(600, 960).save(p, quality=85)  # 576,000 pixels > MAX_PIXELS
    out = run(client, p)
    w, h = size_of(out["segmentation"])
    assert w * h <= MAX_PIXELS and abs(w / h - 960 / 600) < 0.01
    assert "downscaled" in out["summary"]


def test_unreadable_file_gives_a_clear_error(client, tmp_path):
    p = tmp_path / "not_an_image.png"
    p.write_text("hello, I am text")
    with pytest.raises(Exception, match="not an image"):
        run(client, p)


def test_page_shows_model_card_and_about(app_url):
    config = page_config(app_url)
    assert "A tiny test model." in config and "python train.py --test" in config  # the model card
    assert "Dynamic Weight Average" in config
    assert "placeholder" not in config.lower()  # this card does not say so: no notice


def test_hub_unreachable_falls_back_to_the_local_default(models, tmp_path):
    env = {"MTAN_MODEL": "some-user/some-mtan-model", "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": models["city"],
           "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    with running_app(env, tmp_path / "app.log") as url:
        started = time.monotonic() - start
        config = page_config(url)
        assert "Could not load" in config and "some-user/some-mtan-model" in config
        from gradio_client import Client

        out = run(Client(url, verbose=False), _write("jpeg", tmp_path)[0])
        assert size_of(out["segmentation"]) == (320, 200)
        assert "Could not load" in out["summary"]
    assert started < 60


def test_placeholder_model_shows_a_notice(tmp_path):
    """In-process: the registry reads the card; 'placeholder' in it becomes a visible notice."""
    from mtan.serving import ModelRegistry

    MTAN(preset_tasks("cityscapes-7"), width=1 / 16).save_pretrained(
        tmp_path / "m", model_card_kwargs={"notes": "placeholder: untrained"})
    loaded = ModelRegistry([str(tmp_path / "m")], default_local=tmp_path / "m").get()
    assert loaded.placeholder and any("placeholder" in n for n in loaded.notices)


# --------------------------------------------------------------------------------------
# In process: views re-render from the cached prediction without running the network
# --------------------------------------------------------------------------------------


def test_rerender_uses_the_cached_prediction(models, tmp_path, monkeypatch):
    monkeypatch.setenv("MTAN_MODEL", models["nyu"])
    monkeypatch.setenv("MTAN_MODELS", models["city"])
    monkeypatch.setenv("MTAN_DEFAULT_MODEL", models["city"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    try:
        path, (w, h) = _write("jpeg", tmp_path)
        out = app.predict(str(path), models["nyu"], "128x256", 0.5, "inferno", "depth", "semantic", "encoder", 0, -1)
        pred = out[-1]
        model = app.REGISTRY.get(models["nyu"]).model

        def no_network(*args, **kwargs):
            raise AssertionError("re-rendering must not run the network")

        monkeypatch.setattr(model, "forward", no_network)
        seg1, _, _, _ = app.rerender_main(pred, 0.1, "viridis", "normals")
        seg2, depth, bar, (before, after) = app.rerender_main(pred, 0.9, "gray", "depth")
        assert seg1.size == seg2.size == depth.size == after.size == (w, h)
        assert not np.array_equal(np.asarray(seg1), np.asarray(seg2))
        view, diff, caption = app.rerender_attention(pred, "normal", "decoder", 4, 3)
        assert view.size == (w, h) and diff.size == (w, h) and "channel 3 of" in caption
        view, _, caption = app.rerender_attention(pred, "depth", "encoder", 2, 10_000)  # channel clamped
        assert "channel 15 of 16" in caption
        gallery, table = app.show_all_masks(pred)
        assert len(gallery) == 3 * 10 and "decoder 4 (1/1 scale)" in gallery[-1][1]  # 3 tasks x 10 stages
        assert table.count("\n") == 11 and "most task-specific channels" in table
        assert app.rerender_main(None, 0.5, "inferno", "depth") is not None  # no prediction yet: skipped

        # other task sets and architectures: a split network (no masks), a depth-only single network
        from mtan.serving import LoadedModel, predict_photo
        from mtan.visualize import write_downloads

        photo = Image.open(path).convert("RGB")
        split = LoadedModel("s", "s", MTAN(preset_tasks("cityscapes-7"), arch="split", width=1 / 16).eval())
        pred = predict_photo(split, photo, (128, 256))
        assert pred.masks == {} and app.show_attention(pred, "semantic", "encoder", 0, -1)[0] is None
        assert not any(f.endswith(".npz") for f in write_downloads(pred, tmp_path / "split")[0])
        single = LoadedModel("d", "d", MTAN(preset_tasks("cityscapes-7")[1:], arch="single", width=1 / 16).eval())
        seg, depth, bar, (_, after), normals = app.show_main(predict_photo(single, photo, (128, 256)), 0.5,
                                                             "turbo", "segmentation")
        assert seg is None and normals is None and depth.size == after.size == (w, h) and "inverse depth" in bar
    finally:
        sys.modules.pop("app", None)


# --------------------------------------------------------------------------------------
# Helpers without the app
# --------------------------------------------------------------------------------------


def test_image_modes_become_rgb(tmp_path):
    from mtan.serving import load_image, to_rgb

    twelve_bit = Image.fromarray(np.array([[0, 4095]], np.uint16))
    assert to_rgb(twelve_bit).getpixel((1, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"
    p = tmp_path / "huge.jpg"
    street_image(400, 800).save(p)
    im, notes = load_image(p, max_pixels=20_000)
    assert im.width * im.height <= 20_000 and notes


def test_fit_and_resolution():
    from mtan.serving import fit_size, parse_resolution

    assert parse_resolution("256x512") == (256, 512)
    with pytest.raises(ValueError):
        parse_resolution("big")
    assert fit_size(1024, 2048, (256, 512)) == (256, 512)
    assert fit_size(4032, 3024, (256, 512)) == (256, 192)  # portrait: fits the height
    assert fit_size(100, 150, (256, 512)) == (256, 384)    # small photos are enlarged


def test_colorbar_and_depth_png():
    from mtan.tasks import DepthTask
    from mtan.visualize import colorbar_html, depth_to_png16

    inverse, metric = DepthTask("depth", "inverse"), DepthTask("depth", "metric")
    bar = colorbar_html(inverse, (0.0185, 0.185))
    assert "≈ 100 m" in bar and "≈ 10 m" in bar
    assert "> 1 km" in colorbar_html(inverse, (0.001, 0.01))
    assert "metres" in colorbar_html(metric, (1.0, 10.0))
    png, top, text = depth_to_png16(np.array([[0.0, 0.5, 1.0, -1.0, np.nan]], np.float32), inverse)
    assert top == 1.0 and png.tolist() == [[0, 32768, 65535, 0, 0]] and "1.85" in text
