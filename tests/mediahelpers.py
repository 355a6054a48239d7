"""Video clips for the tests, made with PyAV in real containers and codecs: a street scene that
pans, and the hostile kinds (empty, cut short, audio only, a header that claims hours or 8K, a
still image or text under a video's name, a 1,000-frame animation)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from apphelpers import street_image
from PIL import Image


def street_frames(count: int, size: tuple[int, int] = (120, 160)):
    """``count`` frames of the test street, the camera panning right; (h, w) ``size``."""
    h, w = size
    wide = np.asarray(street_image(h, w * 2))
    for i in range(count):
        x = (i * w) // max(1, count)
        a = np.array(wide[:, x: x + w])
        a[:4, :12] = (i * 37 % 256, i * 11 % 256, i % 256)  # every frame differs (an animation keeps them all)
        yield a


def write_clip(path: Path, seconds: float = 3.0, fps: int | Fraction = 10, size: tuple[int, int] = (120, 160),
               codec: str = "libx264", audio: bool = False, faststart: bool = True) -> Path:
    """A panning street clip: ``seconds`` x ``fps`` frames of ``size`` (h, w) in ``codec`` (its
    index first with ``faststart``, as phones and editors write MP4s)."""
    count = round(seconds * float(fps))
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        sound = out.add_stream("aac", rate=22050) if audio else None
        for i, a in enumerate(street_frames(count, size)):
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            write_tone(out, sound, seconds)
    return path


def write_pan(path: Path, photo: Path | Image.Image, size: tuple[int, int], fps: int, frames: int,
              y4m: bool = False) -> Path:
    """The camera panning across ``photo``: ``frames`` frames of ``size`` (h, w) at ``fps``, H.264 in
    MP4, or with ``y4m`` raw YUV4MPEG (what Chromium's fake camera plays)."""
    h, w = size
    im = photo if isinstance(photo, Image.Image) else Image.open(photo)
    im = im.convert("RGB")
    im = im.resize((max(w + 1, round(im.width * h / im.height)), h), Image.Resampling.BICUBIC)
    with av.open(str(path), "w", format="yuv4mpegpipe" if y4m else None) as out:
        stream = out.add_stream("rawvideo" if y4m else "libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            x = (im.width - w) * i // max(1, frames - 1)
            frame = av.VideoFrame.from_ndarray(np.asarray(im.crop((x, 0, x + w, h))), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_tone(out, stream, seconds: float) -> None:
    rate, samples = 22050, 1024
    t = 0
    while t < seconds * rate:
        wave = (0.2 * np.sin(2 * np.pi * 440 * (t + np.arange(samples)) / rate)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, t
        out.mux(stream.encode(frame))
        t += samples
    out.mux(stream.encode(None))


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        write_tone(out, out.add_stream("aac", rate=22050), seconds)
    return path


def write_hours_long(path: Path, hours: float = 3.0) -> Path:
    """Two tiny frames, the second ``hours`` after the first: the header says the clip lasts hours."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        for pts in (0, int(hours * 3600)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 100, np.uint8), format="rgb24")
            frame.pts = pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_8k(path: Path) -> Path:
    """One black 7680x4320 frame (a few kilobytes): an 8K header."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 7680, 4320, "yuv420p"
        frame = av.VideoFrame(7680, 4320, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.6) -> Path:
    """The first ``keep`` of a clip's bytes, as an interrupted copy leaves it."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_animation(path: Path, frames: int = 1000, size: tuple[int, int] = (48, 64), delay_ms: int = 40) -> Path:
    """An animated GIF of ``frames`` frames (``delay_ms`` each)."""
    pictures = [Image.fromarray(a) for a in street_frames(frames, size)]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=delay_ms, loop=0, format="GIF")
    return path


def count_frames(path: Path) -> tuple[int, Fraction, tuple[int, int]]:
    """Frames, average frame rate and (h, w) of a video file, decoded."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(s)), Fraction(s.average_rate), (s.codec_context.height, s.codec_context.width)
