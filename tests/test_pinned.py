"""The trainer, the evaluator and the app's prediction give the figures pinned in
``tests/data/pinned_outputs.json`` on fixed inputs (see ``tests/pinned_outputs.py``): moving code
between files must not change what it computes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PINNED = json.loads((TESTS / "data" / "pinned_outputs.json").read_text())

# How far a figure may move from the pinned one: floating-point reordering differs between CPUs
# (Intel and AMD take different oneDNN kernels), and training compounds it over its steps.
TOLERANCE = {"trainer": (0.02, 0.01), "evaluator": (1e-3, 2e-3), "app": (1e-3, 2e-3)}  # (relative, absolute)


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pinned") / "outputs.json"
    proc = subprocess.run([sys.executable, str(TESTS / "pinned_outputs.py"), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("part", ["trainer", "evaluator", "app"])
def test_same_outputs_as_pinned(computed, part):
    want, got = PINNED[part], computed[part]
    assert set(got) == set(want), f"{part}: figures missing {sorted(set(want) - set(got))}, " \
                                  f"new {sorted(set(got) - set(want))}"
    assert len(want) >= 10
    rel, abs_ = TOLERANCE[part]
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=rel, abs=abs_), f"{part}.{key}"
        else:
            assert got[key] == value, f"{part}.{key}"
