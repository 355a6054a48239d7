"""A model folder's files read safely: ``config.json`` with errors that say what is wrong, and
weights only from safetensors, every tensor name and shape checked."""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
import torch.nn as nn

from mtan.model.files import ModelConfigError

CONFIG_FIELDS = {"tasks", "arch", "width"}


def read_config(path: str | os.PathLike) -> dict:
    """Read and check a model ``config.json``: valid JSON, an object, only known fields."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"{path}: cannot read the model config ({e})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                               f"re-export the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{path}: the model config must be a JSON object, got {type(config).__name__}")
    unknown = set(config) - CONFIG_FIELDS
    if unknown:
        raise ModelConfigError(f"{path}: unknown config field(s) {sorted(unknown)}; known: {sorted(CONFIG_FIELDS)}")
    if "tasks" not in config:
        raise ModelConfigError(f"{path}: config field 'tasks' is missing")
    return config


def load_safetensors_strict(model: nn.Module, weights_file: str | os.PathLike) -> None:
    """Load a safetensors file into ``model``, requiring exactly the model's tensors and shapes."""
    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelConfigError(f"{weights_file}: not a readable safetensors file ({e}); "
                               f"the file is truncated or damaged: download or export it again") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                   for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_short(unexpected)}")
        if wrong:
            parts.append(f"mis-shaped tensors: {_short(wrong)}")
        raise ModelConfigError(f"{weights_file} does not match its config.json "
                               f"(arch, width or tasks differ from the weights): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _short(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
