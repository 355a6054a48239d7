"""Delta_m against single-task baselines, as ``python -m mtan.evaluate --baseline`` reports it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtan import MTAN, preset_tasks

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_reports_delta_m_against_single_task_models(tmp_path):
    torch.manual_seed(0)
    tasks = preset_tasks("cityscapes-7")
    MTAN(tasks, width=1 / 16).save_pretrained(tmp_path / "multi")
    MTAN(tasks[:1], arch="single", width=1 / 16).save_pretrained(tmp_path / "semantic")
    MTAN(tasks[1:], arch="single", width=1 / 16).save_pretrained(tmp_path / "depth")
    command = [sys.executable, "-m", "mtan.evaluate", "--data", "synthetic", "--frames", "4", "--size", "64x128",
               "--device", "cpu"]

    def run(*args):
        proc = subprocess.run(command + list(args), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    multi = run("--model", str(tmp_path / "multi"))
    semantic, depth = (run("--model", str(tmp_path / name)) for name in ("semantic", "depth"))
    scored = run("--model", str(tmp_path / "multi"), "--baseline", str(tmp_path / "semantic"), str(tmp_path / "depth"))
    keys = {"semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err"}
    assert set(scored["delta_m.changes"]) == keys
    base = {**{k: semantic[k] for k in keys if k.startswith("semantic")},
            **{k: depth[k] for k in keys if k.startswith("depth")}}
    assert scored["delta_m.baselines"] == pytest.approx(base)
    # positive = worse: an error above its baseline, an mIoU below it
    expected = {k: (1 if k.startswith("depth") else -1) * (multi[k] - base[k]) / base[k] * 100 for k in keys}
    assert scored["delta_m.changes"] == pytest.approx(expected, abs=1e-3)
    assert scored["delta_m"] == pytest.approx(sum(expected.values()) / 4, abs=1e-3)
    # a model compared with itself: 0
    assert run("--model", str(tmp_path / "multi"), "--baseline", str(tmp_path / "multi"))["delta_m"] == pytest.approx(0)


def test_baselines_without_a_shared_metric_are_refused(tmp_path):
    torch.manual_seed(0)
    MTAN(preset_tasks("cityscapes-7")[:1], arch="single", width=1 / 16).save_pretrained(tmp_path / "semantic")
    MTAN(preset_tasks("cityscapes-7")[1:], arch="single", width=1 / 16).save_pretrained(tmp_path / "depth")
    proc = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--data", "synthetic", "--frames", "4", "--size",
                           "64x128", "--device", "cpu", "--model", str(tmp_path / "depth"), "--baseline",
                           str(tmp_path / "semantic")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "--baseline: the baselines share no metric" in proc.stderr
