"""Street videos (mtan.serve.video): a clip comes back as a video of as many frames at its frame
rate; fast clips are thinned; outputs can be smoothed over frames; every kind of hostile media
gets a clear message with memory bounded. In process, with a tiny model (the app's endpoint is
tested in test_media_app.py)."""
from __future__ import annotations

import resource
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from mediahelpers import (count_frames, write_8k, write_animation, write_audio_only, write_clip, write_hours_long,
                          write_truncated)
from PIL import Image

from mtan.serve import ModelRegistry
from mtan.serve.video import (ClipInfo, LiveSession, VideoBusy, VideoError, VideoLimits, _Smoother, decoded_frames,
                              open_clip, process_clip)


@pytest.fixture(scope="module")
def loaded(models):
    return ModelRegistry([models["city"]]).get()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "street.mp4", seconds=3, fps=10)


def test_a_clip_comes_back_with_as_many_frames_at_its_rate(loaded, clip, tmp_path):
    done = []
    result = process_clip(loaded, clip, tmp_path / "out.mp4", (64, 128), progress=lambda n, total: done.append((n, total)))
    frames, fps, (h, w) = count_frames(result.path)
    assert (frames, fps) == (30, Fraction(10)) == (result.frames, result.fps)
    assert (h, w) == (120, 3 * 160) == result.size  # photo | segmentation | depth at the clip's size
    assert result.processing_size == (64, 85)       # fitted inside 64x128, aspect kept
    assert done[-1] == (30, 30) and [n for n, _ in done] == sorted(n for n, _ in done)
    assert result.notes == [] and result.seconds >= result.seconds_network > 0


@pytest.mark.parametrize("layout, panels", [("segmentation | depth", 2), ("depth", 1), ("segmentation", 1)])
def test_layouts(loaded, clip, tmp_path, layout, panels):
    result = process_clip(loaded, clip, tmp_path / "out.mp4", (64, 128), layout=layout)
    assert count_frames(result.path)[2] == (120, panels * 160)


def test_the_views_show_the_outputs(loaded, clip, tmp_path):
    """The middle panel is the photo with the class colours over it, the right one the depth's colours."""
    result = process_clip(loaded, clip, tmp_path / "out.mp4", (64, 128), opacity=1.0)
    with av.open(str(result.path)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    photo, seg, depth = first[:, :160], first[:, 160:320], first[:, 320:]
    palette = np.asarray(loaded.model.tasks[0].class_set.palette)
    # at opacity 1 the middle panel holds class colours only (up to the codec's error)
    nearest = np.abs(seg[::8, ::8, None, :] - palette[None, None]).sum(-1).min(-1)
    assert np.median(nearest) < 40
    assert np.abs(depth - photo).mean() > 20 and np.abs(seg - photo).mean() > 20


def test_a_fast_clip_is_thinned_to_the_frame_rate_limit(loaded, tmp_path):
    fast = write_clip(tmp_path / "fast.mp4", seconds=1, fps=60)
    result = process_clip(loaded, fast, tmp_path / "out.mp4", (64, 128), VideoLimits(max_fps=30))
    assert count_frames(result.path)[:2] == (30, Fraction(30))
    assert any("every 2nd frame was processed (30 frames/s)" in n for n in result.notes), result.notes


def test_decoding_stops_at_the_duration_limit_whatever_the_header_says(clip):
    """A header that does not say how long the clip is (or says less): decoding stops at the limit."""
    container, stream, info = open_clip(clip, VideoLimits())
    with container:
        unknown = ClipInfo(info.width, info.height, info.fps, None, info.codec, info.container)
        notes = []
        frames = list(decoded_frames(container.decode(stream), unknown, (60, 80), VideoLimits(max_seconds=1), notes))
    assert len(frames) == 10 and frames[0].shape == (60, 80, 3)
    assert notes == ["Only the first 1 s were processed (this app's limit)."]


def test_smoothing_averages_over_frames():
    smooth = _Smoother(0.75)
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(smooth("x", a), a)
    assert torch.allclose(smooth("x", b), torch.full((2, 3), 0.25))
    assert torch.allclose(smooth("x", b), torch.full((2, 3), 0.25 * 0.75 + 0.25))
    assert torch.equal(_Smoother(0)("x", b), b)


def test_smoothing_steadies_a_flickering_clip(loaded, tmp_path):
    """Frames of noise: with smoothing the depth view changes less from frame to frame."""
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(12):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))

    def flicker(smoothing):
        r = process_clip(loaded, path, tmp_path / f"s{smoothing}.mp4", (64, 96), layout="depth", smoothing=smoothing)
        with av.open(str(r.path)) as c:
            frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
        return np.mean([np.abs(a - b).mean() for a, b in zip(frames[4:], frames[5:])])

    assert flicker(0.8) < 0.6 * flicker(0.0)


def test_live_session_answers_frames_and_measures_its_rate(loaded):
    live = LiveSession(loaded, (64, 128))
    photo = np.asarray(Image.new("RGB", (320, 240), (90, 120, 160)))
    pictures = [live(photo) for _ in range(3)]
    assert pictures[0].shape == (240, 640, 3)  # segmentation | depth, each at the frame's size
    assert live.fps > 0 and "frames/s" in live.describe()


# ---- hostile media: a clear message each, nothing written, memory bounded -------------------------------


def hostile(tmp_path) -> dict:
    good = write_clip(tmp_path / "good.mp4", seconds=2, fps=10)
    still = tmp_path / "photo.mp4"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(still, "JPEG")
    png = tmp_path / "photo.mov"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(png, "PNG")
    text = tmp_path / "notes.webm"
    text.write_text("not a video, just text\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    cut_index = write_clip(tmp_path / "index_last.mp4", seconds=2, fps=10, faststart=False)
    return {
        "empty": (empty, "The file is empty"),
        "text": (text, "not a video clip that can be read"),
        "noise": (noise, "not a video clip that can be read"),
        "still JPEG named .mp4": (still, "a JPEG image, not a video clip"),
        "still PNG named .mov": (png, "a PNG image, not a video clip"),
        "audio only": (write_audio_only(tmp_path / "sound.mp4"), r"no video track \(only sound\)"),
        "header claims hours": (write_hours_long(tmp_path / "hours.mp4"), "The clip is 3 h 0 min long"),
        "header claims 8K": (write_8k(tmp_path / "8k.mp4"), "7680x4320 pixels is over this app's limit"),
        "truncated, index at the end": (write_truncated(tmp_path / "cut1.mp4", cut_index),
                                        "not a video clip that can be read"),
        "1,000-frame animation": (write_animation(tmp_path / "anim.gif", frames=1000), "a GIF image, not a video clip"),
        "good": (good, None),
    }


def test_hostile_media_get_clear_messages(loaded, tmp_path):
    cases = hostile(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, (path, message) in cases.items():
        out = tmp_path / f"out-{path.name}.mp4"
        if message is None:
            assert process_clip(loaded, path, out, (64, 128)).frames == 20, name
            continue
        with pytest.raises(VideoError, match=message):
            process_clip(loaded, path, out, (64, 128))
        assert not out.exists(), name
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


def test_a_clip_cut_short_is_processed_up_to_the_cut(loaded, tmp_path):
    whole = write_clip(tmp_path / "whole.mp4", seconds=3, fps=10)
    cut = write_truncated(tmp_path / "cut.mp4", whole, keep=0.6)
    result = process_clip(loaded, cut, tmp_path / "out.mp4", (64, 128))
    assert 0 < result.frames < 30 == count_frames(whole)[0]
    assert count_frames(result.path)[0] == result.frames
    assert any("of the 30 frames its header announces" in n or "damaged or cut short" in n for n in result.notes)


def test_the_sound_is_dropped_with_a_note(loaded, tmp_path):
    result = process_clip(loaded, write_clip(tmp_path / "a.mp4", seconds=1, audio=True), tmp_path / "o.mp4", (64, 128))
    assert result.frames == 10 and "The clip's sound is not kept." in result.notes
    with av.open(str(result.path)) as c:
        assert not c.streams.audio


def test_frames_over_the_pixel_limit_are_refused_from_the_header(loaded, tmp_path):
    clip = write_clip(tmp_path / "c.mp4", seconds=1, size=(120, 160))
    with pytest.raises(VideoError, match="160x120 pixels is over this app's limit"):
        process_clip(loaded, clip, tmp_path / "o.mp4", (64, 128), VideoLimits(max_pixels=160 * 100))


def test_the_decoder_refuses_frames_larger_than_the_limit_whatever_the_header_says(loaded, tmp_path):
    """A clip whose container header claims small frames but whose stream holds larger ones: the
    decoder itself is capped at the pixel limit, so decoding stops at the first large frame."""
    clip = write_clip(tmp_path / "c.mp4", seconds=1, size=(120, 160))
    data = bytearray(clip.read_bytes())
    at = data.find(b"avc1")
    assert at > 0
    # avc1 sample entry: 4 type, 6 reserved, 2 index, 16 pre-defined/reserved, then width, height (16 bits each)
    data[at + 28: at + 32] = (32).to_bytes(2, "big") + (24).to_bytes(2, "big")
    lying = tmp_path / "lying.mp4"
    lying.write_bytes(bytes(data))
    limits = VideoLimits(max_pixels=160 * 100)  # above 32x24, below the real 160x120
    try:
        result = process_clip(loaded, lying, tmp_path / "o.mp4", (64, 128), limits)
    except VideoError as e:  # refused from the header (FFmpeg read the true size) or at the first frame
        assert "160x120" in str(e) or "could be decoded" in str(e), str(e)
    else:
        assert result.frames == 0 or any("over the limit" in n or "damaged" in n for n in result.notes)


def test_a_clip_stops_at_the_server_time_limit(loaded, tmp_path, monkeypatch):
    """Server seconds, not clip seconds: a clip stops when its work passes the limit, keeping
    the frames so far (a clock that runs a second per reading stands in for a slow server)."""
    import time as real_time

    import mtan.serve.video as video

    clip = write_clip(tmp_path / "c.mp4", seconds=3, fps=10)
    with pytest.raises(VideoBusy, match="more than 1e-09 s of the server's time before its first frame"):
        process_clip(loaded, clip, tmp_path / "o.mp4", (64, 128), VideoLimits(max_work_seconds=1e-9))

    class SlowClock:
        now = 0.0
        perf_counter = staticmethod(real_time.perf_counter)

        @classmethod
        def monotonic(cls):
            cls.now += 1.0
            return cls.now

    monkeypatch.setattr(video, "time", SlowClock)
    result = process_clip(loaded, clip, tmp_path / "o.mp4", (64, 128), VideoLimits(max_work_seconds=10))
    assert 0 < result.frames < 30
    assert any("Processing stopped after 10 s of the server's time" in n for n in result.notes), result.notes
    assert count_frames(result.path)[0] == result.frames


def test_the_page_takes_a_refused_clip_out_of_its_upload_box(loaded, clip, tmp_path, monkeypatch):
    """The page's clip run: a clip refused for what it is (here a text file named .mp4) leaves the
    upload box with the one message; a refusal that the same clip may pass later (the server had no
    time) or one about a setting keeps it; a clip that runs keeps it and gets its legend."""
    import gradio as gr

    import mtan.serve.media_events as media
    from mtan.serve.downloads import DownloadFolders
    from mtan.serve.uploads import UploadPolicy

    uploads = tmp_path / "uploads"
    (uploads / "a").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    policy = UploadPolicy.create(uploads, 10 * 2**20, noun="video clip")
    events = media.MediaEvents(lambda key: loaded, None, DownloadFolders(tmp_path / "out", 3600, 2**30), policy, policy,
                               VideoLimits(), 10**6, 10**8, "CPU")
    text = uploads / "a" / "holiday.mp4"
    text.write_text("this is a text file, not a clip\n" * 20)
    good = uploads / "a" / "street.mp4"
    good.write_bytes(clip.read_bytes())
    settings = ("128x256", "photo | segmentation | depth", 0.0, "inferno", 0.55)

    def page(path, *given):
        return events.page_video({"path": str(path), "orig_name": path.name}, None, *(given or settings),
                                 progress=lambda *a, **k: None)

    out, summary, legend, box = page(text)
    assert out is None and "not a video clip" in summary and legend == "" and box is None
    _, summary, _, box = page(good, "1x1", *settings[1:])
    assert "not a processing resolution" in summary and isinstance(box, type(gr.skip()))
    out, summary, legend, box = page(good)
    assert out.endswith(".mp4") and "30 frames at 10 frames/s" in summary and "bright is near" in legend
    assert isinstance(box, type(gr.skip()))
    monkeypatch.setattr(media, "clip_on_device", lambda *a, **k: (_ for _ in ()).throw(VideoBusy("try again later")))
    _, summary, _, box = page(good)
    assert "try again later" in summary and isinstance(box, type(gr.skip()))
