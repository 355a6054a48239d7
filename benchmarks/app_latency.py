"""Time from `python app.py` to a ready page, and the end-to-end latency of the `predict` API.

Starts the real app on a free port with the default model (or --model), waits for the page,
then calls `/predict` with gradio_client (one warm-up call, then --calls timed calls) and
prints one JSON object.

    python benchmarks/app_latency.py                       # a generated 1024x2048 street photo, 256x512
    python benchmarks/app_latency.py --photo my.jpg --resolution 512x1024
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", help="photo to send (default: a generated street scene of --photo-size)")
    p.add_argument("--photo-size", default="1024x2048", help="HxW of the generated photo")
    p.add_argument("--resolution", default="256x512", help="processing resolution chosen in the app")
    p.add_argument("--model", help="model folder or repo id (default: the app's default, weights/)")
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args()

    photo = Path(args.photo) if args.photo else None
    if photo is None:
        from PIL import Image

        from mtan.data.synthetic import render_frame

        h, w = (int(v) for v in args.photo_size.split("x"))
        photo = Path(f"/tmp/mtan_app_latency_{h}x{w}.jpg")
        if not photo.exists():
            Image.fromarray(render_frame(0, 3, h, w)["image"]).save(photo, quality=92)

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
        "load_average": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
