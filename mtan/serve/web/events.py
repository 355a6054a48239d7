"""What the app does for each event: one :class:`App` holds the settings, the models, the upload
and download folders, and a method per event. Handlers return their outputs by name
(:func:`named`); :mod:`mtan.serve.web.layout` lists, once, which component shows each name.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import gradio as gr
import torch

from mtan import serve
from mtan.inference import Resolution
from mtan.serve import attention, render, views
from mtan.serve.card import split_card
from mtan.serve.distances import NOTE, at_point, describe, objects_ahead, spoken
from mtan.serve.downloads import DownloadFolders, safe_stem, write_downloads, write_masks
from mtan.serve.examples import split_examples
from mtan.serve.guard import guarded, refusal
from mtan.serve.media_events import MediaEvents, video_resolutions
from mtan.serve.process import ACTIVITY
from mtan.serve.settings import byte_size
from mtan.serve.uploads import UploadPolicy, inline_photo
from mtan.serve.video import VideoLimits
from mtan.serve.zerogpu import gpu_task

# The outputs of each event, by name, in the order the API returns them (the page's components
# for these names: mtan.serve.web.layout).
VIEWS = ("segmentation", "depth", "legend", "colorbar", "normals", "compare", "summary", "state")
DETAILS = ("attention", "difference", "attention_caption", "downloads", "download_notes")
PREDICT = ("segmentation", "depth", "attention", "downloads", "legend", "colorbar", "normals", "compare",
           "difference", "attention_caption", "download_notes", "summary", "state")
# The page's run: the hero slider first (the page scrolls to the first output), the areas it shows.
PAGE_VIEWS = ("compare",) + tuple(n for n in VIEWS if n != "compare") + ("nearby", "error", "hero", "details")
PAGE_DETAILS = ("att_part", "att_level", "att_panel", "att_bar", "att_caption", "att_channel", "att_overview",
                "att_stats", "downloads", "download_notes", "masks_file", "masks_note")
ATTENTION_SECTION = ("att_panel", "att_bar", "att_caption", "att_channel")
MODEL_CHANGE = ("notice", "card", "card_rest", "attention_task", "compare_choice", "normals", "resolution",
                "video_resolution", "mirror")


def named(names: tuple[str, ...]):
    """A handler that returns ``{name: value}`` as gradio wants it: the values in ``names``' order
    (one output: its value); a name it leaves out keeps its component as it is (``gr.skip()``)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            out = fn(*args, **kwargs)
            unknown = set(out) - set(names)
            if unknown:
                raise KeyError(f"{fn.__name__} returned outputs it does not declare: {sorted(unknown)}")
            values = tuple(out[n] if n in out else gr.skip() for n in names)
            return values[0] if len(values) == 1 else values  # gradio: one output is the value itself
        run.outputs = names
        return run
    return wrap


class App:
    """The app as ``python app.py`` runs it with ``args`` (:func:`mtan.serve.settings.parse_args`):
    the default model loads now (``stop_on_error``: a model that cannot be loaded ends the process
    with one line); others on first use."""

    TOOL_WAIT_S = 30.0          # an MCP call waits this long at most for a free slot, then is refused
    OUT_MAX_AGE_S = 3600        # download folders older than this are removed (checked at most once a minute)
    SESSION_TTL_S = 1800        # a visitor's cached prediction (for redraws) is dropped this long after it was made
    GRADIO_CACHE = (600, 3600)  # gradio's copies of uploads and outputs: every 10 min, delete those over 1 h old
    LIVE_RESOLUTION = Resolution(128, 256)  # the webcam runs small, for a smooth frame rate
    OTHER_CONCURRENCY = 4       # redraws and the attention overview (no network run) at once

    def __init__(self, args, stop_on_error: bool = False):
        self.args = args
        serve.configure_pil(args.max_image_pixels)
        serve.tune_malloc()  # before any worker thread: large blocks reused by the next request, memory bounded
        if args.threads:
            torch.set_num_threads(args.threads)
        self.registry = serve.ModelRegistry.from_env(args.model, args.models, device=args.device,
                                                     precision=args.precision, compile=args.compile,
                                                     fallback=args.fallback)
        self.default_model, self.startup_error = serve.load_default_model(self.registry, stop_on_error=stop_on_error)
        self.keep_freed = (serve.freed_memory_for(self.default_model.model.width if self.default_model else 1.0)
                           if args.keep_freed_memory == "auto" else args.keep_freed_memory)
        serve.keep_freed_memory(self.keep_freed)
        serve.release_memory()  # loading and timing the model's precisions freed memory no request reuses
        self.concurrency = args.concurrency or (2 if self.registry.device.type == "cuda" else 1)
        # the MCP tool runs outside the queue (gradio returns a queued tool's several outputs as one text): its own slots
        self.tool_slots = threading.BoundedSemaphore(self.concurrency)
        self.examples = serve.example_files(Path(os.environ.get("MTAN_EXAMPLES") or serve.EXAMPLES_DIR))
        self.example_cache = serve.ExampleCache(self.examples)
        # Each prediction's views and downloads go to a fresh folder in gradio's cache: gradio then
        # serves them without copying them (and its delete_cache removes them by age, as we do).
        uploads = gr.utils.get_upload_folder()
        out_root = Path(uploads) / "mtan-app"
        self.downloads = DownloadFolders(out_root, self.OUT_MAX_AGE_S, args.downloads_space)
        # The only files a request may make the app read: regular files gradio stored from an
        # upload (or its copies of the examples), within each kind's limit; never the app's outputs.
        self.uploads = UploadPolicy.create(uploads, byte_size(args.max_file_size), excluded=[out_root])
        self.video_uploads = UploadPolicy.create(uploads, byte_size(args.max_video_size), excluded=[out_root],
                                                 noun="video clip")
        self.max_file_size = max(byte_size(args.max_file_size), byte_size(args.max_video_size))  # gradio's: the largest
        self.video_limits = VideoLimits(args.max_video_seconds, args.max_video_fps, args.max_video_pixels,
                                        args.max_video_work_seconds)
        self.predict_on_device = gpu_task(serve.predict_photo)  # on a ZeroGPU Space: a GPU for the call only
        self.media = MediaEvents(self.get_model, self.run_photo, self.downloads, self.uploads, self.video_uploads,
                                 self.video_limits, args.max_pixels, args.max_image_pixels, str(self.registry.device),
                                 self.LIVE_RESOLUTION)

    @property
    def limits(self) -> dict:
        """Every limit in force (printed at start for tools; docs/safety.md describes each)."""
        a, v = self.args, self.video_limits
        return {"concurrency": self.concurrency, "other_concurrency": self.OTHER_CONCURRENCY,
                "queue_size": a.queue_size, "max_sessions": a.max_sessions, "session_ttl_s": self.SESSION_TTL_S,
                "max_pixels": a.max_pixels, "max_image_pixels": a.max_image_pixels, "max_file_size": a.max_file_size,
                "max_video_size": a.max_video_size, "max_video_seconds": v.max_seconds, "max_video_fps": v.max_fps,
                "max_video_pixels": v.max_pixels, "downloads_max_age_s": self.OUT_MAX_AGE_S,
                "downloads_max_bytes": a.downloads_space, "gradio_cache_cleanup_s": list(self.GRADIO_CACHE),
                "example_cache": self.example_cache.capacity, "live_streams": a.live_streams,
                "live_seconds": a.live_seconds, "live_idle_seconds": a.live_idle_seconds,
                "max_video_work_seconds": v.max_work_seconds, "keep_freed_memory": self.keep_freed,
                "device": str(self.registry.device), "threads": torch.get_num_threads()}

    # ---- models ---------------------------------------------------------------------------

    def get_model(self, key: str | None) -> serve.LoadedModel:
        try:
            return self.registry.get(key or self.registry.default_key)
        except serve.ModelUnavailableError as e:
            raise refusal("model", serve.without_paths(str(e))) from None

    def notices_of(self, loaded: serve.LoadedModel | None) -> str:
        lines = ([self.startup_error] if self.startup_error and loaded is None else []) + (loaded.notices if loaded else [])
        return "\n\n".join(f"⚠️ {serve.without_paths(line)}" for line in lines)

    @staticmethod
    def compare_choices(loaded: serve.LoadedModel | None) -> list[str]:
        if loaded is None:
            return ["segmentation", "depth"]
        return list(dict.fromkeys(serve.TASK_OUTPUTS[t.kind].view for t in loaded.model.tasks))

    @staticmethod
    def task_choices(loaded: serve.LoadedModel | None) -> list[str]:
        return loaded.model.task_names if loaded else ["semantic", "depth"]

    @staticmethod
    def resolution_info(loaded: serve.LoadedModel | None) -> str:
        """The resolution control's note: the photo is fitted inside; why a resolution is missing."""
        reasons = loaded.resolutions.reasons.values() if loaded else []
        return " ".join(["The photo is fitted inside, aspect kept.", *(f"{r}." for r in reasons)])

    def card_parts(self, loaded: serve.LoadedModel | None) -> tuple[str, str]:
        """The model card as the page shows it: what it is and its limits, then everything else."""
        if loaded is None:
            return "*No model loaded.*", ""
        if not loaded.card:
            return "*This model has no card.*", ""
        summary, rest = split_card(loaded.card)
        return summary, f"**Loaded from** `{serve.model_label(loaded.source)}` on {self.registry.device}.\n\n{rest}"

    # ---- the prediction -------------------------------------------------------------------

    @staticmethod
    def checked_resolution(loaded: serve.LoadedModel, resolution: str, event: str) -> Resolution:
        """The box of a processing resolution the model offers, or the message that says which it offers."""
        advice = loaded.resolutions
        if resolution not in advice.offered:
            reason = advice.reasons.get(resolution, f"{resolution} is not a processing resolution of this app")
            raise refusal(event, f"{reason}; choose {', '.join(advice.offered)}.")
        return Resolution.parse(resolution)

    def run_photo(self, image, model, resolution, mirror) -> tuple[serve.Prediction, serve.LoadedModel]:
        """The network's outputs for an upload (or an example, from the example cache) and the
        model that ran. No view or download is drawn here."""
        if image is None:
            raise refusal("predict", "Upload a photo first (or pick an example).")
        path = image.get("path") if isinstance(image, dict) else image
        try:  # the request guard checked the path already; the file is checked again as it is read
            data = self.uploads.read(path)
        except ValueError as e:
            raise refusal("predict", str(e)) from None
        name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
        loaded = self.get_model(model)
        resolution = resolution or loaded.resolutions.default
        self.checked_resolution(loaded, resolution, "predict")
        return self.predict_bytes(data, name, loaded, resolution, bool(mirror)), loaded

    def predict_bytes(self, data: bytes, name: str, loaded: serve.LoadedModel, resolution: str,
                      mirror: bool) -> serve.Prediction:
        """A photo's prediction from its file's bytes; an example's comes from (and goes into) the
        example cache."""
        cache_key = self.example_cache.key(hashlib.sha1(data).hexdigest(), loaded.key,
                                           resolution + "+mirror" * bool(mirror))
        pred = self.example_cache.get(cache_key)
        if pred is None:
            try:
                photo, notes = serve.load_image(data, self.args.max_pixels, self.args.max_image_pixels)
            except serve.ImageLoadError as e:
                raise refusal("predict", str(e)) from None
            del data
            pred = self.predict_on_device(loaded, photo, Resolution.parse(resolution), stem=safe_stem(name),
                                          flip=bool(mirror))
            pred.notes = notes + serve.processing_notes(pred.size, pred.processing_size)
            self.example_cache.put(cache_key, pred)
        return pred

    def limits_line(self) -> str:
        """The limits a visitor's requests meet, in one line for the terminal."""
        a = self.args
        return (f"photos up to {a.max_file_size} and {a.max_image_pixels / 1e6:g} megapixels, clips up to "
                f"{a.max_video_size} and {a.max_video_seconds:g} s, {self.concurrency} photo at a time, "
                f"{a.queue_size} waiting at most, {a.live_streams} webcam streams")

    def warm_examples(self) -> threading.Thread | None:
        """Run the real example photos once in the background (after the server has been idle a
        while), so that a click on one answers from the cache at once."""
        loaded = self.default_model
        photos = split_examples(self.examples)[0]
        if loaded is None or not photos:
            return None

        def run():
            for path in photos:
                ACTIVITY.wait_until_idle(quiet_s=2.0)  # visitors first
                try:
                    self.predict_bytes(path.read_bytes(), path.name, loaded, loaded.resolutions.default, False)
                except Exception as e:  # noqa: BLE001 (an example that cannot run is simply not cached)
                    print(f"mtan app: example {path.name} not cached: {e}", file=sys.stderr, flush=True)

        thread = threading.Thread(target=run, name="mtan-examples", daemon=True)
        thread.start()
        return thread

    def main_views(self, pred: serve.Prediction, loaded: serve.LoadedModel, opacity, colormap, compare) -> dict:
        """What the page shows first: the segmentation, depth and normals views, the legend, the
        colour bar, the before/after pair and the summary line."""
        seg, depth, bar, pair, normals = views.show_main(pred, opacity, colormap, compare)
        sem = pred.first("semantic")
        legend = render.legend_html(pred.labels[sem.name], sem.class_set, "Classes in this photo") if sem else ""
        h, w = pred.processing_size
        summary = (f"**{serve.model_label(loaded.key)}** · photo {pred.size[1]}x{pred.size[0]} · network input "
                   f"{w}x{h} (fitted inside {pred.resolution}{', and its mirror image' if pred.mirrored else ''}) · "
                   f"{pred.seconds:.2f} s on {self.registry.device} in {loaded.running}"
                   f"{', compiled' if pred.compiled else ''}")
        notes = [f"⚠️ {n}" for n in loaded.notices + pred.notes]  # the model's notices too: API clients see no banner
        seg, depth, normals, before, after = self.downloads.jpegs(pred.stem, segmentation=seg, depth=depth,
                                                                  normals=normals, photo=pair[0], compare=pair[1])
        return {"segmentation": seg, "depth": depth, "legend": legend, "colorbar": bar, "normals": normals,
                "compare": (before, after), "summary": "\n\n".join([summary] + notes)}

    def downloads_of(self, pred: serve.Prediction) -> dict:
        """The prediction's downloads (class ids, coloured segmentation, 16-bit and 8-bit depth,
        depth .npy), written the first time they are needed (again if they were cleaned up), and
        their notes."""
        if not (pred.files and all(os.path.exists(f) for f in pred.files)):
            pred.files, pred.file_notes = write_downloads(pred, self.downloads.new(), pred.model_source, masks=False)
            pred.masks_file = ""
        return {"downloads": pred.files, "download_notes": "\n\n".join(n.replace("~", "≈") for n in pred.file_notes)}

    def attention_views(self, pred: serve.Prediction, task, part, stage, channel) -> dict:
        att, diff, caption = views.show_attention(pred, task, part, stage, channel)
        att, diff = self.downloads.jpegs(pred.stem, attention=att, difference=diff)
        return {"attention": att, "difference": diff, "attention_caption": caption}

    # ---- the API ------------------------------------------------------------------------------

    @guarded
    @named(PREDICT)
    def predict(self, image, model, resolution, opacity, colormap, compare, attention_task, attention_part,
                attention_stage, attention_channel, mirror=False):
        """Segment a street photo, estimate its depth and show one task's attention mask:
        everything in one answer (``/predict``).

        Returns the segmentation overlay, the depth view and the attention view (all at the
        photo's size, which is the upload's up to ``--max-pixels``), then the downloads, the
        legend, the colour bar, the normals, the before/after pair, the task-difference view, the
        attention caption, notes on the downloads and a summary. Anything that goes wrong becomes
        a ``gr.Error`` whose message says what (the API client sees that text too).

        The event skips gradio's preprocessing (which would decode the upload, bombs included,
        before our checks); gradio still refuses a path that was not uploaded (or is not an example).
        """
        pred, loaded = self.run_photo(image, model, resolution, mirror)
        return {**self.main_views(pred, loaded, opacity, colormap, compare),
                **self.attention_views(pred, attention_task, attention_part, attention_stage, attention_channel),
                **self.downloads_of(pred), "state": pred}

    @guarded
    @named(VIEWS)
    def predict_views(self, image, model, resolution, opacity, colormap, compare, mirror=False):
        """What the page shows first, as soon as the network has run (``/predict_views``): the
        segmentation overlay, the depth view, the legend, the colour bar, the normals, the
        before/after pair and the summary. The attention views and the downloads of the same
        photo follow (``/details``), so the answer waits for nothing the visitor does not see yet."""
        pred, loaded = self.run_photo(image, model, resolution, mirror)
        return {**self.main_views(pred, loaded, opacity, colormap, compare), "state": pred}

    @guarded
    @named(DETAILS)
    def details(self, pred, attention_task, attention_part, attention_stage, attention_channel):
        """The rest of the last photo's results (``/details``, after ``/predict_views``): the chosen
        attention view, the task difference and its caption, the downloads (written now, the
        first time they are asked for) and their notes."""
        if pred is None:
            raise refusal("details", "Run a photo first: the details are those of the last photo you ran.")
        return {**self.attention_views(pred, attention_task, attention_part, attention_stage, attention_channel),
                **self.downloads_of(pred)}

    @named(("masks_file", "masks_note"))
    def attention_masks(self, pred):
        """Every attention mask of the last photo run in this session, as one ``.npz`` (about 14 MB
        at 256x512 for the default model): written the first time it is asked for, not with every run."""
        if pred is None:
            raise refusal("attention_masks", "Run a photo first: the masks are those of the last photo you ran.")
        if not pred.masks:
            raise refusal("attention_masks", "This model has no attention masks (it is not an MTAN).")
        if not (pred.masks_file and os.path.exists(pred.masks_file)):
            folder = (Path(pred.files[0]).parent if pred.files and os.path.exists(pred.files[0])
                      else self.downloads.new())
            path, note = write_masks(pred, folder)
            pred.masks_file, pred.masks_note = str(path), note
        return {"masks_file": pred.masks_file, "masks_note": pred.masks_note}

    # ---- the page's own events: one message for a problem, never an error on every output ----

    @named(PAGE_VIEWS)
    def page_run(self, image, *args):
        """The page's run (upload, example, a changed model or resolution): the first views, or,
        when the photo cannot be processed, empty views and the one message that says why."""
        if image is None:
            return {"error": gr.update(visible=False)}
        try:
            views_ = dict(zip(VIEWS, self.predict_views(image, *args)))
        except gr.Error as e:
            return {"segmentation": None, "depth": None, "legend": "", "colorbar": "", "normals": None,
                    "compare": None, "summary": "", "state": None, "nearby": "",
                    "error": gr.update(value=f"⚠️ {e.message}", visible=True),
                    "hero": gr.update(visible=False), "details": gr.update(visible=False)}
        return {**views_, "nearby": describe(objects_ahead(views_["state"])), "error": gr.update(value="", visible=False),
                "hero": gr.update(visible=True), "details": gr.update(visible=True)}

    @guarded
    @named(("distances",))
    def distances(self, image, model, resolution, mirror=False):
        """The vehicles and people in a street photo and how far away each is (``/distances``), read
        off the segmentation and the depth at once, nearest first: per region its class, where it is
        (left, ahead, right), its median distance in metres, its share of the picture and its box
        ``[left, top, right, bottom]`` in the photo's pixels (up to ``--max-pixels``). The
        distances are approximate (the depth is estimated from one photo)."""
        pred, _ = self.run_photo(image, model, resolution, mirror)
        found = objects_ahead(pred)
        if found is None:
            raise refusal("distances", "This model does not have both a segmentation and a depth task, so it cannot "
                                       "say how far away things are.")
        return {"distances": {"objects": found, "photo_size": [pred.size[1], pred.size[0]], "note": NOTE}}

    @guarded
    @named(("tool_segmentation", "tool_depth", "tool_result"))
    def street_photo(self, photo: str):
        """Segment a street photo into 7 classes (flat ground, construction, object, nature, sky, human, vehicle), estimate its depth, and list the vehicles and people in it with their approximate distance in metres, nearest first. Answers with the segmentation drawn over the photo, the depth map (bright = near) and a JSON object: "objects" (class, where it is, approximate metres, share of the picture, box [left, top, right, bottom] in the photo's pixels), "classes" (each class's share of the picture), "summary" and "note".

        Args:
            photo: The photo as a data URL of a JPEG, PNG or WebP image (data:image/jpeg;base64,...) within the app's upload limit, or the file name of one of the app's example photos, such as camvid_1_pedestrians.jpg. Web addresses are not fetched.
        """
        # gradio's MCP server: one docstring line per paragraph and argument (it keeps only the first line of each)
        if not self.tool_slots.acquire(timeout=self.TOOL_WAIT_S):
            raise refusal("street_photo", "The app is busy: try again in a moment.")
        try:
            return self._street_photo(photo)
        finally:
            self.tool_slots.release()

    def _street_photo(self, photo: str) -> dict:
        examples = {p.name: p for p in split_examples(self.examples)[0]}
        try:
            data, name = inline_photo(photo, self.uploads.max_bytes, examples)
        except ValueError as e:
            raise refusal("street_photo", str(e)) from None
        loaded = self.get_model(None)
        pred = self.predict_bytes(data, name, loaded, loaded.resolutions.default, loaded.resolutions.mirror)
        found = objects_ahead(pred)
        seg, depth = self.downloads.jpegs(pred.stem, segmentation=views.segmentation_view(pred, 0.6),
                                          depth=views.depth_view(pred, render.DEFAULT_COLORMAP)[0])
        sem = pred.first("semantic")
        classes = {}
        if sem is not None:
            shares = render.class_shares(pred.labels[sem.name], len(sem.class_set.classes))
            classes = {c: round(float(v), 4) for c, v in zip(sem.class_set.classes, shares) if v > 0}
        result = {"objects": found or [], "classes": classes, "photo_size": [pred.size[1], pred.size[0]],
                  "summary": [f"{o['class']}, {o['where']}, {spoken(o['metres'])}" for o in found or []],
                  "note": NOTE, "model": serve.model_label(loaded.key)}
        return {"tool_segmentation": seg, "tool_depth": depth, "tool_result": json.dumps(result)}

    @named(("point",))
    def point(self, pred, evt: gr.EventData = None):
        """What the network says of the pixel the visitor clicked on a result: its class and distance.
        (The event's data is read here, checked: gradio's own SelectData would fail on a request
        without it before any check could run.)"""
        data = getattr(evt, "_data", None)
        index = data.get("index") if isinstance(data, dict) else None
        if pred is None or not isinstance(index, (list, tuple)) or len(index) != 2:
            return {}
        try:
            x, y = (int(v) for v in index)
        except (TypeError, ValueError):
            return {}
        return {"point": at_point(pred, x, y)}

    @named(ATTENTION_SECTION)
    def attention_section(self, pred, part, level, channel):
        """The attention panel (each task's mask and their difference at one stage, contrast-stretched),
        its colour bars and caption (with a sentence on this photo), and the channel control bounded
        by what the stage has."""
        if pred is None:
            return {}
        if not pred.masks:
            return {"att_panel": None, "att_bar": "", "att_caption": "This model has no attention masks (it is not an MTAN)."}
        part = part if part in attention.PARTS else "encoder"
        level = int(level or 1)
        channels = attention.level_channels(pred.masks, part, level)
        channel = int(min(max(0, channel or 0), channels))
        sem = pred.first("semantic")
        labels, classes = (pred.labels[sem.name], sem.class_set.classes) if sem is not None else (None, ())
        panel, bar, caption = attention.attention_panel(pred.masks, pred.photo, part, level, channel, labels, classes)
        (panel,) = self.downloads.jpegs(pred.stem, attention_panel=panel)
        return {"att_panel": panel, "att_bar": bar, "att_caption": caption,
                "att_channel": gr.update(maximum=channels, value=channel,
                                         label=f"Channel (0 = the mean of all {channels}; 1-{channels} one channel)")}

    @named(("att_overview", "att_stats"))
    def attention_overview(self, pred, part, differences: dict | None = None):
        """Every stage of one part at once (mean over channels) and the per-stage table
        (``differences``: the masks' :func:`attention.all_differences`, when already found)."""
        if pred is None or not pred.masks:
            return {"att_overview": None, "att_stats": ""}
        part = part if part in attention.PARTS else "encoder"
        (sheet,) = self.downloads.jpegs(pred.stem,
                                        attention_overview=attention.attention_overview(pred.masks, pred.photo, part))
        return {"att_overview": sheet, "att_stats": attention.attention_table(pred.masks, differences=differences)}

    @named(PAGE_DETAILS)
    def page_details(self, pred):
        """The page's second step, after the first views: attention, overview and downloads (the
        masks' ``.npz`` of an earlier photo is cleared). The attention view opens where the tasks'
        masks differ most for this photo (its part, stage and channel). Nothing to do before a photo ran."""
        if pred is None:
            return {}
        differences = attention.all_differences(pred.masks) if pred.masks else {}
        part, level, channel = attention.most_different(pred.masks, differences) if pred.masks else ("encoder", 1, 0)
        try:
            return {**self.downloads_of(pred), "masks_file": None, "masks_note": "",
                    "att_part": part, "att_level": level,
                    **dict(zip(ATTENTION_SECTION, self.attention_section(pred, part, level, channel))),
                    **dict(zip(("att_overview", "att_stats"), self.attention_overview(pred, part, differences)))}
        finally:
            serve.release_memory()

    @named(("segmentation",))
    def redraw_segmentation(self, pred, opacity):
        if pred is None:
            return {}
        return {"segmentation": self.downloads.jpegs(pred.stem, segmentation=views.segmentation_view(pred, opacity))[0]}

    @named(("depth", "colorbar", "compare"))
    def redraw_depth(self, pred, colormap, compare):
        if pred is None:
            return {}
        depth, bar = views.depth_view(pred, colormap)
        after = views.compared_view(pred, compare, colormap, depth=depth) if compare == "depth" else None
        depth, photo, after = self.downloads.jpegs(pred.stem, depth=depth, photo=pred.photo if after else None,
                                                   compare=after)
        return {"depth": depth, "colorbar": bar, **({"compare": (photo, after)} if after else {})}

    @named(("compare",))
    def redraw_compare(self, pred, compare, colormap):
        if pred is None:
            return {}
        return {"compare": tuple(self.downloads.jpegs(pred.stem, photo=pred.photo,
                                                      compare=views.compared_view(pred, compare, colormap)))}

    @named(MODEL_CHANGE)
    def on_model_change(self, model):
        """Load (once) the chosen model; show its notices and card, its tasks, resolutions and whether it starts
        with the mirror average in the controls."""
        loaded = self.get_model(model)
        tasks, compare = self.task_choices(loaded), self.compare_choices(loaded)
        notices = self.notices_of(loaded)
        card, card_rest = self.card_parts(loaded)
        offered, default = video_resolutions(loaded)
        return {"notice": gr.update(value=notices, visible=bool(notices)), "card": card, "card_rest": card_rest,
                "attention_task": gr.update(choices=tasks, value=tasks[0] if tasks else None),
                "compare_choice": gr.update(choices=compare, value=compare[0] if compare else None),
                "normals": gr.update(visible="normals" in compare),
                "resolution": gr.update(choices=loaded.resolutions.offered, value=loaded.resolutions.default,
                                        info=self.resolution_info(loaded), visible=len(loaded.resolutions.offered) > 1),
                "video_resolution": gr.update(choices=offered, value=default),
                "mirror": loaded.resolutions.mirror}
