"""Helpers for tests that check a model card against the commands it lists (test_release,
test_default_model): read the ``python -m mtan.evaluate`` lines and the model-index metadata,
run the commands, compare."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mtan.evaluate import main as evaluate_main
from mtan.release import data_description


def card_commands(readme: Path) -> list[list[str]]:
    """The ``python -m mtan.evaluate`` commands listed on a card, as argument lists."""
    return [shlex.split(line.strip())[3:] for line in readme.read_text().splitlines()
            if line.strip().startswith("python -m mtan.evaluate")]


def card_values(readme: Path) -> dict[tuple[str, str], float]:
    """(dataset name, metric type) -> value from the card's model-index metadata."""
    card = ModelCard.load(readme)
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def data_of(args: list[str]) -> str:
    return args[args.index("--data") + 1]


def run_commands(commands: list[list[str]], tmp_path: Path) -> list[dict]:
    """Run each command as ``python -m mtan.evaluate`` would (in-process) and return its JSON."""
    results = []
    for i, args in enumerate(commands):
        out = tmp_path / f"eval{i}.json"
        assert evaluate_main([*args, "--out", str(out)]) == 0
        options = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--data-option")
        results.append({"data": data_of(args), "options": options, "result": json.loads(out.read_text())})
    return results


def check_card_against(readme: Path, reproduced: list[dict], complete: bool = True) -> None:
    """Every figure of the card's metadata and results table for these datasets equals what the
    card's commands printed; ``complete``: the card has no other dataset."""
    values = card_values(readme)
    # Within 1e-4: another CPU's kernels sum in another order and flip a few pixels of 200 frames.
    close = dict(abs=1e-4)
    if complete:
        assert len({name for name, _ in values}) == len(reproduced)
    text = readme.read_text()
    for rep in reproduced:
        name, result = data_description(rep["data"], rep.get("options"))[0], rep["result"]
        assert values[(name, "mean_iou")] == pytest.approx(result["semantic.miou"], **close)
        assert values[(name, "pixel_accuracy")] == pytest.approx(result["semantic.pixel_acc"], **close)
        if "depth.abs_err" in result:
            assert values[(name, "abs_err")] == pytest.approx(result["depth.abs_err"], **close)
            assert values[(name, "rel_err")] == pytest.approx(result["depth.rel_err"], **close)
        for key in ("semantic.miou", "depth_order.ground_row_spearman"):  # the prose's 4 decimals, as close
            assert any(f"{result[key] + d:.4f}" in text for d in (-1e-4, 0.0, 1e-4)), key
