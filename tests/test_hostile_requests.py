"""Hostile requests in gradio's own wire protocol, to every event of the running app.

A visitor of a public link can call any event (private ones too) by its ``fn_index`` with any
JSON values, skipping the page and gradio_client. Each attack below must get a clear error within
seconds, allocate little, print one log line, never show a server path, an object address or an
exception's text, and leave the app answering a normal photo right after.

One app serves the module: the tiny CityScapes model, a 10 MB upload limit, the default
100,000,000-pixel decode ceiling, and its own gradio upload folder (``GRADIO_TEMP_DIR``), where
the tests plant files that an upload could never create (links, a pipe, an oversized file).
Set ``MTAN_HOSTILE_REPORT=FILE`` to write every attack's outcome, time and the server's peak
memory as JSON.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rawprotocol as rp
from apphelpers import REPO, app_process, predict, proc_status_kb, size_of, street_image
from PIL import Image

from mtan.serve.uploads import NOT_UPLOADED

MAX_FILE_SIZE = 10 * 1024 * 1024
FAST = 5.0  # seconds: every refusal comes at least this fast (measured: well under 1 s)
RESULTS: list[dict] = []


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    uploads = tmp_path_factory.mktemp("gradio-uploads")
    log = tmp_path_factory.mktemp("log") / "app.log"
    env = {"MTAN_MODEL": models["city"], "MTAN_DEFAULT_MODEL": models["city"], "MTAN_MODELS": "",
           "MTAN_MAX_FILE_SIZE": "10mb", "MTAN_MAX_IMAGE_PIXELS": "", "MTAN_MAX_PIXELS": "",
           "GRADIO_TEMP_DIR": str(uploads)}
    with app_process(env, log) as (url, proc):
        yield {"url": url, "proc": proc, "uploads": uploads, "log": log, "events": rp.events(url),
               "components": {c["id"]: c for c in rp.config(url)["components"]}}


@pytest.fixture(scope="module")
def normal_photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("normal") / "normal.jpg"
    street_image(200, 320).save(p, quality=90)
    return p


@pytest.fixture(scope="module")
def baseline(app, normal_photo):
    """The server's peak memory after one normal prediction (model and libraries warm)."""
    from gradio_client import Client

    client = Client(app["url"], verbose=False)
    predict(client, normal_photo, resolution="128x256")
    return {"client": client, "peak_kb": proc_status_kb(app["proc"].pid, "VmHWM")}


def events_with(app, kind: str) -> dict[int, dict]:
    """The events whose inputs include a component of ``kind`` (its config type name)."""
    return {i: e for i, e in app["events"].items()
            if any(app["components"][c]["type"] == kind for c in e["inputs"])}


def defaults(app, event: dict, image=None) -> list:
    """A valid value for each input of ``event``: each component's current value, ``image`` for images."""
    values = []
    for cid in event["inputs"]:
        comp = app["components"][cid]
        values.append(image if comp["type"] == "image" else comp.get("props", {}).get("value"))
    return values


def send(app, index: int, data: list) -> rp.Answer:
    event = app["events"][index]
    if event.get("queue") is False:
        return rp.call_direct(app["url"], index, data, timeout=60)
    return rp.call(app["url"], index, data, timeout=60)


def assert_clean(message: str, app) -> None:
    """No server path, object address, traceback or raw exception text in a visitor's message."""
    for secret in (str(REPO), str(app["uploads"]), "/tmp", "/etc", "/dev", "/work"):
        assert secret not in message, message
    assert not re.search(r"0x[0-9a-f]{6,}", message) and "Traceback" not in message, message
    assert not re.search(r"\b(TypeError|KeyError|ValueError|AttributeError|OSError|InvalidPathError)\b", message)


def refused(app, index: int, data: list, attack: str, match: str | None = None) -> rp.Answer:
    answer = send(app, index, data)
    RESULTS.append({"event": app["events"][index].get("api_name"), "fn_index": index, "attack": attack,
                    "refused": not answer.ok, "seconds": round(answer.seconds, 3), "message": answer.message})
    assert not answer.ok, (attack, answer)
    assert answer.seconds < FAST, (attack, answer.seconds)
    assert_clean(answer.message, app)
    if match is not None:
        assert re.search(match, answer.message), (attack, answer.message)
    return answer


def still_serving(baseline, photo: Path) -> None:
    out = predict(baseline["client"], photo, resolution="128x256")
    assert size_of(out["segmentation"]) == (320, 200)


# --------------------------------------------------------------------------------------
# Files that an event may not read: every event that takes an image
# --------------------------------------------------------------------------------------


def planted(app) -> dict[str, str]:
    """Files in the app's own upload folder that no upload creates: links, a pipe, too large a file."""
    folder = app["uploads"] / "planted"
    if not folder.exists():
        folder.mkdir()
        (folder / "to_passwd.jpg").symlink_to("/etc/passwd")
        (folder / "to_screenshot.png").symlink_to(REPO / "docs" / "app_desktop.png")
        (folder.parent / "outside").symlink_to(REPO / "docs")  # a linked folder
        os.mkfifo(folder / "pipe.jpg")
    if not (folder / "huge.jpg").exists():  # a refusal removes a stored file over the limit: planted again
        with open(folder / "huge.jpg", "wb") as f:
            f.truncate(MAX_FILE_SIZE + 1)  # sparse: no disk used
    return {"link to /etc/passwd": str(folder / "to_passwd.jpg"),
            "link to a server image": str(folder / "to_screenshot.png"),
            "file through a linked folder": str(folder.parent / "outside" / "app_desktop.png"),
            "named pipe": str(folder / "pipe.jpg"),
            "the upload folder itself": str(app["uploads"]),
            "over the upload limit, never uploaded": str(folder / "huge.jpg")}


def png_bomb_data_url() -> str:
    """A data: URL of a PNG that claims 28000x28000 grey pixels (784 M) in a few hundred bytes."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 28000, 28000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 28001 * 64)) + \
        chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def file_attacks(app) -> dict[str, object]:
    meta = {"meta": {"_type": "gradio.FileData"}}
    bomb = png_bomb_data_url()
    attacks = {
        "/dev/zero, no meta": {"path": "/dev/zero"},
        "/dev/zero, with meta": {"path": "/dev/zero"} | meta,
        "/dev/urandom as a stream": {"path": "/dev/urandom", "is_stream": True} | meta,
        "a server image, no meta": {"path": str(REPO / "docs" / "app_desktop.png")},
        "a server image, with meta": {"path": str(REPO / "docs" / "app_desktop.png")} | meta,
        "a server text file": {"path": "/etc/passwd"} | meta,
        "a path that does not exist": {"path": "/no/such/file.jpg"} | meta,
        "a relative path": {"path": "docs/app_desktop.png"} | meta,
        "a path climbing out of the upload folder": {"path": str(app["uploads"]) + "/../../etc/passwd"} | meta,
        "file: URL": {"path": "file:/etc/passwd"} | meta,
        "data: URL PNG bomb as the path": {"path": bomb} | meta,
        "data: URL PNG bomb as the url": {"path": None, "url": bomb} | meta,
        "http URL to the app itself": {"path": app["url"] + "config", "url": app["url"] + "config"} | meta,
        "a bare string path": "/etc/passwd",
        "a number": 12345,
        "a list": ["/etc/passwd"],
        "a nested value": {"path": {"path": "/etc/passwd"}} | meta,
        "a NUL byte": {"path": str(app["uploads"]) + "/x\u0000.jpg"} | meta,
    }
    attacks |= {name: {"path": path} | meta for name, path in planted(app).items()}
    return attacks


def test_every_file_event_refuses_files_it_may_not_read(app, baseline, normal_photo):
    file_events = events_with(app, "image")
    assert len(file_events) >= 4  # predict, and the re-runs on a model, resolution or example change
    attacks = file_attacks(app)
    for index, event in file_events.items():
        image_at = [app["components"][c]["type"] for c in event["inputs"]].index("image")
        # The live webcam's frames arrive inline, as data: URLs: there a data: URL is decoded (and a bomb refused
        # from its header), not refused as a path.
        streaming = app["components"][event["inputs"][image_at]].get("props", {}).get("streaming")
        messages = {}
        for name, value in attacks.items():
            if name.startswith("over the upload limit"):
                value = {"path": planted(app)[name]} | {"meta": {"_type": "gradio.FileData"}}
            data = defaults(app, event)
            data[image_at] = value
            over_limit = name.startswith("over the upload limit")
            inline = streaming and name == "data: URL PNG bomb as the url"
            answer = refused(app, index, data, name, r"too large: this app accepts photos of up to 10 MB" if over_limit
                             else r"The image is too large: 28000x28000 pixels" if inline else None)
            messages[name] = answer.message
            if over_limit:
                assert not Path(value["path"]).exists(), "a stored upload over the limit is removed as it is refused"
        # One answer for every path it may not read: nothing tells whether a path exists on the server.
        same = {m for n, m in messages.items() if not n.startswith(("over the upload limit", "a number", "a list",
                                                                      "a bare string"))
                and not (streaming and n == "data: URL PNG bomb as the url")}
        assert same == {f"Error: {NOT_UPLOADED}"} or same == {NOT_UPLOADED}, same
    still_serving(baseline, normal_photo)


def test_the_apps_own_outputs_cannot_be_fed_back(app, baseline):
    """Views and downloads of another visitor's prediction live in the upload folder too: refused."""
    outputs = sorted((app["uploads"] / "mtan-app").rglob("*.jpg"))
    assert outputs, "the baseline prediction wrote its views there"
    index = next(iter(events_with(app, "image")))
    data = defaults(app, app["events"][index], rp.file_value(str(outputs[0])))
    refused(app, index, data, "another prediction's view", re.escape(NOT_UPLOADED))


def test_a_real_upload_still_works_through_every_file_event(app, baseline, normal_photo):
    path = rp.upload(app["url"], normal_photo)
    for index, event in events_with(app, "image").items():
        answer = send(app, index, defaults(app, event, rp.file_value(path, "normal.jpg")))
        assert answer.ok, (event.get("api_name"), answer)
        assert answer.seconds < 30


def test_examples_load_and_run(app, baseline):
    """The example loader takes only an index of the examples; what it returns runs."""
    loader = next((i for i, e in app["events"].items() if e.get("api_name") == "load_example"), None)
    if loader is None:
        pytest.skip("no examples/ in this checkout")
    for value in (-1, 10**6, "0", True, [0], {"index": 0}, 1.5):
        refused(app, loader, [value], f"example index {value!r}", "example must be a number from 0")
    answer = send(app, loader, [0])
    assert answer.ok, answer
    value = answer.output[0]
    value = value.get("value", value) if isinstance(value, dict) and "__type__" in value else value
    index = next(iter(events_with(app, "image")))
    assert send(app, index, defaults(app, app["events"][index], value)).ok


# --------------------------------------------------------------------------------------
# Values of the wrong kind: every event, every input
# --------------------------------------------------------------------------------------


def wrong_values(comp: dict) -> dict[str, object]:
    kind = comp["type"]
    if kind == "slider":
        hi = comp["props"].get("maximum", 1)
        return {"text": "abc", "list": [1], "bool": True, "too large": hi + 1e6, "infinite": float("inf"),
                "object": {"a": 1}}
    if kind in ("dropdown", "radio"):
        return {"list": ["x"], "object": {"value": "x"}, "long text": "x" * 5000, "number": 3.5}
    if kind == "checkbox":
        return {"text": "yes", "number": 1, "list": [True]}
    if kind == "textbox":
        return {"list": ["data:image/png;base64,AAAA"], "number": 3, "object": {"photo": "x"}}
    return {}


def test_every_event_refuses_values_of_the_wrong_kind(app, baseline, normal_photo):
    tried = 0
    for index, event in app["events"].items():
        for pos, cid in enumerate(event["inputs"]):
            for name, value in wrong_values(app["components"][cid]).items():
                data = defaults(app, event)
                data[pos] = value
                label = app["components"][cid].get("props", {}).get("label")
                refused(app, index, data, f"{label}: {name}", "not valid")
                tried += 1
        # No values at all: every control takes its default (as for an older client sending fewer):
        # a photo event then asks for a photo, the masks' download for a photo run first, the others
        # have nothing to redraw.
        answer = send(app, index, [])
        assert answer.seconds < FAST and (answer.ok or re.search(
            "Upload a photo first|example must be a number|Run a photo first|Upload a video clip first|"
            "Send the photo as a data URL",
            answer.message)), answer
    assert tried > 40
    tool = next(i for i, e in app["events"].items() if e.get("api_name") == "street_photo")
    limit = app["components"][app["events"][tool]["inputs"][0]]["props"]["max_length"]
    refused(app, tool, ["data:image/jpeg;base64," + "A" * limit], "an over-long photo text", "too long")
    still_serving(baseline, normal_photo)


def test_fixed_choices_are_checked(app, baseline, normal_photo):
    predict_index = next(i for i, e in app["events"].items() if e.get("api_name") == "predict")
    event = app["events"][predict_index]
    photo = rp.file_value(rp.upload(app["url"], normal_photo))  # the resolution is checked for the model, after it
    for label, bad, match in (("Model", "/etc/passwd", "must be one of"), ("Colours", "evil", "must be one of"),
                              ("Processing resolution", "99999x99999", "not a processing resolution of this app")):
        pos = next(p for p, c in enumerate(event["inputs"])
                   if (app["components"][c].get("props", {}).get("label") or "").startswith(label))
        data = defaults(app, event, photo)
        data[pos] = bad
        refused(app, predict_index, data, f"{label}: not a choice", match)


# --------------------------------------------------------------------------------------
# Decoder bombs, uploaded the normal way
# --------------------------------------------------------------------------------------


def _jpeg(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def jpeg_scan_bomb(repeats: int = 2000) -> bytes:
    """A progressive 8000x8000 JPEG whose last scan is repeated ``repeats`` times (a decoder
    processes each again: about 40-100 ms a scan at this size)."""
    data = _jpeg(Image.new("RGB", (8000, 8000), (120, 140, 160)), progressive=True, quality=75)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:last] + data[last:end] * repeats + data[end:]


def progressive_giant(width: int = 45000, height: int = 45000) -> bytes:
    """A small progressive greyscale JPEG whose frame header claims ``width`` x ``height``: a
    decoder would keep every coefficient at that size (2 bytes a pixel: 4 GB)."""
    data = bytearray(_jpeg(Image.new("L", (64, 64), 128), progressive=True))
    sof = data.find(b"\xff\xc2")
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def jpeg_segment_flood(segments: int = 100_000) -> bytes:
    """A JPEG with ``segments`` empty comment segments before its frame."""
    data = _jpeg(street_image(64, 64))
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def jpeg_in_tiff() -> bytes:
    b = io.BytesIO()
    street_image(64, 64).save(b, "TIFF", compression="jpeg")
    return b.getvalue()


BOMBS = {
    "progressive JPEG, last scan repeated 2,000 times": (jpeg_scan_bomb, "more than 32 scans"),
    "progressive JPEG claiming 45000x45000": (progressive_giant, r"progressive JPEG, decoded at full size"),
    "JPEG with 100,000 marker segments": (jpeg_segment_flood, "marker segments"),
    "TIFF with JPEG compression": (jpeg_in_tiff, "compression, which this app does not decode"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decoder_bombs_are_refused_before_decoding(app, baseline, normal_photo, tmp_path, name):
    make, match = BOMBS[name]
    p = tmp_path / ("bomb.tiff" if "TIFF" in name else "bomb.jpg")
    p.write_bytes(make())
    assert p.stat().st_size < MAX_FILE_SIZE
    path = rp.upload(app["url"], p)
    predict_index = next(i for i, e in app["events"].items() if e.get("api_name") == "predict")
    refused(app, predict_index, defaults(app, app["events"][predict_index], rp.file_value(path, p.name)), name, match)
    still_serving(baseline, normal_photo)


def test_a_visitor_arriving_after_a_scan_bomb_is_answered_at_once(app, baseline, normal_photo, tmp_path):
    """The bomb holds the prediction slot for a fraction of a second, not a minute."""
    import threading

    p = tmp_path / "bomb.jpg"
    p.write_bytes(jpeg_scan_bomb())
    path = rp.upload(app["url"], p)
    predict_index = next(i for i, e in app["events"].items() if e.get("api_name") == "predict")
    data = defaults(app, app["events"][predict_index], rp.file_value(path, p.name))
    threading.Thread(target=send, args=(app, predict_index, data), daemon=True).start()
    start = time.monotonic()
    still_serving(baseline, normal_photo)
    assert time.monotonic() - start < 10


# --------------------------------------------------------------------------------------
# What the server serves, logs and holds
# --------------------------------------------------------------------------------------


def test_only_example_images_are_served_from_examples(app):
    def status(path: Path) -> int:
        try:
            with urllib.request.urlopen(app["url"] + f"gradio_api/file={path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    images = sorted((REPO / "examples").glob("*.jpg"))
    others = [p for p in (REPO / "examples").iterdir() if p.is_file() and p.suffix not in (".jpg", ".png")]
    if not images or not others:
        pytest.skip("examples/ holds no images or no other files")
    assert status(images[0]) == 200
    for p in others + [REPO / "app.py", REPO / "weights" / "model.safetensors"]:
        assert status(p) in (403, 404), p


def test_refusals_are_logged_in_one_line_each(app):
    text = app["log"].read_text(errors="replace")
    assert RESULTS, "run with the attacks above"
    assert "Traceback" not in text
    assert text.count("mtan app: refused") >= len(RESULTS)
    assert all(len(line) < 600 for line in text.splitlines() if "refused" in line)


def test_memory_stays_bounded_and_report(app, baseline, normal_photo):
    still_serving(baseline, normal_photo)
    peak = proc_status_kb(app["proc"].pid, "VmHWM")
    growth_mb = (peak - baseline["peak_kb"]) / 1024
    if os.environ.get("MTAN_HOSTILE_REPORT"):
        Path(os.environ["MTAN_HOSTILE_REPORT"]).write_text(json.dumps(
            {"peak_rss_mb_after_warmup": baseline["peak_kb"] / 1024, "peak_rss_mb_at_end": peak / 1024,
             "attacks": RESULTS}, indent=1))
    assert growth_mb < 300, growth_mb


# --------------------------------------------------------------------------------------
# Shutdown
# --------------------------------------------------------------------------------------


def test_sigterm_stops_the_app_with_a_prediction_in_flight(models, tmp_path):
    """SIGTERM while a large photo is being processed: the process ends within seconds."""
    import threading

    a = np.asarray(street_image(600, 900).resize((7200, 4800), Image.Resampling.NEAREST))
    p = tmp_path / "big.jpg"
    Image.fromarray(a).save(p, quality=85)
    env = {"MTAN_MODEL": models["city"], "MTAN_DEFAULT_MODEL": models["city"], "MTAN_MODELS": "",
           "GRADIO_TEMP_DIR": str(tmp_path / "uploads")}
    log = tmp_path / "app.log"
    with app_process(env, log) as (url, proc):
        path = rp.upload(url, p)
        index = next(i for i, e in rp.events(url).items() if e.get("api_name") == "predict")
        data = [rp.file_value(path, "big.jpg"), None, "512x1024", 0.5, None, None, None, None, 0, -1]
        started = threading.Event()
        threading.Thread(target=rp.call, args=(url, index, data), kwargs={"started": started}, daemon=True).start()
        assert started.wait(30)
        time.sleep(0.3)  # decoding the 35-megapixel photo
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        assert proc.returncode == 0 and "mtan app: stopped" in log.read_text()


# --------------------------------------------------------------------------------------
# In process: the JPEG marker walk and the image limits it feeds
# --------------------------------------------------------------------------------------


def test_jpeg_layout_counts_scans_not_restart_markers():
    from mtan.serve.jpeg import JpegStructureError, read_layout

    im = street_image(240, 320)
    baseline_jpeg = read_layout(_jpeg(im, restart_marker_blocks=1), max_scans=32)  # a restart marker per block
    assert (baseline_jpeg.width, baseline_jpeg.height, baseline_jpeg.components) == (320, 240, 3)
    assert baseline_jpeg.scans == 1 and not baseline_jpeg.multi_scan and baseline_jpeg.segments < 20
    progressive = read_layout(_jpeg(im, progressive=True), max_scans=32)
    assert progressive.progressive and progressive.multi_scan and 6 <= progressive.scans <= 12
    assert read_layout(b"\x89PNG\r\n\x1a\n", max_scans=32) is None
    with pytest.raises(JpegStructureError, match="more than 5 scans"):
        read_layout(_jpeg(im, progressive=True), max_scans=5)


def test_progressive_jpegs_count_at_full_size_and_long_sides_get_their_own_note(tmp_path):
    from mtan.serve import ImageLoadError, load_image

    im = street_image(1000, 1600)
    data = _jpeg(im, progressive=True)
    with pytest.raises(ImageLoadError, match="progressive JPEG, decoded at full size, 1600x1000"):
        load_image(data, max_pixels=100_000, max_image_pixels=1_000_000)  # 1/4 draft would be 100,000 pixels
    photo, _ = load_image(_jpeg(im), max_pixels=100_000, max_image_pixels=1_000_000)  # baseline: draft is real
    assert photo.size == (400, 250)
    b = io.BytesIO()
    Image.new("RGB", (100_000, 1), (90, 90, 95)).save(b, "PNG")
    photo, notes = load_image(b.getvalue())
    assert photo.width == 65_000 and "limit of 65,000 pixels a side" in notes[0]
