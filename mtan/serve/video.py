"""Street videos: a clip checked from its header, decoded frame by frame, run through the network
a batch of frames at a time, drawn (photo | segmentation | depth, or one view) and encoded as an
H.264 MP4 at the clip's frame rate.

Decoding and encoding go through PyAV, which bundles FFmpeg's codecs (no system ffmpeg). Memory
stays bounded whatever the upload: the header is checked before a frame is decoded (duration,
frame size, a video track at all), frames stream from the decoder to the encoder a batch at a
time, and decoding stops at the duration limit whatever the header claimed.
"""
from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mtan.inference.pipeline import Resolution, as_float, resize, to_tensor
from mtan.serve import render
from mtan.serve.distances import caption, find_objects
from mtan.serve.prediction import labels_at
from mtan.serve.registry import LoadedModel
from mtan.tasks import find_task

# What the output video shows, left to right.
LAYOUTS = {
    "photo | segmentation | depth": ("photo", "segmentation", "depth"),
    "segmentation | depth": ("segmentation", "depth"),
    "segmentation": ("segmentation",),
    "depth": ("depth",),
}
DEFAULT_LAYOUT = "photo | segmentation | depth"


class Stop(enum.Enum):
    """Why decoding a clip stopped before its end."""
    TIME = "the server's time for a clip ran out"
    SIZE = "a frame was larger than its header said"
    LENGTH = "the clip is longer than this app takes"
    DAMAGED = "a frame could not be decoded"


PANEL_BOX = Resolution(360, 640)  # each view of the output video fits inside this (h, w)
FRAMES_PER_BATCH = 4        # frames run through the network at once
# What a clip may be. FFmpeg opens a clip only as one of these containers (its own detection, from
# the content; the file name plays no part) and decodes only these video codecs: no playlist,
# manifest, concatenation list or image sequence, whose demuxers open other files or URLs, and no
# still-image codec, whose frames can be huge. Names as FFmpeg's format_whitelist and
# codec_whitelist options read them ("mov" is MP4, MOV, M4V, 3GP; "matroska" is MKV and WebM).
CONTAINERS = ("mov", "matroska")
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4", "mpeg1video", "mpeg2video", "mjpeg",
                "prores")
CONTAINER_NAMES = "MP4, MOV, M4V, 3GP, MKV or WebM"
CODEC_NAMES = "H.264, H.265, VP8, VP9, AV1, MPEG-4, MPEG-1/2, Motion JPEG or ProRes"
# One decoded frame may take at most this many bytes (a 4K frame in 8-bit 4:4:4, or 16-bit 4:2:0):
# with the decoder's reference frames and threads, a clip's decoding stays within a few hundred MB.
MAX_FRAME_BYTES = 3840 * 2160 * 3
DECODER_THREADS = 2
# Signatures of files that are not clips, for a message that says what the file is.
_NOT_A_CLIP = (
    (b"#EXTM3U", "a playlist (M3U/HLS)"), (b"ffconcat", "a concatenation list"),
    (b"<?xml", "a manifest or XML file (DASH, SMIL ...)"), (b"<MPD", "a DASH manifest"),
    (b"[playlist]", "a playlist (PLS)"), (b"v=0", "a stream description (SDP)"),
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
)


class VideoError(ValueError):
    """A clip that cannot be processed; the message is for the visitor."""


class VideoBusy(VideoError):
    """A clip refused because the server had no time for it: the same clip may work later."""


@dataclass(frozen=True)
class VideoLimits:
    """What the app takes: clips of at most ``max_seconds``; frames of at most ``max_pixels``;
    above ``max_fps`` frames are skipped evenly (the output runs at the lower rate); at most
    ``max_work_seconds`` of the server's time per clip (the frames processed by then are kept)."""

    max_seconds: float = 20.0
    max_fps: float = 30.0
    max_pixels: int = 3840 * 2160
    max_work_seconds: float = 120.0

    def describe(self) -> str:
        return (f"clips up to {self.max_seconds:g} s, {self.max_fps:g} frames/s (faster clips are thinned), "
                f"frames up to {self.max_pixels / 1e6:.1f} megapixels, {self.max_work_seconds:g} s of processing")


@dataclass
class ClipInfo:
    """A clip's video track as its header describes it."""

    width: int
    height: int
    fps: Fraction               # the average frame rate (what the output keeps)
    seconds: float | None       # None when the header does not say
    codec: str
    container: str
    has_audio: bool = False

    @property
    def frames(self) -> int | None:
        return None if self.seconds is None else max(1, round(self.seconds * float(self.fps)))


@dataclass
class VideoResult:
    path: Path
    frames: int                  # frames written
    fps: Fraction                # their rate
    size: tuple[int, int]        # (h, w) of the output video
    processing_size: tuple[int, int]
    seconds: float               # the whole job
    seconds_network: float       # the network alone
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.1f} s"


def _refuse_other_files(url, flags, options):
    """FFmpeg asks this for every file or URL a clip's data names (playlist entries, references,
    sidecar files): none is opened."""
    raise PermissionError("a clip may not open other files")


def _what_it_is(path: Path) -> str | None:
    """What a file that is not a clip is, from its first bytes (for the message), or None."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, what in _NOT_A_CLIP:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    return None


def frame_bytes(width: int, height: int, pix_fmt: str | None) -> int:
    """Bytes of one decoded frame of this size and pixel format (8 bytes a pixel when unknown)."""
    import av

    bits = 64
    if pix_fmt:
        try:
            bits = av.VideoFormat(pix_fmt).padded_bits_per_pixel or 64
        except (ValueError, TypeError):
            pass
    return math.ceil(width * height * bits / 8)


def open_clip(path: str | Path, limits: VideoLimits):
    """The opened container, its video stream and what the header says of it, checked against
    ``limits`` before any frame is decoded; :class:`VideoError` with a plain message otherwise.

    The file is handed to FFmpeg as an open file, with every other open refused: a clip's data
    can never make FFmpeg read another file or a URL. It is opened only as one of
    :data:`CONTAINERS` (FFmpeg's format_whitelist, by the content FFmpeg detects) with only
    :data:`VIDEO_CODECS` decodable (codec_whitelist): nothing is decoded while the header is read,
    so a frame's size and pixel format are checked (at most ``limits.max_pixels`` pixels,
    :data:`MAX_FRAME_BYTES` bytes) before the first frame exists; the decoder itself is capped at
    the same pixel count, so a frame larger than the header said stops decoding there."""
    import av

    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoError("The file is empty: upload a video clip (MP4, WebM or MOV).")
    options = {"format_whitelist": ",".join(CONTAINERS), "codec_whitelist": ",".join(VIDEO_CODECS),
               "protocol_whitelist": "none", "enable_drefs": "0", "use_absolute_path": "0"}
    handle = open(path, "rb")
    try:
        container = av.open(handle, mode="r", options=options, io_open=_refuse_other_files,
                            metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        handle.close()
        raise VideoError(_not_a_clip(path)) from None
    try:
        name = container.format.name or ""
        if not container.streams.video:
            what = "only sound" if container.streams.audio else "no picture"
            raise VideoError(f"This clip has no video track ({what}): upload a video clip.")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if (ctx.name or "") not in VIDEO_CODECS:
            codec = (ctx.name or "an unknown codec").upper()
            raise VideoError(f"This clip's video is stored as {codec:.30}, which this app does not decode: export it "
                             f"as {CODEC_NAMES} (an ordinary MP4 or WebM) and upload it again.")
        width, height = _checked_frame_size(ctx, limits)
        fps, seconds = _rate_and_length(container, stream)
        if seconds is not None and seconds > limits.max_seconds + 0.5:
            raise VideoError(f"The clip is {_duration(seconds)} long; this app takes clips of up to "
                             f"{limits.max_seconds:g} s: trim it and upload again.")
        info = ClipInfo(width, height, fps, seconds, ctx.name or "unknown", name, bool(container.streams.audio))
        # The decoder refuses any frame over the pixel limit, whatever the header said.
        ctx.options = {"max_pixels": str(int(limits.max_pixels))}
        stream.thread_type = "AUTO"
        ctx.thread_count = DECODER_THREADS
        return container, stream, info
    except BaseException:
        container.close()
        handle.close()
        raise


def _not_a_clip(path: Path) -> str:
    """Why a file FFmpeg would not open as a clip was refused: what it is, where that can be told."""
    what = _what_it_is(path)
    if what in ("a playlist (M3U/HLS)", "a concatenation list", "a manifest or XML file (DASH, SMIL ...)",
                "a DASH manifest", "a playlist (PLS)", "a stream description (SDP)"):
        return (f"This file is {what}, not a video clip: playlists, manifests and lists of other "
                f"files are not accepted. Upload the video itself ({CONTAINER_NAMES}).")
    if what is not None:
        return (f"This file is {what}, not a video clip (image sequences and animated images are "
                f"not accepted): use the Photo tab for photos, or upload a video clip ({CONTAINER_NAMES}).")
    return (f"This file is not a video clip that can be read (damaged, truncated, or not in one of the "
            f"formats this app reads: {CONTAINER_NAMES}).")


def _checked_frame_size(ctx, limits: VideoLimits) -> tuple[int, int]:
    """The frame size (w, h) the stream's header gives, refused when it is unreadable, over the
    pixel limit, or in a pixel format that would take too much memory a frame."""
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise VideoError("This clip's frame size cannot be read (damaged or truncated): upload another clip.")
    if width * height > limits.max_pixels:
        raise VideoError(f"The clip's frames are too large: {width}x{height} pixels is over this app's limit "
                         f"of {limits.max_pixels / 1e6:.1f} megapixels: export the clip at 4K or less.")
    pix_fmt = ctx.format.name if ctx.format is not None else None
    if frame_bytes(width, height, pix_fmt) > MAX_FRAME_BYTES:
        raise VideoError(f"The clip's frames take too much memory to decode ({width}x{height} pixels in "
                         f"{pix_fmt or 'a pixel format of up to 16 bits a channel'}): export it in 8-bit colour "
                         f"or smaller and upload it again.")
    return width, height


def _rate_and_length(container, stream) -> tuple[Fraction, float | None]:
    """Frames a second and seconds (None when the header does not say) of a clip's video
    stream; a rate the header lacks or gets wrong is taken from the frame count, else 25."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = Fraction(rate) if rate and float(rate) > 0 and math.isfinite(float(rate)) else Fraction(0)
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    if not 0 < fps <= 1000:
        fps = Fraction(stream.frames / seconds).limit_denominator(1001) if stream.frames and seconds else Fraction(25)
    return fps, seconds


def close_clip(container) -> None:
    """Close a container from :func:`open_clip` and the file under it."""
    container.close()
    handle = getattr(container, "file", None)
    if handle is not None and hasattr(handle, "close"):
        handle.close()


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _upright(a: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded frame turned as its display matrix says (phones store portrait clips on their side)."""
    turns = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(a, turns)) if turns else a


def decoded_frames(raw, info: ClipInfo, size: tuple[int, int], limits: VideoLimits, notes: list[str],
                   deadline: float | None = None, stopped: set | None = None):
    """The clip's frames (``raw``: PyAV's decoded frames) as ``size`` (h, w) RGB arrays, upright,
    thinned to at most ``limits.max_fps``; stops at ``limits.max_seconds`` of output, at a frame
    larger than the limit, at damaged data, or when ``time.monotonic()`` passes ``deadline``
    (with a note, keeping the frames so far). ``stopped`` gets the reason decoding stopped early
    (a :class:`Stop`)."""
    import av

    stopped = set() if stopped is None else stopped

    step = thinning(info, limits)
    if step > 1:
        notes.append(f"The clip runs at {float(info.fps):.3g} frames/s: every {_ordinal(step)} frame was processed "
                     f"({float(info.fps) / step:.3g} frames/s).")
    most = max(1, math.floor(limits.max_seconds * float(info.fps) / step + 1e-6))
    index = kept = 0
    h, w = size
    try:
        for frame in raw:
            if deadline is not None and time.monotonic() > deadline:
                notes.append(f"Processing stopped after {limits.max_work_seconds:g} s of the server's time (this "
                             f"app's limit per clip): the first {kept} frames were processed.")
                stopped.add(Stop.TIME)
                return
            if frame.width * frame.height > limits.max_pixels:
                notes.append(f"The clip changes to {frame.width}x{frame.height} pixels, over the limit: it was "
                             f"processed up to there.")
                stopped.add(Stop.SIZE)
                return
            if index % step == 0:
                if kept >= most:
                    notes.append(f"Only the first {limits.max_seconds:g} s were processed (this app's limit).")
                    stopped.add(Stop.LENGTH)
                    return
                rotation = getattr(frame, "rotation", 0) or 0
                fw, fh = (h, w) if round(rotation / 90) % 2 else (w, h)
                yield _upright(frame.to_ndarray(format="rgb24", width=fw, height=fh, interpolation="AREA"), rotation)
                kept += 1
            index += 1
    except av.FFmpegError:
        notes.append(f"The clip is damaged or cut short: {kept} frames could be read and were processed.")
        stopped.add(Stop.DAMAGED)


def thinning(info: ClipInfo, limits: VideoLimits) -> int:
    """Every how many frames one is kept, so that the output runs at most ``limits.max_fps``."""
    return max(1, math.ceil(float(info.fps) / limits.max_fps - 1e-9))


class _Smoother:
    """Exponential moving average of the network's outputs over frames (0 = off): fewer flickering
    labels and depth. Class probabilities are averaged, not logits, so one confident frame does
    not dominate."""

    def __init__(self, weight: float):
        self.weight = float(min(max(weight, 0.0), 0.95))
        self.state: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if self.weight <= 0:
            return value
        last = self.state.get(name)
        if last is None or last.shape != value.shape:
            self.state[name] = value
        else:
            self.state[name] = last * self.weight + value * (1 - self.weight)
        return self.state[name]


MIN_CAPTION_HEIGHT = 96   # frames lower than this (pixels) get no caption line


def draw_caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a dark band along the bottom of ``frame`` (RGB, h x w x 3)."""
    from PIL import ImageDraw, ImageFont

    h, w = frame.shape[:2]
    size = max(11, min(22, h // 18))
    font = ImageFont.load_default(size=size)
    band = size + 8
    im = Image.fromarray(frame)
    dark = Image.new("RGB", (w, band), (0, 0, 0))
    im.paste(Image.blend(im.crop((0, h - band, w, h)), dark, 0.6), (0, h - band))
    ImageDraw.Draw(im).text((6, h - band + 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


class VideoPainter:
    """The output frames of one clip: views of each frame's outputs side by side. The depth colour
    scale follows the clip slowly (a running average of each frame's range), so colours mean the
    same distance from frame to frame."""

    def __init__(self, tasks, layout: str, colormap: str, opacity: float):
        self.sem, self.dep = find_task(tasks, "semantic"), find_task(tasks, "depth")
        views = LAYOUTS.get(layout, LAYOUTS[DEFAULT_LAYOUT])
        self.views = [v for v in views if v == "photo" or (v == "segmentation" and self.sem)
                      or (v == "depth" and self.dep)] or ["photo"]
        self.colormap = colormap if colormap in render.COLORMAPS else render.DEFAULT_COLORMAP
        self.opacity = opacity
        self.limits: tuple[float, float] | None = None
        self.captions = True  # the nearest vehicles and people, a line at the bottom of each frame

    def depth_limits(self, depth: np.ndarray) -> tuple[float, float]:
        lo, hi = render.depth_limits(depth)
        if self.limits is not None:
            lo, hi = (0.8 * a + 0.2 * b for a, b in zip(self.limits, (lo, hi)))
        self.limits = (lo, hi)
        return lo, hi

    def __call__(self, photo: np.ndarray, outputs: dict[str, torch.Tensor]) -> np.ndarray:
        size = photo.shape[:2]
        panels = []
        for view in self.views:
            if view == "photo":
                panels.append(photo)
            elif view == "segmentation":
                labels = labels_at(outputs[self.sem.name], size)
                colours = render.colorize_labels(labels, self.sem.class_set.palette)
                panels.append(np.asarray(render.overlay(Image.fromarray(photo), colours, self.opacity)))
            else:
                depth = outputs[self.dep.name][0].float().numpy()
                panels.append(np.asarray(render.colorize_depth(depth, size, self.colormap, self.depth_limits(depth))))
        frame = np.ascontiguousarray(np.concatenate(panels, axis=1))
        if self.sem is not None and self.dep is not None and self.captions and frame.shape[0] >= MIN_CAPTION_HEIGHT:
            labels = labels_at(outputs[self.sem.name], size)
            line = caption(find_objects(self.sem, self.dep, labels, outputs[self.dep.name][0].float().numpy()))
            if line:
                frame = draw_caption(frame, line)
        return frame


def run_frames(loaded: LoadedModel, photos: list[np.ndarray], size: tuple[int, int], painter: VideoPainter,
               smoother: "_Smoother") -> tuple[list[np.ndarray], float]:
    """One batch of frames (RGB arrays of one size) through the network at ``size`` (h, w), each
    painted; and the network's seconds."""
    x = as_float(resize(to_tensor(np.stack(photos)), size))
    start = time.perf_counter()
    pictures = []
    with torch.inference_mode():
        outputs = loaded.runner.predict(x)
        seconds = time.perf_counter() - start
        for i, photo in enumerate(photos):
            frame = {}
            for name, value in outputs.items():
                value = value[i].float()
                if painter.sem is not None and name == painter.sem.name:
                    value = value.softmax(0)
                frame[name] = smoother(name, value)
            pictures.append(painter(photo, frame))
    return pictures, seconds


class LiveSession:
    """One visitor's webcam stream: each frame run at ``box`` and painted, outputs smoothed over
    frames, and the rate at which frames are answered."""

    def __init__(self, loaded: LoadedModel, box: tuple[int, int], layout: str = "segmentation | depth",
                 smoothing: float = 0.3, colormap: str = render.DEFAULT_COLORMAP, opacity: float = 0.55):
        self.key, self.layout, self.box = loaded.key, layout, box
        self.loaded = loaded
        self.painter = VideoPainter(loaded.model.tasks, layout, colormap, opacity)
        self.smoother = _Smoother(smoothing)
        self.times: list[float] = []
        self.network = 0.0

    def __call__(self, photo: np.ndarray) -> np.ndarray:
        h, w = photo.shape[:2]
        if h > PANEL_BOX[0] or w > PANEL_BOX[1]:
            h, w = PANEL_BOX.fit(h, w)
            photo = np.ascontiguousarray(resize(to_tensor(photo), (h, w))[0].permute(1, 2, 0).numpy())
        (picture,), self.network = run_frames(self.loaded, [photo], Resolution.parse(self.box).fit(h, w), self.painter,
                                              self.smoother)
        self.times = (self.times + [time.monotonic()])[-10:]
        return picture

    @property
    def fps(self) -> float:
        """Frames answered per second, over the last ten."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])

    def describe(self) -> str:
        rate = f"{self.fps:.1f} frames/s" if self.fps else "measuring the frame rate"
        return f"{rate} · network {1000 * self.network:.0f} ms a frame at {'x'.join(map(str, self.box))}"


def _even(n: int) -> int:
    return max(2, n - n % 2)


def panel_size(info: ClipInfo, rotation: float = 0) -> tuple[int, int]:
    """Each view's (h, w) in the output video: the upright frame fitted inside :data:`PANEL_BOX`
    (never enlarged), even sides (H.264 in 4:2:0 needs them)."""
    h, w = (info.width, info.height) if round(rotation / 90) % 2 else (info.height, info.width)
    if h > PANEL_BOX[0] or w > PANEL_BOX[1]:
        h, w = PANEL_BOX.fit(h, w)
    return _even(h), _even(w)


def _first_frame(container, stream):
    """The clip's decoded frames (the first already read, to know its display rotation) and that
    rotation; :class:`VideoError` when not even one frame decodes."""
    import av

    raw = container.decode(stream)
    try:
        first = next(raw, None)
    except av.FFmpegError:
        first = None
    if first is None:
        raise VideoError("No frame of this clip could be decoded (damaged or truncated): upload another clip.")
    return itertools.chain([first], raw), float(getattr(first, "rotation", 0) or 0)


def process_clip(loaded: LoadedModel, path: str | Path, out_path: str | Path, box: tuple[int, int],
                 limits: VideoLimits = VideoLimits(), layout: str = DEFAULT_LAYOUT, smoothing: float = 0.0,
                 colormap: str = render.DEFAULT_COLORMAP, opacity: float = 0.55, batch: int = FRAMES_PER_BATCH,
                 progress: Callable[[int, int | None], None] | None = None) -> VideoResult:
    """Run the model on every frame of the clip at ``path`` (each fitted inside the processing
    resolution ``box``) and write the chosen views side by side to ``out_path`` (H.264 MP4, the
    clip's frame rate; thinned above ``limits.max_fps``). ``progress(done, total)`` after each
    batch (``total`` None when the header does not say). Raises :class:`VideoError`."""
    import av

    start = time.perf_counter()
    deadline = time.monotonic() + limits.max_work_seconds
    container, stream, info = open_clip(path, limits)
    notes: list[str] = []
    if info.has_audio:
        notes.append("The clip's sound is not kept.")
    network = 0.0
    written = 0
    out_path = Path(out_path)
    output = encoder = None
    try:
        raw, rotation = _first_frame(container, stream)
        size = panel_size(info, rotation)
        h, w = Resolution.parse(box).fit(*size)
        painter = VideoPainter(loaded.model.tasks, layout, colormap, opacity)
        smoother = _Smoother(smoothing)
        step = thinning(info, limits)
        fps = info.fps / step
        total = None if info.frames is None else min(math.ceil(info.frames / step),
                                                     math.floor(limits.max_seconds * float(fps) + 1e-6))
        stopped: set[Stop] = set()
        frames = decoded_frames(raw, info, size, limits, notes, deadline, stopped)
        while True:
            photos = [f for _, f in zip(range(batch), frames)]
            if not photos:
                break
            if output is None:
                output = av.open(str(out_path), mode="w", options={"movflags": "+faststart"})
                encoder = output.add_stream("libx264", rate=fps.limit_denominator(100_000),
                                            options={"crf": "23", "preset": "veryfast"})
                encoder.width, encoder.height = size[1] * len(painter.views), size[0]
                encoder.pix_fmt = "yuv420p"
            pictures, seconds = run_frames(loaded, photos, (h, w), painter, smoother)
            network += seconds
            for picture in pictures:
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = written
                output.mux(encoder.encode(frame))
                written += 1
            if progress is not None:
                progress(written, total)
        if output is None and Stop.TIME in stopped:
            raise VideoBusy(f"This clip took more than {limits.max_work_seconds:g} s of the server's time before "
                             f"its first frame (this app's limit per clip): try again later, or a shorter clip.")
        if output is None:
            raise VideoError("No frame of this clip could be decoded (damaged or truncated): upload another clip.")
        output.mux(encoder.encode(None))
        output.close()
    except BaseException:
        if output is not None:
            try:
                output.close()
            except Exception:
                pass
        out_path.unlink(missing_ok=True)
        raise
    finally:
        close_clip(container)
    if total and written < total - 1 and not stopped & {Stop.DAMAGED, Stop.SIZE, Stop.TIME}:
        notes.append(f"The clip ended after {written} of the {total} frames its header announces (damaged or cut "
                     f"short): those were processed.")
    if written == 1:
        notes.append("The clip has a single frame: a still image gives a better result in the Photo tab.")
    return VideoResult(out_path, written, fps, (size[0], size[1] * len(painter.views)), (h, w),
                       time.perf_counter() - start, network, notes)


def read_back(path: str | Path) -> tuple[int, Fraction, tuple[int, int]]:
    """Frames, frame rate and (h, w) of a video this module wrote (tests and benchmarks)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, Fraction(s.average_rate), (s.codec_context.height, s.codec_context.width)
