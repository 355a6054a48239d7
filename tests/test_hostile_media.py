"""Hostile clips, webcam streams and numbers, sent to the running app in gradio's wire protocol.

A visitor can upload any file and call ``/predict_video``, ``/predict_3d`` and the webcam's
``live_frame`` with any values. Clips that name other files (playlists, manifests, lists), images
posing as clips, huge frames behind small files, huge numbers, webcam streams left open without
frames: each must get a clear message within seconds, cost the server little memory, log one line,
and leave the app answering everyone else. Set ``MTAN_HOSTILE_REPORT=FILE`` to write each
attack's answer, time and the server's memory as JSON.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import rawprotocol as rp
from apphelpers import app_process, proc_status_kb, street_image
from mediahelpers import write_clip
from PIL import Image

from mtan.serve.streams import ONE_STREAM

IDLE_SECONDS = 2.0
RESULTS: list[dict] = []


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    uploads = tmp_path_factory.mktemp("gradio-uploads")
    log = tmp_path_factory.mktemp("log") / "app.log"
    env = {"MTAN_MODEL": models["city"], "MTAN_DEFAULT_MODEL": models["city"], "MTAN_MODELS": "",
           "MTAN_MAX_FILE_SIZE": "2mb", "MTAN_MAX_VIDEO_SIZE": "8mb", "MTAN_LIVE_IDLE_SECONDS": str(IDLE_SECONDS),
           "GRADIO_TEMP_DIR": str(uploads)}
    with app_process(env, log) as (url, proc):
        events = {e.get("api_name"): i for i, e in rp.events(url).items() if e.get("api_name")}
        components = {c["id"]: c for c in rp.config(url)["components"]}
        yield {"url": url, "proc": proc, "log": log, "uploads": uploads, "events": events,
               "all_events": rp.events(url), "components": components}


def rss_mb(app) -> float:
    return proc_status_kb(app["proc"].pid) / 1024


def peak_mb(app) -> float:
    return proc_status_kb(app["proc"].pid, "VmHWM") / 1024


def reset_peak(app) -> float:
    """Start the server's peak memory afresh (Linux: clear_refs 5); its memory now, in MB."""
    Path(f"/proc/{app['proc'].pid}/clear_refs").write_text("5")
    return rss_mb(app)


def values(app, api_name: str, **given) -> list:
    """The event's inputs: each component's default, or ``given[label or type]``."""
    event = app["all_events"][app["events"][api_name]]
    out = []
    for cid in event["inputs"]:
        comp = app["components"][cid]
        props = comp.get("props", {})
        key = next((k for k in (props.get("label"), comp["type"]) if k in given), None)
        out.append(given[key] if key else props.get("value"))
    return out


def clip_call(app, path: Path, name: str | None = None, **given) -> tuple[rp.Answer, float]:
    """The answer to a clip upload, and the server's memory just before it was called (peak reset)."""
    stored = rp.upload(app["url"], path)
    data = values(app, "predict_video", video=rp.file_value(stored, name or path.name), **given)
    before = reset_peak(app)
    return rp.call(app["url"], app["events"]["predict_video"], data, timeout=120), before


def record(attack: str, answer: rp.Answer, before_mb: float, app) -> None:
    RESULTS.append({"attack": attack, "refused": not answer.ok, "seconds": round(answer.seconds, 3),
                    "message": answer.message[:300], "server_rss_mb": round(rss_mb(app)),
                    "server_peak_growth_mb": round(peak_mb(app) - before_mb)})


def assert_refused(app, attack: str, answer: rp.Answer, before_mb: float, match: str, seconds: float = 5.0,
                   memory_mb: float = 100.0) -> None:
    """Refused with ``match`` in the message, fast, no server detail shown, the server's peak within
    ``memory_mb`` of ``before_mb`` (its memory when the peak was reset before the call)."""
    record(attack, answer, before_mb, app)
    assert not answer.ok, (attack, answer)
    assert re.search(match, answer.message), (attack, answer.message)
    assert answer.seconds < seconds, (attack, answer.seconds)
    for secret in ("/tmp", "/etc", "/work", "/root", "Traceback"):
        assert secret not in answer.message, answer.message
    assert peak_mb(app) - before_mb < memory_mb, (attack, peak_mb(app) - before_mb)


@pytest.fixture(scope="module")
def warm(app, tmp_path_factory):
    """One good clip and one photo run first (libraries and model warm); the server's peak after it."""
    folder = tmp_path_factory.mktemp("warm")
    good = write_clip(folder / "good.mp4", seconds=1, fps=10)
    assert clip_call(app, good)[0].ok
    photo = folder / "p.jpg"
    street_image(200, 320).save(photo)
    stored = rp.upload(app["url"], photo)
    assert rp.call(app["url"], app["events"]["predict"], values(app, "predict", image=rp.file_value(stored))).ok
    return {"good": good, "photo": photo, "peak_mb": peak_mb(app), "rss_mb": rss_mb(app)}


# ---- clips that name other files -----------------------------------------------------------------


def referencing_files(folder: Path, secret: Path) -> dict[str, tuple[str, str, str]]:
    """name -> (file name, content, expected message) of files whose format opens other files."""
    rel = os.path.relpath(secret, "/")
    climb = "../" * 12 + rel
    return {
        "HLS playlist, file:// URL": ("clip.m3u8", f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n"
                                                   f"file://{secret}\n#EXT-X-ENDLIST\n", "a playlist"),
        "HLS playlist, relative path": ("clip.m3u8", f"#EXTM3U\n#EXTINF:1.0,\n{climb}\n#EXT-X-ENDLIST\n", "a playlist"),
        "HLS playlist named .mp4": ("clip.mp4", f"#EXTM3U\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n",
                                    "a playlist"),
        "plain M3U named .webm": ("clip.webm", f"{secret}\n", "not a video clip that can be read"),
        "ffconcat list": ("clip.ffconcat", f"ffconcat version 1.0\nfile '{secret}'\n", "a concatenation list"),
        "ffconcat named .mov": ("clip.mov", f"ffconcat version 1.0\nfile '{secret}'\n", "a concatenation list"),
        "DASH manifest": ("clip.mpd", '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" '
                                      'type="static"><Period><AdaptationSet><Representation id="1" '
                                      f'bandwidth="1"><BaseURL>file://{secret}</BaseURL></Representation>'
                                      '</AdaptationSet></Period></MPD>\n', "a manifest or XML file"),
        "SMIL / XML": ("clip.smil", f'<?xml version="1.0"?><smil><body><video src="{secret}"/></body></smil>',
                       "a manifest or XML file"),
        "SDP description": ("clip.sdp", "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                                        "m=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n", "a stream description"),
        "PLS playlist": ("clip.pls", f"[playlist]\nFile1={secret}\nNumberOfEntries=1\n", "a playlist"),
    }


def test_clips_never_open_other_files(app, warm, tmp_path):
    secret = tmp_path / "server_secret.mp4"
    write_clip(secret, seconds=1, fps=10)
    for attack, (name, content, message) in referencing_files(tmp_path, secret).items():
        path = tmp_path / name
        path.write_text(content)
        answer, before = clip_call(app, path)
        assert_refused(app, attack, answer, before, message)
    # a zip holding a clip, and a clip inside a tar: not containers FFmpeg may open here
    import tarfile
    import zipfile

    with zipfile.ZipFile(tmp_path / "clip.zip", "w") as z:
        z.write(secret, "inner.mp4")
    with tarfile.open(tmp_path / "clip.tar", "w") as t:
        t.add(secret, "inner.mp4")
    for attack, path in (("zip archive holding a clip", tmp_path / "clip.zip"),
                         ("tar archive holding a clip", tmp_path / "clip.tar")):
        assert_refused(app, attack, *clip_call(app, path, name="clip.mp4"), match="not a video clip that can be read")


def png_frames_clip(path: Path, size: int, fmt: str) -> Path:
    """A clip of two huge all-zero 16-bit RGBA frames (a few hundred KB): ``mov`` (PNG in MOV) or ``apng``."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream("png" if fmt == "mov" else "apng", rate=1)
        s.width = s.height = size
        s.pix_fmt = "rgba64be"
        frame = av.VideoFrame.from_ndarray(np.zeros((size, size, 4), np.uint16), format="rgba64be")
        for i in range(2):
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return path


def test_huge_frames_in_small_files_are_refused_before_decoding(app, warm, tmp_path):
    """6000x6000 16-bit RGBA frames (288 MB each, decoded) in files of a few hundred KB."""
    for attack, path, message in (
            ("PNG frames in MOV", png_frames_clip(tmp_path / "big.mov", 6000, "mov"), "stored as PNG"),
            ("animated PNG", png_frames_clip(tmp_path / "big.apng", 6000, "apng"), "a PNG image, not a video clip")):
        assert path.stat().st_size < 2_000_000
        assert_refused(app, attack, *clip_call(app, path, name="clip.mp4"), match=message, memory_mb=50)


def raw_h264(path: Path) -> Path:
    """A raw H.264 stream (no container, no duration)."""
    import av

    with av.open(str(path), "w", format="h264") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(10):
            f = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 20 * i, np.uint8), format="rgb24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def test_containers_and_codecs_outside_the_list_are_refused(app, warm, tmp_path):
    gif = tmp_path / "a.gif"
    frames = [Image.new("RGB", (64, 48), (i, 0, 0)) for i in range(0, 250, 25)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40)
    for attack, path, message in (
            ("raw H.264 stream without a container", raw_h264(tmp_path / "raw.h264"), "not a video clip that can be read"),
            ("GIF animation named .mp4", gif, "a GIF image, not a video clip"),
            ("a text file named .mp4", None, "not a video clip that can be read")):
        if path is None:
            path = tmp_path / "notes.txt"
            path.write_text("hello\n" * 100)
        assert_refused(app, attack, *clip_call(app, path, name="clip.mp4"), match=message)


def test_clip_refusals_name_the_clip(app, warm, tmp_path):
    data = values(app, "predict_video", video=rp.file_value("/etc/passwd", "clip.mp4"))
    before = reset_peak(app)
    answer = rp.call(app["url"], app["events"]["predict_video"], data)
    assert_refused(app, "clip path not uploaded", answer, before, "upload a video clip")
    assert "photo" not in answer.message


# ---- numbers ------------------------------------------------------------------------------------


def test_huge_and_odd_numbers_get_the_controls_range(app, warm):
    stored = rp.upload(app["url"], warm["photo"])
    clip = rp.upload(app["url"], warm["good"])
    tracebacks = app["log"].read_text(errors="replace").count("Traceback")
    for api_name, file_value in (("predict_3d", rp.file_value(stored)), ("predict_video", rp.file_value(clip, "c.mp4"))):
        event = app["all_events"][app["events"][api_name]]
        sliders = [(i, app["components"][c]) for i, c in enumerate(event["inputs"])
                   if app["components"][c]["type"] == "slider"]
        assert sliders, api_name
        for i, comp in sliders:
            for bad in (10 ** 400, -(10 ** 400), 2 ** 63, 1e308, "1e999", [1], {"a": 1}):
                data = values(app, api_name, image=file_value, video=file_value)
                data[i] = bad
                before = reset_peak(app)
                answer = rp.call(app["url"], app["events"][api_name], data)
                label = comp["props"].get("label")
                attack = f"{api_name} {label} = {str(bad)[:20]}"
                assert_refused(app, attack, answer, before, re.escape(f"{label} must be"))
                assert re.search(r"between -?[\d.]+ and [\d.]+", answer.message), answer.message
                assert answer.message not in ("None", "Error", "")
    assert app["log"].read_text(errors="replace").count("Traceback") == tracebacks


# ---- photos: per-kind upload limit, decoding memory ------------------------------------------------


def test_a_photo_over_the_photo_limit_is_refused_and_removed(app, warm, tmp_path):
    big = tmp_path / "big.jpg"
    street_image(200, 320).save(big)
    big.write_bytes(big.read_bytes() + bytes(5 * 1024 * 1024))  # under the clip limit, over the photo limit
    stored = rp.upload(app["url"], big)
    assert Path(stored).exists()
    before = reset_peak(app)
    answer = rp.call(app["url"], app["events"]["predict"], values(app, "predict", image=rp.file_value(stored)))
    assert_refused(app, "photo over the photo limit", answer, before, "accepts photos of up to 2 MB")
    assert not Path(stored).exists()


def test_a_100_megapixel_photo_costs_under_500_mb(app, warm, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (10000, 10000), (90, 120, 150)).save(path, compress_level=1)
    stored = rp.upload(app["url"], path)
    before = reset_peak(app)
    answer = rp.call(app["url"], app["events"]["predict"], values(app, "predict", image=rp.file_value(stored)),
                     timeout=120)
    record("100-megapixel RGB PNG photo (answered)", answer, before, app)
    assert answer.ok, answer
    assert peak_mb(app) - before < 500, peak_mb(app) - before
    rgba = tmp_path / "huge_rgba.png"
    Image.new("RGBA", (10000, 10000), (90, 120, 150, 200)).save(rgba, compress_level=1)
    stored = rp.upload(app["url"], rgba)
    before = reset_peak(app)
    answer = rp.call(app["url"], app["events"]["predict"], values(app, "predict", image=rp.file_value(stored)))
    assert_refused(app, "100-megapixel RGBA PNG photo", answer, before, "would take about .* MB of memory")


# ---- the live webcam ----------------------------------------------------------------------------


def frame_url(size=(240, 320)) -> str:
    buf = io.BytesIO()
    street_image(*size).save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class Stream:
    """A webcam stream that sends its first frame and then nothing, its event stream kept open."""

    def __init__(self, app, session: str | None = None):
        self.app, self.session = app, session or uuid.uuid4().hex[:11]
        self.first_answer: float | None = None
        self.ended: float | None = None
        self.refused: str | None = None
        self.start = time.monotonic()
        frame = {"path": None, "url": frame_url(), "orig_name": "webcam.jpg", "meta": {"_type": "gradio.FileData"}}
        body = json.dumps({"data": values(app, "live_frame", image=frame), "event_data": None,
                           "fn_index": app["events"]["live_frame"], "trigger_id": None,
                           "session_hash": self.session}).encode()
        request = urllib.request.Request(app["url"] + "gradio_api/queue/join", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                self.event_id = json.loads(r.read())["event_id"]
        except urllib.error.HTTPError as e:
            self.refused = e.read().decode(errors="replace")
            return
        self.thread = threading.Thread(target=self.listen, daemon=True)
        self.thread.start()

    def listen(self):
        url = self.app["url"] + f"gradio_api/queue/data?session_hash={self.session}"
        with urllib.request.urlopen(url, timeout=200) as stream:
            for line in stream:
                line = line.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") != self.event_id:
                    continue
                if msg.get("msg") == "process_streaming" and self.first_answer is None:
                    self.first_answer = time.monotonic() - self.start
                if msg.get("msg") == "process_completed":
                    self.ended = time.monotonic() - self.start
                    return


def wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_idle_webcam_streams_give_their_slots_back(app, warm):
    """Four streams (every slot) send one frame and then nothing: each ends after the idle timeout,
    and a fifth visitor's first frame is answered within seconds, not after the streams' 2 minutes."""
    idle = [Stream(app) for _ in range(4)]
    assert wait(lambda: all(s.first_answer is not None for s in idle), 30), [s.first_answer for s in idle]
    fifth = Stream(app)
    assert wait(lambda: fifth.first_answer is not None, 20), "the fifth stream got no answer"
    RESULTS.append({"attack": "4 idle webcam streams, then a 5th visitor", "fifth_first_frame_seconds":
                    round(fifth.first_answer, 2), "idle_stream_ended_after_seconds": [s.ended and round(s.ended, 1)
                                                                                      for s in idle]})
    assert fifth.first_answer < IDLE_SECONDS + 8, fifth.first_answer
    assert wait(lambda: all(s.ended is not None for s in idle), 10)
    assert all(s.ended < IDLE_SECONDS + 8 for s in idle), [s.ended for s in idle]
    assert wait(lambda: fifth.ended is not None, IDLE_SECONDS + 8)


def test_one_stream_per_visitor(app, warm):
    first = Stream(app)
    assert wait(lambda: first.first_answer is not None, 20)
    second = Stream(app, session=first.session)
    assert second.refused is not None and ONE_STREAM in second.refused, second.refused
    RESULTS.append({"attack": "a second webcam stream from one session", "refused": True, "message": ONE_STREAM})
    assert wait(lambda: first.ended is not None, IDLE_SECONDS + 8)
    third = Stream(app, session=first.session)  # once the first has ended, the visitor may start again
    assert third.refused is None and wait(lambda: third.first_answer is not None, 20)


def test_a_webcam_frame_over_4k_is_refused_from_its_header(app, warm):
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 30001 * 10000, 9)) + chunk(b"IEND", b"")
    frame = {"path": None, "url": "data:image/png;base64," + base64.b64encode(png).decode(),
             "orig_name": "webcam.jpg", "meta": {"_type": "gradio.FileData"}}
    before = reset_peak(app)
    answer = rp.call(app["url"], app["events"]["live_frame"], values(app, "live_frame", image=frame))
    assert_refused(app, "100-megapixel webcam frame", answer, before,
                   "webcam frame cannot be used: The image is too large", memory_mb=30)


def test_the_log_has_no_traceback_and_report(app, warm):
    text = app["log"].read_text(errors="replace")
    assert "Traceback" not in text
    assert RESULTS
    if os.environ.get("MTAN_HOSTILE_REPORT"):
        Path(os.environ["MTAN_HOSTILE_REPORT"]).write_text(json.dumps(
            {"server_peak_mb_after_warmup": warm["peak_mb"], "server_peak_mb_at_end": peak_mb(app),
             "attacks": RESULTS}, indent=1))
