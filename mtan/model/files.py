"""A model's files, in a folder or on the Hugging Face Hub: ``config.json`` and
``model.safetensors`` found (downloaded through ``huggingface_hub`` for a Hub repo id) and checked
before anything is loaded, with errors that name the file and what to do. Only safetensors weights
are ever loaded: pickle files can run code."""
from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from mtan.checkpoint import all_finite
from mtan.tokens import error_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelConfigError(ValueError):
    """A model config (or a saved model folder) is invalid; the message names what is wrong."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class HubUnavailableError(ModelConfigError):
    """The Hub could not be reached (offline, DNS, timeout) or refused access."""


def _refuse_pickles(where: str, names: list[str]) -> None:
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    hint = (f" It holds pickle weights ({', '.join(pickles)}), which are never loaded because unpickling can run "
            f"arbitrary code; convert original MTAN checkpoints with `python -m mtan.convert`, or re-save "
            f"the model with save_pretrained.") if pickles else ""
    raise ModelConfigError(f"{where}: no {WEIGHTS_NAME} found.{hint}")


def resolve_model_files(model_id: str | os.PathLike, *, revision=None, token=None, cache_dir=None,
                        force_download=False, local_files_only=False) -> tuple[Path, Path]:
    """Return local paths of ``config.json`` and ``model.safetensors`` for a folder or Hub repo id."""
    path = Path(model_id)
    if path.is_dir():
        names = os.listdir(path)
        if CONFIG_NAME not in names:
            raise ModelConfigError(f"{path}: no {CONFIG_NAME}; a model folder is written by save_pretrained "
                                   f"(config.json + model.safetensors)")
        if WEIGHTS_NAME not in names:
            _refuse_pickles(str(path), names)
        check_weights_file(path / WEIGHTS_NAME)
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    text = str(model_id)
    if path.exists():
        raise ModelConfigError(f"{path} is a file; pass the model folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or os.sep + os.sep in text:
        raise ModelConfigError(f"{text}: no such model folder, and not a Hub repo id of the form 'user/name'")
    config_file, weights_file = _download(text, revision=revision, token=token, cache_dir=cache_dir,
                                          force_download=force_download, local_files_only=local_files_only)
    check_weights_file(weights_file)
    return config_file, weights_file


def check_weights_file(path: str | os.PathLike) -> None:
    """Check an MTAN ``model.safetensors`` before it is loaded; raise ModelConfigError naming the file.

    The safetensors reader already refuses a damaged header (bad length, invalid JSON, offsets
    outside the file, sizes that do not match the dtype and shape). On top of that: every tensor
    must be floating point (the BatchNorm counters ``num_batches_tracked``: int64), so a dtype
    edited in the header (F32 -> I32 keeps the size) is caught, and every value must be finite:
    NaN or infinite weights (a diverged run, or tampering) would only give NaN predictions.
    """
    wrong_dtype, nonfinite = [], []
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                expected = ("I64",) if name.endswith("num_batches_tracked") else FLOAT_DTYPES
                if dtype not in expected:
                    wrong_dtype.append(f"{name} ({dtype})")
                elif dtype in FLOAT_DTYPES and not all_finite(f.get_tensor(name)):
                    nonfinite.append(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelConfigError(f"{path}: not a readable safetensors file ({e}); the file is truncated or damaged: "
                               f"download or export it again") from None
    if wrong_dtype:
        raise ModelConfigError(f"{path}: tensor(s) with a wrong data type: {_short(wrong_dtype)}; MTAN weights are "
                               f"floating point (int64 BatchNorm counters): the file was altered or is not an MTAN "
                               f"model; download or export it again")
    if nonfinite:
        raise ModelConfigError(f"{path}: tensor(s) holding NaN or infinite values: {_short(nonfinite)}; the weights "
                               f"are damaged or come from a diverged training run; export them again from a good "
                               f"checkpoint")


def _short(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _download(repo_id: str, **kwargs) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError)

    def get(filename):
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))

    try:
        config_file = get(CONFIG_NAME)
        try:
            weights_file = get(WEIGHTS_NAME)
        except EntryNotFoundError:
            try:
                names = list_repo_files(repo_id, revision=kwargs.get("revision"), token=kwargs.get("token"))
            except Exception:  # listing is only for a better message
                names = []
            _refuse_pickles(f"Hub repo {repo_id}", names)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HubUnavailableError(f"Hub repo {repo_id}: not found or no access ({type(e).__name__}); check the "
                                  f"name, and log in (`hf auth login` or HF_TOKEN) for private repos") from None
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
        raise HubUnavailableError(f"Hub repo {repo_id}: the Hub is unreachable and the model is not in the "
                                  f"local cache; connect to the internet or use a local model folder") from None
    except EntryNotFoundError:
        raise ModelConfigError(f"Hub repo {repo_id} has no {CONFIG_NAME}; it is not an MTAN model") from None
    except HfHubHTTPError as e:
        raise HubUnavailableError(f"Hub repo {repo_id}: download failed "
                                  f"({error_text(str(e), kwargs.get('token'))})") from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise HubUnavailableError(f"Hub repo {repo_id}: the Hub is unreachable ({type(e).__name__}); "
                                  f"use a local model folder") from None
    return config_file, weights_file
