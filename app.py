"""MTAN demo: semantic segmentation and depth (and surface normals, for indoor models) from one
street photo, and the per-task attention masks that decide which shared features each task uses.

    python app.py                                   # the model in weights/, http://127.0.0.1:7860
    python app.py --model user/name --share         # a Hub model (or a folder), public link
    MTAN_MODELS=weights,user/a,user/b python app.py # several models in a dropdown

Every flag and its environment variable: `python app.py --help` (mtan/serve/settings.py);
what happens at each limit: docs/safety.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import gradio as gr
import torch

from mtan import serve
from mtan.serve import render
from mtan.serve import views
from mtan.serve.card import split_card
from mtan.serve.page_text import ABOUT, CSS, HOW_TO_READ
from mtan.serve.downloads import DownloadFolders, safe_stem, write_downloads, write_masks
from mtan.serve.guard import RequestGuard, guarded, refusal
from mtan.serve.scene3d import COLOURINGS, DEFAULT_FOV, DEFAULT_MAX_METRES, VIEW_PIVOT
from mtan.serve.media_events import MediaEvents, video_resolutions
from mtan.serve.settings import byte_size, parse_args
from mtan.serve.streams import StreamPolicy
from mtan.serve.uploads import UploadPolicy, megabytes
from mtan.serve.video import DEFAULT_LAYOUT, LAYOUTS, VideoLimits
from mtan.serve.zerogpu import gpu_task


ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])

# ---- models: the default one loads now (the only heavy work at import), others on first use ----
serve.configure_pil(ARGS.max_image_pixels)
serve.tune_malloc()  # before any worker thread: large blocks reused by the next request, memory bounded
if ARGS.threads:
    torch.set_num_threads(ARGS.threads)
REGISTRY = serve.ModelRegistry.from_env(ARGS.model, ARGS.models, device=ARGS.device, precision=ARGS.precision,
                                          compile=ARGS.compile, fallback=ARGS.fallback)
DEFAULT_MODEL, STARTUP_ERROR = serve.load_default_model(REGISTRY, stop_on_error=__name__ == "__main__")
KEEP_FREED = (serve.freed_memory_for(DEFAULT_MODEL.model.width if DEFAULT_MODEL else 1.0)
              if ARGS.keep_freed_memory == "auto" else ARGS.keep_freed_memory)
serve.keep_freed_memory(KEEP_FREED)
serve.release_memory()  # loading and timing the model's precisions freed memory no request reuses
CONCURRENCY = ARGS.concurrency or (2 if REGISTRY.device.type == "cuda" else 1)
EXAMPLES_DIR = Path(os.environ.get("MTAN_EXAMPLES") or serve.EXAMPLES_DIR)
EXAMPLES = serve.example_files(EXAMPLES_DIR)
EXAMPLE_CACHE = serve.ExampleCache(EXAMPLES)
# Each prediction's views and downloads go to a fresh folder in gradio's cache: gradio then serves
# them without copying them (and its delete_cache removes them by age, as we do).
OUT_ROOT = Path(gr.utils.get_upload_folder()) / "mtan-app"
OUT_MAX_AGE_S = 3600        # folders older than this are removed (checked at most once a minute)
OUT_MAX_BYTES = ARGS.downloads_space  # and the oldest ones beyond this (4 GB by default) in all
SESSION_TTL_S = 1800        # a visitor's cached prediction (for redraws) is dropped this long after it was made
GRADIO_CACHE = (600, 3600)  # gradio's copies of uploads and outputs: every 10 min, delete those over 1 h old
# The only files a request may make the app read: regular files gradio stored from an upload (or
# its copies of the examples), within the upload limit; never the app's own outputs (mtan/uploads.py).
UPLOADS = UploadPolicy.create(gr.utils.get_upload_folder(), byte_size(ARGS.max_file_size), excluded=[OUT_ROOT])
VIDEO_UPLOADS = UploadPolicy.create(gr.utils.get_upload_folder(), byte_size(ARGS.max_video_size), excluded=[OUT_ROOT],
                                    noun="video clip")
GRADIO_MAX_FILE_SIZE = max(byte_size(ARGS.max_file_size), byte_size(ARGS.max_video_size))  # each kind: its policy
VIDEO_LIMITS = VideoLimits(ARGS.max_video_seconds, ARGS.max_video_fps, ARGS.max_video_pixels,
                           ARGS.max_video_work_seconds)
LIVE_RESOLUTION = (128, 256)  # the webcam runs small, for a smooth frame rate
LIVE_STREAMS = ARGS.live_streams        # webcam streams at once, one per visitor (each holds a slot while open)
LIVE_SECONDS = ARGS.live_seconds        # a stream ends after this long (Record starts another)
LIVE_IDLE_SECONDS = ARGS.live_idle_seconds  # or when no frame came for this long
DOWNLOADS = DownloadFolders(OUT_ROOT, OUT_MAX_AGE_S, OUT_MAX_BYTES)
predict_on_device = gpu_task(serve.predict_photo)  # on a ZeroGPU Space it holds a GPU for the call only


def get_model(key: str | None) -> serve.LoadedModel:
    try:
        return REGISTRY.get(key or REGISTRY.default_key)
    except serve.ModelUnavailableError as e:
        raise refusal("model", serve.without_paths(str(e))) from None


def notices_of(loaded: serve.LoadedModel | None) -> str:
    lines = ([STARTUP_ERROR] if STARTUP_ERROR and loaded is None else []) + (loaded.notices if loaded else [])
    return "\n\n".join(f"⚠️ {serve.without_paths(line)}" for line in lines)


def compare_choices(loaded: serve.LoadedModel | None) -> list[str]:
    if loaded is None:
        return ["segmentation", "depth"]
    return list(dict.fromkeys(serve.TASK_OUTPUTS[t.kind].view for t in loaded.model.tasks))


def task_choices(loaded: serve.LoadedModel | None) -> list[str]:
    return loaded.model.task_names if loaded else ["semantic", "depth"]


# ---- the prediction ----------------------------------------------------------------------------


def checked_resolution(loaded: serve.LoadedModel, resolution: str, event: str) -> tuple[int, int]:
    """The (h, w) box of a processing resolution the model offers, or the message that says which it offers."""
    advice = loaded.resolutions
    if resolution not in advice.offered:
        reason = advice.reasons.get(resolution, f"{resolution} is not a processing resolution of this app")
        raise refusal(event, f"{reason}; choose {', '.join(advice.offered)}.")
    return serve.parse_resolution(resolution)


def run_photo(image, model, resolution, mirror) -> tuple[serve.Prediction, serve.LoadedModel]:
    """The network's outputs for an upload (or an example, from the example cache) and the model
    that ran. No view or download is drawn here."""
    if image is None:
        raise refusal("predict", "Upload a photo first (or pick an example).")
    path = image.get("path") if isinstance(image, dict) else image
    try:  # the request guard checked the path already; the file is checked again as it is read
        data = UPLOADS.read(path)
    except ValueError as e:
        raise refusal("predict", str(e)) from None
    name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
    loaded = get_model(model)
    resolution = resolution or loaded.resolutions.default
    box = checked_resolution(loaded, resolution, "predict")
    cache_key = EXAMPLE_CACHE.key(hashlib.sha1(data).hexdigest(), loaded.key, resolution + "+mirror" * bool(mirror))
    pred = EXAMPLE_CACHE.get(cache_key)
    if pred is None:
        try:
            photo, notes = serve.load_image(data, ARGS.max_pixels, ARGS.max_image_pixels)
        except serve.ImageLoadError as e:
            raise refusal("predict", str(e)) from None
        del data
        pred = predict_on_device(loaded, photo, box, stem=safe_stem(name), flip=bool(mirror))
        pred.notes = notes + serve.processing_notes(pred.size, pred.processing_size)
        EXAMPLE_CACHE.put(cache_key, pred)
    pred.resolution = resolution
    return pred, loaded


def main_views(pred: serve.Prediction, loaded: serve.LoadedModel, opacity, colormap, compare):
    """What the page shows first: the segmentation, depth and normals views, the legend, the
    colour bar, the before/after pair and the summary line."""
    resolution = pred.resolution
    seg, depth, bar, pair, normals = views.show_main(pred, opacity, colormap, compare)
    sem = pred.first("semantic")
    legend = render.legend_html(pred.labels[sem.name], sem.class_set, "Classes in this photo") if sem else ""
    h, w = pred.processing_size
    summary = (f"**{serve.model_label(loaded.key)}** · photo {pred.size[1]}x{pred.size[0]} · network input "
               f"{w}x{h} (fitted inside {resolution}{', and its mirror image' if pred.mirrored else ''}) · "
               f"{pred.seconds:.2f} s on {REGISTRY.device} in {loaded.running}{', compiled' if pred.compiled else ''}")
    notes = [f"⚠️ {n}" for n in loaded.notices + pred.notes]  # the model's notices too: API clients see no banner
    summary = "\n\n".join([summary] + notes)
    seg, depth, normals, before, after = DOWNLOADS.jpegs(pred.stem, segmentation=seg, depth=depth, normals=normals,
                                                  photo=pair[0], compare=pair[1])
    return seg, depth, legend, bar, normals, (before, after), summary


def downloads_of(pred: serve.Prediction):
    """The prediction's downloads (class ids, coloured segmentation, 16-bit and 8-bit depth, depth
    .npy), written the first time they are needed (again if they were cleaned up), and their notes."""
    if not (pred.files and all(os.path.exists(f) for f in pred.files)):
        pred.files, pred.file_notes = write_downloads(pred, DOWNLOADS.new(), pred.model_source, masks=False)
        pred.masks_file = ""
    return pred.files, "\n\n".join(n.replace("~", "≈") for n in pred.file_notes)


def attention_views(pred: serve.Prediction, attention_task, attention_part, attention_stage, attention_channel):
    att, diff, caption = views.show_attention(pred, attention_task, attention_part, attention_stage, attention_channel)
    att, diff = DOWNLOADS.jpegs(pred.stem, attention=att, difference=diff)
    return att, diff, caption


@guarded
def predict(image, model, resolution, opacity, colormap, compare, attention_task, attention_part,
            attention_stage, attention_channel, mirror=False):
    """Segment a street photo, estimate its depth and show one task's attention mask: everything
    in one answer (``/predict``).

    Returns the segmentation overlay, the depth view and the attention view (all at the photo's
    size, which is the upload's up to ``--max-pixels``), then the downloads, the legend, the
    colour bar, the normals, the before/after pair, the task-difference view, the attention
    caption, notes on the downloads and a summary. Anything that goes wrong becomes a
    ``gr.Error`` whose message says what (the API client sees that text too).

    The event skips gradio's preprocessing (which would decode the upload, bombs included, before
    our checks); gradio still refuses a path that was not uploaded (or is not an example).
    """
    pred, loaded = run_photo(image, model, resolution, mirror)
    seg, depth, legend, bar, normals, pair, summary = main_views(pred, loaded, opacity, colormap, compare)
    att, diff, caption = attention_views(pred, attention_task, attention_part, attention_stage, attention_channel)
    files, notes = downloads_of(pred)
    return seg, depth, att, files, legend, bar, normals, pair, diff, caption, notes, summary, pred


@guarded
def predict_views(image, model, resolution, opacity, colormap, compare, mirror=False):
    """What the page shows first, as soon as the network has run (``/predict_views``): the
    segmentation overlay, the depth view, the legend, the colour bar, the normals, the
    before/after pair and the summary. The attention views and the downloads of the same photo
    follow (``/details``), so the answer waits for nothing the visitor does not see yet."""
    pred, loaded = run_photo(image, model, resolution, mirror)
    return (*main_views(pred, loaded, opacity, colormap, compare), pred)


@guarded
def details(pred, attention_task, attention_part, attention_stage, attention_channel):
    """The rest of the last photo's results (``/details``, after ``/predict_views``): the chosen
    attention view, the task difference and its caption, the downloads (written now, the first
    time they are asked for) and their notes."""
    if pred is None:
        raise refusal("details", "Run a photo first: the details are those of the last photo you ran.")
    att, diff, caption = attention_views(pred, attention_task, attention_part, attention_stage, attention_channel)
    files, notes = downloads_of(pred)
    return att, diff, caption, files, notes


def attention_masks(pred):
    """Every attention mask of the last photo run in this session, as one ``.npz`` (about 14 MB at
    256x512 for the default model): written the first time it is asked for, not with every run."""
    if pred is None:
        raise refusal("attention_masks", "Run a photo first: the masks are those of the last photo you ran.")
    if not pred.masks:
        raise refusal("attention_masks", "This model has no attention masks (it is not an MTAN).")
    if not (pred.masks_file and os.path.exists(pred.masks_file)):
        folder = Path(pred.files[0]).parent if pred.files and os.path.exists(pred.files[0]) else DOWNLOADS.new()
        path, note = write_masks(pred, folder)
        pred.masks_file, pred.masks_note = str(path), note
    return pred.masks_file, pred.masks_note


# ---- video, the live webcam and the scene in 3D (mtan/serve/media_events.py) ----------------------

MEDIA = MediaEvents(get_model, run_photo, DOWNLOADS, UPLOADS, VIDEO_UPLOADS, VIDEO_LIMITS, ARGS.max_pixels,
                    ARGS.max_image_pixels, str(REGISTRY.device), LIVE_RESOLUTION)
predict_video, page_video, live_frame = MEDIA.predict_video, MEDIA.page_video, MEDIA.live_frame
predict_3d, page_scene = MEDIA.predict_3d, MEDIA.page_scene


# ---- the page's own events: one message for a problem, never an error on every output ------------


def page_run(image, *args):
    """The page's run (upload, example, a changed model or resolution): the first views, or,
    when the photo cannot be processed, empty views and the one message that says why."""
    if image is None:
        return tuple(gr.skip() for _ in VIEW_OUTPUTS) + (gr.update(visible=False),)
    try:
        return (*predict_views(image, *args), gr.update(value="", visible=False))
    except gr.Error as e:
        return (None, None, "", "", None, None, "", None, gr.update(value=f"⚠️ {e.message}", visible=True))


def attention_section(pred, part, level, channel):
    """The attention panel (both tasks and their difference at one stage, one colour scale), its
    colour bar and caption, and the channel control bounded by what the stage has."""
    if pred is None or not pred.masks:
        text = "This model has no attention masks (it is not an MTAN)." if pred is not None else ""
        return None, "", text, gr.update()
    part = part if part in render.PARTS else "encoder"
    level = int(level or 1)
    channels = render.level_channels(pred.masks, part, level)
    channel = int(min(max(0, channel or 0), channels))
    panel, bar, caption = render.attention_panel(pred.masks, pred.photo, part, level, channel)
    (panel,) = DOWNLOADS.jpegs(pred.stem, attention_panel=panel)
    return panel, bar, caption, gr.update(maximum=channels, value=channel,
                                          label=f"Channel (0 = the mean of all {channels}; 1-{channels} one channel)")


def attention_overview(pred, part):
    """Every stage of one part at once (mean over channels) and the per-stage table."""
    if pred is None or not pred.masks:
        return None, ""
    part = part if part in render.PARTS else "encoder"
    (sheet,) = DOWNLOADS.jpegs(pred.stem, attention_overview=render.attention_overview(pred.masks, pred.photo, part))
    return sheet, render.attention_table(pred.masks)


def page_details(pred, part, level, channel):
    """The page's second step, after the first views: attention, overview and downloads (the
    masks' ``.npz`` of an earlier photo is cleared). Nothing to do before a photo ran."""
    if pred is None:
        return tuple(gr.skip() for _ in DETAIL_OUTPUTS)
    try:
        files, notes = downloads_of(pred)
        return (*attention_section(pred, part, level, channel), *attention_overview(pred, part), files, notes,
                None, "")
    finally:
        serve.release_memory()


def redraw_segmentation(pred, opacity):
    if pred is None:
        return gr.skip()
    return DOWNLOADS.jpegs(pred.stem, segmentation=views.segmentation_view(pred, opacity))[0]


def redraw_depth(pred, colormap, compare):
    if pred is None:
        return gr.skip(), gr.skip(), gr.skip()
    depth, bar = views.depth_view(pred, colormap)
    after = views.compared_view(pred, compare, colormap, depth=depth) if compare == "depth" else None
    depth, photo, after = DOWNLOADS.jpegs(pred.stem, depth=depth, photo=pred.photo if after else None, compare=after)
    return depth, bar, (photo, after) if after else gr.skip()


def redraw_compare(pred, compare, colormap):
    if pred is None:
        return gr.skip()
    return tuple(DOWNLOADS.jpegs(pred.stem, photo=pred.photo, compare=views.compared_view(pred, compare, colormap)))


def redraw_attention(pred, part, level, channel):
    if pred is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return attention_section(pred, part, level, channel)


def resolution_info(loaded: serve.LoadedModel | None) -> str:
    """The resolution control's note: the photo is fitted inside; why a resolution is missing."""
    reasons = loaded.resolutions.reasons.values() if loaded else []
    return " ".join(["The photo is fitted inside, aspect kept.", *(f"{r}." for r in reasons)])


def card_parts(loaded: serve.LoadedModel | None) -> tuple[str, str]:
    """The model card as the page shows it: what it is and its limits, then everything else."""
    if loaded is None:
        return "*No model loaded.*", ""
    if not loaded.card:
        return "*This model has no card.*", ""
    summary, rest = split_card(loaded.card)
    return summary, f"**Loaded from** `{serve.model_label(loaded.source)}` on {REGISTRY.device}.\n\n{rest}"


def on_model_change(model):
    """Load (once) the chosen model; show its notices and card, its tasks and resolutions in the controls."""
    loaded = get_model(model)
    tasks, compare = task_choices(loaded), compare_choices(loaded)
    notices = notices_of(loaded)
    return (gr.update(value=notices, visible=bool(notices)), *card_parts(loaded),
            gr.update(choices=tasks, value=tasks[0] if tasks else None),
            gr.update(choices=compare, value=compare[0] if compare else None),
            gr.update(visible="normals" in compare),
            gr.update(choices=loaded.resolutions.offered, value=loaded.resolutions.default,
                      info=resolution_info(loaded)),
            gr.update(choices=video_resolutions(loaded)[0], value=video_resolutions(loaded)[1]))


# ---- the page: results first, then what explains them --------------------------------------------

first_tasks, first_compare = task_choices(DEFAULT_MODEL), compare_choices(DEFAULT_MODEL)
first_card, first_card_rest = card_parts(DEFAULT_MODEL)
shows = " and ".join(dict.fromkeys(first_compare)) if DEFAULT_MODEL else "segmentation and depth"
with gr.Blocks(title="MTAN: segmentation + depth from one photo", analytics_enabled=False,
               delete_cache=GRADIO_CACHE) as demo:
    gr.Markdown(f"# MTAN: {shows} from one street photo\nUpload a photo of a street (or pick an example): one "
                "network labels every pixel and estimates how far away it is, in a single pass.", elem_id="intro")
    notice = gr.Markdown(notices_of(DEFAULT_MODEL), visible=bool(notices_of(DEFAULT_MODEL)),
                         elem_classes="mtan-notice", elem_id="notice")
    error = gr.Markdown(visible=False, elem_classes="mtan-error", elem_id="error")
    state = gr.State(None, time_to_live=SESSION_TTL_S)
    scene_shown = gr.State(False)  # whether the 3D section is open (then each photo builds its scene)
    live_session = gr.State(None, time_to_live=SESSION_TTL_S)
    with gr.Tabs(elem_id="modes"):
        with gr.Tab("Photo", id="photo", elem_id="photo-tab"):
            with gr.Row(equal_height=False, elem_id="results"):
                with gr.Column(min_width=300):
                    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                                     label="Your street photo", elem_id="input-image", height=300)
                with gr.Column(min_width=300):
                    seg_view = gr.Image(label="Segmentation", format="jpeg", elem_id="segmentation", height=300,
                                        interactive=False)
                    legend = gr.HTML(elem_id="legend")
                    opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Overlay opacity", elem_id="opacity")
                with gr.Column(min_width=300):
                    depth_box = gr.Image(label="Depth", format="jpeg", elem_id="depth", height=300, interactive=False)
                    colorbar = gr.HTML(elem_id="colorbar")
                    colormap = gr.Dropdown(list(render.COLORMAPS), value=render.DEFAULT_COLORMAP, label="Colours",
                                           elem_id="colormap")
            summary = gr.Markdown(elem_id="summary")
            normals_view = gr.Image(label="Surface normals (RGB = (n + 1) / 2)", format="jpeg", elem_id="normals",
                                    visible=bool(DEFAULT_MODEL and "normals" in first_compare), interactive=False)
            if EXAMPLES:
                examples = gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], examples_per_page=12,
                                       label="Examples: generated street scenes (not photos), click one to run it",
                                       elem_id="examples")
            with gr.Accordion("Before / after", open=True):
                compare = gr.Radio(first_compare, value=first_compare[0] if first_compare else None,
                                   label="Slide between the photo and its", elem_id="compare-choice")
                slider = gr.ImageSlider(label="Photo | output", format="jpeg", elem_id="compare", interactive=False)
            with gr.Accordion("The scene in 3D", open=False, elem_id="scene-section") as scene_section:
                gr.Markdown("The depth map as a scene in metres: drag to turn it, scroll to zoom. The camera is "
                            "assumed, not measured; the sky and far pixels are left out.")
                scene_view = gr.Model3D(label="The photo in 3D (metres)", elem_id="scene", interactive=False,
                                        clear_color=(0.08, 0.08, 0.1, 1.0),
                                        camera_position=(85, 87, VIEW_PIVOT))  # a few degrees off the photo's viewpoint
                with gr.Row():
                    scene_fov = gr.Slider(20, 120, value=DEFAULT_FOV, step=1, elem_id="scene-fov",
                                          label="Camera's horizontal field of view (degrees; a phone's is about 65)")
                    scene_far = gr.Slider(5, 200, value=DEFAULT_MAX_METRES, step=5, elem_id="scene-far",
                                          label="Leave out what is farther than (metres)")
                    scene_colours = gr.Radio(list(COLOURINGS), value="photo", label="Colours",
                                             elem_id="scene-colours")
                scene_caption = gr.Markdown(elem_id="scene-caption")
                scene_files = gr.File(label="Mesh (.glb) and point cloud (.ply)", file_count="multiple",
                                      elem_id="scene-downloads", interactive=False)
            with gr.Accordion("Attention: what each task looks at", open=True, elem_id="attention-section"):
                gr.Markdown(HOW_TO_READ)
                with gr.Row():
                    att_part = gr.Radio(list(render.PARTS), value="encoder", label="Part of the network",
                                        elem_id="att-part")
                    att_level = gr.Slider(1, 5, value=1, step=1, label="Stage (1 = full size ... 5 = 1/16)",
                                          elem_id="att-level")
                    att_channel = gr.Slider(0, 512, value=0, step=1, label="Channel (0 = the mean of all)",
                                            elem_id="att-channel")
                att_panel = gr.Image(label="Each task's mask, and where they differ", format="jpeg",
                                     elem_id="attention-panel", interactive=False)
                att_bar = gr.HTML(elem_id="attention-bar")
                att_caption = gr.Markdown(elem_id="attention-caption")
                with gr.Accordion("Every stage at once", open=False, elem_id="all-masks"):
                    att_overview = gr.Image(label="Every stage (mean over channels), one colour scale", format="jpeg",
                                            elem_id="attention-overview", interactive=False)
                    att_stats = gr.Markdown(elem_id="attention-stats")
            with gr.Accordion("Downloads", open=True, elem_id="downloads-section"):
                downloads = gr.File(label="Class ids, coloured segmentation, 16-bit and 8-bit depth, depth .npy",
                                    file_count="multiple", elem_id="downloads", interactive=False)
                download_notes = gr.Markdown()
                masks_button = gr.Button("Prepare every attention mask as one .npz (about 14 MB)", size="sm",
                                         elem_id="masks-button")
                masks_file = gr.File(label="Attention masks (.npz; mask = stored / 255)", elem_id="masks-download",
                                     interactive=False)
                masks_note = gr.Markdown()
        with gr.Tab("Video", id="video", elem_id="video-tab"):
            gr.Markdown(f"Upload a short street clip (MP4, WebM or MOV): every frame is labelled and its depth "
                        f"estimated, and the result comes back as a video at the clip's frame rate. This app takes "
                        f"{VIDEO_LIMITS.describe()}, files up to {megabytes(VIDEO_UPLOADS.max_bytes)}.")
            with gr.Row(equal_height=False):
                video_in = gr.Video(sources=["upload"], label="Your street clip", elem_id="video-input", height=240)
                with gr.Column():
                    video_layout = gr.Radio(list(LAYOUTS), value=DEFAULT_LAYOUT, label="Views", elem_id="video-layout")
                    video_offered, video_default = video_resolutions(DEFAULT_MODEL)
                    video_resolution = gr.Radio(video_offered, value=video_default, elem_id="video-resolution",
                                                label="Processing resolution (smaller runs faster)")
                    video_smoothing = gr.Slider(0, 0.9, value=0.5, step=0.1, elem_id="video-smoothing",
                                                label="Smoothing over frames (0 = off; more = steadier)")
                    video_button = gr.Button("Run the clip again with these settings", elem_id="video-run")
            video_out = gr.Video(label="Result", elem_id="video-output", interactive=False)
            video_summary = gr.Markdown(elem_id="video-summary")
        with gr.Tab("Live webcam", id="live", elem_id="live-tab"):
            gr.Markdown("Allow the camera, press Record and point it at a street: each frame is labelled and its depth "
                        f"estimated at {LIVE_RESOLUTION[0]}x{LIVE_RESOLUTION[1]}, as fast as this server manages (a "
                        f"stream runs {LIVE_SECONDS / 60:g} minutes; press Record again for more).")
            with gr.Row(equal_height=False):
                live_in = gr.Image(sources=["webcam"], streaming=True, type="filepath", label="Your camera",
                                   elem_id="live-input", height=300)
                live_out = gr.Image(label="Live result", elem_id="live-output", height=300, interactive=False,
                                    format="jpeg")
            live_rate = gr.Markdown(elem_id="live-rate")
            live_layout = gr.Radio(list(LAYOUTS), value="segmentation | depth", label="Views", elem_id="live-layout")
    with gr.Accordion("Settings: model, processing resolution, mirror", open=False, elem_id="settings"):
        model = gr.Dropdown(REGISTRY.choices(), value=REGISTRY.default_key, label="Model",
                            interactive=len(REGISTRY.sources) > 1, elem_id="model")
        first_resolutions = DEFAULT_MODEL.resolutions if DEFAULT_MODEL else serve.ResolutionAdvice.from_record(None)
        resolution = gr.Radio(first_resolutions.offered, value=first_resolutions.default,
                              label="Processing resolution", info=resolution_info(DEFAULT_MODEL), elem_id="resolution")
        mirror = gr.Checkbox(False, label="Also run the mirror image and average (about twice as slow)",
                             elem_id="mirror")
    with gr.Accordion("About this model and MTAN", open=False, elem_id="about"):
        card = gr.Markdown(first_card, elem_id="card")
        with gr.Accordion("The whole model card", open=False):
            card_rest = gr.Markdown(first_card_rest)
        gr.Markdown(ABOUT)
    with gr.Group(visible=False):  # the API's own controls and views (/predict, /details), not on the page
        attention_task = gr.Dropdown(first_tasks, value=first_tasks[0] if first_tasks else None, label="Task")
        attention_part = gr.Radio(list(render.PARTS), value="encoder", label="Part")
        attention_stage = gr.Slider(0, 4, value=0, step=1, label="Stage")
        attention_channel = gr.Slider(-1, 511, value=-1, step=1, label="Channel (-1 = mean over channels)")
        attention_view = gr.Image(label="Mask over the photo", format="jpeg")
        difference_view = gr.Image(label="Where the tasks' masks differ", format="jpeg")
        attention_caption = gr.Markdown(label="attention caption")

    API_ATTENTION = [attention_task, attention_part, attention_stage, attention_channel]
    PAGE_ATTENTION = [att_part, att_level, att_channel]
    VIEW_INPUTS = [image, model, resolution, opacity, colormap, compare, mirror]
    VIEW_OUTPUTS = [seg_view, depth_box, legend, colorbar, normals_view, slider, summary, state]
    DETAIL_OUTPUTS = [att_panel, att_bar, att_caption, att_channel, att_overview, att_stats, downloads,
                      download_notes, masks_file, masks_note]
    OUTPUTS = [seg_view, depth_box, attention_view, downloads, legend, colorbar, normals_view, slider,
               difference_view, attention_caption, download_notes, summary, state]
    inference = dict(concurrency_limit=CONCURRENCY, concurrency_id="inference", preprocess=False)
    # The API: /predict answers everything at once; /predict_views then /details as the page does.
    api = gr.Button(visible=False)
    api.click(predict, [*VIEW_INPUTS[:6], *API_ATTENTION, mirror], OUTPUTS, api_name="predict", **inference)
    gr.Button(visible=False).click(predict_views, VIEW_INPUTS, VIEW_OUTPUTS, api_name="predict_views", **inference)
    gr.Button(visible=False).click(details, [state] + API_ATTENTION, [attention_view, difference_view,
                                   attention_caption, downloads, download_notes], api_name="details")
    masks_button.click(attention_masks, [state], [masks_file, masks_note], api_name="attention_masks",
                       concurrency_id="inference", concurrency_limit=CONCURRENCY)
    # The page: a photo runs as soon as it arrives (a phone scrolls to the results), then the details.
    run_views = dict(fn=page_run, inputs=VIEW_INPUTS, outputs=VIEW_OUTPUTS + [error], api_visibility="private",
                     scroll_to_output=True, **inference)
    run_details = dict(fn=page_details, inputs=[state] + PAGE_ATTENTION, outputs=DETAIL_OUTPUTS,
                       api_visibility="private", show_progress="hidden")
    # The 3D view: built for each photo while its section is open, and when a setting is let go.
    scene_inputs, scene_outputs = [state, scene_shown, scene_fov, scene_far, scene_colours], [scene_view, scene_files,
                                                                                               scene_caption]
    run_scene = dict(fn=page_scene, inputs=scene_inputs, outputs=scene_outputs, api_visibility="private",
                     show_progress="minimal")
    image.upload(**run_views).then(**run_details).then(**run_scene)
    model.input(on_model_change, [model], [notice, card, card_rest, attention_task, compare, normals_view, resolution,
                                           video_resolution], api_visibility="private"
                ).then(**run_views).then(**run_details).then(**run_scene)
    resolution.input(**run_views).then(**run_details).then(**run_scene)
    mirror.input(**run_views).then(**run_details).then(**run_scene)
    if EXAMPLES:
        examples.load_input_event.then(**run_views).then(**run_details).then(**run_scene)
    scene_section.expand(lambda: True, None, [scene_shown], api_visibility="private").then(**run_scene)
    scene_section.collapse(lambda: False, None, [scene_shown], api_visibility="private")
    gr.on([scene_fov.release, scene_far.release, scene_colours.input], trigger_mode="always_last", **run_scene)
    gr.Button(visible=False).click(predict_3d, [image, model, resolution, scene_fov, scene_far, scene_colours, mirror],
                                   scene_outputs, api_name="predict_3d", **inference)
    # Video: a clip runs when it arrives (and again on the button), one at a time beside the photos.
    video_inputs = [video_in, model, video_resolution, video_layout, video_smoothing, colormap, opacity]
    clips = dict(concurrency_limit=1, concurrency_id="video", preprocess=False)
    gr.Button(visible=False).click(predict_video, video_inputs, [video_out, video_summary], api_name="predict_video",
                                   **clips)
    gr.on([video_in.upload, video_button.click], page_video, video_inputs, [video_out, video_summary],
          api_visibility="private", **clips)
    # The live webcam: each streamed frame, answered in order, a few a second.
    live_in.stream(live_frame, [live_in, model, live_layout, live_session], [live_out, live_rate, live_session],
                   stream_every=0.2, time_limit=LIVE_SECONDS, api_name="live_frame", concurrency_limit=LIVE_STREAMS,
                   concurrency_id="live", preprocess=False)
    redraw = dict(api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    opacity.input(redraw_segmentation, [state, opacity], [seg_view], **redraw)
    colormap.input(redraw_depth, [state, colormap, compare], [depth_box, colorbar, slider], **redraw)
    compare.input(redraw_compare, [state, compare, colormap], [slider], **redraw)
    gr.on([att_part.input, att_level.input, att_channel.input], redraw_attention, [state] + PAGE_ATTENTION,
          [att_panel, att_bar, att_caption, att_channel], **redraw)
    att_part.input(attention_overview, [state, att_part], [att_overview, att_stats], **redraw)

# Every value of every event checked before gradio touches it (compare, task, resolution: choices per model).
RequestGuard(UPLOADS, open_choices=[compare, attention_task, resolution, video_resolution],
             video_policy=VIDEO_UPLOADS).install(demo)
OTHER_CONCURRENCY = 4  # redraws and the attention overview (no network run) at once
demo.queue(default_concurrency_limit=OTHER_CONCURRENCY, max_size=ARGS.queue_size)
StreamPolicy(("live_frame",), LIVE_IDLE_SECONDS).install(demo)  # idle streams end; one stream per visitor

# Every limit in force, printed at start (benchmarks/load_test.py reads it; README: "Safety and limits").
LIMITS = {"concurrency": CONCURRENCY, "other_concurrency": OTHER_CONCURRENCY, "queue_size": ARGS.queue_size,
          "max_sessions": ARGS.max_sessions, "session_ttl_s": SESSION_TTL_S, "max_pixels": ARGS.max_pixels,
          "max_image_pixels": ARGS.max_image_pixels, "max_file_size": ARGS.max_file_size,
          "max_video_size": ARGS.max_video_size, "max_video_seconds": VIDEO_LIMITS.max_seconds,
          "max_video_fps": VIDEO_LIMITS.max_fps, "max_video_pixels": VIDEO_LIMITS.max_pixels,
          "downloads_max_age_s": OUT_MAX_AGE_S, "downloads_max_bytes": OUT_MAX_BYTES,
          "gradio_cache_cleanup_s": list(GRADIO_CACHE),
          "example_cache": EXAMPLE_CACHE.capacity, "live_streams": LIVE_STREAMS, "live_seconds": LIVE_SECONDS,
          "live_idle_seconds": LIVE_IDLE_SECONDS, "max_video_work_seconds": VIDEO_LIMITS.max_work_seconds,
          "keep_freed_memory": KEEP_FREED, "device": str(REGISTRY.device),
          "threads": torch.get_num_threads()}



def _stop(signum, frame):
    raise KeyboardInterrupt  # the main thread closes the server (gradio's block_thread), then exits


if __name__ == "__main__":
    print(f"mtan app: limits: photos up to {ARGS.max_file_size} and {ARGS.max_image_pixels / 1e6:g} megapixels, "
          f"clips up to {ARGS.max_video_size} and {VIDEO_LIMITS.max_seconds:g} s, {CONCURRENCY} photo at a time, "
          f"{ARGS.queue_size} waiting at most, {LIVE_STREAMS} webcam streams (docs/safety.md has them all)",
          flush=True)
    if os.environ.get("MTAN_LOG_LIMITS") == "json":  # for tools (benchmarks/load_test.py)
        print("mtan app limits: " + json.dumps(LIMITS), flush=True)
    share = ARGS.share
    if share and not serve.host_reachable("api.gradio.app", 443, timeout=3.0):
        print("--share: no internet connection (api.gradio.app is unreachable), so no public link; "
              "the app runs locally only.", flush=True)
        share = False
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    try:
        # show_error=False: only our own messages reach visitors, never the text of an exception;
        # allowed_paths: the example photos alone (not the rest of examples/).
        demo.launch(server_name=ARGS.host, server_port=ARGS.port, share=share, max_file_size=GRADIO_MAX_FILE_SIZE,
                    allowed_paths=[str(p) for p in EXAMPLES], show_error=False, css=CSS,
                    theme=gr.themes.Soft(primary_hue="indigo"), state_session_capacity=ARGS.max_sessions,
                    prevent_thread_lock=True, quiet=True)  # quiet: gradio's own "set share=True" hint is not ours
        print(f"mtan app: running on {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else "")
              + ("" if share else " (a public link: --share)"), flush=True)
        demo.block_thread()  # until Ctrl+C or SIGTERM (gradio's own handler, where it installs one, exits too)
    except Exception:
        traceback.print_exc()
        exit_code = 1
    finally:
        print("mtan app: stopped", flush=True)
        os._exit(exit_code)  # a prediction still running in a worker thread must not keep the process alive
