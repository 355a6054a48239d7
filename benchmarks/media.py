"""Video, live webcam and 3D speed with the default model (or --model), on this machine.

- ``video``: a street clip (made here: the camera panning across an example photo, --clip-size at
  --fps for --seconds, H.264, as the tests make them) run as ``/predict_video`` runs it, at each processing resolution:
  frames per second of the whole job (decoding, the network, drawing, encoding) and of the network.
- ``live``: the live webcam's work per frame in this process (a 640x480 JPEG decoded, run at
  128x256, drawn): frames per second. The page asks for at most 5 frames a second.
- ``live_browser`` (with ``--browser``): the same through the page, end to end: the app started,
  headless Chromium's fake camera playing a street clip at 640x480, the rate the page shows
  (frames answered per second over the last ten), read every 5 s for 30 s. The browser runs on
  the same cores as the server here; on a Space it runs on the visitor's machine.
- ``scene3d``: a 2-megapixel photo (--photo-size) through the network at 256x512, then the 3D
  scene built and written as GLB and PLY: seconds of each part.

Prints one JSON object.

    python benchmarks/media.py
    python benchmarks/media.py --clip-size 1920x1080 --fps 30 --seconds 5
    python benchmarks/media.py --browser       # also the live webcam through the page (needs chromium)
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import REPO, emit, log, machine  # noqa: E402 (adds the checkout to sys.path)

sys.path.insert(0, str(REPO / "tests"))
from mediahelpers import write_pan  # noqa: E402 (the clips the tests make)

from mtan.inference import Resolution  # noqa: E402
from mtan.serve import ModelRegistry, load_image, predict_photo  # noqa: E402
from mtan.serve.scene3d import build_scene, write_glb, write_ply  # noqa: E402
from mtan.serve.video import LiveSession, process_clip  # noqa: E402


def live_in_browser(model: str, tmp: Path, seconds: float = 30.0) -> dict:
    """The rate the Live webcam tab shows, with Chromium's fake camera (see the module docstring)."""
    import re

    from apphelpers import running_app
    from selenium.webdriver.common.by import By
    from test_browser import DESKTOP, have_browser, new_driver
    from test_browser_media import camera_feed, open_tab

    if have_browser():
        return {"skipped": have_browser()}
    camera = camera_feed(tmp / "camera.y4m", REPO / "examples" / "street_02.jpg", (480, 640))
    rates, network = [], []
    # torch.compile off: its start-up warm-up would take both cores for minutes
    with running_app({"MTAN_MODEL": model, "MTAN_MODELS": "", "MTAN_THREADS": "", "MTAN_COMPILE": "off"},
                     tmp / "app.log") as url, \
            tempfile.TemporaryDirectory() as profile:
        driver = new_driver(profile, DESKTOP, camera=camera)
        try:
            driver.get(url)
            time.sleep(5)
            open_tab(driver, "Live webcam")
            driver.find_element(By.CSS_SELECTOR, "#live-input div[title='grant webcam access'] button").click()
            time.sleep(2)
            driver.find_element(By.CSS_SELECTOR, "#live-input button[aria-label='capture photo']").click()
            time.sleep(5)
            for _ in range(int(seconds // 5)):
                time.sleep(5)
                text = driver.find_element(By.CSS_SELECTOR, "#live-rate").text
                m = re.search(r"([\d.]+) frames/s · network (\d+) ms", text)
                if m:
                    rates.append(float(m.group(1)))
                    network.append(int(m.group(2)))
        finally:
            driver.quit()
    return {"camera": "640x480, 10 frames/s", "page_asks_every_s": 0.2, "readings": rates,
            "frames_per_second": statistics.median(rates) if rates else None,
            "network_ms": statistics.median(network) if network else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--photo", default=str(REPO / "examples" / "street_01.jpg"))
    ap.add_argument("--clip-size", default="1280x720", help="the clip's frames, WIDTHxHEIGHT")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--resolutions", default="128x256,256x512")
    ap.add_argument("--photo-size", default="1732x1155", help="the 3D photo, WIDTHxHEIGHT (2 megapixels)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--browser", action="store_true", help="also the live webcam through the page, in Chromium")
    a = ap.parse_args(argv)

    loaded = ModelRegistry([a.model]).get()
    loaded.runner  # the app's inference copy, its precision chosen as the app chooses it
    photo = Image.open(a.photo).convert("RGB")
    cw, ch = (int(v) for v in a.clip_size.split("x"))
    result = {"machine": machine(next(loaded.model.parameters()).device),
              "model": a.model, "runs": loaded.running, "video": {}, "live": {}, "scene3d": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_pan(Path(tmp) / "clip.mp4", photo, (ch, cw), a.fps, round(a.fps * a.seconds))
        for res in a.resolutions.split(","):
            box = Resolution.parse(res)
            process_clip(loaded, clip, Path(tmp) / "warm.mp4", box)  # warm-up: oneDNN primitives for this size
            runs = [process_clip(loaded, clip, Path(tmp) / "out.mp4", box, smoothing=0.5) for _ in range(a.repeats)]
            best = min(runs, key=lambda r: r.seconds)
            result["video"][res] = {"clip": f"{cw}x{ch}, {a.fps} frames/s, {best.frames} frames",
                                    "network_input": "x".join(map(str, best.processing_size)),
                                    "frames_per_second": round(best.frames_per_second, 2),
                                    "network_frames_per_second": round(best.frames / best.seconds_network, 2),
                                    "seconds": round(best.seconds, 2)}
            log(res, result["video"][res])

        frame = io.BytesIO()
        photo.resize((640, 480)).save(frame, "JPEG", quality=85)
        live = LiveSession(loaded, (128, 256))
        times = []
        for _ in range(20):
            start = time.perf_counter()
            picture, _ = load_image(frame.getvalue())
            live(np.asarray(picture))
            times.append(time.perf_counter() - start)
        result["live"] = {"frame": "640x480 JPEG", "network_input": "x".join(map(str, Resolution(128, 256).fit(480, 640))),
                          "seconds_per_frame": round(statistics.median(times[5:]), 4),
                          "frames_per_second": round(1 / statistics.median(times[5:]), 2)}
        log("live", result["live"])
        if a.browser:
            result["live_browser"] = live_in_browser(a.model, Path(tmp))
            log("live in the browser", result["live_browser"])

        pw, ph = (int(v) for v in a.photo_size.split("x"))
        big = photo.resize((pw, ph), Image.Resampling.BICUBIC)
        parts = {"network_s": [], "build_s": [], "write_s": []}
        for _ in range(a.repeats + 1):
            start = time.perf_counter()
            pred = predict_photo(loaded, big, (256, 512))
            built = time.perf_counter()
            scene = build_scene(pred)
            done = time.perf_counter()
            if len(scene.points):  # (an untrained model may put nothing within the distance limit)
                write_glb(scene, Path(tmp) / "s.glb")
                write_ply(scene, Path(tmp) / "s.ply")
            parts["network_s"].append(built - start)
            parts["build_s"].append(done - built)
            parts["write_s"].append(time.perf_counter() - done)
        result["scene3d"] = {"photo": f"{pw}x{ph} ({pw * ph / 1e6:.1f} MP)",
                             "points": len(scene.points), "triangles": len(scene.faces),
                             "glb_mb": round((Path(tmp) / "s.glb").stat().st_size / 1e6, 1) if len(scene.points) else 0,
                             **{k: round(statistics.median(v[1:]), 3) for k, v in parts.items()}}
        result["scene3d"]["total_s"] = round(sum(result["scene3d"][k] for k in parts), 3)
        log("3d", result["scene3d"])
    emit(result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
