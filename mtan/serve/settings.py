"""The app's settings: every command-line flag with its environment variable and default, and
the readers of the numbers and sizes they take (``4_000_000``, ``25mb``)."""
from __future__ import annotations

import argparse
import os
import re

from mtan.inference.compiled import COMPILE_MODES
from mtan.records import PRECISIONS
from mtan.serve.images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PIXELS
from mtan.serve.streams import DEFAULT_LIVE_IDLE_SECONDS, DEFAULT_LIVE_SECONDS, DEFAULT_LIVE_STREAMS


def positive_int(text: str) -> int:
    """An integer > 0; underscores and commas allowed (``4_000_000``, ``4,000,000``)."""
    try:
        value = int(str(text).replace(",", "").replace("_", "").strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _amount(text: str) -> tuple[int, str]:
    """``25mb`` -> (25, "mb"); a bare number is bytes. An argparse error for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb|tb)?\s*", str(text), flags=re.I)
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 25mb, 500kb or 1gb, got {text!r}")
    return int(m.group(1)), (m.group(2) or "b").lower()


def file_size(text: str) -> str:
    """An upload limit gradio understands: ``25mb``, ``500kb``, ``1gb`` or a number of bytes."""
    number, unit = _amount(text)
    return f"{number}{unit}"


def byte_size(text: str) -> int:
    """A size such as ``4gb`` or ``500mb`` (or a number of bytes) in bytes."""
    number, unit = _amount(text)
    return number * _UNITS[unit]


def size_or_auto(text: str) -> int | str:
    """``auto``, or a size such as ``512mb`` in bytes."""
    return "auto" if str(text).strip().lower() == "auto" else byte_size(text)


def positive_number(text: str) -> float:
    """A number > 0 (``20``, ``29.97``)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        description="MTAN demo app (Gradio): upload a street photo, see its segmentation, depth and attention masks.",
        epilog="Every flag can also be set by an environment variable (the flag wins): MTAN_MODEL, MTAN_MODELS, "
               "MTAN_DEFAULT_MODEL (the local default model, weights/), MTAN_FALLBACK, MTAN_EXAMPLES (default examples/), "
               "GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, MTAN_DEVICE, MTAN_MAX_PIXELS, MTAN_MAX_IMAGE_PIXELS, "
               "MTAN_MAX_FILE_SIZE, MTAN_MAX_VIDEO_SIZE, MTAN_MAX_VIDEO_SECONDS, MTAN_MAX_VIDEO_FPS, "
               "MTAN_MAX_VIDEO_PIXELS, MTAN_MAX_VIDEO_WORK_SECONDS, MTAN_LIVE_STREAMS, MTAN_LIVE_SECONDS, "
               "MTAN_LIVE_IDLE_SECONDS, MTAN_CONCURRENCY, MTAN_QUEUE_SIZE, MTAN_MAX_SESSIONS, MTAN_INFERENCE_PRECISION, "
               "MTAN_COMPILE, MTAN_THREADS, MTAN_DOWNLOADS_SPACE, MTAN_KEEP_FREED_MEMORY, MTAN_CACHE_DIR (measured "
               "choices).")
    p.add_argument("--model", default=env("MTAN_MODEL"), help="model folder or Hub repo id (default: weights/)")
    p.add_argument("--models", default=env("MTAN_MODELS"), help="comma-separated models for the dropdown")
    p.add_argument("--fallback", action="store_true", default=(env("MTAN_FALLBACK") or "").lower() in ("1", "true", "yes"),
                   help="if a model cannot be loaded, serve the local default model (MTAN_DEFAULT_MODEL, weights/) "
                        "in its place with a notice, instead of stopping with an error")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME"), help="e.g. 0.0.0.0 to listen on all interfaces")
    p.add_argument("--port", type=positive_int, default=env("GRADIO_SERVER_PORT") or None,
                   help="port to listen on (default 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also create a temporary public gradio.live link")
    p.add_argument("--no-mcp", dest="mcp", action="store_false",
                   default=(env("MTAN_MCP") or "1").lower() not in ("0", "false", "no"),
                   help="do not serve the MCP tool (street_photo) at /gradio_api/mcp/ (MTAN_MCP=0)")
    p.add_argument("--device", default=env("MTAN_DEVICE"), help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--max-pixels", type=positive_int,
                   default=env("MTAN_MAX_PIXELS") or str(DEFAULT_MAX_PIXELS),
                   help="larger photos are downscaled to this many pixels; views and downloads are at that size")
    p.add_argument("--max-image-pixels", type=positive_int,
                   default=env("MTAN_MAX_IMAGE_PIXELS") or str(DEFAULT_MAX_IMAGE_PIXELS),
                   help="images that would decode to more pixels are refused (read from the header, before "
                        "decoding; JPEGs count at the 1/2, 1/4 or 1/8 scale they are decoded at)")
    p.add_argument("--max-file-size", type=file_size, default=env("MTAN_MAX_FILE_SIZE") or "25mb",
                   help="upload limit for photos, e.g. 25mb")
    p.add_argument("--max-video-size", type=file_size, default=env("MTAN_MAX_VIDEO_SIZE") or "100mb",
                   help="upload limit for video clips, e.g. 100mb")
    p.add_argument("--max-video-seconds", type=positive_number, default=env("MTAN_MAX_VIDEO_SECONDS") or "20",
                   help="longer clips are refused from their header; one whose header says less is processed up "
                        "to this many seconds")
    p.add_argument("--max-video-fps", type=positive_number, default=env("MTAN_MAX_VIDEO_FPS") or "30",
                   help="faster clips are thinned to this frame rate (every 2nd frame of a 60 frames/s clip)")
    p.add_argument("--max-video-pixels", type=positive_int,
                   default=env("MTAN_MAX_VIDEO_PIXELS") or str(3840 * 2160),
                   help="clips with larger frames are refused from their header (default: 4K, 3840x2160)")
    p.add_argument("--max-video-work-seconds", type=positive_number,
                   default=env("MTAN_MAX_VIDEO_WORK_SECONDS") or "120",
                   help="server seconds one clip may take; the frames processed by then are returned (default 120)")
    p.add_argument("--live-streams", type=positive_int, default=env("MTAN_LIVE_STREAMS") or str(DEFAULT_LIVE_STREAMS),
                   help=f"live webcam streams at once, one per visitor (default {DEFAULT_LIVE_STREAMS})")
    p.add_argument("--live-seconds", type=positive_number,
                   default=env("MTAN_LIVE_SECONDS") or str(DEFAULT_LIVE_SECONDS),
                   help=f"a live webcam stream ends after this many seconds (default {DEFAULT_LIVE_SECONDS}; Record "
                        f"starts another)")
    p.add_argument("--live-idle-seconds", type=positive_number,
                   default=env("MTAN_LIVE_IDLE_SECONDS") or str(DEFAULT_LIVE_IDLE_SECONDS),
                   help=f"a live webcam stream that sends no frame for this long ends and gives its slot back "
                        f"(default {DEFAULT_LIVE_IDLE_SECONDS:g})")
    p.add_argument("--concurrency", type=positive_int, default=env("MTAN_CONCURRENCY") or None,
                   help="predictions run at once (default: 1 on CPU, 2 on GPU)")
    p.add_argument("--queue-size", type=positive_int, default=env("MTAN_QUEUE_SIZE") or "32",
                   help="requests waiting at most; more are refused with 'the queue is full'")
    p.add_argument("--max-sessions", type=positive_int, default=env("MTAN_MAX_SESSIONS") or "32",
                   help="visitors whose last prediction is kept for redraws (oldest dropped first)")
    p.add_argument("--downloads-space", type=byte_size, default=env("MTAN_DOWNLOADS_SPACE") or "4gb",
                   help="disk kept for the views and downloads of recent predictions (about 14 MB each at "
                        "256x512); beyond it the oldest are removed, and so are any over an hour old")
    p.add_argument("--keep-freed-memory", type=size_or_auto, default=env("MTAN_KEEP_FREED_MEMORY") or "auto",
                   help="memory freed by requests that the server keeps for the next ones, e.g. 512mb; the next "
                        "photo reuses it instead of fetching it from the OS again (0.1 s faster on 2 cores); beyond "
                        "it, e.g. after a large photo, it goes back to the OS. Default auto: 3gb x the default "
                        "model's width, at least 512mb (768mb for the shipped width-0.25 model, 3gb at full width)")
    p.add_argument("--precision", choices=("auto",) + PRECISIONS, default=env("MTAN_INFERENCE_PRECISION") or "auto",
                   help="what the network computes in: auto (default) times, at start, each precision the model's "
                        "precisions.json says keeps its quality and runs the fastest (remembered per CPU); fp32, "
                        "bf16, bf16-convs or int8 force one")
    p.add_argument("--compile", choices=COMPILE_MODES, default=env("MTAN_COMPILE") or "auto",
                   help="auto (default): torch.compile the network in the background at start, at low priority, and "
                        "use it for the input sizes where it is measured faster (about a minute per size on 2 cores; "
                        "the outcome is remembered per CPU); off: eager only")
    p.add_argument("--threads", type=positive_int, default=env("MTAN_THREADS") or None,
                   help="CPU threads for torch (default: torch's choice, one per core)")
    return p.parse_args(argv)
