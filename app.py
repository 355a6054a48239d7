"""MTAN demo: semantic segmentation + depth (+ surface normals) from one street photo, and the
per-task attention masks that decide which shared features each task uses.

    python app.py                                   # the model in weights/, http://127.0.0.1:7860
    python app.py --model user/name --share         # a Hub model (or a folder), public link
    MTAN_MODELS=weights,user/a,user/b python app.py # several models in a dropdown

Settings (flag / environment): --model / MTAN_MODEL, --models / MTAN_MODELS, MTAN_DEFAULT_MODEL
(the local fallback, default weights/), MTAN_EXAMPLES (default examples/), --host /
GRADIO_SERVER_NAME, --port / GRADIO_SERVER_PORT, --max-pixels / MTAN_MAX_PIXELS, --max-file-size /
MTAN_MAX_FILE_SIZE, --max-image-pixels / MTAN_MAX_IMAGE_PIXELS, --concurrency / MTAN_CONCURRENCY,
--queue-size / MTAN_QUEUE_SIZE, --max-sessions / MTAN_MAX_SESSIONS, --device / MTAN_DEVICE,
--precision / MTAN_INFERENCE_PRECISION, --compile / MTAN_COMPILE, --threads / MTAN_THREADS.
README.md, "Safety and limits", says what happens at each limit.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import functools
import hashlib
import traceback
from pathlib import Path

import gradio as gr
import torch

from mtan import serve
from mtan.serve import render
from mtan.serve.downloads import DownloadFolders, safe_stem, write_downloads, write_masks
from mtan.serve.guard import RequestGuard, refusal
from mtan.serve.settings import byte_size, parse_args
from mtan.serve.uploads import UploadPolicy


ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])

# ---- models: the default one loads now (the only heavy work at import), others on first use ----
serve.configure_pil(ARGS.max_image_pixels)
serve.limit_malloc_arenas(2)  # before any worker thread: bounded resident memory under many requests
if ARGS.threads:
    torch.set_num_threads(ARGS.threads)
REGISTRY = serve.ModelRegistry.from_env(ARGS.model, ARGS.models, device=ARGS.device, precision=ARGS.precision,
                                          compile=ARGS.compile)
try:
    DEFAULT_MODEL, STARTUP_ERROR = REGISTRY.get(), ""
    print(f"mtan app: {serve.model_label(DEFAULT_MODEL.key)} runs {DEFAULT_MODEL.runner_description}",
          file=sys.stderr, flush=True)
except serve.ModelUnavailableError as e:
    DEFAULT_MODEL, STARTUP_ERROR = None, f"No model could be loaded: {e}"
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
DOWNLOADS = DownloadFolders(OUT_ROOT, OUT_MAX_AGE_S, OUT_MAX_BYTES)


def get_model(key: str | None) -> serve.LoadedModel:
    try:
        return REGISTRY.get(key or REGISTRY.default_key)
    except serve.ModelUnavailableError as e:
        raise refusal("model", serve.without_paths(str(e))) from None


def notices_of(loaded: serve.LoadedModel | None) -> str:
    lines = ([STARTUP_ERROR] if STARTUP_ERROR and loaded is None else []) + (loaded.notices if loaded else [])
    return "\n\n".join(f"⚠️ {serve.without_paths(line)}" for line in lines)


def card_of(loaded: serve.LoadedModel | None) -> str:
    if loaded is None:
        return "*No model loaded.*"
    card = re.sub(r"^(#+) ", r"\1## ", loaded.card, flags=re.M) if loaded.card else "*This model has no card.*"
    return f"**Loaded from** `{serve.model_label(loaded.source)}` on {REGISTRY.device}.\n\n{card}"


def compare_choices(loaded: serve.LoadedModel | None) -> list[str]:
    if loaded is None:
        return ["segmentation", "depth"]
    return list(dict.fromkeys(serve.TASK_OUTPUTS[t.kind].view for t in loaded.model.tasks))


def task_choices(loaded: serve.LoadedModel | None) -> list[str]:
    return loaded.model.task_names if loaded else ["semantic", "depth"]


def as_files(stem: str, **images):
    """Each PIL image as a JPEG file of its own (``<stem>_<name>.jpg`` in a fresh folder), in order.

    Views are returned to gradio as files, not PIL images: gradio writes a PIL output to a path
    named after its content by truncating and rewriting that file, so two requests with the same
    output (two visitors, one example) can hand a client a file that is being rewritten (an empty
    or cut download, seen under load). A file is copied into gradio's cache atomically instead.
    """
    folder = None
    paths = []
    for name, im in images.items():
        if im is None:
            paths.append(None)
            continue
        folder = folder or DOWNLOADS.new()
        path = folder / f"{stem}_{name}.jpg"
        im.save(path, "JPEG")
        paths.append(str(path))
    return paths


# ---- rendering from a cached prediction (no network run) -------------------------------------


def show_main(pred: serve.Prediction, opacity: float, colormap: str, compare: str):
    """Segmentation overlay, coloured depth, colour bar and the before/after pair."""
    size = pred.size
    sem, dep, nor = pred.first("semantic"), pred.first("depth"), pred.first("normal")
    seg = render.overlay(pred.photo, render.colorize_labels(pred.labels[sem.name], sem.class_set.palette),
                      opacity) if sem else None
    colormap = colormap if colormap in render.COLORMAPS else render.DEFAULT_COLORMAP
    depth, bar = None, ""
    if dep:
        limits = render.depth_limits(pred.depth[dep.name])
        depth = render.colorize_depth(pred.depth[dep.name], size, colormap, limits)
        bar = render.colorbar_html(dep, limits, colormap)
    normals = render.normals_to_rgb(pred.normals[nor.name], size) if nor else None
    after = {"segmentation": seg, "depth": depth, "normals": normals}.get(compare) or seg or depth or normals
    return seg, depth, bar, (pred.photo, after), normals


def show_attention(pred: serve.Prediction, task: str, part: str, stage: float, channel: float):
    """The chosen mask as a heat map, where the tasks' masks differ, and a caption."""
    if not pred.masks:
        return None, None, "This model has no attention masks (it is a `split` or `single` network)."
    task = task if task in pred.masks else next(iter(pred.masks))
    part = part if part in render.PARTS else "encoder"
    stage = int(min(4, max(0, stage or 0)))
    values, what = render.attention_map(pred.masks, task, part, stage, int(channel if channel is not None else -1))
    view, (lo, hi) = render.heatmap(values, pred.photo)
    caption = f"**{task}**, {render.stage_label(part, stage)}, {what}: mask values {lo:.3f} (dark) to {hi:.3f} (bright)."
    diff = render.task_difference(pred.masks, part, stage)
    if diff is None:
        return view, None, caption
    diff_view, (dlo, dhi) = render.heatmap(diff, pred.photo, cmap=render.DIFFERENCE_COLORMAP)
    caption += (f" Right: mean |difference| between the tasks' masks at this stage, {dlo:.3f} to {dhi:.3f}: "
                f"bright where the tasks select different features.")
    return view, diff_view, caption


# ---- the prediction ----------------------------------------------------------------------------


def guarded(fn):
    """``fn`` with the app's error handling: our refusals pass through; running out of memory and
    any other exception become one plain message (the API client sees that text too), the
    traceback in the log; the photo's temporaries go back to the OS afterwards."""
    @functools.wraps(fn)
    def run(*args):
        try:
            try:
                return fn(*args)
            finally:
                serve.release_memory()  # the temporaries of this photo: back to the OS, not kept by malloc
        except gr.Error:
            raise
        except MemoryError:
            raise refusal("predict", "The server ran out of memory on this photo: try a smaller photo or a lower "
                                     "processing resolution.") from None
        except Exception:  # a bug or an input nobody foresaw: a plain message, the traceback in the log
            traceback.print_exc()
            raise gr.Error("This photo could not be processed because of an error on the server (it has been "
                           "logged): try again, or another photo.", print_exception=False) from None
    return run


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
    advice = loaded.resolutions
    resolution = resolution or advice.default
    if resolution not in advice.offered:
        reason = advice.reasons.get(resolution, f"{resolution} is not a processing resolution of this app")
        raise refusal("predict", f"{reason}; choose {', '.join(advice.offered)}.")
    box = serve.parse_resolution(resolution)
    cache_key = EXAMPLE_CACHE.key(hashlib.sha1(data).hexdigest(), loaded.key, resolution + "+mirror" * bool(mirror))
    pred = EXAMPLE_CACHE.get(cache_key)
    if pred is None:
        try:
            photo, notes = serve.load_image(data, ARGS.max_pixels, ARGS.max_image_pixels)
        except serve.ImageLoadError as e:
            raise refusal("predict", str(e)) from None
        del data
        pred = serve.predict_photo(loaded, photo, box, stem=safe_stem(name), flip=bool(mirror))
        pred.notes = notes + serve.processing_notes(pred.size, pred.processing_size)
        EXAMPLE_CACHE.put(cache_key, pred)
    pred.resolution = resolution
    return pred, loaded


def main_views(pred: serve.Prediction, loaded: serve.LoadedModel, opacity, colormap, compare):
    """What the page shows first: the segmentation, depth and normals views, the legend, the
    colour bar, the before/after pair and the summary line."""
    resolution = pred.resolution
    seg, depth, bar, pair, normals = show_main(pred, opacity, colormap, compare)
    sem = pred.first("semantic")
    legend = render.legend_html(pred.labels[sem.name], sem.class_set, "Classes in this photo") if sem else ""
    h, w = pred.processing_size
    summary = (f"**{serve.model_label(loaded.key)}** · photo {pred.size[1]}x{pred.size[0]} · network input "
               f"{w}x{h} (fitted inside {resolution}{', and its mirror image' if pred.mirrored else ''}) · "
               f"{pred.seconds:.2f} s on {REGISTRY.device} in {loaded.running}{', compiled' if pred.compiled else ''}")
    notes = [f"⚠️ {n}" for n in loaded.notices + pred.notes if "placeholder" not in n]  # that one is on top
    summary = "\n\n".join([summary] + notes)
    seg, depth, normals, before, after = as_files(pred.stem, segmentation=seg, depth=depth, normals=normals,
                                                  photo=pair[0], compare=pair[1])
    return seg, depth, legend, bar, normals, (before, after), summary


def downloads_of(pred: serve.Prediction):
    """The prediction's downloads (class ids, coloured segmentation, 16-bit depth, depth .npy),
    written the first time they are needed (again if they were cleaned up), and their notes."""
    if not (pred.files and all(os.path.exists(f) for f in pred.files)):
        pred.files, pred.file_notes = write_downloads(pred, DOWNLOADS.new(), pred.model_source, masks=False)
        pred.masks_file = ""
    return pred.files, "\n\n".join(n.replace("~", "≈") for n in pred.file_notes)


def attention_views(pred: serve.Prediction, attention_task, attention_part, attention_stage, attention_channel):
    att, diff, caption = show_attention(pred, attention_task, attention_part, attention_stage, attention_channel)
    att, diff = as_files(pred.stem, attention=att, difference=diff)
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


def show_all_masks(pred):
    """Every mask as a small heat map, and the per-stage table (after the main outputs, UI only);
    the masks' download of an earlier photo is cleared."""
    if pred is None or not pred.masks:
        return [], "", None, ""
    items = render.attention_gallery(pred.masks, pred.photo)
    paths = as_files(pred.stem, **{f"mask{i:02d}": im for i, (im, _) in enumerate(items)})
    return ([(path, caption) for path, (_, caption) in zip(paths, items)], render.attention_table(pred.masks),
            None, "")


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


def views_if_image(image, *args):
    """For automatic re-runs (model or resolution changed): nothing to do without a photo."""
    if image is None:
        return tuple(gr.skip() for _ in VIEW_OUTPUTS)
    return predict_views(image, *args)


def details_if_run(pred, *args):
    """The page's second step: the details, and every mask as a small heat map with the per-stage
    table (the masks' ``.npz`` of an earlier photo is cleared). Nothing to do before a first photo."""
    if pred is None:
        return tuple(gr.skip() for _ in DETAIL_OUTPUTS)
    return (*details(pred, *args), *show_all_masks(pred))


def rerender_main(pred, opacity, colormap, compare):
    if pred is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    seg, depth, bar, (photo, after), _ = show_main(pred, opacity, colormap, compare)
    seg, depth, photo, after = as_files(pred.stem, segmentation=seg, depth=depth, photo=photo, compare=after)
    return seg, depth, bar, (photo, after)


def rerender_attention(pred, task, part, stage, channel):
    if pred is None:
        return gr.skip(), gr.skip(), gr.skip()
    return attention_views(pred, task, part, stage, channel)


def resolution_info(loaded: serve.LoadedModel | None) -> str:
    """The resolution control's note: the photo is fitted inside; why a resolution is missing."""
    reasons = loaded.resolutions.reasons.values() if loaded else []
    return " ".join(["The photo is fitted inside, aspect kept.", *(f"{r}." for r in reasons)])


def on_model_change(model):
    """Load (once) the chosen model; show its notices and card, its tasks and resolutions in the controls."""
    loaded = get_model(model)
    tasks, compare = task_choices(loaded), compare_choices(loaded)
    notices = notices_of(loaded)
    return (gr.update(value=notices, visible=bool(notices)), card_of(loaded),
            gr.update(choices=tasks, value=tasks[0] if tasks else None),
            gr.update(choices=compare, value=compare[0] if compare else None),
            gr.update(visible="normals" in compare),
            gr.update(choices=loaded.resolutions.offered, value=loaded.resolutions.default,
                      info=resolution_info(loaded)))


# ---- the page ----------------------------------------------------------------------------------

ABOUT = """**MTAN** (Liu, Johns and Davison, *End-to-End Multi-Task Learning with Attention*, CVPR 2019) shares one
SegNet-style network between all tasks and gives each task a chain of small soft-attention masks, one per encoder
and decoder stage, that select from the shared features what that task needs. The masks are cheap 1x1 convolutions,
so a new task adds few parameters, and comparing them (the *Attention* section) shows which features each task
relies on. **Dynamic Weight Average (DWA)** balances the tasks during training by weighting each task's loss by how
slowly it fell over the last two epochs (a softmax with temperature 2), so that no task dominates.
[Paper](https://arxiv.org/abs/1803.10704)"""

CSS = """
.mtan-notice {border-left: 4px solid #f59e0b; background: #fef3c7; color: #78350f; padding: 6px 12px;
             border-radius: 6px}
.mtan-legend ul {list-style: none; padding: 0; margin: 4px 0; display: flex; flex-wrap: wrap; gap: 4px 14px}
.mtan-legend-item {display: flex; align-items: center; gap: 6px; font-size: 13px}
.mtan-legend-title, .mtan-colorbar-title {font-size: 13px; font-weight: 600}
.mtan-swatch {width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 1px solid #0004}
.mtan-legend-share {opacity: .7}
.mtan-colorbar-bar {height: 14px; border-radius: 3px; margin: 4px 0}
.mtan-colorbar-ticks {display: flex; justify-content: space-between; font-size: 12px; text-align: center}
.mtan-colorbar-note {font-size: 12px; opacity: .75; margin-top: 4px}
"""

first_tasks, first_compare = task_choices(DEFAULT_MODEL), compare_choices(DEFAULT_MODEL)
with gr.Blocks(title="MTAN: segmentation + depth from one photo", analytics_enabled=False,
               delete_cache=GRADIO_CACHE) as demo:
    gr.Markdown("# MTAN: segmentation and depth from one street photo\nOne network, one pass: semantic "
                "segmentation, depth (and surface normals on indoor models), plus each task's attention masks.")
    notice = gr.Markdown(notices_of(DEFAULT_MODEL), visible=bool(notices_of(DEFAULT_MODEL)),
                         elem_classes="mtan-notice", elem_id="notice")
    state = gr.State(None, time_to_live=SESSION_TTL_S)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                             label="Street photo", elem_id="input-image", height=300)
            model = gr.Dropdown(REGISTRY.choices(), value=REGISTRY.default_key, label="Model",
                                interactive=len(REGISTRY.sources) > 1, elem_id="model")
            first_resolutions = DEFAULT_MODEL.resolutions if DEFAULT_MODEL else serve.ResolutionAdvice.from_record(None)
            resolution = gr.Radio(first_resolutions.offered, value=first_resolutions.default,
                                  label="Processing resolution", info=resolution_info(DEFAULT_MODEL),
                                  elem_id="resolution")
            mirror = gr.Checkbox(False, label="Also run the mirror image and average (about twice as slow)",
                                 elem_id="mirror")
            run = gr.Button("Run", variant="primary", elem_id="run")
            summary = gr.Markdown(label="summary", show_label=False, elem_id="summary")
            if EXAMPLES:
                examples = gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples",
                                       examples_per_page=12, elem_id="examples")
            else:
                gr.Markdown("*No example photos in `examples/` yet.*")
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                with gr.Column():
                    seg_view = gr.Image(label="Segmentation", format="jpeg", elem_id="segmentation")
                    opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Overlay opacity")
                    legend = gr.HTML(label="legend", elem_id="legend")
                with gr.Column():
                    depth_view = gr.Image(label="Depth", format="jpeg", elem_id="depth")
                    colormap = gr.Dropdown(list(render.COLORMAPS), value=render.DEFAULT_COLORMAP, label="Colormap")
                    colorbar = gr.HTML(label="colour bar", elem_id="colorbar")
            normals_view = gr.Image(label="Surface normals (RGB = (n + 1) / 2)", format="jpeg", elem_id="normals",
                                    visible=bool(DEFAULT_MODEL and "normals" in first_compare))
            compare = gr.Radio(first_compare, value=first_compare[0] if first_compare else None,
                               label="Before / after: the photo against")
            slider = gr.ImageSlider(label="Photo | output", format="jpeg", elem_id="compare")
    with gr.Accordion("Attention masks", open=True):
        gr.Markdown("Each task's soft masks (0..1) gate the shared features at every encoder and decoder stage. "
                    "Decoder stage 0 is the deepest (1/16 scale), decoder stage 4 the finest.")
        with gr.Row():
            attention_task = gr.Dropdown(first_tasks, value=first_tasks[0] if first_tasks else None, label="Task")
            attention_part = gr.Radio(list(render.PARTS), value="encoder", label="Part")
            attention_stage = gr.Slider(0, 4, value=0, step=1, label="Stage")
            attention_channel = gr.Slider(-1, 511, value=-1, step=1, label="Channel (-1 = mean over channels)")
        with gr.Row():
            attention_view = gr.Image(label="Mask over the photo", format="jpeg", elem_id="attention")
            difference_view = gr.Image(label="Where the tasks' masks differ", format="jpeg", elem_id="difference")
        attention_caption = gr.Markdown(label="attention caption", show_label=False)
        with gr.Accordion("Every mask, and which channels are most task-specific", open=False, elem_id="all-masks"):
            attention_gallery = gr.Gallery(label="Every mask (mean over channels)", columns=5, height="auto",
                                           format="jpeg", elem_id="mask-gallery")
            attention_stats = gr.Markdown(label="attention per stage", show_label=False)
    with gr.Accordion("Downloads", open=False):
        downloads = gr.File(label="Downloads: class ids, coloured segmentation, 16-bit depth, depth .npy",
                            file_count="multiple", elem_id="downloads")
        download_notes = gr.Markdown(label="download notes", show_label=False)
        masks_button = gr.Button("Prepare every attention mask as one .npz (uint8, mask = stored / 255; about 14 MB "
                                 "at 256x512)", size="sm", elem_id="masks-button")
        masks_file = gr.File(label="Attention masks (.npz)", elem_id="masks-download")
        masks_note = gr.Markdown(label="masks note", show_label=False)
    with gr.Accordion("About the model and MTAN", open=False):
        gr.Markdown(ABOUT)
        card = gr.Markdown(card_of(DEFAULT_MODEL))

    # The page runs a photo in two steps: the views it shows first (predict_views), then the
    # attention views, downloads and mask gallery (details). /predict answers everything at once.
    ATTENTION = [attention_task, attention_part, attention_stage, attention_channel]
    VIEW_INPUTS = [image, model, resolution, opacity, colormap, compare, mirror]
    VIEW_OUTPUTS = [seg_view, depth_view, legend, colorbar, normals_view, slider, summary, state]
    DETAIL_OUTPUTS = [attention_view, difference_view, attention_caption, downloads, download_notes,
                      attention_gallery, attention_stats, masks_file, masks_note]
    OUTPUTS = [seg_view, depth_view, attention_view, downloads, legend, colorbar, normals_view, slider,
               difference_view, attention_caption, download_notes, summary, state]
    inference = dict(concurrency_limit=CONCURRENCY, concurrency_id="inference", preprocess=False)
    run_views = dict(fn=predict_views, inputs=VIEW_INPUTS, outputs=VIEW_OUTPUTS, **inference)
    auto_views = run_views | dict(fn=views_if_image, api_visibility="private")
    run_details = dict(fn=details_if_run, inputs=[state] + ATTENTION, outputs=DETAIL_OUTPUTS,
                       api_visibility="private", show_progress="hidden")
    everything = gr.Button(visible=False, elem_id="predict-everything")  # /predict's trigger: the API only
    INPUTS = [image, model, resolution, opacity, colormap, compare, *ATTENTION, mirror]
    everything.click(predict, INPUTS, OUTPUTS, api_name="predict", **inference)
    gr.on([run.click, image.upload], api_name="predict_views", **run_views).success(**run_details)
    gr.Button(visible=False).click(details, [state] + ATTENTION, DETAIL_OUTPUTS[:5], api_name="details")
    masks_button.click(attention_masks, [state], [masks_file, masks_note], api_name="attention_masks",
                       concurrency_id="inference", concurrency_limit=CONCURRENCY)
    model.input(on_model_change, [model], [notice, card, attention_task, compare, normals_view, resolution],
                api_visibility="private").then(**auto_views).success(**run_details)
    resolution.input(**auto_views).success(**run_details)
    mirror.input(**auto_views).success(**run_details)
    if EXAMPLES:
        examples.load_input_event.then(**auto_views).success(**run_details)
    gr.on([opacity.change, colormap.input, compare.input], rerender_main, [state, opacity, colormap, compare],
          [seg_view, depth_view, colorbar, slider], api_visibility="private", trigger_mode="always_last",
          show_progress="hidden")
    gr.on([attention_task.input, attention_part.input, attention_stage.change, attention_channel.change],
          rerender_attention, [state, attention_task, attention_part, attention_stage, attention_channel],
          [attention_view, difference_view, attention_caption], api_visibility="private",
          trigger_mode="always_last", show_progress="hidden")

# Every value of every event checked before gradio touches it (compare, task, resolution: choices per model).
RequestGuard(UPLOADS, open_choices=[compare, attention_task, resolution]).install(demo)
OTHER_CONCURRENCY = 4  # redraws and the mask gallery (no network run) at once
demo.queue(default_concurrency_limit=OTHER_CONCURRENCY, max_size=ARGS.queue_size)

# Every limit in force, printed at start (benchmarks/load_test.py reads it; README: "Safety and limits").
LIMITS = {"concurrency": CONCURRENCY, "other_concurrency": OTHER_CONCURRENCY, "queue_size": ARGS.queue_size,
          "max_sessions": ARGS.max_sessions, "session_ttl_s": SESSION_TTL_S, "max_pixels": ARGS.max_pixels,
          "max_image_pixels": ARGS.max_image_pixels, "max_file_size": ARGS.max_file_size,
          "downloads_max_age_s": OUT_MAX_AGE_S, "downloads_max_bytes": OUT_MAX_BYTES,
          "gradio_cache_cleanup_s": list(GRADIO_CACHE),
          "example_cache": EXAMPLE_CACHE.capacity, "device": str(REGISTRY.device), "threads": torch.get_num_threads()}



def _stop(signum, frame):
    raise KeyboardInterrupt  # the main thread closes the server (gradio's block_thread), then exits


if __name__ == "__main__":
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
        demo.launch(server_name=ARGS.host, server_port=ARGS.port, share=share, max_file_size=ARGS.max_file_size,
                    allowed_paths=[str(p) for p in EXAMPLES], show_error=False, css=CSS,
                    theme=gr.themes.Soft(primary_hue="indigo"), state_session_capacity=ARGS.max_sessions,
                    prevent_thread_lock=True)
        demo.block_thread()  # until Ctrl+C or SIGTERM (gradio's own handler, where it installs one, exits too)
    except Exception:
        traceback.print_exc()
        exit_code = 1
    finally:
        print("mtan app: stopped", flush=True)
        os._exit(exit_code)  # a prediction still running in a worker thread must not keep the process alive
