"""Photos from visitors: checked from their headers before a pixel is decoded (format, size,
JPEG scans, TIFF compression), decoded, turned upright and to RGB, downscaled to the app's
limit; and the notes on photos the network sees poorly."""
from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from mtan.serve import jpeg

class ImageLoadError(ValueError):
    """An uploaded file could not be used as a photo; the message says why, for the user."""


DEFAULT_MAX_PIXELS = 4_000_000         # larger photos are downscaled to this; views and downloads too
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused before decoding (configurable)
MAX_SIDE = 65_000                      # no side longer than this (JPEG's limit for the returned views)
# At most this much memory for decoding one image, estimated from its header before decoding
# (:func:`decode_bytes`): with the rest of a request, one photo costs the server under 500 MB.
MAX_DECODE_BYTES = 448 * 2**20
# Bytes a pixel takes while an image of a PIL mode is decoded and downscaled (PIL keeps 3-band
# images in 4 bytes; images with transparency are premultiplied into a second copy as they are
# resized; palettes are expanded to RGB first).
_DECODE_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 5, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "RGB": 4,
                           "YCbCr": 4, "LAB": 4, "HSV": 4, "CMYK": 8, "I": 4, "F": 4, "LA": 8, "La": 8, "PA": 8,
                           "RGBA": 8, "RGBa": 8}
# A progressive JPEG keeps every DCT coefficient (2 bytes each, 1.5 components a pixel in 4:2:0)
# while it decodes, then the full-size RGB image.
_PROGRESSIVE_JPEG_BYTES_PER_PIXEL = 7
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


def decode_bytes(width: int, height: int, mode: str, progressive_jpeg: bool = False) -> int:
    """The memory that decoding and downscaling an image of this size and PIL mode takes (an estimate
    from the header, measured against the real peak in the tests)."""
    per_pixel = _PROGRESSIVE_JPEG_BYTES_PER_PIXEL if progressive_jpeg else _DECODE_BYTES_PER_PIXEL.get(mode, 8)
    return width * height * per_pixel


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
            _refuse_costly_decode(im, (w, h), max_image_pixels, full_size_jpeg)
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
        notes.append(_downscaled_note((w, h), im.size, method, max_pixels))
    return im, notes


def _refuse_costly_decode(im: Image.Image, size: tuple[int, int], max_image_pixels: int, full_size_jpeg: bool) -> None:
    """Raise :class:`ImageLoadError` when the opened (not yet decoded) image would take more
    pixels or memory to decode than this app allows; ``size`` is the file's own (w, h)."""
    w, h = size
    if im.width * im.height > max_image_pixels:  # from the header: nothing decoded yet
        raise _too_large(w, h, max_image_pixels)
    cost = decode_bytes(im.width, im.height, im.mode, full_size_jpeg)
    if cost > MAX_DECODE_BYTES:
        kind = "progressive JPEG" if full_size_jpeg else f"{im.mode} image"
        raise ImageLoadError(f"The image is too large to decode here: this {w}x{h} {kind} would take about "
                             f"{cost / 2**20:,.0f} MB of memory, over this app's limit of "
                             f"{MAX_DECODE_BYTES / 2**20:,.0f} MB. Downscale it"
                             + (" (or save it without transparency)" if "A" in im.mode else "")
                             + " and upload it again.")


def _downscaled_note(size: tuple[int, int], now: tuple[int, int], method, max_pixels: int) -> str:
    """The note for a photo of ``size`` (w, h, as stored) that was downscaled to ``now``; the
    sizes are said as the visitor sees the photo (``method``: the EXIF turn applied)."""
    w, h = size
    shown = (h, w) if method in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                                 Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90) else (w, h)
    if max(w, h) > MAX_SIDE and w * h <= max_pixels:
        limit = f"limit of {MAX_SIDE:,} pixels a side"
    else:
        limit = f"limit of {max_pixels:,} pixels"
    return (f"The photo ({shown[0]}x{shown[1]} pixels) is larger than this app's {limit}: it was "
            f"downscaled to {now[0]}x{now[1]}, the size of its views and downloads.")


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
