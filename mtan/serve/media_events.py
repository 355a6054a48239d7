"""The app's events beyond one photo's views: a video clip (``/predict_video``), the live webcam
and the scene in 3D (``/predict_3d``). Each checks its input, runs the model the visitor chose and
writes its files to the app's download folders; :class:`MediaEvents` holds what they need from
the app (its models, uploads, folders and limits), and ``app.py`` wires its methods to the page
and the API."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable

import gradio as gr
import numpy as np

from mtan.records import DEFAULT_RESOLUTION, RESOLUTIONS
from mtan.serve.downloads import DownloadFolders, safe_stem
from mtan.serve.guard import guarded, refusal
from mtan.inference import Resolution
from mtan.serve.images import ImageLoadError, load_image
from mtan.serve import render
from mtan.serve.prediction import Prediction
from mtan.serve.process import release_memory
from mtan.serve.registry import LoadedModel
from mtan.serve.scene3d import COLOURINGS, DEFAULT_FOV, DEFAULT_MAX_METRES, build_scene, write_glb, write_ply
from mtan.serve.sources import model_label
from mtan.serve.uploads import UploadPolicy
from mtan.serve.video import LAYOUTS, LiveSession, VideoBusy, VideoError, VideoLimits, process_clip
from mtan.serve.zerogpu import gpu_task

# On a ZeroGPU Space these hold a GPU for the call only (decorated at import, as ZeroGPU asks).
clip_on_device = gpu_task(process_clip, duration=180)


def _live(session: LiveSession, photo: np.ndarray):
    return session(photo)


live_on_device = gpu_task(_live, duration=10)
LIVE_MAX_PIXELS = 3840 * 2160  # a webcam frame is at most 4K


class ClipRefused(gr.Error):
    """A clip refused for what it is (not a clip, damaged, too long, too large): another clip is
    needed, so the page takes this one out of its upload box as it says why."""


def video_resolutions(loaded: LoadedModel | None) -> tuple[list[str], str]:
    """The processing resolutions for clips: every one up to the model's photo default, the
    smallest first; by default the photo's (a clip looks as its photos do; a smaller one runs faster)."""
    default = Resolution.parse(loaded.resolutions.default if loaded else DEFAULT_RESOLUTION)
    offered = [r for r in RESOLUTIONS if Resolution.parse(r).pixels <= default.pixels]
    return offered, offered[-1]


@dataclass
class MediaEvents:
    """The clip, webcam and 3D events of one app. ``get_model(key)`` gives a loaded model (or a
    refusal that says why not); ``run_photo(image, model, resolution, mirror)`` the prediction of
    an uploaded photo and its model, as the photo events make it."""

    get_model: Callable[[str | None], LoadedModel]
    run_photo: Callable[..., tuple[Prediction, LoadedModel]]
    downloads: DownloadFolders
    uploads: UploadPolicy               # photos and webcam frames
    video_uploads: UploadPolicy         # clips
    video_limits: VideoLimits
    max_pixels: int                     # a webcam frame is downscaled to this many pixels, as a photo is
    max_image_pixels: int               # and refused above this many, from its header
    device: str                         # named in the clip's summary
    live_resolution: tuple[int, int] = (128, 256)  # the webcam runs small, for a smooth frame rate
    live_max_pixels: int = LIVE_MAX_PIXELS          # a webcam frame over this many pixels is refused from its header

    # ---- a video clip -------------------------------------------------------------------------

    @guarded(noun="clip")
    def predict_video(self, video, model, resolution, layout, smoothing, colormap, opacity, progress=gr.Progress()):
        """Segment and estimate the depth of every frame of a street clip (``/predict_video``).

        Returns the output video (H.264 MP4 at the clip's frame rate, photo | segmentation | depth
        side by side or the chosen ``layout``) and a summary. ``smoothing`` (0 to 0.9): how much of
        the previous frames' outputs each frame keeps (less flicker). Limits: ``--max-video-*``."""
        if video is None:
            raise refusal("predict_video", "Upload a video clip first (MP4, WebM or MOV).")
        try:
            path = self.video_uploads.check(video.get("path") if isinstance(video, dict) else video)
        except ValueError as e:
            raise refusal("predict_video", str(e), ClipRefused) from None
        name = (video.get("orig_name") if isinstance(video, dict) else None) or path.name
        loaded = self.get_model(model)
        offered, default = video_resolutions(loaded)
        if (resolution or default) not in offered:
            raise refusal("predict_video", f"{resolution} is not a processing resolution for clips; choose "
                                           f"{', '.join(offered)}.")
        box = Resolution.parse(resolution or default)
        out = self.downloads.new() / f"{safe_stem(name)}_mtan.mp4"
        progress(0, desc="Reading the clip")
        try:
            result = clip_on_device(loaded, path, out, box, self.video_limits, layout, float(smoothing or 0),
                                    colormap, opacity,
                                    progress=lambda done, total: progress((done, total), desc="Frames", unit="frames"))
        except VideoBusy as e:
            raise refusal("predict_video", str(e)) from None
        except VideoError as e:
            raise refusal("predict_video", str(e), ClipRefused) from None
        h, w = result.processing_size
        summary = (f"**{model_label(loaded.key)}** · {result.frames} frames at {float(result.fps):.3g} frames/s · "
                   f"network input {w}x{h} · {result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s; "
                   f"network {result.seconds_network:.1f} s) on {self.device}")
        return str(result.path), "\n\n".join([summary] + [f"⚠️ {n}" for n in result.notes])

    def page_video(self, video, model, *args, progress=gr.Progress()):
        """The page's clip run: the video, its summary, the legend of its colours and the upload
        box, or the one message that says why not. A clip refused for what it is leaves the upload
        box (the browser's own preview of it would only add a second, vaguer error)."""
        if video is None:
            return None, "", "", gr.skip()
        try:
            out, summary = self.predict_video(video, model, *args, progress=progress)
        except ClipRefused as e:
            return None, f"⚠️ **{e.message}**", "", None
        except gr.Error as e:
            return None, f"⚠️ **{e.message}**", "", gr.skip()
        return out, summary, self.legend(model), gr.skip()

    def legend(self, model) -> str:
        """What a clip's colours mean: every class of the model's segmentation, and the depth's scale."""
        loaded = self.get_model(model)
        sem = next((t for t in loaded.model.tasks if getattr(t, "class_set", None) is not None), None)
        depth = " Depth: bright is near, dark is far." if any(t.name == "depth" for t in loaded.model.tasks) else ""
        legend = render.legend_html(None, sem.class_set, "Segmentation colours") if sem is not None else ""
        return legend + (f'<div class="mtan-legend-note">{depth.strip()}</div>' if depth else "")

    # ---- the live webcam ----------------------------------------------------------------------

    def frame_bytes(self, frame) -> bytes:
        """A webcam frame's bytes: inline (a ``data:`` URL, checked by the request guard) or an upload."""
        url = frame.get("url") if isinstance(frame, dict) else None
        if isinstance(url, str) and url.startswith("data:"):
            return base64.b64decode(url.split(",", 1)[1])
        return self.uploads.read(frame.get("path") if isinstance(frame, dict) else frame)

    @guarded(noun="webcam frame")
    def live_frame(self, frame, model, layout, session):
        """One webcam frame of the live view: the chosen views of it, the frame rate, the session."""
        if frame is None:
            return gr.skip(), gr.skip(), session
        try:
            photo, _ = load_image(self.frame_bytes(frame), self.max_pixels,
                                  min(self.max_image_pixels, self.live_max_pixels))
        except (ValueError, ImageLoadError) as e:
            raise refusal("live_frame", "This webcam frame cannot be used: " + str(e)) from None
        loaded = self.get_model(model)
        try:
            if session is None or session.key != loaded.key or session.layout != layout:
                session = LiveSession(loaded, self.live_resolution,
                                      layout if layout in LAYOUTS else "segmentation | depth")
            picture = live_on_device(session, np.asarray(photo))
            return picture, session.describe(), session
        finally:
            release_memory()

    # ---- the scene in 3D ----------------------------------------------------------------------

    def scene_of(self, pred: Prediction, fov, max_metres, colouring, event: str = "predict_3d"):
        """The 3D scene of a prediction: the GLB for the viewer, the GLB and PLY to download, a caption."""
        try:
            scene = build_scene(pred, float(fov), float(max_metres), colouring if colouring in COLOURINGS else "photo")
        except ValueError as e:
            raise refusal(event, str(e)) from None
        if not len(scene.points):  # nothing within the distance limit: the caption says so, no files
            return None, [], scene.describe()
        folder = self.downloads.new()
        glb, ply = write_glb(scene, folder / f"{pred.stem}_3d.glb"), write_ply(scene, folder / f"{pred.stem}_3d.ply")
        return str(glb), [str(glb), str(ply)], scene.describe()

    @guarded
    def predict_3d(self, image, model, resolution, fov=DEFAULT_FOV, max_metres=DEFAULT_MAX_METRES,
                   colouring="photo", mirror=False):
        """The photo's depth as a 3D scene in metres (``/predict_3d``): a coloured mesh (GLB), the
        GLB and a coloured point cloud (PLY) to download, and a caption (points, triangles, the
        camera assumed). ``fov``: the camera's horizontal field of view in degrees; pixels farther
        than ``max_metres`` and the sky are left out; ``colouring``: ``photo`` or ``segmentation``."""
        pred, _ = self.run_photo(image, model, resolution, mirror)
        return self.scene_of(pred, fov, max_metres, colouring)

    def page_scene(self, pred, shown, fov, max_metres, colouring):
        """The page's 3D view: built when its section is open and a photo has run."""
        if pred is None or not shown:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            return self.scene_of(pred, fov, max_metres, colouring, event="scene")
        except gr.Error as e:
            return None, None, f"⚠️ {e.message}"
        finally:
            release_memory()


__all__ = ["MediaEvents", "clip_on_device", "live_on_device", "video_resolutions"]
