"""Time from `python app.py` to a ready page, the end-to-end latency of the `predict` API, and
where a round trip's time goes.

Starts the real app on a free port with the default model (or --model), waits for the page, then
times with gradio_client (one warm-up round, then --calls timed rounds) what a visitor waits for:
the page's first results (``/predict_views``: upload, queue, the network, the views, and the images
the page shows fetched over HTTP as a browser does), the page's second step (``/details``: the
attention views and the downloads), ``/predict``'s single answer with everything, and
gradio_client's default that also downloads every file of that answer one after the other
(``client_all_files``). Then the first results once more, spoken in gradio's wire protocol as the
browser speaks it (``wire``): upload, queue join, wait, the server's work, the images fetched, the
server's own network time and its page faults per call; and ``/predict``'s answer the same way
(``wire_predict``, its three views fetched). On a machine of few cores gradio_client's own work
(about 0.1 s of CPU a call) takes CPU from the server, as a browser on the visitor's machine does
not: the wire figures are what a visitor waits for. The photo is sent as a re-encoded copy: the
app keeps the results of its own example photos, and a benchmark must time the work. Then, in this
process, the same work piece by piece (``parts``, medians over --calls): decoding the upload, the
network (the app's inference copy, its precision as the app chose it), bringing the outputs to the
photo's size (also called from a worker thread, as gradio calls it), the first views drawn and
encoded, the attention views, writing the downloads, the page's attention section and overview, and
each redraw the page makes without the network when a control moves (``redraw_*_s``: opacity,
colours, before/after, attention); and, for reference, a plain eager fp32 forward of the same
weights at the same input size in a Python process of its own, as a script runs it
(``plain_forward_s``). Prints one JSON object.

    python benchmarks/app_latency.py                       # a generated 1024x2048 street photo, 256x512
    python benchmarks/app_latency.py --photo examples/street_01.jpg --resolution 512x1024
    python benchmarks/app_latency.py --parts-only --calls 3   # no server: the pieces only
    python benchmarks/app_latency.py --model full-width --compile off --calls 3   # full width, 3 tasks

``speedup_vs_plain_forward`` divides the plain forward by the page's first results, by
``/predict``'s answer (both through gradio_client), and by the wire's first results and
``/predict`` answer: above 1, the round trip is faster than a plain eager fp32 forward of the same
weights.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_copy(photo: Path) -> Path:
    """The photo re-encoded (JPEG quality 95) under /tmp: not byte-equal to an example photo, so
    the app runs it instead of answering from its example cache."""
    from PIL import Image

    out = Path(f"/tmp/mtan_app_latency_upload_{photo.stem}.jpg")
    Image.open(photo).convert("RGB").save(out, quality=95)
    return out


def file_urls(value) -> list[str]:
    """The URLs of the files in an answer of gradio_client (download_files=False), in order."""
    if isinstance(value, dict):
        return ([value["url"]] if value.get("url") else []) + [u for v in value.values() if isinstance(v, (dict, list, tuple))
                                                              for u in file_urls(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in file_urls(v)]
    return []


def fetch(urls: list[str]) -> None:
    for u in urls:
        with urllib.request.urlopen(u, timeout=30) as r:
            r.read()


def timed_calls(url: str, photo: Path, resolution: str, calls: int) -> dict:
    """Median seconds of: the page's first results (``/predict_views`` answered and its images
    fetched), the page's second step (``/details``: attention views and downloads, images fetched),
    ``/predict``'s one answer with everything (files not fetched), and gradio_client's default
    (``/predict`` and then every file of the answer downloaded, one after the other)."""
    from gradio_client import Client, handle_file

    lean, full = Client(url, verbose=False, download_files=False), Client(url, verbose=False)
    times: dict[str, list[float]] = {"page_first_results": [], "page_details": [], "predict_answer": [],
                                     "client_all_files": []}
    for call in range(calls + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        views = lean.predict(handle_file(str(photo)), resolution=resolution, api_name="/predict_views")
        fetch(file_urls([views[0], views[1], views[5]]))  # segmentation, depth, before/after
        t1 = time.perf_counter()
        fetch(file_urls(lean.predict(api_name="/details")[:2]))  # attention view, difference
        t2 = time.perf_counter()
        lean.predict(handle_file(str(photo)), resolution=resolution, api_name="/predict")
        t3 = time.perf_counter()
        full.predict(handle_file(str(photo)), resolution=resolution, api_name="/predict")
        t4 = time.perf_counter()
        if call:
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(seconds)
    return {f"{k}_median_s": round(statistics.median(v), 3) for k, v in times.items()} | {
        "page_first_results_min_s": round(min(times["page_first_results"]), 3),
        "page_first_results_max_s": round(max(times["page_first_results"]), 3)}


def _post(url: str, data: bytes, content_type: str) -> dict | list:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def page_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (Linux ``/proc/PID/stat``, field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def wire_calls(url: str, photo: Path, resolution: str, calls: int, pid: int, api_name: str = "predict_views",
               images: tuple[int, ...] = (0, 1, 5)) -> dict:
    """The page's first results (or another event: ``api_name``, the outputs whose images are
    fetched: ``images``) with gradio's wire protocol spoken as the browser speaks it, no client
    library (whose own work would take CPU from the server on a small machine): the upload
    (``POST /gradio_api/upload``), the queue join, the wait in the queue and the server's work
    (from the event stream's ``process_starts`` to ``process_completed``), and the images
    fetched (the page's first results: four). Medians over ``calls`` after one warm-up,
    with the server's own time for the network and its outputs (read from the result's summary
    line) and the server's minor page faults per call."""
    import re
    import uuid

    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    components = {c["id"]: c for c in config["components"]}
    event = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    times: dict[str, list[float]] = {}
    for call in range(calls + 1):
        t0 = time.perf_counter()
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{photo.name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        stored = _post(url + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}")[0]
        t1 = time.perf_counter()
        values = []
        for cid in event["inputs"]:
            c = components[cid]
            props = c.get("props", {})
            choices = [ch[1] if isinstance(ch, list) else ch for ch in props.get("choices") or []]
            values.append({"path": stored, "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
                          if c["type"] == "image" else resolution if resolution in choices else props.get("value"))
        session = uuid.uuid4().hex[:11]
        _post(url + "gradio_api/queue/join", json.dumps({"data": values, "event_data": None, "fn_index": event["id"],
                                                         "trigger_id": None, "session_hash": session}).encode(),
              "application/json")
        t2 = time.perf_counter()
        started = None
        with urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
            for line in stream:
                if not line.startswith(b"data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_starts":
                    started = time.perf_counter()
                if message.get("msg") == "process_completed":
                    output = message["output"]
                    break
        t3 = time.perf_counter()
        if output.get("error"):
            raise SystemExit(f"/{api_name} failed: {output['error']}")
        data = output["data"]
        fetch(file_urls([data[k] for k in images]))
        t4 = time.perf_counter()
        summary = next((v for v in data if isinstance(v, str) and " s on " in v), "")
        seconds = re.search(r"([0-9.]+) s on ", summary)
        if call == 0:  # a warm-up: faults are counted from its end
            faults = page_faults(pid)
            continue
        for key, value in (("upload", t1 - t0), ("join", t2 - t1), ("queue_wait", (started or t2) - t2),
                           ("server_work", t3 - (started or t2)), ("fetch_images", t4 - t3), ("total", t4 - t0),
                           ("server_network_and_outputs", float(seconds.group(1)) if seconds else float("nan"))):
            times.setdefault(key, []).append(value)
    result = {f"{k}_s": round(statistics.median(v), 3) for k, v in times.items()}
    result["server_page_faults_per_call"] = round((page_faults(pid) - faults) / max(calls, 1))
    return result


FULL_WIDTH_FOLDER = Path("/tmp/mtan_app_latency_full_width_nyuv2")


def full_width_model(resolution: str, folder: Path = FULL_WIDTH_FOLDER, width: float = 1.0) -> str:
    """A model folder with the full-width 3-task network (NYUv2 tasks: 13-class segmentation,
    depth, normals; 41 M parameters) with random weights, BatchNorm statistics set on generated
    frames, for ``--model full-width``. Its ``precisions.json`` allows every precision this CPU
    runs (int8 calibrated on 4 generated frames): random weights have no quality to keep, so the
    app's own timing at start picks the fastest, as it does for a released model that keeps its
    quality in all of them. Built once, then reused."""
    if (folder / "precisions.json").exists():
        return str(folder)
    import torch
    from cpu_inference import calibrate, street_frames

    from mtan import MTAN, preset_tasks
    from mtan.data.common import parse_size
    from mtan.records import PRECISIONS
    from mtan.inference.int8 import int8_available, int8_calibration

    torch.manual_seed(0)
    model = MTAN(preset_tasks("nyuv2"), arch="mtan", width=width).eval()
    h, w = parse_size(resolution)
    frames = street_frames(4, h, w)
    calibrate(model, frames)
    model.save_pretrained(folder)
    record = {"reference": "fp32", "note": "random weights: a speed benchmark's model; every precision allowed",
              "precisions": {p: {"kept": True, "reasons": []} for p in PRECISIONS if p != "int8"}}
    if int8_available():
        record["precisions"]["int8"] = {"kept": True, "reasons": [], "calibrated_on": "4 generated frames",
                                        "calibration": int8_calibration(model, frames)}
    (folder / "precisions.json").write_text(json.dumps(record, indent=1))
    return str(folder)


_PLAIN_FORWARD = """
import statistics, sys, time
import torch
from mtan import MTAN
from mtan.model import padded_forward
model = MTAN.from_pretrained(sys.argv[1]).eval()
x = torch.rand(1, 3, int(sys.argv[2]), int(sys.argv[3]))
times = []
with torch.inference_mode():
    padded_forward(model, x)
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter()
        padded_forward(model, x)
        times.append(time.perf_counter() - t)
print(statistics.median(times))
"""


def plain_forward_seconds(model: str, h: int, w: int, calls: int) -> float:
    """The reference: a plain eager fp32 forward of the model's weights at h x w, as a script of
    its own runs it (a fresh Python process: no app, glibc's malloc as it comes, the model as
    loaded), median of ``calls`` after one warm-up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _PLAIN_FORWARD, model, str(h), str(w), str(max(calls, 1))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"the plain forward failed: {out.stderr[-2000:]}")
    return round(float(out.stdout.split()[-1]), 4)


def parts(photo: Path, resolution: str, model: str | None, calls: int) -> dict:
    """Median seconds of each piece of a round trip, run in this process as the app runs them."""
    if model:
        os.environ["MTAN_MODEL"] = model
    import app
    from mtan import serve
    from mtan.inference import Resolution
    from mtan.serve import render

    loaded = app.APP.registry.get()
    if loaded.warm_up is not None:  # time what runs once the app's torch.compile warm-up is over
        loaded.warm_up.done.wait()
    data = photo.read_bytes()
    box = Resolution.parse(resolution)
    times: dict[str, list[float]] = {}

    def timed(name, run):
        t = time.perf_counter()
        value = run()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return value

    from concurrent.futures import ThreadPoolExecutor

    worker = ThreadPoolExecutor(1)
    for call in range(calls + 1):  # the first is a warm-up
        if call == 1:
            times.clear()
        image, _ = timed("decode", lambda: serve.load_image(data, app.ARGS.max_pixels, app.ARGS.max_image_pixels))
        pred = timed("network_and_resize", lambda: serve.predict_photo(loaded, image, box))
        # the same call from a worker thread, where gradio runs a request
        timed("network_and_resize_worker_thread", lambda: worker.submit(serve.predict_photo, loaded, image, box).result())
        times.setdefault("network", []).append(pred.seconds_network)
        pred.resolution = resolution
        timed("main_views", lambda: app.APP.main_views(pred, loaded, 0.55, render.DEFAULT_COLORMAP, "segmentation"))
        timed("attention_views", lambda: app.APP.attention_views(pred, pred.tasks[0].name, "encoder", 0, -1))
        pred.files = []  # written again each round
        timed("downloads", lambda: app.APP.downloads_of(pred))
        timed("attention_section", lambda: app.APP.attention_section(pred, "encoder", 1, 0))
        timed("attention_overview", lambda: app.APP.attention_overview(pred, "encoder"))
        # the page's redraws, which run no network: what a visitor waits for after moving a control
        timed("redraw_opacity", lambda: app.APP.redraw_segmentation(pred, 0.3 + 0.1 * (call % 2)))
        timed("redraw_colours", lambda: app.APP.redraw_depth(pred, ("viridis", "magma")[call % 2], "segmentation"))
        timed("redraw_compare", lambda: app.APP.redraw_compare(pred, ("depth", "segmentation")[call % 2], "inferno"))
        timed("redraw_attention", lambda: app.APP.attention_section(pred, "decoder", 1 + call % 5, call % 3))
    h, w = pred.processing_size
    result = {f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()}
    result["plain_forward_s"] = plain_forward_seconds(model or str(REPO / "weights"), h, w, calls)
    first = ("decode", "network_and_resize", "main_views")
    result["first_results_in_process_s"] = round(sum(result[f"{k}_s"] for k in first), 4)
    result["everything_in_process_s"] = round(sum(result[f"{k}_s"] for k in first + (
        "attention_views", "downloads")), 4)
    result["precision"] = loaded.running + (", compiled" if pred.compiled else "")
    result["network_input"] = f"{h}x{w}"
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", help="photo to send (default: a generated street scene of --photo-size)")
    p.add_argument("--photo-size", default="1024x2048", help="HxW of the generated photo")
    p.add_argument("--resolution", default="256x512", help="processing resolution chosen in the app")
    p.add_argument("--model", help="model folder or repo id (default: the app's default, weights/); full-width: "
                                   "the full-width 3-task network, random weights, every precision allowed")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--compile", choices=("auto", "off"), default="auto",
                   help="the app's --compile (auto, its default: timing starts after its warm-up is over)")
    p.add_argument("--parts-only", action="store_true", help="skip the server: time the pieces in this process only")
    args = p.parse_args()
    if args.model == "full-width":
        args.model = full_width_model(args.resolution)

    photo = upload_copy(Path(args.photo)) if args.photo else None
    if photo is None:
        from PIL import Image

        from mtan.data.synthetic import render_frame

        h, w = (int(v) for v in args.photo_size.split("x"))
        photo = Path(f"/tmp/mtan_app_latency_{h}x{w}.jpg")
        if not photo.exists():
            Image.fromarray(render_frame(0, 3, h, w)["image"]).save(photo, quality=92)

    if args.parts_only:
        os.environ["MTAN_COMPILE"] = args.compile
        print(json.dumps({"photo": str(photo), "resolution": args.resolution, "model": args.model or "weights/ (default)",
                          "parts": parts(photo, args.resolution, args.model, args.calls),
                          "load_average": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count()}))
        return
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port)] + (["--model", args.model] if args.model else [])
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "MTAN_COMPILE": args.compile}
    os.environ["MTAN_COMPILE"] = args.compile  # for the pieces timed in this process too
    log = Path(f"/tmp/mtan_app_latency_{port}.log")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the app exited with code {proc.returncode} before serving")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - t0
        while args.compile == "auto" and "compile warm-up done" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise SystemExit(f"the app exited with code {proc.returncode} during its compile warm-up")
            time.sleep(1)
        warmed = time.perf_counter() - t0
        compile_line = next((line for line in log.read_text(errors="replace").splitlines()
                             if "compile warm-up done" in line), "")
        calls = timed_calls(url, photo, args.resolution, args.calls)
        wire = wire_calls(url, photo, args.resolution, args.calls, proc.pid)
        wire_predict = wire_calls(url, photo, args.resolution, args.calls, proc.pid, "predict", images=(0, 1, 2))
    finally:
        proc.terminate()
        proc.wait()
    measured = parts(photo, args.resolution, args.model, args.calls)
    plain = measured["plain_forward_s"]
    print(json.dumps({
        "photo": str(photo), "resolution": args.resolution, "model": args.model or "weights/ (default)",
        "ready_page_s": round(ready, 2), "compile_warmed_up_s": round(warmed, 1) if args.compile == "auto" else None,
        "compile": compile_line.split("compile warm-up done; ", 1)[-1] or args.compile, **calls, "calls": args.calls,
        "wire": wire,
        "wire_predict": wire_predict,
        "parts": measured,
        # how many times faster than a plain eager fp32 forward of the same weights (above 1: faster)
        "speedup_vs_plain_forward": {"page_first_results": round(plain / calls["page_first_results_median_s"], 2),
                                     "predict_answer": round(plain / calls["predict_answer_median_s"], 2),
                                     "wire_first_results": round(plain / wire["total_s"], 2),
                                     "wire_predict_answer": round(plain / wire_predict["total_s"], 2)},
        "load_average": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
