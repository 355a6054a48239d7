"""A crowd of visitors: N concurrent gradio_client clients, M /predict requests each, against the
app; prints ONE JSON object (progress on stderr).

    python benchmarks/load_test.py                              # starts `python app.py` (weights/), 20 x 5
    python benchmarks/load_test.py --clients 4 --requests 2 --model path/to/model --resolution 128x256
    python benchmarks/load_test.py --url http://127.0.0.1:7860/ [--pid PID]   # an app already running
    python benchmarks/load_test.py --clients 20 --requests 4 --mixed --webcam-streams 4   # photos, clips, 3D, webcams

Each client is one thread with its own gradio_client.Client (its own session, as one browser tab
is) and sends its requests one after another, downloading every returned file as a browser
would. By default every request uploads a different file (the example photo with a few unique
bytes after its end), so the app's example cache never answers and every request runs the
network; ``--same-file`` sends the example itself (cached after the first request).

Reported: completed requests, failures (counted by reason), latency p50 / p95 / max (submit to
result, queue wait included), the largest queue position a client was told, throughput, the
server's resident memory (``VmRSS`` from /proc sampled every 0.2 s, and the kernel's peak
``VmHWM``), the disk its download folders and gradio cache took, the load average, and the
app's limits (from the line ``mtan app limits: {...}`` it prints at start).

``--mixed``: each client's requests take turns between a photo (``/predict``), a 2-second clip
(``/predict_video`` at 128x256) and the scene in 3D (``/predict_3d``); latencies are reported per
kind too. ``--webcam-streams N``: N live webcam streams (the raw protocol, one session each) send
a frame every 0.2 s for the whole run, as N browsers would; their answered frames are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid: int | None, field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) of a process in kB, from /proc; None where unavailable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` seconds; keeps the peak and the last value."""

    def __init__(self, pid: int | None, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb = self.last_kb = self.first_kb = proc_kb(pid, "VmRSS")
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.interval):
            kb = proc_kb(self.pid, "VmRSS")
            if kb is None:
                continue
            self.samples += 1
            self.last_kb = kb
            self.peak_kb = max(self.peak_kb or 0, kb)

    def stop(self):
        self._halt.set()
        self.join(2)


def folder_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return round(total / 2**20, 1)


def start_app(args, workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    """``python app.py --port P`` with its temporary files (downloads, gradio's cache) in ``workdir``."""
    port = args.port or free_port()
    log_path = workdir / "app.log"
    tmp = workdir / "tmp"
    tmp.mkdir()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
                        "MTAN_LOG_LIMITS": "json"}
    cmd = [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    cmd += args.app_arg or []
    log("starting:", " ".join(cmd))
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + args.start_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url, log_path
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"app.py did not answer within {args.start_timeout} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def app_limits(log_path: Path | None) -> dict | None:
    if log_path is None:
        return None
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("mtan app limits: "):
            return json.loads(line[len("mtan app limits: "):])
    return None


def unique_copies(photo: Path, count: int, folder: Path) -> list[Path]:
    """``count`` files that decode like ``photo`` but differ in a few bytes after its end."""
    data = photo.read_bytes()
    paths = []
    for i in range(count):
        p = folder / f"{photo.stem}_{i:04d}{photo.suffix}"
        p.write_bytes(data + f"load-test-{i:06d}".encode())
        paths.append(p)
    return paths


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


KINDS = ("photo", "clip", "3d")


def write_clip(path: Path, seconds: float = 2.0, fps: int = 10) -> Path:
    """A short 320x240 H.264 clip of the example photo panning (PyAV)."""
    import av
    import numpy as np
    from PIL import Image

    photo = Image.open(REPO / "examples" / "street_01.jpg").convert("RGB").resize((480, 240))
    a = np.asarray(photo)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(int(seconds * fps)):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(a[:, i * 4: i * 4 + 320]), format="rgb24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


class WebcamStream(threading.Thread):
    """One live webcam stream in gradio's raw protocol: joins with a frame, then sends a frame
    every ``interval`` seconds until stopped; counts the frames answered."""

    def __init__(self, url: str, frame_url: str, interval: float = 0.2):
        super().__init__(daemon=True)
        import uuid

        self.url, self.frame_url, self.interval = url, frame_url, interval
        self.session = uuid.uuid4().hex[:11]
        self.answered = 0
        self.streams = 0
        self.error: str | None = None
        self.stopped = threading.Event()

    def body(self, fn_index: int, data: list) -> bytes:
        return json.dumps({"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
                           "session_hash": self.session}).encode()

    def post(self, path: str, body: bytes) -> dict:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def run(self):
        try:
            config = json.loads(urllib.request.urlopen(self.url + "config", timeout=30).read())
            fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "live_frame")
            comps = {c["id"]: c for c in config["components"]}
            frame = {"path": None, "url": self.frame_url, "orig_name": "webcam.jpg", "meta": {"_type": "gradio.FileData"}}
            data = [frame if comps[c]["type"] == "image" else comps[c].get("props", {}).get("value")
                    for c in config["dependencies"][fn_index]["inputs"]]
            while not self.stopped.is_set():  # a stream that ended (its time limit) is started again, as Record does
                event_id = self.post("gradio_api/queue/join", self.body(fn_index, data))["event_id"]
                self.streams += 1
                listener = threading.Thread(target=self.listen, args=(event_id,), daemon=True)
                listener.start()
                while not self.stopped.wait(self.interval) and listener.is_alive():
                    try:
                        self.post(f"gradio_api/stream/{event_id}", self.body(fn_index, data))
                    except urllib.error.HTTPError as e:
                        if e.code != 404:  # 404: the stream has just ended
                            raise
                if self.stopped.is_set():
                    try:
                        self.post(f"gradio_api/stream/{event_id}/close", b"{}")
                    except urllib.error.HTTPError:
                        pass
        except Exception as e:  # noqa: BLE001 (reported, not raised: the crowd goes on)
            self.error = f"{type(e).__name__}: {str(e)[:200]}"

    def listen(self, event_id: str):
        with urllib.request.urlopen(self.url + f"gradio_api/queue/data?session_hash={self.session}", timeout=900) as s:
            for line in s:
                line = line.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") == event_id and msg.get("msg") == "process_streaming":
                    self.answered += 1
                if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
                    return


def submit(client, kind: str, photo: Path, clip: Path | None, args):
    from gradio_client import handle_file

    if kind == "clip":
        return client.submit(handle_file(str(clip)), None, "128x256", "photo | segmentation | depth", 0.0,
                             api_name="/predict_video")
    if kind == "3d":
        return client.submit(handle_file(str(photo)), None, args.resolution, api_name="/predict_3d")
    return client.submit(handle_file(str(photo)), resolution=args.resolution, api_name="/predict")


def client_worker(index: int, url: str, photos: list[Path], args, results: list, downloads: Path,
                  start_gate: threading.Barrier, clip: Path | None = None):
    from gradio_client import Client

    try:
        client = Client(url, verbose=False, download_files=str(downloads / f"client{index:02d}"))
    except Exception as e:  # the client could not even connect: every request of it fails
        try:
            start_gate.wait(timeout=args.start_timeout)
        except threading.BrokenBarrierError:
            pass
        for r in range(args.requests):
            results.append({"client": index, "request": r, "ok": False, "seconds": None,
                            "error": f"connect: {type(e).__name__}: {e}"})
        return
    try:
        start_gate.wait(timeout=args.start_timeout)  # all clients connected: start the crowd together
    except threading.BrokenBarrierError:
        pass
    for r in range(args.requests):
        photo = photos[(index * args.requests + r) % len(photos)]
        kind = KINDS[(index + r) % len(KINDS)] if args.mixed else "photo"
        start = time.perf_counter()
        max_rank = None
        try:
            job = submit(client, kind, photo, clip, args)
            while not job.done():
                status = job.status()
                rank = getattr(status, "rank", None)
                if isinstance(rank, int):
                    max_rank = rank if max_rank is None else max(max_rank, rank)
                time.sleep(0.25)
            out = job.result(timeout=args.request_timeout)
            ok = isinstance(out, (list, tuple)) and len(out) >= (12 if kind == "photo" else 2) and out[0] is not None
            error = None if ok else f"unexpected result: {str(out)[:200]}"
        except Exception as e:
            ok, error = False, f"{type(e).__name__}: {str(e)[:300]}"
        results.append({"client": index, "request": r, "kind": kind, "ok": ok, "seconds": time.perf_counter() - start,
                        "max_queue_rank": max_rank, "error": error})
        log(f"client {index:2d} request {r} ({kind}): {'ok' if ok else 'FAILED ' + str(error)} "
            f"{time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an app already running (default: start python app.py here)")
    p.add_argument("--pid", type=int, help="with --url: the app's process id, for its memory figures")
    p.add_argument("--model", help="with no --url: the app's --model (default: its own default, weights/)")
    p.add_argument("--app-arg", action="append", help="with no --url: one more argument for app.py (repeatable)")
    p.add_argument("--port", type=int, help="with no --url: the port (default: a free one)")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=5, help="requests per client, one after another")
    p.add_argument("--resolution", default="256x512")
    p.add_argument("--photo", default=str(REPO / "examples" / "street_01.jpg"))
    p.add_argument("--same-file", action="store_true", help="upload the photo itself (the example cache answers)")
    p.add_argument("--mixed", action="store_true", help="photos, clips and 3D in turns (see above)")
    p.add_argument("--webcam-streams", type=int, default=0, help="live webcam streams running all along")
    p.add_argument("--request-timeout", type=float, default=1800.0)
    p.add_argument("--start-timeout", type=float, default=180.0)
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="mtan-load-"))
    proc = None
    log_path = None
    try:
        if args.url:
            url, pid = args.url.rstrip("/") + "/", args.pid
        else:
            proc, url, log_path = start_app(args, workdir)
            pid = proc.pid
        photo = Path(args.photo)
        total = args.clients * args.requests
        uploads = workdir / "uploads"
        uploads.mkdir()
        photos = [photo] if args.same_file else unique_copies(photo, total, uploads)
        downloads = workdir / "downloads"
        clip = write_clip(workdir / "clip.mp4") if args.mixed else None
        load_before = [round(v, 2) for v in os.getloadavg()]
        sampler = RssSampler(pid)
        sampler.start()
        results: list[dict] = []
        import base64

        frame_url = "data:image/jpeg;base64," + base64.b64encode(Path(args.photo).read_bytes()).decode()
        streams = [WebcamStream(url, frame_url) for _ in range(args.webcam_streams)]
        for stream in streams:
            stream.start()
        gate = threading.Barrier(args.clients)
        threads = [threading.Thread(target=client_worker, args=(i, url, photos, args, results, downloads, gate, clip),
                                    daemon=True) for i in range(args.clients)]
        log(f"{args.clients} clients x {args.requests} requests at {args.resolution} on {url}")
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        for stream in streams:
            stream.stopped.set()
        for stream in streams:
            stream.join(30)
        sampler.stop()
        load_after = [round(v, 2) for v in os.getloadavg()]
        alive = proc.poll() is None if proc else None
        ok = [r for r in results if r["ok"]]
        failed = [r for r in results if not r["ok"]]
        latencies = [r["seconds"] for r in ok]
        ranks = [r["max_queue_rank"] for r in results if r.get("max_queue_rank") is not None]
        mb = (lambda kb: round(kb / 1024, 1) if kb is not None else None)
        report = {
            "benchmark": "load_test",
            "url": url if args.url else None,
            "app_command": None if args.url else "python app.py" + (f" --model {args.model}" if args.model else "")
            + "".join(f" {a}" for a in args.app_arg or []),
            "clients": args.clients, "requests_per_client": args.requests, "resolution": args.resolution,
            "photo": str(photo.relative_to(REPO)) if photo.is_relative_to(REPO) else str(photo),
            "unique_uploads": not args.same_file,
            "requests": total, "completed": len(ok), "failures": len(failed),
            "failure_reasons": dict(Counter(r["error"] for r in failed)),
            "latency_s": {"p50": round(percentile(latencies, 50), 2) if latencies else None,
                          "p95": round(percentile(latencies, 95), 2) if latencies else None,
                          "max": round(max(latencies), 2) if latencies else None,
                          "mean": round(statistics.fmean(latencies), 2) if latencies else None},
            "latency_by_kind_s": {k: {"completed": len(v), "p50": round(percentile(v, 50), 2), "max": round(max(v), 2)}
                                  for k in KINDS if (v := [r["seconds"] for r in ok if r["kind"] == k])},
            "webcam_streams": [{"frames_answered": s.answered, "streams_started": s.streams, "error": s.error}
                               for s in streams],
            "max_queue_position": max(ranks) + 1 if ranks else None,  # gradio's rank counts from 0
            "wall_s": round(wall, 1),
            "throughput_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
            "server_rss_mb": {"start": mb(sampler.first_kb), "peak_sampled": mb(sampler.peak_kb),
                              "end": mb(sampler.last_kb), "peak_vmhwm": mb(proc_kb(pid, "VmHWM")),
                              "samples": sampler.samples},
            "server_alive": alive,
            "server_disk_mb": None if args.url else folder_mb(workdir / "tmp"),
            "queue": app_limits(log_path),
            "load_average_before": load_before, "load_average_after": load_after,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(),
        }
        print(json.dumps(report), flush=True)
        return 0 if not failed and alive is not False else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
