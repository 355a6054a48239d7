"""Hugging Face Hub helpers: finding a model's files, model cards, pushing a run folder.

A model folder (local or a Hub repo) holds ``config.json``, ``model.safetensors`` and a model
card ``README.md``. Only safetensors weights are ever loaded: pickle files can run code.
"""
from __future__ import annotations

import os
from pathlib import Path

from mtan.model import CONFIG_NAME, WEIGHTS_NAME, ModelConfigError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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
        return path / CONFIG_NAME, path / WEIGHTS_NAME
    text = str(model_id)
    if path.exists():
        raise ModelConfigError(f"{path} is a file; pass the model folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or os.sep + os.sep in text:
        raise ModelConfigError(f"{text}: no such model folder, and not a Hub repo id of the form 'user/name'")
    return _download(text, revision=revision, token=token, cache_dir=cache_dir,
                     force_download=force_download, local_files_only=local_files_only)


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
        raise HubUnavailableError(f"Hub repo {repo_id}: download failed ({_redact(str(e))})") from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise HubUnavailableError(f"Hub repo {repo_id}: the Hub is unreachable ({type(e).__name__}); "
                                  f"use a local model folder") from None
    return config_file, weights_file


def _redact(text: str) -> str:
    """Never let a token reach a message."""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return text


# --------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------

METRIC_NAMES = {
    "semantic.miou": ("mIoU", "mean_iou"),
    "semantic.pixel_acc": ("Pixel accuracy", "pixel_accuracy"),
    "depth.abs_err": ("Depth absolute error", "abs_err"),
    "depth.rel_err": ("Depth relative error", "rel_err"),
    "normal.mean_deg": ("Normal mean angle error (deg)", "mean_angle_error"),
    "normal.median_deg": ("Normal median angle error (deg)", "median_angle_error"),
}


def model_card(model, *, training_command: str | None = None, data: str | None = None,
               dataset_name: str | None = None, dataset_type: str | None = None,
               results: dict[str, float] | None = None, notes: str | None = None, repo_id: str | None = None):
    """A model card for an MTAN model: what it predicts, how to load it, how it was trained, its metrics.

    ``results`` (keys like ``semantic.miou``) also go into the Hub's ``model-index`` metadata.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from mtan.model import count_parameters

    name = repo_id or "mtan-model"
    eval_results = []
    if results and dataset_name:
        for key, value in results.items():
            if key in METRIC_NAMES and value == value:  # skip NaN
                pretty, metric_type = METRIC_NAMES[key]
                eval_results.append(EvalResult(
                    task_type="image-segmentation" if key.startswith("semantic") else "depth-estimation",
                    dataset_type=dataset_type or dataset_name.lower(), dataset_name=dataset_name,
                    metric_type=metric_type, metric_name=pretty, metric_value=round(float(value), 6)))
    card_data = ModelCardData(
        library_name="mtan", license="mit", pipeline_tag="image-segmentation",
        tags=["multi-task-learning", "semantic-segmentation", "depth-estimation", "mtan", "pytorch",
              "model_hub_mixin", "pytorch_model_hub_mixin"],
        model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    lines = [f"# {name}", "",
             f"A Multi-Task Attention Network (MTAN, Liu et al., CVPR 2019, [arXiv 1803.10704]"
             f"(https://arxiv.org/abs/1803.10704)): one network predicting "
             f"{', '.join(t.name for t in model.tasks)} from a single image.", "",
             "| field | value |", "|---|---|",
             f"| architecture | `{model.arch}` (SegNet backbone, width x{model.width:g}: {model.widths}) |",
             f"| parameters | {count_parameters(model):,} |"]
    for t in model.tasks:
        if t.kind == "semantic":
            lines.append(f"| {t.name} | {t.num_classes} classes ({t.class_set.name}): {', '.join(t.class_set.classes)} |")
        elif t.kind == "depth":
            lines.append(f"| {t.name} | depth, {t.units} |")
        else:
            lines.append(f"| {t.name} | surface normals (unit vectors) |")
    lines += ["", "## Use", "", "```python", "from mtan import MTAN", "",
              f"model = MTAN.from_pretrained(\"{repo_id or 'path/to/this/folder'}\")",
              "outputs = model.predict(image)  # image: 3 x H x W float tensor in [0, 1], any size",
              "```", ""]
    if data or training_command:
        lines += ["## Training", ""]
        if data:
            lines += [f"Data: {data}", ""]
        if training_command:
            lines += ["```bash", training_command, "```", ""]
    if results:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in results.items()]
        lines.append("")
    if notes:
        lines += ["## Notes", "", notes, ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


# --------------------------------------------------------------------------------------
# Pushing a run folder
# --------------------------------------------------------------------------------------

PUSH_PATTERNS = ["config.json", "model.safetensors", "README.md", "curves.png", "metrics.jsonl",
                 "train_config.json"]


def files_to_push(run_dir: str | os.PathLike) -> list[Path]:
    """The files of a run folder that go to the Hub (never checkpoints or anything else)."""
    run_dir = Path(run_dir)
    missing = [n for n in ("config.json", "model.safetensors") if not (run_dir / n).is_file()]
    if missing:
        raise ModelConfigError(f"{run_dir}: {', '.join(missing)} missing; push a finished run folder or a "
                               f"save_pretrained folder")
    return [run_dir / n for n in PUSH_PATTERNS if (run_dir / n).is_file()]


def push_run(run_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
             log=print) -> str | None:
    """Upload a run's exported model (weights, config, card, curves, metrics) to ``repo_id``.

    The token comes from ``token``, ``HF_TOKEN`` or the login cache and is never printed. On any
    failure the files stay on disk and the message says how to retry. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    files = files_to_push(run_dir)
    retry = f"python -m mtan.hub push {run_dir} {repo_id}" + (" --private" if private else "")
    try:
        api = HfApi(token=token)
        repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), repo_type="model",
                                   folder_path=str(run_dir), allow_patterns=[f.name for f in files],
                                   commit_message="Upload MTAN model (mtan)")
    except Exception as e:  # offline, no token, no permission, ...
        reason = _redact(f"{type(e).__name__}: {e}").splitlines()[0][:300]
        log(f"push to the Hub failed ({reason}). The run's files are safe in {run_dir}; "
            f"retry with: {retry}  (log in first with `hf auth login` or set HF_TOKEN)")
        return None
    url = getattr(commit, "commit_url", None) or str(commit)
    log(f"pushed {len(files)} files to https://huggingface.co/{repo_id} ({url})")
    return url


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mtan.hub", description="Hub helpers for mtan models.")
    sub = p.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload a run folder's model (config, weights, card, curves, metrics)")
    push.add_argument("run_dir", help="a training run folder or a save_pretrained folder")
    push.add_argument("repo_id", help="USER/REPO on the Hugging Face Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    args = p.parse_args(argv)
    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private)
    except ModelConfigError as e:
        print(f"error: {e}")
        return 2
    return 0 if url else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
