"""Helpers for the tests that run the real app (`python app.py` on a free port, driven with
gradio_client): tiny models in a temporary folder, the app as a context manager, a test photo.

Used by test_app.py, test_uploads.py, test_load.py and (through test_app) test_browser.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mtan import MTAN, preset_tasks

REPO = Path(__file__).resolve().parents[1]

# The /predict outputs, in order (the last output, the gr.State, is not part of the API).
OUTPUT_NAMES = ["segmentation", "depth", "attention", "files", "legend", "colorbar", "normals", "slider",
                "difference", "caption", "download_notes", "summary"]

# Environment for an app under test: offline, CPU, one torch thread (the machine has two cores).
TEST_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "MTAN_DEVICE": "cpu",
            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1", "MTAN_THREADS": "1"}


def make_models(folder: Path) -> dict[str, str]:
    """A 2-task CityScapes model and a 3-task NYUv2 model (with normals), 1/16 width."""
    torch.manual_seed(0)
    city, nyu = folder / "city", folder / "nyu"
    MTAN(preset_tasks("cityscapes-7"), width=1 / 16).save_pretrained(
        city, model_card_kwargs={"notes": "A tiny test model.", "training_command": "python train.py --test"})
    MTAN(preset_tasks("nyuv2"), width=1 / 16).save_pretrained(nyu)
    # As mtan.release measures them: the app offers 128x256 and 256x512 (within 0.03 of the best), not 512x1024,
    # and starts with the mirror average on (it gains 0.01 at the best).
    (nyu / "resolutions.json").write_text(json.dumps({"dataset": "a test set", "metric": "semantic.miou",
                                                      "scores": {"128x256": 0.40, "256x512": 0.42, "512x1024": 0.30},
                                                      "mirror": {"256x512": 0.43}}))
    # As mtan.precision records them: bf16 convolutions keep the quality, all-bf16 does not.
    metrics = {"a test set": {"semantic.miou": 0.42}}
    (nyu / "precisions.json").write_text(json.dumps({"reference": "fp32", "evaluations": ["a test set"], "precisions": {
        "fp32": {"kept": True, "reasons": [], "metrics": metrics},
        "bf16": {"kept": False, "reasons": ["a test set: semantic.miou 0.4100 against 0.4200 in fp32"], "metrics": metrics},
        "bf16-convs": {"kept": True, "reasons": [], "metrics": metrics}}}))
    return {"city": str(city), "nyu": str(nyu)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until ``url`` answers 200; raise with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"app.py did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def app_process(env: dict[str, str], log: Path, timeout: float = 120.0, args: tuple[str, ...] = ()):
    """Start ``python app.py --port P`` with ``env`` added; yield (url, process) once the page answers."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                 *args], cwd=REPO, env=os.environ | TEST_ENV | env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, proc, log, timeout)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_app(env: dict[str, str], log: Path, timeout: float = 120.0, args: tuple[str, ...] = ()):
    """Start ``python app.py --port P`` with ``env`` added; yield its URL once the page answers."""
    with app_process(env, log, timeout, args) as (url, _):
        yield url


def page_config(url: str) -> str:
    with urllib.request.urlopen(url + "config", timeout=10) as r:
        return r.read().decode()


def street_image(height: int = 200, width: int = 320) -> Image.Image:
    """A crude street: sky, buildings, road with lane marks, a 'car'. Deterministic (at least 24 x 6)."""
    rng = np.random.default_rng(0)
    a = np.zeros((height, width, 3), np.uint8)
    a[: height // 2] = (135, 180, 230)
    for x0 in range(0, width, width // 6):
        top = int(rng.integers(height // 8, height // 3))
        a[top: height // 2 + 10, x0: x0 + width // 7] = rng.integers(60, 200, 3)
    a[height // 2:] = (90, 90, 95)
    a[int(height * .75): int(height * .78), width // 2 - 4: width // 2 + 4] = 240
    a[int(height * .55): int(height * .8), int(width * .6): int(width * .85)] = (200, 30, 40)
    return Image.fromarray(a)


def write_photo(kind: str, folder: Path) -> tuple[Path, tuple[int, int]]:
    """Write a test photo of ``kind``; return its path and the (width, height) outputs must have."""
    im = street_image(200, 320)
    if kind == "jpeg":
        p = folder / "photo.jpg"
        im.save(p, quality=90)
    elif kind == "rgba_png":
        a = np.dstack([np.asarray(im), np.full((200, 320), 128, np.uint8)])
        a[:50, :, 3] = 0  # a transparent band: composited on white
        p = folder / "rgba.png"
        Image.fromarray(a, "RGBA").save(p)
    elif kind == "grayscale":
        p = folder / "grey.png"
        im.convert("L").save(p)
    elif kind == "png16":
        g = (np.asarray(im.convert("L"), np.uint16) * 257)
        p = folder / "deep.png"
        Image.fromarray(g).save(p)
        with Image.open(p) as check:
            assert check.mode.startswith("I"), check.mode
    elif kind == "exif_rotated":  # stored 320 wide, 200 high; orientation 6 = shown rotated 90 degrees
        exif = Image.Exif()
        exif[0x0112] = 6
        p = folder / "rotated.jpg"
        im.save(p, exif=exif, quality=90)
        return p, (200, 320)
    elif kind == "palette":
        p = folder / "palette.png"
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(p, transparency=0)
    elif kind == "webp":
        p = folder / "photo.webp"
        im.save(p)
    elif kind == "bmp":
        p = folder / "photo.bmp"
        im.save(p)
    elif kind == "tiff":
        p = folder / "photo.tiff"
        im.save(p)
    elif kind == "cmyk_jpeg":
        p = folder / "cmyk.jpg"
        im.convert("CMYK").save(p)
    else:
        raise ValueError(kind)
    return p, (320, 200)


def predict(client, path, **kwargs) -> dict:
    """One /predict call; the outputs by name (see ``OUTPUT_NAMES``)."""
    from gradio_client import handle_file

    out = client.predict(handle_file(str(path)), api_name="/predict", **kwargs)
    return dict(zip(OUTPUT_NAMES, out))


def proc_status_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a running process, in kB, from /proc (Linux): VmRSS (now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def size_of(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size
