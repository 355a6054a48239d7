"""Every request's values checked before gradio touches them.

Any event of a gradio app can be called through its wire protocol (``/gradio_api/queue/join``
with an ``fn_index``), private ones included, with any JSON as its values. Gradio's own checks
depend on what the request claims (a file value without ``meta`` is not treated as a file at
all) and run after it has already hashed, copied or decoded what it was given. So the app wraps
gradio's input processing with :class:`RequestGuard`: each value is checked against its
component (a file must be an upload, see :mod:`mtan.serve.uploads`; a number must lie within its
slider; a choice must be one of the choices; an example must be an index of the examples) and
replaced by a clean copy, or the request is refused with one short message, logged in one line.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
import traceback

import gradio as gr

from mtan.serve.process import ACTIVITY, release_memory
from mtan.serve.uploads import UploadPolicy, UploadRefused

log = logging.getLogger("mtan.app.requests")
if not log.handlers:
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("mtan app: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

MAX_NAME_CHARS = 200
MAX_STREAM_FRAME_CHARS = 4_000_000  # a streamed webcam frame, base64 (a 640x480 JPEG takes about 70,000)
STREAM_FRAME_URL = re.compile(r"data:image/(jpeg|png|webp);base64,[A-Za-z0-9+/=]+")


def refusal(event: str, message: str, kind: type[gr.Error] = gr.Error) -> gr.Error:
    """A ``gr.Error`` (or its subclass ``kind``) with ``message`` for the visitor, logged as one
    line (no traceback)."""
    log.info("refused %s: %s", event, message[:300])
    return kind(message, print_exception=False)


def _default(block):
    return None if isinstance(block, (gr.State, gr.Image, gr.Video)) else getattr(block, "value", None)


def _label(block) -> str:
    return str(getattr(block, "label", None) or type(block).__name__)


def _choices(block) -> list:
    return [c[1] if isinstance(c, (tuple, list)) else c for c in (block.choices or [])]


def _choice_labels(block) -> list:
    return [c[0] if isinstance(c, (tuple, list)) else c for c in (block.choices or [])]


def guarded(fn=None, *, noun: str = "photo"):
    """``fn`` with the app's error handling: our refusals pass through; running out of memory and
    any other exception become one plain message about the visitor's ``noun`` (a photo, a clip, a
    webcam frame; the API client sees that text too), the traceback in the log; the request's
    temporaries go back to the OS afterwards. ``@guarded`` or ``@guarded(noun="clip")``."""
    if fn is None:
        return functools.partial(guarded, noun=noun)
    smaller = {"clip": "a shorter or smaller clip"}.get(noun, f"a smaller {noun}")

    @functools.wraps(fn)
    def run(*args, **kwargs):
        ACTIVITY.begin()  # background work (the compile warm-up) waits while visitors are served
        try:
            try:
                return fn(*args, **kwargs)
            finally:
                ACTIVITY.end()
                release_memory()  # the temporaries of this request: back to the OS, not kept by malloc
        except gr.Error:
            raise
        except MemoryError:
            raise refusal(fn.__name__, f"The server ran out of memory on this {noun}: try {smaller} or a lower "
                                       f"processing resolution.") from None
        except Exception:  # a bug or an input nobody foresaw: a plain message, the traceback in the log
            traceback.print_exc()
            raise gr.Error(f"This {noun} could not be processed because of an error on the server (it has been "
                           f"logged): try again, or another {noun}.", print_exception=False) from None
    return run


class RequestGuard:
    """Checks and cleans the values of every event of ``blocks`` (see the module's docstring)."""

    SUPPORTED = (gr.Image, gr.Video, gr.Slider, gr.Radio, gr.Dropdown, gr.Checkbox, gr.Dataset, gr.State, gr.Textbox)

    def __init__(self, policy: UploadPolicy, open_choices=(), video_policy: UploadPolicy | None = None):
        """``open_choices``: radios and dropdowns whose choices depend on the model (the event
        checks their values); any short text is let through for them. ``video_policy``: the
        files a video input may name (``policy`` when not given)."""
        self.policy = policy
        self.video_policy = video_policy or policy
        self.open_choices = {block._id for block in open_choices}

    def install(self, blocks: gr.Blocks) -> None:
        """Check every value of every event of ``blocks`` from now on; refuses at once (at start,
        not per request) an event with an input this guard does not know how to check."""
        for fn in blocks.fns.values():
            for block in fn.inputs:
                if not isinstance(block, self.SUPPORTED):
                    raise TypeError(f"RequestGuard cannot check {type(block).__name__} inputs "
                                    f"(event {fn.name}): add a check for it")
        original = blocks.preprocess_data

        async def preprocess_data(block_fn, inputs, state, explicit_call=False):
            return await original(block_fn, self.check(block_fn, inputs), state, explicit_call)

        blocks.preprocess_data = preprocess_data

    def check(self, block_fn, inputs) -> list:
        event = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "event"
        if not isinstance(inputs, list):
            raise refusal(event, f"This request has no list of values; this event takes {len(block_fn.inputs)}.")
        # Values left out at the end take their control's default (clients written for an older page
        # send fewer); values beyond the event's inputs are dropped (gradio ignores them too).
        inputs = inputs[: len(block_fn.inputs)] + [_default(b) for b in block_fn.inputs[len(inputs):]]
        try:
            return [self.value(block, value) for block, value in zip(block_fn.inputs, inputs)]
        except UploadRefused as e:
            raise refusal(event, str(e)) from None
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            raise refusal(event, f"This request's values are not valid: {e}") from None

    def value(self, block, value):
        if isinstance(block, gr.State):
            return None  # gradio reads state from the session, never from the request
        if isinstance(block, gr.Image) and block.streaming:
            return None if value is None else self.streamed_frame(value)
        if isinstance(block, gr.Image):
            return None if value is None else self.image(value)
        if isinstance(block, gr.Video):
            return None if value is None else self.file(value, self.video_policy)
        if isinstance(block, gr.Slider):
            if value is None:
                return block.value
            return self.number(block, value)
        if isinstance(block, (gr.Radio, gr.Dropdown)):
            if block._id in self.open_choices:
                if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_CHARS):
                    raise ValueError(f"{_label(block)} must be a short text")
                return value
            choices = _choices(block)
            if value is not None and (not isinstance(value, (str, int, float)) or value not in choices):
                shown = ", ".join(map(str, _choice_labels(block)[:12]))  # labels: values may be server paths
                raise ValueError(f"{_label(block)} must be one of: {shown}")
            return value
        if isinstance(block, gr.Checkbox):
            if value is None:
                return block.value
            if not isinstance(value, bool):
                raise ValueError(f"{_label(block)} must be true or false")
            return value
        if isinstance(block, gr.Textbox) and block.max_length:  # text the app reads itself (the MCP tool's photo)
            if value is None:
                return ""
            if not isinstance(value, str):
                raise ValueError(f"{_label(block)} must be text")
            if len(value) > block.max_length:
                raise UploadRefused(f"{_label(block)} is too long: at most {block.max_length:,} characters "
                                    f"(the upload limit, as base64).")
            return value
        if isinstance(block, gr.Dataset):  # a click on an example: its index
            if value is None or isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(block.samples):
                raise ValueError(f"example must be a number from 0 to {len(block.samples) - 1}")
            return value
        raise ValueError(f"{type(block).__name__} values are not accepted")

    @staticmethod
    def number(block, value):
        """A slider's value: a number (not a boolean, not a huge integer, finite) within its range,
        checked before any arithmetic touches it."""
        between = f"between {block.minimum:g} and {block.maximum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{_label(block)} must be a number {between}")
        if (isinstance(value, int) and value.bit_length() > 64) or not math.isfinite(value) \
                or not block.minimum <= value <= block.maximum:  # a huge int is refused before float() sees it
            raise ValueError(f"{_label(block)} must be {between}")
        return value

    def image(self, value) -> dict:
        """A clean file value for an uploaded image: only its checked real path and its name."""
        return self.file(value, self.policy)

    def streamed_frame(self, value) -> dict:
        """A streaming webcam input's frame: the browser sends it inline, as a ``data:`` URL of a
        JPEG, PNG or WebP image of at most :data:`MAX_STREAM_FRAME_CHARS` (its pixels are checked
        when it is decoded, as an upload's are); an uploaded file is checked as any upload."""
        url = value.get("url") if isinstance(value, dict) else None
        if not (isinstance(url, str) and url.startswith("data:")):
            return self.image(value)
        if len(url) > MAX_STREAM_FRAME_CHARS:
            raise UploadRefused(f"This webcam frame is too large (over {MAX_STREAM_FRAME_CHARS:,} characters).")
        if not STREAM_FRAME_URL.fullmatch(url):
            raise UploadRefused("This webcam frame is not a JPEG, PNG or WebP image.")
        return {"path": None, "url": url, "orig_name": "webcam.jpg", "size": None, "mime_type": None,
                "is_stream": False, "meta": {"_type": "gradio.FileData"}}

    def file(self, value, policy: UploadPolicy) -> dict:
        """A clean file value for an upload that ``policy`` allows: its checked real path and its name."""
        if not isinstance(value, dict):
            what = "photo" if policy.noun == "photo" else policy.noun
            raise UploadRefused(f"This request's {what} is not a file value: upload a {what}"
                                + (" (or pick an example)." if what == "photo" else "."))
        path = policy.check(value.get("path"))
        name = value.get("orig_name")
        name = os.path.basename(name)[:MAX_NAME_CHARS] if isinstance(name, str) and name.strip() else path.name
        return {"path": str(path), "orig_name": name, "size": path.stat().st_size, "url": None,
                "mime_type": None, "is_stream": False, "meta": {"_type": "gradio.FileData"}}
