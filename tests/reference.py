"""Rebuild the deterministic weights of shared/reference/README.md as an original-style checkpoint."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = DATA / "reference_state_dict_manifest.tsv"
FIXTURE = DATA / "reference_fixture.npz"


def manifest_rows():
    lines = MANIFEST.read_text().splitlines()[1:]
    for line in lines:
        index, key, shape, dtype = line.split("\t")
        yield int(index), key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x")), dtype


def reference_value(index: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The recipe: b = sin(arange(n) * 1.618 + i) (float64), scaled by the key's last component."""
    last = key.split(".")[-1]
    if last == "num_batches_tracked":
        return torch.tensor(0, dtype=torch.int64)
    n = int(np.prod(shape)) if shape else 1
    b = np.sin(np.arange(n, dtype=np.float64) * 1.618 + index).reshape(shape)
    if last == "logsigma":
        a = np.full(shape, -0.5)
    elif last == "weight" and len(shape) == 4:
        a = b * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif last == "weight" and len(shape) == 1:
        a = 1 + 0.1 * b
    elif last == "running_var":
        a = 1 + 0.25 * (b + 1)
    elif last in ("bias", "running_mean"):
        a = 0.05 * b
    else:
        raise ValueError(f"no recipe for {key}")
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def reference_state_dict(num_tasks: int = 3) -> "OrderedDict[str, torch.Tensor]":
    """The original network's state_dict with the recipe's values; ``num_tasks=2`` keeps the
    first two tasks of the same weights (the CityScapes layout)."""
    state = OrderedDict()
    for index, key, shape, _ in manifest_rows():
        value = reference_value(index, key, shape)
        parts = key.split(".")
        if num_tasks < 3:
            if parts[0] in ("encoder_att", "decoder_att") and int(parts[1]) >= num_tasks:
                continue
            if parts[0].startswith("pred_task") and int(parts[0][-1]) > num_tasks:
                continue
            if key == "logsigma":
                value = value[:num_tasks].clone()
        state[key] = value
    return state


def fixture():
    return dict(np.load(FIXTURE))
