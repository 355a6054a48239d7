"""The page, top to bottom (the result first, then what explains it), and which event runs what.

Every component a handler writes to is kept in ``page`` under the name the handlers of
:mod:`mtan.serve.web.events` use; an event's outputs are those names, in the order its handler
declares them (:func:`mtan.serve.web.events.named`).
"""
from __future__ import annotations

import warnings

import gradio as gr

from mtan import serve
from mtan.serve import attention, render
from mtan.serve.examples import PHOTO_CREDIT, split_examples
from mtan.serve.guard import RequestGuard
from mtan.serve.media_events import video_resolutions
from mtan.serve.page_text import ABOUT, HOW_TO_READ
from mtan.serve.scene3d import COLOURINGS, DEFAULT_FOV, DEFAULT_MAX_METRES, VIEW_PIVOT
from mtan.serve.streams import StreamPolicy
from mtan.serve.uploads import inline_photo_chars, megabytes
from mtan.serve.video import DEFAULT_LAYOUT, LAYOUTS
from mtan.serve.web.events import App


def outputs(page: dict, handler) -> list:
    """The components of a :func:`named` handler's outputs, in its order."""
    return [page[name] for name in handler.outputs]


MCP_TOOLS = ("/street_photo",)
# gradio warns, as its MCP server starts, of tools with a session-state input; those are not served
warnings.filterwarnings("ignore", message="This MCP server includes a tool that has a gr.State input")


def limit_mcp_tools(demo: gr.Blocks) -> list[str]:
    """Serve only the app's MCP tool: gradio's MCP server offers every public endpoint, and a tool
    whose input is a file would make the server fetch any web address a caller names. Call after
    ``launch``; returns the tools left."""
    server = getattr(demo, "mcp_server_obj", None)
    if server is None:
        return []
    server.tool_to_endpoint = {tool: endpoint for tool, endpoint in server.tool_to_endpoint.items()
                               if endpoint in MCP_TOOLS}
    return list(server.tool_to_endpoint)


def build(app: App) -> gr.Blocks:
    """The app's page and API for ``app``, every request checked (:class:`RequestGuard`), queued."""
    first = app.default_model
    shows = " and ".join(dict.fromkeys(app.compare_choices(first))) if first else "segmentation and depth"
    notices = app.notices_of(first)
    page: dict = {}
    with gr.Blocks(title="MTAN: segmentation + depth from one photo", analytics_enabled=False,
                   delete_cache=app.GRADIO_CACHE, fill_width=True) as demo:
        gr.Markdown(f"# MTAN: {shows} from one street photo\nUpload a photo of a street (or pick an example): one "
                    "network labels every pixel and estimates how far away it is, in a single pass.", elem_id="intro")
        page["notice"] = gr.Markdown(notices, visible=bool(notices), elem_classes="mtan-notice", elem_id="notice")
        page["error"] = gr.Markdown(visible=False, elem_classes="mtan-error", elem_id="error")
        page["state"] = gr.State(None, time_to_live=app.SESSION_TTL_S)
        page["scene_shown"] = gr.State(False)  # whether the 3D section is open (then each photo builds its scene)
        page["live_session"] = gr.State(None, time_to_live=app.SESSION_TTL_S)
        with gr.Tabs(elem_id="modes"):
            with gr.Tab("Photo", id="photo", elem_id="photo-tab"):
                photo_tab(app, page)
            with gr.Tab("Video", id="video", elem_id="video-tab"):
                video_tab(app, page)
            with gr.Tab("Live webcam", id="live", elem_id="live-tab"):
                live_tab(app, page)
        settings_and_about(app, page)
        with gr.Group(visible=False):  # the API's own controls and views (/predict, /details), not on the page
            api_controls(app, page)
        wire(app, page)
    # Every value of every event checked before gradio touches it (compare, task, resolution: choices per model).
    RequestGuard(app.uploads, open_choices=[page[n] for n in ("compare_choice", "attention_task", "resolution",
                                                                 "video_resolution")],
                 video_policy=app.video_uploads).install(demo)
    demo.queue(default_concurrency_limit=app.OTHER_CONCURRENCY, max_size=app.args.queue_size)
    StreamPolicy(("live_frame",), app.args.live_idle_seconds).install(demo)  # idle streams end; one per visitor
    return demo


def photo_tab(app: App, page: dict) -> None:
    """The photo and, once it has run, the result as the hero: a large before/after slider (the
    photo against its segmentation or depth) with the classes and the colour bar under it; then
    the segmentation and depth views, what is in front of the camera, the scene in 3D, what each
    task's attention looks at, and the downloads. Before a photo runs, only the upload and the
    examples show."""
    first = app.default_model
    compare = app.compare_choices(first)
    with gr.Row(equal_height=False, elem_id="results"):
        with gr.Column(scale=1, min_width=300):
            page["image"] = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                                     label="Your street photo", elem_id="input-image", height=300)
            page["summary"] = gr.Markdown(elem_id="summary")
            page["nearby"] = gr.Markdown(elem_id="nearby")  # what is in front of the camera, and how far
        with gr.Column(scale=2, min_width=320, visible=False, elem_id="hero") as page["hero"]:
            page["compare"] = gr.ImageSlider(label="Photo | output: drag the handle", format="jpeg", elem_id="compare",
                                             interactive=False, height=440)
            page["compare_choice"] = gr.Radio(compare, value=compare[0] if compare else None, show_label=False,
                                              elem_id="compare-choice")
            page["legend"] = gr.HTML(elem_id="legend")
            page["colorbar"] = gr.HTML(elem_id="colorbar")
    photos, scenes = split_examples(app.examples)
    if photos:
        page["photo_examples"] = gr.Examples([[str(p)] for p in photos], inputs=[page["image"]], examples_per_page=4,
                                             label="Examples: real street photos, click one to run it",
                                             elem_id="photo-examples")
        gr.Markdown(PHOTO_CREDIT, elem_id="photo-credit", elem_classes="mtan-credit")
    if scenes:
        page["examples"] = gr.Examples([[str(p)] for p in scenes], inputs=[page["image"]], examples_per_page=12,
                                       label="Examples: generated street scenes (not photos), click one to run it",
                                       elem_id="examples")
    with gr.Column(visible=False, elem_id="details") as page["details"]:
        details_area(app, page, compare)


def details_area(app: App, page: dict, compare: list[str]) -> None:
    """Everything under the hero, shown once a photo has run."""
    page["point"] = gr.Markdown("Click a spot on the segmentation or the depth to read its class and distance.",
                                elem_id="point")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            page["segmentation"] = gr.Image(label="Segmentation", format="jpeg", elem_id="segmentation", height=300,
                                            interactive=False)
            page["opacity"] = gr.Slider(0, 1, value=0.55, step=0.05, label="Overlay opacity", elem_id="opacity")
        with gr.Column(min_width=300):
            page["depth"] = gr.Image(label="Depth", format="jpeg", elem_id="depth", height=300, interactive=False)
            page["colormap"] = gr.Dropdown(list(render.COLORMAPS), value=render.DEFAULT_COLORMAP, label="Colours",
                                           elem_id="colormap")
    page["normals"] = gr.Image(label="Surface normals (RGB = (n + 1) / 2)", format="jpeg", elem_id="normals",
                               visible="normals" in compare, interactive=False)
    with gr.Accordion("The scene in 3D", open=False, elem_id="scene-section") as page["scene_section"]:
        gr.Markdown("The depth map as a scene in metres: drag to turn it a little (farther round, one "
                    "photo's depth shows the gaps behind things), scroll to zoom. The camera is "
                    "assumed, not measured; the sky and far pixels are left out.")
        page["scene"] = gr.Model3D(label="The photo in 3D (metres)", elem_id="scene", interactive=False,
                                   clear_color=(0.08, 0.08, 0.1, 1.0),
                                   camera_position=(85, 87, VIEW_PIVOT))  # a few degrees off the photo's viewpoint
        with gr.Row():
            page["scene_fov"] = gr.Slider(20, 120, value=DEFAULT_FOV, step=1, elem_id="scene-fov",
                                          label="Camera's horizontal field of view (degrees; a phone's is about 65)")
            page["scene_far"] = gr.Slider(5, 200, value=DEFAULT_MAX_METRES, step=5, elem_id="scene-far",
                                          label="Leave out what is farther than (metres)")
            page["scene_colours"] = gr.Radio(list(COLOURINGS), value="photo", label="Colours", elem_id="scene-colours")
        page["scene_caption"] = gr.Markdown(elem_id="scene-caption")
        page["scene_files"] = gr.File(label="Mesh (.glb) and point cloud (.ply)", file_count="multiple",
                                      elem_id="scene-downloads", interactive=False)
    with gr.Accordion("Attention: what each task looks at", open=True, elem_id="attention-section"):
        gr.Markdown(HOW_TO_READ)
        page["att_caption"] = gr.Markdown(elem_id="attention-caption")  # the sentence on this photo, first
        page["att_panel"] = gr.Image(label="Each task's mask, and where they differ", format="jpeg", show_label=False,
                                     elem_id="attention-panel", interactive=False)
        page["att_bar"] = gr.HTML(elem_id="attention-bar")
        with gr.Row():
            page["att_part"] = gr.Radio(list(attention.PARTS), value="encoder", label="Part of the network",
                                        elem_id="att-part")
            page["att_level"] = gr.Slider(1, 5, value=1, step=1, label="Stage (1 = full size ... 5 = 1/16)",
                                          elem_id="att-level")
            page["att_channel"] = gr.Slider(0, 512, value=0, step=1, elem_id="att-channel",
                                            label="Channel (0 = the mean of all)")
        with gr.Accordion("Every stage at once", open=False, elem_id="all-masks"):
            page["att_overview"] = gr.Image(label="Every stage (mean over channels), one colour scale", format="jpeg",
                                            elem_id="attention-overview", interactive=False)
            page["att_stats"] = gr.Markdown(elem_id="attention-stats")
    with gr.Accordion("Downloads", open=True, elem_id="downloads-section"):
        page["downloads"] = gr.File(label="Class ids, coloured segmentation, 16-bit and 8-bit depth, depth .npy",
                                    file_count="multiple", elem_id="downloads", interactive=False)
        page["download_notes"] = gr.Markdown()
        page["masks_button"] = gr.Button("Prepare every attention mask as one .npz (about 14 MB)", size="sm",
                                         elem_id="masks-button")
        page["masks_file"] = gr.File(label="Attention masks (.npz; mask = stored / 255)", elem_id="masks-download",
                                     interactive=False)
        page["masks_note"] = gr.Markdown()


def video_tab(app: App, page: dict) -> None:
    """A clip in, the labelled clip out."""
    gr.Markdown(f"Upload a short street clip (MP4, WebM or MOV): every frame is labelled and its depth estimated, and "
                f"the result comes back as a video at the clip's frame rate. This app takes "
                f"{app.video_limits.describe()}, files up to {megabytes(app.video_uploads.max_bytes)}.")
    with gr.Row(equal_height=False):
        page["video_in"] = gr.Video(sources=["upload"], label="Your street clip", elem_id="video-input", height=240)
        with gr.Column():
            page["video_layout"] = gr.Radio(list(LAYOUTS), value=DEFAULT_LAYOUT, label="Views", elem_id="video-layout")
            offered, default = video_resolutions(app.default_model)
            page["video_resolution"] = gr.Radio(offered, value=default, elem_id="video-resolution",
                                                label="Processing resolution (smaller runs faster)")
            page["video_smoothing"] = gr.Slider(0, 0.9, value=0.5, step=0.1, elem_id="video-smoothing",
                                                label="Smoothing over frames (0 = off; more = steadier)")
            page["video_button"] = gr.Button("Run the clip again with these settings", elem_id="video-run")
    page["video_out"] = gr.Video(label="Result", elem_id="video-output", interactive=False)
    page["video_legend"] = gr.HTML(elem_id="video-legend")
    page["video_summary"] = gr.Markdown(elem_id="video-summary")


def live_tab(app: App, page: dict) -> None:
    """The camera in, each frame labelled, as fast as the server manages."""
    live = app.LIVE_RESOLUTION
    gr.Markdown("Allow the camera, press Record and point it at a street: each frame is labelled and its depth "
                f"estimated at {live[0]}x{live[1]}, as fast as this server manages (a stream runs "
                f"{app.args.live_seconds / 60:g} minutes; press Record again for more).")
    with gr.Row(equal_height=False):
        page["live_in"] = gr.Image(sources=["webcam"], streaming=True, type="filepath", label="Your camera",
                                   elem_id="live-input", height=300)
        page["live_out"] = gr.Image(label="Live result", elem_id="live-output", height=300, interactive=False,
                                    format="jpeg")
    page["live_camera_note"] = gr.HTML('<div id="live-camera-note" class="mtan-notice" style="display:none"></div>')
    page["live_rate"] = gr.Markdown(elem_id="live-rate")
    page["live_layout"] = gr.Radio(list(LAYOUTS), value="segmentation | depth", label="Views", elem_id="live-layout")


def settings_and_about(app: App, page: dict) -> None:
    """The model, the processing resolution and the mirror run; then the model card and MTAN."""
    first = app.default_model
    resolutions = first.resolutions if first else serve.ResolutionAdvice.from_record(None)
    card, card_rest = app.card_parts(first)
    shown = (["model"] * (len(app.registry.sources) > 1) + ["processing resolution"] * (len(resolutions.offered) > 1)
             + ["mirror"])
    with gr.Accordion("Settings: " + ", ".join(shown), open=False, elem_id="settings"):
        # only real choices: a model and a resolution are offered when there is more than one
        page["model"] = gr.Dropdown(app.registry.choices(), value=app.registry.default_key, label="Model",
                                    visible=len(app.registry.sources) > 1, elem_id="model")
        page["resolution"] = gr.Radio(resolutions.offered, value=resolutions.default, label="Processing resolution",
                                      info=app.resolution_info(first), elem_id="resolution",
                                      visible=len(resolutions.offered) > 1)
        page["mirror"] = gr.Checkbox(resolutions.mirror, label="Also run the mirror image and average (about twice as slow)",
                                     info="on from the start where the model's measurements say it helps",
                                     elem_id="mirror")
    with gr.Accordion("About this model and MTAN", open=False, elem_id="about"):
        page["card"] = gr.Markdown(card, elem_id="card")
        with gr.Accordion("The whole model card", open=False):
            page["card_rest"] = gr.Markdown(card_rest)
        gr.Markdown(ABOUT)


def api_controls(app: App, page: dict) -> None:
    """The API's own inputs and views (``/predict``, ``/details``): one task's attention."""
    tasks = app.task_choices(app.default_model)
    page["attention_task"] = gr.Dropdown(tasks, value=tasks[0] if tasks else None, label="Task")
    page["attention_part"] = gr.Radio(list(attention.PARTS), value="encoder", label="Part")
    page["attention_stage"] = gr.Slider(0, 4, value=0, step=1, label="Stage")
    page["attention_channel"] = gr.Slider(-1, 511, value=-1, step=1, label="Channel (-1 = mean over channels)")
    page["attention"] = gr.Image(label="Mask over the photo", format="jpeg")
    page["difference"] = gr.Image(label="Where the tasks' masks differ", format="jpeg")
    page["attention_caption"] = gr.Markdown(label="attention caption")
    page["distances"] = gr.JSON(label="Vehicles and people, nearest first (approximate metres)")
    # the MCP tool's own input and outputs: a photo as text (a data URL or an example's name)
    page["tool_photo"] = gr.Textbox(label="Photo (data URL or example name)",
                                    max_length=inline_photo_chars(app.uploads.max_bytes))
    page["tool_segmentation"] = gr.Image(label="Segmentation over the photo", format="jpeg")
    page["tool_depth"] = gr.Image(label="Depth (bright = near)", format="jpeg")
    page["tool_result"] = gr.Textbox(label="JSON: vehicles and people with approximate distances, the classes' shares")


def wire(app: App, page: dict) -> None:
    """Which event runs which handler: the API, then the page's runs, redraws, clips and webcam."""
    p = page
    api_attention = [p["attention_task"], p["attention_part"], p["attention_stage"], p["attention_channel"]]
    page_attention = [p["att_part"], p["att_level"], p["att_channel"]]
    view_inputs = [p[n] for n in ("image", "model", "resolution", "opacity", "colormap", "compare_choice", "mirror")]
    inference = dict(concurrency_limit=app.concurrency, concurrency_id="inference", preprocess=False)
    # The API: /predict answers everything at once; /predict_views then /details as the page does.
    gr.Button(visible=False).click(app.predict, [*view_inputs[:6], *api_attention, p["mirror"]],
                                   outputs(p, app.predict), api_name="predict", **inference)
    gr.Button(visible=False).click(app.predict_views, view_inputs, outputs(p, app.predict_views),
                                   api_name="predict_views", **inference)
    gr.Button(visible=False).click(app.details, [p["state"]] + api_attention, outputs(p, app.details),
                                   api_name="details")
    gr.Button(visible=False).click(app.distances, [p["image"], p["model"], p["resolution"], p["mirror"]],
                                   outputs(p, app.distances), api_name="distances", **inference)
    gr.Button(visible=False).click(app.street_photo, [p["tool_photo"]], outputs(p, app.street_photo),
                                   api_name="street_photo", queue=False)  # the MCP tool (App.tool_slots)
    for view in ("segmentation", "depth"):  # a click on a result: the class and distance there
        p[view].select(app.point, [p["state"]], outputs(p, app.point), api_visibility="private",
                       show_progress="hidden")
    p["masks_button"].click(app.attention_masks, [p["state"]], outputs(p, app.attention_masks),
                            api_name="attention_masks", concurrency_id="inference", concurrency_limit=app.concurrency)
    # The page: a photo runs as soon as it arrives (a phone scrolls to the results), then the details.
    run_views = dict(fn=app.page_run, inputs=view_inputs, outputs=outputs(p, app.page_run), api_visibility="private",
                     scroll_to_output=True, **inference)
    run_details = dict(fn=app.page_details, inputs=[p["state"]], outputs=outputs(p, app.page_details),
                       api_visibility="private", show_progress="hidden")
    # The 3D view: built for each photo while its section is open, and when a setting is let go.
    scene_outputs = [p["scene"], p["scene_files"], p["scene_caption"]]
    run_scene = dict(fn=app.media.page_scene, inputs=[p[n] for n in ("state", "scene_shown", "scene_fov", "scene_far",
                                                                     "scene_colours")],
                     outputs=scene_outputs, api_visibility="private", show_progress="minimal")
    p["image"].upload(**run_views).then(**run_details).then(**run_scene)
    p["model"].input(app.on_model_change, [p["model"]], outputs(p, app.on_model_change), api_visibility="private"
                     ).then(**run_views).then(**run_details).then(**run_scene)
    p["resolution"].input(**run_views).then(**run_details).then(**run_scene)
    p["mirror"].input(**run_views).then(**run_details).then(**run_scene)
    for examples in ("photo_examples", "examples"):
        if examples in p:
            p[examples].load_input_event.then(**run_views).then(**run_details).then(**run_scene)
    p["scene_section"].expand(lambda: True, None, [p["scene_shown"]], api_visibility="private").then(**run_scene)
    p["scene_section"].collapse(lambda: False, None, [p["scene_shown"]], api_visibility="private")
    gr.on([p["scene_fov"].release, p["scene_far"].release, p["scene_colours"].input], trigger_mode="always_last",
          **run_scene)
    gr.Button(visible=False).click(app.media.predict_3d, [p[n] for n in ("image", "model", "resolution", "scene_fov",
                                                                         "scene_far", "scene_colours", "mirror")],
                                   scene_outputs, api_name="predict_3d", **inference)
    # Video: a clip runs when it arrives (and again on the button), one at a time beside the photos.
    video_inputs = [p[n] for n in ("video_in", "model", "video_resolution", "video_layout", "video_smoothing",
                                   "colormap", "opacity")]
    clips = dict(concurrency_limit=1, concurrency_id="video", preprocess=False)
    gr.Button(visible=False).click(app.media.predict_video, video_inputs, [p["video_out"], p["video_summary"]],
                                   api_name="predict_video", **clips)
    gr.on([p["video_in"].upload, p["video_button"].click], app.media.page_video, video_inputs,
          [p["video_out"], p["video_summary"], p["video_legend"], p["video_in"]],
          show_progress_on=[p["video_out"], p["video_summary"]], api_visibility="private", **clips)
    # The live webcam: each streamed frame, answered in order, a few a second.
    p["live_in"].stream(app.media.live_frame, [p["live_in"], p["model"], p["live_layout"], p["live_session"]],
                        [p["live_out"], p["live_rate"], p["live_session"]], stream_every=0.2,
                        time_limit=app.args.live_seconds, api_name="live_frame", concurrency_limit=app.args.live_streams,
                        concurrency_id="live", preprocess=False)
    # Redraws of the last photo's views: no network run.
    redraw = dict(api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    p["opacity"].input(app.redraw_segmentation, [p["state"], p["opacity"]], outputs(p, app.redraw_segmentation),
                       **redraw)
    p["colormap"].input(app.redraw_depth, [p["state"], p["colormap"], p["compare_choice"]],
                        outputs(p, app.redraw_depth), **redraw)
    p["compare_choice"].input(app.redraw_compare, [p["state"], p["compare_choice"], p["colormap"]],
                              outputs(p, app.redraw_compare), **redraw)
    gr.on([p["att_part"].input, p["att_level"].input, p["att_channel"].input], app.attention_section,
          [p["state"]] + page_attention, outputs(p, app.attention_section), **redraw)
    p["att_part"].input(app.attention_overview, [p["state"], p["att_part"]], outputs(p, app.attention_overview),
                        **redraw)
