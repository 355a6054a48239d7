"""mtan.release: a run becomes a model folder whose card numbers the listed commands reproduce."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mtan import MTAN
from mtan.evaluate import main as evaluate_main
from mtan.release import DATA_DESCRIPTIONS

REPO = Path(__file__).resolve().parents[1]


def card_commands(readme: Path) -> list[list[str]]:
    """The ``python -m mtan.evaluate`` commands listed on a card, as argument lists."""
    return [shlex.split(line.strip())[3:] for line in readme.read_text().splitlines()
            if line.strip().startswith("python -m mtan.evaluate")]


def card_values(readme: Path) -> dict[tuple[str, str], float]:
    """(dataset name, metric type) -> value from the card's model-index metadata."""
    card = ModelCard.load(readme)
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def reproduce(readme: Path, tmp_path: Path) -> list[dict]:
    """Run every command of the card (as ``python -m mtan.evaluate`` would) and return the JSONs."""
    results = []
    for i, args in enumerate(card_commands(readme)):
        out = tmp_path / f"eval{i}.json"
        assert evaluate_main([*args, "--out", str(out)]) == 0
        results.append({"args": args, "result": json.loads(out.read_text())})
    return results


def check_card_against(readme: Path, reproduced: list[dict]) -> None:
    """Every figure of the card's metadata and tables equals what the card's commands print."""
    values = card_values(readme)
    assert len({name for name, _ in values}) == len(reproduced)
    table = readme.read_text()
    for rep in reproduced:
        data = rep["args"][rep["args"].index("--data") + 1]
        name = DATA_DESCRIPTIONS[data][0]
        result = rep["result"]
        assert values[(name, "mean_iou")] == pytest.approx(result["semantic.miou"], abs=1e-6)
        assert values[(name, "pixel_accuracy")] == pytest.approx(result["semantic.pixel_acc"], abs=1e-6)
        if "depth.abs_err" in result:
            assert values[(name, "abs_err")] == pytest.approx(result["depth.abs_err"], abs=1e-6)
            assert values[(name, "rel_err")] == pytest.approx(result["depth.rel_err"], abs=1e-6)
        assert f"{result['semantic.miou']:.4f}" in table
        assert f"{result['depth_order.ground_row_spearman']:.4f}" in table


def test_release_of_a_tiny_mixed_run(tmp_path, camvid_root):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--preset", "demo", "--epochs", "1", "--size", "32x64", "--train-frames",
           "8", "--val-frames", "4", "--width", "0.0625", "--no-progress", "--data-root", f"+{camvid_root}",
           "--out", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "train_config.json").read_text())["pseudo_depth"] is True

    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "mtan.release", str(run), str(out), "--no-latency"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert MTAN.from_pretrained(out).width == 0.0625
    readme = out / "README.md"
    text = readme.read_text()
    for section in ("## Results", "## Data", "## Training", "## Depth on real photos", "## How to check the results",
                    "## Limits"):
        assert section in text
    assert "--preset demo" in text and "0.000 of the image height" not in text
    reproduced = reproduce(readme, tmp_path)
    assert {r["args"][r["args"].index("--data") + 1] for r in reproduced} == {"synthetic", "camvid"}
    check_card_against(readme, reproduced)


def test_release_refuses_a_folder_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtan.release", str(tmp_path), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train_config.json" in proc.stderr and "Traceback" not in proc.stderr
