"""Serving helpers for the Gradio app: a model registry (load once, cache, fall back when the
Hub is unreachable), safe image loading, and running a model on one photo.

Nothing here imports gradio: the app turns :class:`ImageLoadError` and
:class:`ModelUnavailableError` into ``gr.Error`` messages.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from mtan import jpeg
from mtan.compiled import COMPILE_MODES, CompileWarmUp, warm_up_sizes
from mtan.metrics import class_ids
from mtan.fast import optimize_for_inference, resolve_precision
from mtan.model import MULTIPLE, MTAN, ModelConfigError, fit_size, flip_average
from mtan.records import (DEFAULT_RESOLUTION, PRECISIONS_FILE, RESOLUTION_TOLERANCE, RESOLUTIONS,  # noqa: F401
                          RESOLUTIONS_FILE, ResolutionAdvice, allowed_precisions, read_record)
from mtan.records import int8_scales as recorded_int8_scales

log = logging.getLogger("mtan.app")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "weights"
EXAMPLES_DIR = REPO_ROOT / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")



class ImageLoadError(ValueError):
    """An uploaded file could not be used as a photo; the message says why, for the user."""


class ModelUnavailableError(RuntimeError):
    """No model could be loaded (neither the requested one nor the local default)."""


# An absolute path (not part of a URL or of a Hub id): /a/b/c -> its last part, for visitors' eyes.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`()<>]+)+/?")


def without_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last part (a folder's name), so
    that a message shown to visitors does not tell where things live on the server."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------
# Process memory (glibc)
# --------------------------------------------------------------------------------------

_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            import ctypes
            import ctypes.util

            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.append(lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``) unless ``MALLOC_ARENA_MAX`` is set.

    glibc gives threads their own arenas (up to 8 per core) and keeps what each one freed, so a
    server whose requests run on many worker threads holds the peak of every arena at once: under
    20 concurrent clients the app's resident memory peaked at 2.3 GB with the default and 1.6 GB
    with two arenas. Call it early, before the worker threads start. False where not glibc.
    """
    lib = _libc()
    if lib is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(lib.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX


def release_memory() -> None:
    """Give the heap memory freed by the last prediction back to the OS (glibc ``malloc_trim``):
    large photos' temporaries then do not stay in the process's resident memory."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


# --------------------------------------------------------------------------------------
# Devices and the Hub
# --------------------------------------------------------------------------------------


def pick_device(name: str | None = None) -> torch.device:
    """``MTAN_DEVICE`` (or ``name``) if given, else CUDA when present, else CPU."""
    name = name or os.environ.get("MTAN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether one TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    result = {"ok": False}

    def attempt():  # DNS lookups can hang: run in a thread and stop waiting after `timeout`
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the Hub endpoint (``HF_ENDPOINT``), never longer than ``timeout``.

    ``huggingface_hub`` retries an unreachable host for about 20 s; asking once first keeps the
    app's start fast and its fallback immediate. ``HF_HUB_OFFLINE=1`` means unreachable.
    """
    if env_flag("HF_HUB_OFFLINE"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return False
    return host_reachable(url.hostname, url.port or (80 if url.scheme == "http" else 443), timeout)


def resolve_local(source: str) -> Path | None:
    """An existing local path for ``source``: as given, or relative to the repository (``weights``)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return None


def is_hub_id(source: str) -> bool:
    """``user/name`` that is not an existing local path."""
    return (resolve_local(source) is None and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
            and not source.startswith("."))


# --------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------


def strip_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


@dataclass
class LoadedModel:
    key: str                  # what was asked for (a dropdown value)
    source: str               # what was actually loaded (differs after a fallback)
    model: MTAN
    card: str = ""            # the model card, YAML front matter removed
    notices: list[str] = field(default_factory=list)
    resolutions: ResolutionAdvice = field(default_factory=lambda: ResolutionAdvice.from_record(None))
    precisions: tuple[str, ...] = ("fp32",)  # those that keep the model's quality (its precisions.json)
    precision: str = "auto"                  # what to run: auto = the fastest of ``precisions`` here
    int8_scales: dict | None = None          # int8's activation scales (its precisions.json)
    compile: str = "off"                     # auto: torch.compile warmed up in the background (mtan.compiled)

    @property
    def placeholder(self) -> bool:
        return "placeholder" in self.card.lower()

    @property
    def runner(self):
        """What runs the photos: the inference copy of ``mtan.fast`` (BatchNorm folded, fused
        convolutions, channels-last), built once, in ``precision`` (``auto``: the fastest on this
        machine of the precisions that keep the model's quality, timed at the default processing
        resolution and remembered); ``MTAN_FAST_INFERENCE=0`` uses the plain model. Falls back to
        the plain model if the copy cannot be built."""
        if "_runner" not in self.__dict__:
            runner = self.model
            if os.environ.get("MTAN_FAST_INFERENCE", "1") != "0":
                try:
                    runner = optimize_for_inference(self.model, precision=self.precision, allowed=self.precisions,
                                                    size=parse_resolution(self.resolutions.default),
                                                    int8_scales=self.int8_scales)
                    runner.float32_masks = False  # quantise_mask converts them (one pass fewer)
                except Exception as e:  # never lose the demo over an optimisation
                    log.warning("fast inference unavailable (%s: %s); using the plain model", type(e).__name__, e)
            self.__dict__["_runner"] = runner
            if self.compile == "auto" and hasattr(runner, "compiled_shapes"):
                try:
                    self.__dict__["_warm_up"] = CompileWarmUp(
                        runner, warm_up_sizes(parse_resolution(self.resolutions.default))).start(
                        on_done=lambda warm: log.warning("mtan app: %s: compile warm-up done; %s", model_label(self.key),
                                                        warm.describe()))
                except Exception as e:
                    log.warning("torch.compile unavailable (%s: %s); eager", type(e).__name__, e)
        return self.__dict__["_runner"]

    @property
    def warm_up(self) -> CompileWarmUp | None:
        """The background torch.compile warm-up of the runner (``compile="auto"``), if one started."""
        self.runner
        return self.__dict__.get("_warm_up")

    def compiled_for(self, shape) -> bool:
        """Whether the compiled network runs inputs of ``shape`` (N, 3, H, W, padded) now."""
        shapes = getattr(self.runner, "compiled_shapes", None)
        return getattr(self.runner, "_compiled", None) is not None and (shapes is None or tuple(shape) in shapes)

    @property
    def running(self) -> str:
        """The precision that runs, in a word (the app's summary line): ``fp32``, ``bf16`` ..."""
        return getattr(self.runner, "precision", "fp32")

    @property
    def runner_description(self) -> str:
        """What runs the photos and why (the app's start-up line)."""
        runner = self.runner
        text = runner.describe() if hasattr(runner, "describe") else "the plain model (fp32, eager)"
        return text + (f"; {self.warm_up.describe()}" if self.warm_up else "")


def model_label(source: str) -> str:
    """A short dropdown label: the Hub id, or the folder name marked as local."""
    if is_hub_id(source):
        return source
    path = resolve_local(source) or Path(source)
    if path.resolve() == DEFAULT_MODEL_DIR.resolve():
        return "weights/ (local default)"
    return f"{path.name or source} (local)"


class ModelRegistry:
    """Models by key (a local folder or a Hub repo id), each loaded once and cached.

    A model that cannot be loaded (Hub unreachable, missing or broken folder) is replaced by the
    local default model, with a notice that says why; only when that fails too does ``get``
    raise :class:`ModelUnavailableError`.
    """

    def __init__(self, sources: list[str], default_local: str | Path = "weights",
                 device: torch.device | str | None = None, hub_timeout: float = 3.0, precision: str = "auto",
                 compile: str = "off"):
        if not sources:
            sources = [str(default_local)]
        self.sources = list(dict.fromkeys(str(s).strip() for s in sources if str(s).strip()))
        self.default_local = str(default_local)
        self.device = pick_device(str(device) if device else None)
        self.hub_timeout = hub_timeout
        self.precision = resolve_precision(precision)
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self.compile = compile
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._hub_ok: bool | None = None

    @classmethod
    def from_env(cls, model: str | None = None, models: str | None = None, default_local: str | None = None,
                 device: str | None = None, precision: str = "auto", compile: str = "off") -> "ModelRegistry":
        """``model`` / ``MTAN_MODEL``: the default choice; ``models`` / ``MTAN_MODELS``: comma-separated
        dropdown choices; ``default_local`` / ``MTAN_DEFAULT_MODEL``: the offline fallback (``weights/``)."""
        default_local = default_local or os.environ.get("MTAN_DEFAULT_MODEL") or "weights"
        model = model or os.environ.get("MTAN_MODEL") or None
        listed = [s.strip() for s in (models or os.environ.get("MTAN_MODELS") or "").split(",") if s.strip()]
        sources = ([model] if model else []) + listed
        if not sources:
            sources = [default_local]
        return cls(sources, default_local=default_local, device=device, precision=precision, compile=compile)

    @property
    def default_key(self) -> str:
        return self.sources[0]

    def choices(self) -> list[tuple[str, str]]:
        return [(model_label(s), s) for s in self.sources]

    def hub_ok(self) -> bool:
        if self._hub_ok is None:
            self._hub_ok = hub_reachable(self.hub_timeout)
        return self._hub_ok

    def get(self, key: str | None = None) -> LoadedModel:
        key = key or self.default_key
        if key not in self.sources:
            raise ModelUnavailableError(f"unknown model {key!r}; this app offers: {', '.join(self.sources)}")
        cached = self._models.get(key)  # fast path: no waiting behind another model's download
        if cached is not None:
            return cached
        with self._lock:  # one load at a time; later calls get the cached model
            if key in self._models:
                return self._models[key]
            if key in self._errors:
                raise ModelUnavailableError(self._errors[key])
            try:
                loaded = self._load(key)
            except ModelUnavailableError as e:
                self._errors[key] = str(e)
                raise
            self._models[key] = loaded
            return loaded

    def _is_default(self, source: str) -> bool:
        here, default = resolve_local(source), resolve_local(self.default_local)
        return here is not None and default is not None and here.resolve() == default.resolve()

    def _load(self, key: str) -> LoadedModel:
        try:
            return self._load_source(key)
        except Exception as e:  # whatever the reason (offline, broken folder), fall back: never crash
            reason = str(e) or type(e).__name__
        if self._is_default(key):
            raise ModelUnavailableError(f"the local default model could not be loaded: {reason}")
        base = next((m for m in self._models.values() if m.key == m.source and self._is_default(m.source)), None)
        if base is None:
            try:
                base = self._load_source(self.default_local)
            except Exception as e:
                raise ModelUnavailableError(f"{key} could not be loaded ({reason}), nor the local default "
                                            f"{self.default_local} ({e})") from None
            if any(self._is_default(s) for s in self.sources):  # share it with the default's own entry
                self._models.setdefault(next(s for s in self.sources if self._is_default(s)), base)
        notice = (f"Could not load **{key}**: {reason}. Showing the local default model "
                  f"(`{self.default_local}`) instead.")
        loaded = LoadedModel(key=key, source=base.source, model=base.model, card=base.card,
                             notices=[notice] + base.notices, resolutions=base.resolutions,
                             precisions=base.precisions, precision=base.precision, int8_scales=base.int8_scales,
                             compile=base.compile)
        for shared in ("_runner", "_warm_up"):  # the same weights: share the measured inference copy
            if shared in base.__dict__:
                loaded.__dict__[shared] = base.__dict__[shared]
        return loaded

    def _load_source(self, source: str) -> LoadedModel:
        from mtan.hub import HubUnavailableError

        card, record, precisions = "", None, None
        if is_hub_id(source):
            if not self.hub_ok():
                try:  # offline: a model already in the local Hub cache still works
                    model = MTAN.from_pretrained(source, map_location=self.device, local_files_only=True)
                except ModelConfigError:
                    raise HubUnavailableError(
                        f"the Hugging Face Hub is unreachable and {source} is not in the local cache") from None
            else:
                model = MTAN.from_pretrained(source, map_location=self.device)
            card = _hub_file(source, "README.md")
            record = _json_or_none(_hub_file(source, RESOLUTIONS_FILE))
            precisions = _json_or_none(_hub_file(source, PRECISIONS_FILE))
        else:
            folder = resolve_local(source) or Path(source)
            model = MTAN.from_pretrained(folder, map_location=self.device)
            readme = folder / "README.md"
            if readme.is_file():
                card = readme.read_text(encoding="utf-8", errors="replace")
            if (folder / RESOLUTIONS_FILE).is_file():
                record = _json_or_none((folder / RESOLUTIONS_FILE).read_text(encoding="utf-8", errors="replace"))
            precisions = read_record(folder)
        loaded = LoadedModel(key=source, source=source, model=model, card=strip_front_matter(card),
                             resolutions=ResolutionAdvice.from_record(record),
                             precisions=allowed_precisions(precisions), precision=self.precision,
                             int8_scales=recorded_int8_scales(precisions), compile=self.compile)
        if loaded.placeholder:
            loaded.notices.append(f"The model `{source}` is a **placeholder** (its model card says so): "
                                  f"its predictions are not meaningful yet.")
        return loaded


def _hub_file(repo_id: str, filename: str) -> str:
    """A small text file of a Hub model repo (its card, its resolutions record), or "" if it cannot be had."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, local_files_only=not hub_reachable(1.0))).read_text(
            encoding="utf-8", errors="replace")
    except Exception:  # nice to have, never required
        return ""


def _json_or_none(text: str) -> dict | None:
    import json

    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 4_000_000         # larger photos are downscaled to this; views and downloads too
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused before decoding (configurable)
MAX_SIDE = 65_000                      # no side longer than this (JPEG's limit for the returned views)
# The formats load_image opens (PIL knows many more: EPS would run Ghostscript, others are rarely
# tested parsers). "JPEG" includes MPO, which some cameras write.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
UNREADABLE = "This file is not an image that can be read: upload a JPEG, PNG, WebP, BMP, TIFF or GIF photo."
DAMAGED = "The image file is damaged or truncated and could not be decoded: upload the photo again, or another one."
# Progressive JPEGs: at most this many scans (a photo has about 10), and at most this much scan work,
# in full decodes of an image at the pixel ceiling (pixels x scans <= JPEG_SCAN_WORK x ceiling).
MAX_JPEG_SCANS = 32
JPEG_SCAN_WORK = 12
# TIFF compressions decoded (JPEG-in-TIFF and the rarer codecs are refused: re-save as JPEG).
TIFF_COMPRESSIONS = ("raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits")
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def configure_pil(limit: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """PIL's own decompression-bomb check, as a backstop behind :func:`load_image`'s (which reads
    the pixel count from the header and refuses anything that would decode to over ``limit``).

    PIL refuses at open over twice ``MAX_IMAGE_PIXELS``: that is set to 32 x ``limit`` so that a
    JPEG that decodes under ``limit`` at 1/8 scale (``Image.draft``) can still be opened.
    """
    Image.MAX_IMAGE_PIXELS = 32 * int(limit)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16/32-bit greys scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32 if im.mode.startswith("I;16") else np.float64)
        finite = a[np.isfinite(a)]
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        del finite
        if im.mode == "F":  # floats: stretch their range
            scale = 255.0 / (hi - lo) if hi > lo else 1.0
        else:  # integers: the bit depth their maximum needs (8, 10, 12, 16 ... bits) maps to 0..255
            bits = max(8, math.ceil(math.log2(hi - lo + 1))) if hi > lo else 8
            scale = 255.0 / (2 ** bits - 1)
        a -= lo
        a *= scale
        g = np.clip(np.nan_to_num(a, copy=False), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _too_large(width: int | None, height: int | None, limit: int, pil_message: str = "",
               progressive: bool = False) -> ImageLoadError:
    if width and height:
        what = f"{width}x{height} pixels ({width * height / 1e6:,.0f} megapixels)"
        if progressive:
            what = f"this progressive JPEG, decoded at full size, {what},"
    else:  # PIL's own check refused it at open: its message has the pixel count
        m = re.search(r"\((\d+) pixels\)", pil_message)
        what = f"{int(m.group(1)):,} pixels" if m else "it"
    return ImageLoadError(f"The image is too large: {what} is over this app's limit of {limit:,} pixels "
                          f"(decoded). Downscale it and upload it again.")


def _scaled(width: int, height: int, max_pixels: int) -> tuple[int, int] | None:
    """The size to downscale to (aspect kept; at most ``max_pixels`` and ``MAX_SIDE`` a side), or None."""
    s = min(1.0, math.sqrt(max_pixels / (width * height)), MAX_SIDE / max(width, height))
    if s >= 1.0:
        return None
    return max(1, int(width * s)), max(1, int(height * s))


def _check_jpeg(data: bytes, max_image_pixels: int) -> bool:
    """Refuse a JPEG whose scans would cost too much to decode; True if it is decoded through a
    full-size coefficient buffer (progressive or multi-scan), so its pixels count at full size."""
    try:
        layout = jpeg.read_layout(data, MAX_JPEG_SCANS)
    except jpeg.JpegStructureError as e:
        raise ImageLoadError(f"This JPEG has {e}, far more than a photo has: re-save it as an ordinary JPEG "
                             f"(or PNG) and upload it again.") from None
    if layout is None or not layout.multi_scan:
        return False
    pixels = layout.width * layout.height
    if pixels > max_image_pixels:
        raise _too_large(layout.width, layout.height, max_image_pixels, progressive=True)
    if pixels * layout.scans > JPEG_SCAN_WORK * max_image_pixels:
        raise ImageLoadError(
            f"This progressive JPEG ({layout.width}x{layout.height} pixels in {layout.scans} scans) would take too "
            f"long to decode: re-save it as an ordinary (baseline) JPEG, or smaller, and upload it again.")
    return True


def _check_tiff(im: Image.Image) -> None:
    compression = getattr(im, "info", {}).get("compression", "raw")
    if compression not in TIFF_COMPRESSIONS:
        raise ImageLoadError(f"This TIFF is stored with {compression!s:.20} compression, which this app does not "
                             f"decode: re-save it as JPEG, PNG or an uncompressed TIFF and upload it again.")


def load_image(source: bytes | str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Image.Image, list[str]]:
    """Open a photo (its bytes, or a trusted path) as RGB, EXIF orientation applied, at most
    ``max_pixels`` pixels.

    Returns the image and notes for the user (e.g. that it was downscaled). Raises
    :class:`ImageLoadError` with a readable message for anything unusable: an empty file, a file
    that is not an image (only JPEG, PNG, WebP, BMP, TIFF and GIF are opened), a damaged or
    truncated one, or one that would cost too much to decode: more than ``max_image_pixels``
    pixels by its header, a JPEG with more than ``MAX_JPEG_SCANS`` scans or more scan work than
    ``JPEG_SCAN_WORK`` full decodes at the ceiling, a TIFF in a rarely used compression. All of
    it is checked before any pixel is decoded, so a decompression or scan bomb costs nothing.

    Memory: a single-scan JPEG over ``max_pixels`` is decoded at a reduced scale (``Image.draft``:
    1/2, 1/4 or 1/8) and then downscaled; a progressive JPEG keeps every coefficient at full size
    while it decodes, so its pixels count at full size against the ceiling. Other formats are
    decoded once and downscaled in their own mode (``reduce`` first), so at most one full-size
    copy exists, briefly. Animated images: the first frame.
    """
    notes: list[str] = []
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    if not data:
        raise ImageLoadError("The file is empty (0 bytes): upload a photo.")
    full_size_jpeg = _check_jpeg(data, max_image_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise _too_large(None, None, max_image_pixels, str(e)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(UNREADABLE) from None
    except Exception:  # OSError, and whatever a hostile header makes a parser raise
        raise ImageLoadError(DAMAGED) from None
    try:
        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ImageLoadError("The image is empty (0 pixels).")
            if im.format == "TIFF":
                _check_tiff(im)
            if w * h > max_pixels and isinstance(im, JpegImageFile) and not full_size_jpeg:
                target = _scaled(w, h, max_pixels)
                im.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never smaller than target
            if im.width * im.height > max_image_pixels:  # from the header: nothing decoded yet
                raise _too_large(w, h, max_image_pixels)
            if getattr(im, "is_animated", False):
                notes.append("The file holds several images (an animation or several pages): the first was used.")
            im.load()
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            method = _ORIENTATION.get(orientation if isinstance(orientation, int) else 1)
            target = _scaled(im.width, im.height, max_pixels)
            if target:
                if im.mode in ("1", "P", "PA"):  # palettes resample as nearest neighbour: colours first
                    im = to_rgb(im)
                im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            if method is not None:
                im = im.transpose(method)
            im = to_rgb(im)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise _too_large(w, h, max_image_pixels) from None
    except MemoryError:
        raise ImageLoadError(f"The image ({w}x{h} pixels) is too large to decode on this server right now; "
                             f"upload a smaller one.") from None
    except Exception:  # truncated or corrupt data (OSError, ValueError, SyntaxError, struct.error ...)
        raise ImageLoadError(DAMAGED) from None
    if im.width * im.height < w * h:
        shown = (h, w) if method in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                                     Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90) else (w, h)
        if max(w, h) > MAX_SIDE and w * h <= max_pixels:
            limit = f"limit of {MAX_SIDE:,} pixels a side"
        else:
            limit = f"limit of {max_pixels:,} pixels"
        notes.append(f"The photo ({shown[0]}x{shown[1]} pixels) is larger than this app's {limit}: it was "
                     f"downscaled to {im.width}x{im.height}, the size of its views and downloads.")
    return im, notes


def processing_notes(size: tuple[int, int], processing_size: tuple[int, int]) -> list[str]:
    """Notes on photos the network sees poorly: tiny ones, and very wide or tall ones (h, w sizes)."""
    (H, W), (h, w) = size, processing_size
    notes = []
    if min(H, W) < 16:
        notes.append(f"The photo is tiny ({W}x{H} pixels): the network saw it enlarged to {w}x{h}, so its "
                     f"results say little.")
    elif min(h, w) < 32:
        notes.append(f"The photo is very {'wide' if W > H else 'tall'} ({W}x{H} pixels): fitted inside the "
                     f"processing resolution the network saw it as {w}x{h} pixels (padded to a multiple of "
                     f"32), so its results are coarse.")
    return notes


def parse_resolution(text: str) -> tuple[int, int]:
    """``"256x512"`` -> (256, 512), height x width."""
    m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", str(text))
    if not m or not 0 < int(m.group(1)) <= 4096 or not 0 < int(m.group(2)) <= 4096:
        raise ValueError(f"a processing resolution is HEIGHTxWIDTH, e.g. 256x512; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_files(folder: str | os.PathLike = EXAMPLES_DIR) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------------------
# Running a model on one photo
# --------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """One photo's results, kept (in a gr.State) so views re-render without re-running the network.

    Label maps are at the photo's size; depth, normals and masks at the processing size. The
    photo is at most ``max_pixels`` (see :func:`load_image`), so one prediction holds roughly
    7 bytes a photo pixel plus the masks (at most ``mask_budget_values`` bytes, 16 MB by default).
    """

    model_key: str
    photo: Image.Image                            # RGB, the (possibly downscaled) upload
    stem: str                                     # the upload's file name, for downloads
    processing_size: tuple[int, int]              # (h, w) the network saw
    tasks: list                                   # the model's Task objects
    labels: dict[str, np.ndarray] = field(default_factory=dict)    # semantic: H x W class ids
    depth: dict[str, np.ndarray] = field(default_factory=dict)     # depth: h x w float32
    normals: dict[str, np.ndarray] = field(default_factory=dict)   # normal: 3 x h x w float32
    masks: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)  # uint8 C x h x w, / 255
    mask_downsampled: bool = False
    seconds: float = 0.0                          # the network and the outputs at the photo's size
    seconds_network: float = 0.0                  # the network alone
    notes: list[str] = field(default_factory=list)
    resolution: str = ""                          # the processing resolution chosen ("256x512")
    mirrored: bool = False                        # the mirror image was run too and averaged
    compiled: bool = False                        # the network ran compiled (torch.compile)
    model_source: str = ""                        # where the model came from (the downloads' metadata)
    files: list[str] = field(default_factory=list)         # downloads, written once
    masks_file: str = ""                                   # the masks' .npz, written when first asked for
    masks_note: str = ""
    file_notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.height, self.photo.width

    def first(self, kind: str):
        return next((t for t in self.tasks if t.kind == kind), None)


def labels_at(logits: torch.Tensor, size: tuple[int, int], max_pixels: int = 1_000_000) -> np.ndarray:
    """Class ids at ``size`` from K x h x w logits: bilinear logits up to at most ``max_pixels``,
    argmax, then nearest-neighbour to the full size (bounded memory for huge photos)."""
    H, W = size
    s = min(1.0, math.sqrt(max_pixels / (H * W)))
    mid = (max(1, round(H * s)), max(1, round(W * s)))
    up = F.interpolate(logits[None].float(), size=mid, mode="bilinear", align_corners=False)[0]
    ids = class_ids(up, dim=0).to(torch.int32).cpu().numpy()
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    ids = ids.astype(dtype)
    if mid != (H, W):
        ids = np.asarray(Image.fromarray(ids).resize((W, H), Image.Resampling.NEAREST))
    return ids


MASK_SCALE = 1 / 255  # masks are kept (and downloaded) as uint8: value = stored * MASK_SCALE


def quantise_mask(m: torch.Tensor) -> np.ndarray:
    """A mask (sigmoid outputs, 0..1, any float dtype and memory layout) as a contiguous uint8
    array ``round(value * 255)``: a quarter of float32's memory, error <= 0.002.
    :func:`mtan.visualize.mask_values` turns it back into floats."""
    return m.to(torch.float32, copy=True).mul_(255).clamp_(0, 255).round_().to(torch.uint8).contiguous().cpu().numpy()


def shrink_masks(masks: dict, budget_values: int) -> tuple[dict, bool]:
    """Masks as uint8 numpy (see :func:`quantise_mask`); if they hold more than ``budget_values``
    numbers, area-average the large ones (never below 32 pixels a side) until they fit."""
    total = sum(m.numel() for v in masks.values() for ms in v.values() for m in ms)
    factor = max(1.0, math.sqrt(total / budget_values)) if budget_values > 0 else 1.0
    out = {}
    for task, parts in masks.items():
        out[task] = {}
        for part, ms in parts.items():
            arrs = []
            for m in ms:
                m = m[0]
                if factor > 1:
                    h, w = m.shape[-2:]
                    nh, nw = max(min(h, 32), math.ceil(h / factor)), max(min(w, 32), math.ceil(w / factor))
                    if (nh, nw) != (h, w):
                        m = F.adaptive_avg_pool2d(m.float(), (nh, nw))
                arrs.append(quantise_mask(m))
            out[task][part] = arrs
    return out, factor > 1


def predict_photo(loaded: LoadedModel, photo: Image.Image, resolution: tuple[int, int], stem: str = "photo",
                  mask_budget_values: int = 16_000_000, flip: bool = False) -> Prediction:
    """Fit the photo inside ``resolution`` (aspect kept; ``MTAN.predict`` pads to multiples of 32),
    run the model once with attention, and bring the outputs back to the photo's size. ``flip``:
    also run the mirror image and average the outputs (test-time augmentation; the masks shown
    are the unmirrored run's)."""
    model = loaded.model
    h, w = fit_size(photo.height, photo.width, resolution)
    small = photo if (h, w) == (photo.height, photo.width) else photo.resize(
        (w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    x = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    padded = (1, 3, -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE)  # as predict pads
    compiled = loaded.compiled_for(padded)
    start = time.perf_counter()
    with torch.inference_mode():
        outputs, masks = loaded.runner.predict(x, return_attention=True)
        if flip:
            outputs = flip_average(model.tasks, outputs, loaded.runner.predict(x.flip(-1)))
        network = time.perf_counter() - start
        pred = Prediction(model_key=loaded.key, photo=photo, stem=stem, processing_size=(h, w),
                          tasks=list(model.tasks), mirrored=bool(flip), model_source=loaded.source,
                          compiled=compiled)
        for t in model.tasks:
            field_name, finish = PREDICTION_FIELDS[t.kind]
            getattr(pred, field_name)[t.name] = finish(outputs[t.name][0], pred.size)
        pred.masks, pred.mask_downsampled = shrink_masks(masks, mask_budget_values)
    pred.seconds = time.perf_counter() - start
    pred.seconds_network = network
    return pred


# Where each kind of task's output goes in a Prediction, and how it gets there from the
# network's C x h x w output: class ids at the photo's size; depth and normals as they are.
PREDICTION_FIELDS = {
    "semantic": ("labels", labels_at),
    "depth": ("depth", lambda out, size: out[0].float().cpu().numpy()),
    "normal": ("normals", lambda out, size: out.float().cpu().numpy()),
}


class ExampleCache:
    """Predictions for the files in ``examples/`` (by content hash, model and resolution), so a
    click on an example shows its results at once after the first time. Uploads are never cached."""

    def __init__(self, files: list[Path], capacity: int = 16):
        self.digests = set()
        for p in files:
            try:
                self.digests.add(file_digest(p))
            except OSError:
                pass
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def key(self, digest: str, model_key: str, resolution: str):
        """The cache key of a photo whose content has SHA-1 ``digest``, or None if it is no example."""
        return (digest, model_key, resolution) if digest in self.digests else None

    def get(self, key):
        if key is None:
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        if key is None:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
