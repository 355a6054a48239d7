"""The Gradio app, end to end: the real `python app.py` on a free port, driven with gradio_client.

Tiny models (1/16 width) are written to a temporary folder: nothing here depends on weights/.
One app process serves the module (two models offered via MTAN_MODELS); the Hub-fallback test
starts a second one.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from apphelpers import make_models, page_config, running_app, size_of, street_image  # noqa: F401 (test_browser)
from apphelpers import REPO, TEST_ENV
from apphelpers import predict as run
from apphelpers import write_photo as _write
from PIL import Image

from mtan import MTAN, preset_tasks
from mtan.serve import process

MAX_PIXELS = 300_000  # the app under test downscales larger photos to this


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("log") / "app.log"


@pytest.fixture(scope="module")
def app_url(models, app_log):
    env = {"MTAN_MODELS": f"{models['city']},{models['nyu']}", "MTAN_DEFAULT_MODEL": models["city"],
           "MTAN_MAX_PIXELS": str(MAX_PIXELS)}
    with running_app(env, app_log) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


# --------------------------------------------------------------------------------------
# Inputs of every kind come back at the upload's size
# --------------------------------------------------------------------------------------


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
                          "photo_depth_gray.png", "photo_depth.npy"}  # the masks' .npz only when asked for (below)
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
    assert (np.isnan(depth) | (depth > 0)).all()  # no distance is NaN (the sky), never a negative number
    assert np.allclose(decoded, np.nan_to_num(depth, nan=0.0), atol=top / 65535 + 1e-9)
    assert np.asarray(Image.open(files["photo_depth_16bit.png"])).min() >= 1  # 0 only where there is no value
    with Image.open(files["photo_depth_gray.png"]) as im:  # a plain picture: white near (large inverse depth)
        gray = np.asarray(im, np.float64)
        assert im.mode == "L" and im.size == (w, h)
    known = ~np.isnan(depth)  # the grey picture is black where there is no distance
    assert np.corrcoef(gray[known], depth[known])[0, 1] > 0.9
    assert "NaN where the network gives no distance" in out["download_notes"]
    assert "png_value / 65535" in out["download_notes"]
    masks, note = client.predict(api_name="/attention_masks")  # this session's last photo
    assert Path(masks).name == "photo_attention.npz" and "stored / 255" in note
    assert Path(masks).read_bytes() == Path(client.predict(api_name="/attention_masks")[0]).read_bytes()
    with np.load(masks) as npz:
        meta = json.loads(str(npz["meta"]))
        assert meta["tasks"] == ["semantic", "depth"] and meta["image_size"] == [h, w]
        assert npz["semantic.encoder.stage1"].dtype == np.uint8 and meta["scale"] == pytest.approx(1 / 255)
        assert "stored * scale" in meta["layout"]
        # numbered by scale as on the page: stage 1 of the encoder and of the decoder at the same size
        assert npz["depth.decoder.stage1"].shape == npz["semantic.encoder.stage1"].shape
        assert npz["depth.decoder.stage5"].shape[1] * 16 == npz["depth.decoder.stage1"].shape[1]
        assert len([k for k in npz.files if k != "meta"]) == 20


def test_the_page_runs_a_photo_in_two_steps(app_url, tmp_path):
    """/predict_views answers what the page shows first; /details then the attention views and the
    downloads of the same photo (written only now). Together they are /predict's one answer."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="Run a photo first"):
        client.predict(api_name="/details")  # nothing run yet in this session
    path, size = _write("jpeg", tmp_path)
    full = run(client, path, resolution="128x256", attention_stage=2)
    seg, depth, legend, bar, normals, slider, summary = client.predict(
        handle_file(str(path)), resolution="128x256", api_name="/predict_views")
    assert Path(seg).read_bytes() == Path(full["segmentation"]).read_bytes()
    assert Path(depth).read_bytes() == Path(full["depth"]).read_bytes()
    assert [size_of(p) for p in slider] == [size, size] and normals is None
    assert legend == full["legend"] and bar == full["colorbar"] and "fitted inside 128x256" in summary
    att, diff, caption, files, notes = client.predict(attention_stage=2, api_name="/details")
    assert Path(att).read_bytes() == Path(full["attention"]).read_bytes() and size_of(diff) == size
    assert caption == full["caption"] and "encoder 2" in caption and notes == full["download_notes"]
    by_name = {Path(f).name: f for f in full["files"]}
    assert sorted(Path(f).name for f in files) == sorted(by_name)
    assert all(Path(f).read_bytes() == Path(by_name[Path(f).name]).read_bytes() for f in files)


def test_attention_masks_need_a_photo_first(app_url):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Run a photo first"):
        Client(app_url, verbose=False).predict(api_name="/attention_masks")  # a new session has no photo


def test_model_switching(client, models, tmp_path):
    path, size = _write("jpeg", tmp_path)
    nyu = run(client, path, model=models["nyu"], compare="normals", attention_task="normal")
    assert "nyuv2-13" in nyu["legend"] and "metres" in nyu["colorbar"]
    assert nyu["normals"] is not None and size_of(nyu["normals"]) == size
    assert "**normal**" in nyu["caption"]
    assert len([p for p in nyu["files"] if p.endswith("_normal.png")]) == 1
    city = run(client, path, model=models["city"])
    assert "cityscapes-7" in city["legend"] and city["normals"] is None


def test_resolutions_follow_the_models_measurements(client, models, tmp_path):
    """A model folder's resolutions.json (mtan.release measures it): the app offers the resolutions
    within 0.03 mIoU of the best, starts at the smallest within 0.01 of the best, and says why another
    is not offered."""
    from gradio_client.exceptions import AppError

    path, size = _write("jpeg", tmp_path)
    with pytest.raises(AppError, match=r"512x1024 is not offered: this model scores 0\.30 mIoU there, against "
                                       r"0\.42 at 256x512 \(a test set\); choose 128x256, 256x512"):
        run(client, path, model=models["nyu"], resolution="512x1024")
    assert "fitted inside 256x512" in run(client, path, model=models["nyu"], resolution=None)["summary"]
    assert "fitted inside 512x1024" in run(client, path, model=models["city"], resolution="512x1024")["summary"]


def test_the_summary_says_which_precision_runs(client, models, tmp_path, app_log):
    """A model folder without precisions.json runs in fp32; one whose record keeps bf16-convs runs
    the faster of fp32 and bf16-convs on this machine (never the bf16 the record refused); the
    terminal says what runs and why, and the measurement is remembered for the next start unless
    the machine was too busy for it to be trusted (then the terminal says so)."""
    path, size = _write("jpeg", tmp_path)
    assert re.search(r" s on cpu in fp32\b", run(client, path, model=models["city"])["summary"])
    summary = run(client, path, model=models["nyu"], resolution="128x256")["summary"]
    used = re.search(r" s on cpu in ([\w-]+)", summary).group(1)
    assert used in ("fp32", "bf16-convs")
    line = next(line for line in app_log.read_text().splitlines() if line.startswith("mtan app: nyu (local folder) runs on"))
    assert f"runs on the CPU in {used}: the fastest here" in line and re.search(r"fp32 \d+ ms, bf16-convs \d+ ms", line)
    cache_file = Path(os.environ["MTAN_CACHE_DIR"]) / "precision-choices.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    measured = [v for k, v in cache.items() if "normal:normal:3] | 256x512 | fp32/bf16-convs" in k]
    if "the machine was busy while it measured" in line:
        assert measured == []
    else:
        assert len(measured) == 1 and set(measured[0]["seconds"]) == {"fp32", "bf16-convs"}
        assert used == measured[0]["precision"] and measured[0]["quiet"] is True


def test_mirror_averages_the_photo_and_its_mirror(client, tmp_path):
    path, size = _write("jpeg", tmp_path)
    plain, mirrored = (run(client, path, resolution="128x256", mirror=m) for m in (False, True))
    assert "and its mirror image" in mirrored["summary"] and "mirror" not in plain["summary"]
    assert size_of(mirrored["depth"]) == size
    depth = [np.load(next(f for f in out["files"] if f.endswith("_depth.npy"))) for out in (plain, mirrored)]
    assert not np.array_equal(depth[0], depth[1])


def test_the_mirror_average_starts_on_where_the_models_record_says_it_helps(models, client, tmp_path):
    """resolutions.json records the mIoU with the mirror average at the best resolution: the app
    starts with it on for a model it helps by 0.005 or more (the nyu test model), off otherwise (the
    city model has no record). The page's checkbox, a /predict call that leaves it out, and a
    switch of model all follow the record."""
    from gradio_client import Client

    from mtan.records import ResolutionAdvice
    from mtan.serve.settings import parse_args
    from mtan.serve.web.events import MODEL_CHANGE, App

    record = {"scores": {"128x256": 0.40, "256x512": 0.42}}
    assert ResolutionAdvice.from_record({**record, "mirror": {"256x512": 0.425}}).mirror is True
    assert ResolutionAdvice.from_record({**record, "mirror": {"256x512": 0.424}}).mirror is False
    assert ResolutionAdvice.from_record({**record, "mirror": {"128x256": 0.50}}).mirror is False  # not the best
    assert ResolutionAdvice.from_record({**record, "mirror": {"256x512": "high"}}).mirror is False
    assert ResolutionAdvice.from_record(record).mirror is ResolutionAdvice.from_record(None).mirror is False
    # The app starts at the smallest resolution within 0.01 of the best (each step up is 4x the pixels),
    # and the mirror average's figure counts where it starts.
    near = {"scores": {"128x256": 0.66, "256x512": 0.7806, "512x1024": 0.7835}, "mirror": {"256x512": 0.79}}
    advice = ResolutionAdvice.from_record(near)
    assert (advice.offered, advice.default, advice.mirror) == (["256x512", "512x1024"], "256x512", True)
    far = {"scores": {**near["scores"], "512x1024": 0.7907}, "mirror": {"256x512": 0.80}}
    assert (ResolutionAdvice.from_record(far).default, ResolutionAdvice.from_record(far).mirror) == ("512x1024", False)

    path, _ = _write("jpeg", tmp_path)
    assert "mirror" not in run(client, path)["summary"]  # the city model is the default there
    app = App(parse_args(["--models", f"{models['city']},{models['nyu']}", "--model", models["city"]]))
    at = MODEL_CHANGE.index("mirror")
    assert app.on_model_change(models["nyu"])[at] is True and app.on_model_change(models["city"])[at] is False
    env = {"MTAN_MODELS": f"{models['nyu']},{models['city']}", "MTAN_DEFAULT_MODEL": models["nyu"]}
    with running_app(env, tmp_path / "nyu-app.log") as url:
        mirror = next(c for c in json.loads(page_config(url))["components"] if c.get("props", {}).get("elem_id") == "mirror")
        assert mirror["props"]["value"] is True
        out = run(Client(url, verbose=False), path, resolution="128x256")
        assert "and its mirror image" in out["summary"]


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
    assert "is a **placeholder**" not in config  # this card does not say so: no notice


def test_hub_unreachable_falls_back_to_the_local_default(models, tmp_path):
    env = {"MTAN_MODEL": "some-user/some-mtan-model", "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": models["city"],
           "HF_HUB_OFFLINE": "1", "MTAN_FALLBACK": "1"}
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


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_model_that_cannot_be_loaded_stops_the_app_with_one_line(models, tmp_path, problem):
    """Without --fallback a wrong --model path (or a damaged model.safetensors) stops the app at start,
    exit 2, one line naming the model and what was wrong; nothing is served."""
    target = tmp_path / "nope"
    if problem == "corrupt":
        import shutil

        shutil.copytree(models["city"], target)
        (target / "model.safetensors").write_bytes(b"not safetensors at all")
    r = subprocess.run([sys.executable, "app.py", "--model", str(target)], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, **TEST_ENV, "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": models["city"]})
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.startswith("mtan app: cannot start")]
    assert len(lines) == 1 and str(target) in lines[0], r.stderr[-2000:]
    assert ("no such model folder" in lines[0]) if problem == "missing" else ("safetensors" in lines[0])
    assert "Traceback" not in r.stderr and "running on" not in r.stdout


def test_placeholder_model_shows_a_notice(tmp_path):
    """In-process: the registry reads the card; 'placeholder' in it becomes a visible notice."""
    from mtan.serve import ModelRegistry

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
    monkeypatch.setenv("MTAN_DOWNLOADS_SPACE", "3mb")
    monkeypatch.setenv("MTAN_KEEP_FREED_MEMORY", "64mb")
    monkeypatch.setattr(process, "_KEEP", list(process._KEEP))  # the app sets it: back as it was afterwards
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    from mtan.serve import file_digest, render, views
    from mtan.serve.web import events

    try:
        assert app.APP.downloads.max_bytes == app.APP.limits["downloads_max_bytes"] == 3 * 2**20  # from the environment
        assert app.APP.limits["keep_freed_memory"] == process._KEEP[0] == 64 * 2**20
        # the real example photos are run once in the background: a click on one answers from the cache
        photos = [p for p in app.APP.examples if p.name.startswith("camvid_")]
        assert len(photos) == 4
        app.APP.warm_examples().join(timeout=300)
        for photo in photos:
            key = app.APP.example_cache.key(file_digest(photo), models["nyu"], "256x512")
            assert app.APP.example_cache.get(key) is not None, photo.name
        upload = app.APP.uploads.upload_root / uuid.uuid4().hex  # where gradio stores an upload: predict reads only those
        upload.mkdir(parents=True)
        path, (w, h) = _write("jpeg", upload)
        out = app.APP.predict(str(path), models["nyu"], "128x256", 0.5, "inferno", "depth", "semantic", "encoder", 0, -1)
        pred = out[-1]
        model = app.APP.registry.get(models["nyu"]).model

        def no_network(*args, **kwargs):
            raise AssertionError("re-rendering must not run the network")

        monkeypatch.setattr(model, "forward", no_network)
        seg1, seg2 = app.APP.redraw_segmentation(pred, 0.1), app.APP.redraw_segmentation(pred, 0.9)  # JPEG files
        depth, bar, (before, after) = app.APP.redraw_depth(pred, "gray", "depth")  # the slider follows the colours
        _, _, kept = app.APP.redraw_depth(pred, "gray", "normals")  # ... only when it shows depth
        assert not isinstance(kept, tuple)  # left as it is
        assert size_of(seg1) == size_of(seg2) == size_of(depth) == size_of(after) == size_of(before) == (w, h)
        assert not np.array_equal(np.asarray(Image.open(seg1)), np.asarray(Image.open(seg2)))
        assert "far" in bar and "near" in bar
        photo, normals = app.APP.redraw_compare(pred, "normals", "inferno")
        assert size_of(normals) == (w, h)
        classes = np.asarray(Image.open(app.APP.redraw_compare(pred, "segmentation", "inferno")[1]).convert("RGB"))
        sem = pred.first("semantic")
        truth = render.colorize_labels(pred.labels[sem.name], sem.class_set.palette).astype(np.int16)
        overlay = np.asarray(Image.open(app.APP.redraw_segmentation(pred, 0.55)).convert("RGB"), np.int16)
        # the slider shows the class colours themselves (JPEG-encoded), not the overlay (mostly photo)
        assert np.abs(classes - truth).mean() < 0.5 * np.abs(overlay - truth).mean()
        # the attention section: every task and their difference one under the other (a phone reads
        # it), the channel control bounded; one difference figure, the same in the caption and the table
        panel, scale, caption, channel = app.APP.attention_section(pred, "decoder", 1, 3)
        assert size_of(panel)[1] > 3 * size_of(panel)[0] * 0.8 * h / w  # three tasks and their difference, stacked
        assert "Decoder stage 1 (1/1 scale)" in caption and "channel 3 of" in caption and scale.count("data-top") == 2
        _, _, caption, channel = app.APP.attention_section(pred, "encoder", 3, 10_000)  # channel clamped to the stage
        assert "channel 16 of 16" in caption and channel["maximum"] == 16 and channel["value"] == 16
        assert re.search(r"lets this feature through (most|more)", caption)  # the sentence on this photo
        overview, table = app.APP.attention_overview(pred, "encoder")
        assert size_of(overview)[0] > size_of(overview)[1]  # five stages across, tasks down
        _, _, mean_caption, _ = app.APP.attention_section(pred, "encoder", 2, 0)
        figure = re.search(r"differ by \*\*([0-9.]+)\*\*", mean_caption).group(1)
        row = next(r for r in table.splitlines() if r.startswith("| encoder stage 2 "))
        assert row.split(" | ")[-2] == figure
        details = dict(zip(events.PAGE_DETAILS, app.APP.page_details(pred)))
        assert details["masks_file"] is None  # a new photo clears the masks' download of the last one
        # it opens where the tasks differ most: the stage with the table's largest figure
        rows = [r.split(" | ") for r in table.splitlines()[2:]]
        largest = max(rows, key=lambda r: float(r[-2]))
        assert f"{details['att_part'].capitalize()} stage {details['att_level']} " in details["att_caption"]
        assert largest[0] == f"| {details['att_part']} stage {details['att_level']} ({largest[0].split('(')[1]}"
        npz, note = app.APP.attention_masks(pred)
        assert npz.endswith("_attention.npz") and app.APP.attention_masks(pred)[0] == npz  # written once
        assert table.count("\n") == 11 and "most task-specific channels" in table
        assert "encoder stage 1 (1/1 scale)" in table and "decoder stage 1 (1/1 scale)" in table
        assert app.APP.redraw_segmentation(None, 0.5) is not None  # no prediction yet: skipped

        # prediction folders: over an hour old, or the oldest beyond the byte budget, are removed
        monkeypatch.setattr(app.APP.downloads, "root", tmp_path / "out")
        for i, age in enumerate((7200, 300, 200, 100)):
            folder = tmp_path / "out" / f"f{i}"
            folder.mkdir(parents=True)
            (folder / "x.bin").write_bytes(b"\0" * 1000)
            os.utime(folder, (time.time() - age, time.time() - age))
        app.APP.downloads.clean(max_age_s=3600, max_bytes=2500)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f2", "f3"]
        (tmp_path / "out" / "f3" / "big.bin").write_bytes(b"\0" * (3 * 2**20))  # over the 3 MB set above
        app.APP.downloads.clean()  # the configured budget: the oldest go first, until what is left fits
        assert [p.name for p in (tmp_path / "out").iterdir()] == []  # f2 first, then f3 alone is still over

        # other task sets and architectures: a split network (no masks), a depth-only single network
        from mtan.serve import LoadedModel, predict_photo
        from mtan.serve.downloads import write_downloads

        photo = Image.open(path).convert("RGB")
        split = LoadedModel("s", "s", MTAN(preset_tasks("cityscapes-7"), arch="split", width=1 / 16).eval())
        pred = predict_photo(split, photo, (128, 256))
        assert pred.masks == {} and views.show_attention(pred, "semantic", "encoder", 0, -1)[0] is None
        assert "no attention masks" in app.APP.attention_section(pred, "encoder", 1, 0)[2]
        assert not any(f.endswith(".npz") for f in write_downloads(pred, tmp_path / "split")[0])
        single = LoadedModel("d", "d", MTAN(preset_tasks("cityscapes-7")[1:], arch="single", width=1 / 16).eval())
        seg, depth, bar, (_, after), normals = views.show_main(predict_photo(single, photo, (128, 256)), 0.5,
                                                             "turbo", "segmentation")
        assert seg is None and normals is None and depth.size == after.size == (w, h) and "inverse depth" in bar
    finally:
        sys.modules.pop("app", None)


# --------------------------------------------------------------------------------------
# Helpers without the app
# --------------------------------------------------------------------------------------


def test_image_modes_become_rgb(tmp_path):
    from mtan.serve import load_image, to_rgb

    twelve_bit = Image.fromarray(np.array([[0, 4095]], np.uint16))
    assert to_rgb(twelve_bit).getpixel((1, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"
    p = tmp_path / "huge.jpg"
    street_image(400, 800).save(p)
    im, notes = load_image(p, max_pixels=20_000)
    assert im.width * im.height <= 20_000 and notes


def test_fit_and_resolution():
    from mtan.inference import Resolution

    box = Resolution.parse("256x512")
    assert box == (256, 512) and str(box) == "256x512" and Resolution.parse(box) == box
    for bad in ("big", "0x512", "256x5000", "1x2x3", None):
        with pytest.raises(ValueError, match="a processing resolution is HEIGHTxWIDTH, e.g. 256x512"):
            Resolution.parse(bad)
    assert box.fit(1024, 2048) == (256, 512)
    assert box.fit(4032, 3024) == (256, 192)  # portrait: fits the height
    assert box.fit(100, 150) == (256, 384)    # small photos are enlarged
    assert box.network_size(4032, 3024) == (256, 192) and box.network_size(1000, 2100) == (256, 512)  # 244x512, padded


def test_one_resize_for_every_path():
    """Photos (8-bit) and tensors (float) are resized alike: the app's input equals the
    evaluator's to within one 8-bit level."""
    from mtan.inference import fitted, resize, to_tensor

    photo = np.array(street_image(300, 500))
    as_photo = fitted(photo, (128, 256))
    as_tensor = fitted(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255, (128, 256))
    assert as_photo.shape == as_tensor.shape == (1, 3, 128, 213) and as_photo.dtype == torch.float32
    assert float((as_photo - as_tensor).abs().max()) <= 1.5 / 255
    same = to_tensor(photo)
    assert resize(same, (300, 500)) is same and same.dtype == torch.uint8


def test_colorbar_and_depth_png():
    from mtan.tasks import DepthTask
    from mtan.serve.downloads import depth_to_png16
    from mtan.serve.render import colorbar_html

    inverse, metric = DepthTask("depth", "inverse"), DepthTask("depth", "metric")
    bar = colorbar_html(inverse, (0.0185, 0.185))
    assert "≈ 100 m" in bar and "≈ 10 m" in bar
    assert "> 1 km" in colorbar_html(inverse, (0.001, 0.01))
    assert "metres" in colorbar_html(metric, (1.0, 10.0))
    png, top, text = depth_to_png16(np.array([[0.0, 0.5, 1.0, -1.0, np.nan]], np.float32), inverse)
    assert top == 1.0 and png.tolist() == [[1, 32768, 65535, 1, 0]] and "1.85" in text  # sky 1 = farthest
    assert "0 = no value" in text and "(the sky)" in text
    assert not re.search(r"(?<![\w.])-\d", colorbar_html(inverse, (-0.006, 0.1)))  # never a negative number


def test_distances_of_the_vehicles_and_people(client, models, tmp_path):
    """/distances: the regions of the listed classes with their distance, nearest first, as JSON;
    a model whose classes have no vehicle or person lists none."""
    from gradio_client import handle_file

    path, size = _write("jpeg", tmp_path)
    out = client.predict(handle_file(str(path)), models["city"], "128x256", False, api_name="/distances")
    assert set(out) == {"objects", "photo_size", "note"} and out["photo_size"] == list(size)
    assert "approximate" in out["note"]
    metres = [o["metres"] for o in out["objects"]]
    assert metres == sorted(metres) and all(m > 0 for m in metres)
    for o in out["objects"]:
        assert o["class"] in ("vehicle", "human") and o["where"] in ("left", "ahead", "right") and 0 < o["share"] <= 1
        left, top, right, bottom = o["box"]
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    indoor = client.predict(handle_file(str(path)), models["nyu"], "128x256", False, api_name="/distances")
    assert indoor["objects"] == []


def test_the_mcp_tool_is_listed_and_answers(app_url, tmp_path):
    """The app serves one MCP tool, street_photo: a photo as a data URL (or an example's name) in;
    the segmentation and depth pictures and the distances JSON out. Web addresses are not fetched
    and the app's other endpoints are not tools."""
    import asyncio
    import base64

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    path, size = _write("jpeg", tmp_path)
    photo = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()

    async def session():
        async with streamable_http_client(app_url.rstrip("/") + "/gradio_api/mcp/") as streams:
            async with ClientSession(*streams[:2]) as s:
                await s.initialize()
                tools = (await s.list_tools()).tools
                answers = {"photo": await s.call_tool("street_photo", {"photo": photo}),
                           "example": await s.call_tool("street_photo", {"photo": "camvid_3_van.jpg"}),
                           "url": await s.call_tool("street_photo", {"photo": "http://127.0.0.1:1/secret.jpg"}),
                           "not base64": await s.call_tool("street_photo", {"photo": "data:image/png;base64,@@@"}),
                           "predict": await s.call_tool("predict", {"image": "http://127.0.0.1:1/x.jpg"})}
                return tools, answers

    tools, answers = asyncio.run(session())
    assert [t.name for t in tools] == ["street_photo"]
    schema = tools[0].inputSchema
    assert schema["required"] == ["photo"] and schema["properties"]["photo"]["type"] == "string"
    assert "data URL" in schema["properties"]["photo"]["description"] and "metres" in tools[0].description
    for key in ("photo", "example"):
        answer = answers[key]
        assert not answer.isError
        images = [c for c in answer.content if c.type == "image"]
        assert [c.mimeType for c in images] == ["image/jpeg", "image/jpeg"]
        pictures = [Image.open(io.BytesIO(base64.b64decode(c.data))) for c in images]
        result = json.loads([c.text for c in answer.content if c.type == "text" and c.text.startswith("{")][0])
        assert {"objects", "classes", "photo_size", "summary", "note", "model"} <= set(result)
        assert all(p.size == tuple(result["photo_size"]) for p in pictures)
        assert sum(result["classes"].values()) == pytest.approx(1.0, abs=1e-3)
        assert len(result["summary"]) == len(result["objects"])
    assert answers["photo"].content and json.loads(
        [c.text for c in answers["photo"].content if c.type == "text" and c.text.startswith("{")][0])["photo_size"] == list(size)
    for key, words in (("url", "does not fetch web addresses"), ("not base64", "not valid base64"),
                       ("predict", "Unknown tool")):
        assert answers[key].isError and words in answers[key].content[0].text, answers[key].content
