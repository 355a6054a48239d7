"""Time from `python app.py` to a ready page, the end-to-end latency of the `predict` API, and
where a round trip's time goes.

Starts the real app on a free port with the default model (or --model), waits for the page,
then calls `/predict` with gradio_client (one warm-up call, then --calls timed calls). Then, in
this process, the same work piece by piece (``parts``, medians over --calls): decoding the
upload, the network (the app's inference copy, its precision as the app chose it), bringing the
outputs to the photo's size, drawing the views, encoding them, writing the downloads and the
attention gallery; and, for reference, a plain eager fp32 forward of the same weights at the
same input size (``plain_forward_s``). Prints one JSON object.

    python benchmarks/app_latency.py                       # a generated 1024x2048 street photo, 256x512
    python benchmarks/app_latency.py --photo examples/street_01.jpg --resolution 512x1024
    python benchmarks/app_latency.py --parts-only --calls 3   # no server: the pieces only
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


def parts(photo: Path, resolution: str, model: str | None, calls: int) -> dict:
    """Median seconds of each piece of a round trip, run in this process as the app runs them."""
    if model:
        os.environ["MTAN_MODEL"] = model
    import torch

    import app
    from mtan import serving
    from mtan import visualize as viz
    from mtan.model import padded_forward

    loaded = app.REGISTRY.get()
    data = photo.read_bytes()
    box = serving.parse_resolution(resolution)
    times: dict[str, list[float]] = {}

    def timed(name, run):
        t = time.perf_counter()
        value = run()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return value

    for call in range(calls + 1):  # the first is a warm-up
        if call == 1:
            times.clear()
        image, _ = timed("decode", lambda: serving.load_image(data, app.ARGS.max_pixels, app.ARGS.max_image_pixels))
        pred = timed("network_and_resize", lambda: serving.predict_photo(loaded, image, box))
        times.setdefault("network", []).append(pred.seconds_network)
        views = timed("views", lambda: (app.show_main(pred, 0.55, viz.DEFAULT_COLORMAP, "segmentation"),
                                        app.show_attention(pred, pred.tasks[0].name, "encoder", 0, -1)))
        (seg, depth, bar, pair, normals), (att, diff, caption) = views
        timed("encode_views", lambda: app.as_files(pred.stem, segmentation=seg, depth=depth, attention=att,
                                                   normals=normals, photo=pair[0], compare=pair[1], difference=diff))
        timed("downloads", lambda: viz.write_downloads(pred, app.new_out_dir(), loaded.source, masks=False))
        timed("attention_gallery", lambda: app.show_all_masks(pred))
    h, w = pred.processing_size
    x = torch.rand(1, 3, h, w)
    plain = loaded.model.eval()
    with torch.inference_mode():
        padded_forward(plain, x)
        for _ in range(calls):
            timed("plain_forward", lambda: padded_forward(plain, x))
    result = {f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()}
    result["round_trip_in_process_s"] = round(sum(result[f"{k}_s"] for k in (
        "decode", "network_and_resize", "views", "encode_views", "downloads")), 4)
    result["precision"] = loaded.running
    result["network_input"] = f"{h}x{w}"
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", help="photo to send (default: a generated street scene of --photo-size)")
    p.add_argument("--photo-size", default="1024x2048", help="HxW of the generated photo")
    p.add_argument("--resolution", default="256x512", help="processing resolution chosen in the app")
    p.add_argument("--model", help="model folder or repo id (default: the app's default, weights/)")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--parts-only", action="store_true", help="skip the server: time the pieces in this process only")
    args = p.parse_args()

    photo = Path(args.photo) if args.photo else None
    if photo is None:
        from PIL import Image

        from mtan.data.synthetic import render_frame

        h, w = (int(v) for v in args.photo_size.split("x"))
        photo = Path(f"/tmp/mtan_app_latency_{h}x{w}.jpg")
        if not photo.exists():
            Image.fromarray(render_frame(0, 3, h, w)["image"]).save(photo, quality=92)

    if args.parts_only:
        print(json.dumps({"photo": str(photo), "resolution": args.resolution, "model": args.model or "weights/ (default)",
                          "parts": parts(photo, args.resolution, args.model, args.calls),
                          "load_average": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count()}))
        return
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port)] + (["--model", args.model] if args.model else [])
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
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
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        client.predict(handle_file(str(photo)), resolution=args.resolution, api_name="/predict")  # warm-up
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            client.predict(handle_file(str(photo)), resolution=args.resolution, api_name="/predict")
            times.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps({
        "photo": str(photo), "resolution": args.resolution, "model": args.model or "weights/ (default)",
        "ready_page_s": round(ready, 2), "predict_median_s": round(statistics.median(times), 3),
        "predict_min_s": round(min(times), 3), "predict_max_s": round(max(times), 3), "calls": len(times),
        "parts": parts(photo, args.resolution, args.model, args.calls),
        "load_average": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
