"""Scoring with glibc's malloc as the scoring commands set it (``mtan.malloc.tune_malloc``) against
glibc's own defaults: the same ``python -m mtan.evaluate`` command run both ways, in turns.

    python benchmarks/scoring_memory.py                      # the default model's card command: CamVid val at 360x480
    python benchmarks/scoring_memory.py --repeats 3 -- --model weights --data camvid --data-option splits=all \\
        --app-resolution 256x512 --flip                     # any evaluate command after --
    python benchmarks/scoring_memory.py --tiny               # a width-1/16 model on 4 generated frames (the tests)

Each run is a fresh process (malloc is set once per process): its wall time and its page faults
(minor faults, from the OS's accounting of the finished child). The defaults are kept by setting
glibc's own environment variables (``MALLOC_MMAP_MAX_=65536``, ``MALLOC_TRIM_THRESHOLD_=131072``),
which ``tune_malloc`` leaves alone. Prints one JSON object: each mode's median seconds and
faults, the speed-up, and whether both modes printed the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, load_average, log

from mtan.timing import cpu_name

DEFAULT_COMMAND = ["--model", "weights", "--data", "camvid", "--data-option", "splits=all"]
GLIBC_DEFAULTS = {"MALLOC_MMAP_MAX_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_once(command: list[str], mode: str, out: Path, threads: int | None) -> tuple[float, int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if mode == "glibc":
        env.update(GLIBC_DEFAULTS)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mtan.evaluate", *command, "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"scoring_memory: the evaluate command failed ({mode}):\n{proc.stderr[-2000:]}")
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    return seconds, faults, json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode (in turns; the median is printed)")
    p.add_argument("--tiny", action="store_true", help="a width-1/16 model on 4 generated frames (for the tests)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's own)")
    p.add_argument("command", nargs="*", help="the evaluate command's arguments, after -- (default: the card's "
                                              "CamVid command on the default model)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        command = args.command or DEFAULT_COMMAND
        if args.tiny:
            from mtan import MTAN, preset_tasks

            MTAN(preset_tasks("cityscapes-7"), width=1 / 16).save_pretrained(tmp / "tiny")
            command = ["--model", str(tmp / "tiny"), "--data", "synthetic", "--frames", "4", "--size", "64x128",
                       "--batch-size", "2"]
        runs: dict[str, list] = {"tuned": [], "glibc": []}
        for r in range(args.repeats):
            for mode in runs:
                log(f"run {r + 1}/{args.repeats}, {mode} ...")
                runs[mode].append(run_once(command, mode, tmp / f"{mode}{r}.json", args.threads))
    result = {"benchmark": "scoring_memory", "tiny": args.tiny, "device": "cpu", "cpu": cpu_name(),
              "cores": os.cpu_count(), "threads": args.threads, "load_average": load_average(),
              "torch": __import__("torch").__version__, "command": "python -m mtan.evaluate " + " ".join(command)}
    for mode, found in runs.items():
        result[mode] = {"seconds": round(statistics.median(s for s, _, _ in found), 2),
                        "page_faults": int(statistics.median(f for _, f, _ in found))}
    result["speedup"] = round(result["glibc"]["seconds"] / result["tuned"]["seconds"], 2)
    figures = [figs for found in runs.values() for _, _, figs in found]
    result["same_figures"] = all(f == figures[0] for f in figures)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
