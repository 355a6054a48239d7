"""Training checkpoints: one safetensors file per epoch, written atomically, read without pickle.

A checkpoint holds every tensor needed to continue a run (model, optimiser moments, loss
weighting parameters, RNG state) plus a JSON header (epoch, optimiser hyper-parameters,
scheduler, DWA history, best score). Writing goes to a temporary file in the same folder, is
flushed with fsync and then renamed over the target, so a crash or a full disk never leaves a
half-written checkpoint under a real name, and the previous checkpoint is untouched.

Every checkpoint also stores a CRC-32 of each tensor and of its JSON header: a file damaged
after it was written (flipped bytes, a truncated copy) is detected on load, named, and
``latest_good_checkpoint`` falls back to the previous one. Temporary files left by a killed
writer (``.epoch_0003.safetensors.tmp-PID``) are never read and are removed on resume.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
import torch

from mtan.atomic import TEMPORARY_RE, atomic_write

CHECKPOINT_RE = re.compile(r"epoch_(\d{4,})\.safetensors$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file.

    ``short``: the failure alone, without the advice (for callers that give their own)."""

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message


# --------------------------------------------------------------------------------------
# Packing training state into tensors + JSON
# --------------------------------------------------------------------------------------


def pack_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, per_param = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                per_param.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "non_tensor_state": per_param}


def unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("non_tensor_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, weighting: torch.nn.Module, meta: dict) -> None:
    """Write the full training state of one epoch to ``path`` (atomically)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = pack_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update({f"weighting.{k}": v for k, v in weighting.state_dict().items() if isinstance(v, torch.Tensor)})
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda_{i}"] = s
    header = {
        **meta,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "weighting": weighting.get_extra_state(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header_text = json.dumps(header)
    checksums = {"__header__": _crc(header_text.encode()), **{k: tensor_crc(v) for k, v in tensors.items()}}
    metadata = {"mtan_checkpoint": header_text, "mtan_checksums": json.dumps(checksums)}

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except (OSError, SafetensorError) as e:  # a full disk surfaces as either
        short = f"could not write checkpoint {path}: {getattr(e, 'strerror', None) or e}"
        raise CheckpointError(f"{short}; the previous checkpoint is intact and no partial file was left (free "
                              f"disk space, then resume with --resume)", short=short) from None


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a CPU tensor holds no NaN or infinity (integer tensors: always). numpy is many times
    faster at this than torch.isfinite on small CPU tensors."""
    if not tensor.is_floating_point():
        return True
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return bool(np.isfinite(tensor.detach().cpu().numpy()).all())


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def tensor_crc(tensor: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (any dtype, no copy for contiguous tensors)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return _crc(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def read_header(path: Path) -> dict:
    """A checkpoint's JSON header alone (its tensors are not read); CheckpointError if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["mtan_checkpoint"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {str(e)[:120]})") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint: its tensors and its JSON header. Damaged files raise CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header_text = meta["mtan_checkpoint"]
        checksums = json.loads(meta["mtan_checksums"]) if "mtan_checksums" in meta else None
        header = json.loads(header_text)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {str(e)[:120]})") from None
    if checksums is not None:  # (checkpoints written before checksums existed have none)
        bad = [k for k in tensors if checksums.get(k) != tensor_crc(tensors[k])]
        bad += sorted(set(checksums) - set(tensors) - {"__header__"})
        if checksums.get("__header__") != _crc(header_text.encode()):
            bad.insert(0, "its JSON header")
        if bad:
            raise CheckpointError(f"checkpoint {path} is corrupted: {_names(bad)} fail(s) the checksum written "
                                  f"with it (the file changed after it was saved)")
    nonfinite = [k for k, v in tensors.items() if not all_finite(v)]
    if nonfinite:
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite values in {_names(nonfinite)}")
    return tensors, header


def _names(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def restore(tensors: dict, header: dict, *, model, optimizer, scheduler, weighting) -> None:
    """Put a loaded checkpoint back into live objects."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    optimizer.load_state_dict(unpack_optimizer(tensors, header["optimizer"]))
    scheduler.load_state_dict(header["scheduler"])
    w_state = {k[len("weighting."):]: v for k, v in tensors.items() if k.startswith("weighting.")}
    w_state["_extra_state"] = header["weighting"]
    weighting.load_state_dict(w_state, strict=True)
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the checkpoints in ``folder``, newest first."""
    if not Path(folder).is_dir():
        return []
    found = [(int(m[1]), p) for p in Path(folder).iterdir() if (m := CHECKPOINT_RE.search(p.name))]
    return sorted(found, reverse=True)


def latest_good_checkpoint(folder: Path, log=print) -> tuple[int, dict, dict] | None:
    """The newest checkpoint that loads; damaged ones are reported (by name) and skipped."""
    for epoch, path in list_checkpoints(folder):
        try:
            tensors, header = load_checkpoint(path)
        except CheckpointError as e:
            log(f"warning: {e}; skipping it and falling back to the previous checkpoint")
            continue
        return epoch, tensors, header
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (e.g. from a failed write in this process) are stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temporaries(folders, log=print) -> list[Path]:
    """Remove what a killed writer left in ``folders``: ``.NAME.tmp-PID`` files of atomic_write and
    ``.export-tmp`` staging folders. Files of a process that is still running are kept (and named).
    Returns the removed paths."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            m = TEMPORARY_RE.match(p.name)
            if m and p.is_file():
                if _pid_alive(int(m[1])):
                    log(f"warning: {p} belongs to process {m[1]}, which is still running; is another "
                        f"training process writing to this run folder? Left in place")
                    continue
                p.unlink(missing_ok=True)
                removed.append(p)
            elif p.name == ".export-tmp" and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
            f"{', '.join(str(p) for p in removed)}")
    return removed


def prune_checkpoints(folder: Path, keep: int = 2) -> None:
    for _, path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)
