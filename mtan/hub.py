"""Hugging Face Hub helpers: a model's files, model cards, pushing a run folder, the app as a Space.

A model folder (local or a Hub repo) holds ``config.json``, ``model.safetensors`` and a model
card ``README.md``. Only safetensors weights are ever loaded: pickle files can run code.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

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
    from safetensors import SafetensorError, safe_open

    from mtan.checkpoint import all_finite

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
                                  f"({_error_text(str(e), kwargs.get('token'))})") from None
    except OSError as e:  # connection errors surface as OSError subclasses
        raise HubUnavailableError(f"Hub repo {repo_id}: the Hub is unreachable ({type(e).__name__}); "
                                  f"use a local model folder") from None
    return config_file, weights_file


TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{16,}|(?i:bearer)\s+[A-Za-z0-9_.\-]{8,}")


def _known_tokens(extra=()) -> list[str]:
    tokens = [t for t in extra if isinstance(t, str)]
    tokens += [os.environ[v] for v in TOKEN_ENV_VARS if os.environ.get(v)]
    try:  # the token saved by `hf auth login`
        from huggingface_hub import get_token

        tokens.append(get_token() or "")
    except Exception:
        pass
    return sorted({t.strip() for t in tokens if t and len(t.strip()) >= 4}, key=len, reverse=True)


def _redact(text: str, *tokens) -> str:
    """Never let a token reach a message: the given tokens, those in the environment or the
    login cache, and anything shaped like a Hub token or a bearer header."""
    for token in _known_tokens(tokens):
        text = text.replace(token, "***")
    return TOKEN_RE.sub("***", text)


def _error_text(text: str, *tokens, limit: int = 400) -> str:
    """A Hub error on one line, redacted: the status line and the server's own message."""
    lines = [ln.strip() for ln in _redact(text, *tokens).splitlines()]
    return "; ".join(ln for ln in lines if ln and not ln.startswith("For more information"))[:limit]


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


def _number(key: str, value) -> str:
    """A card cell: counts as integers, everything else with 4 decimals."""
    if value is None or value != value:
        return "-"
    return f"{int(value)}" if ".images" in key else f"{value:.4f}"


def model_card(model, *, training_command: str | None = None, data: str | None = None,
               dataset_name: str | None = None, dataset_type: str | None = None,
               results: dict[str, float] | None = None, notes: str | None = None, repo_id: str | None = None,
               evaluations: list[dict] | None = None, sections: list[tuple[str, str]] | None = None,
               summary: str | None = None):
    """A model card for an MTAN model: what it predicts, how to load it, how it was trained, its metrics.

    ``results`` (keys like ``semantic.miou``) on ``dataset_name`` also go into the Hub's
    ``model-index`` metadata; ``evaluations`` gives several datasets at once, as dicts with
    ``name``, ``type`` and ``results`` (the Results section gets one column per dataset).
    ``sections``: extra ``(title, markdown)`` sections placed before the notes; ``summary``: a
    paragraph under the title.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = repo_id or "mtan-model"
    if evaluations is None and results and dataset_name:
        evaluations = [{"name": dataset_name, "type": dataset_type or dataset_name.lower(), "results": results}]
    eval_results = []
    for ev in evaluations or []:
        for key, value in ev["results"].items():
            if key in METRIC_NAMES and value == value:  # skip NaN
                pretty, metric_type = METRIC_NAMES[key]
                eval_results.append(EvalResult(
                    task_type="image-segmentation" if key.startswith("semantic") else "depth-estimation",
                    dataset_type=ev.get("type") or ev["name"].lower(), dataset_name=ev["name"],
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
             *([summary, ""] if summary else []),
             "| field | value |", "|---|---|",
             f"| architecture | `{model.arch}` (SegNet backbone, width x{model.width:g}: {model.widths}) |",
             f"| parameters | {sum(p.numel() for p in model.parameters()):,} |"]
    lines += [f"| {t.name} | {t.describe()} |" for t in model.tasks]
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
    if evaluations and len(evaluations) > 1:
        keys = list(dict.fromkeys(k for ev in evaluations for k in ev["results"]))
        lines += ["## Results", "", "| metric | " + " | ".join(ev["name"] for ev in evaluations) + " |",
                  "|---|" + "---|" * len(evaluations)]
        for k in keys:
            cells = [ev["results"].get(k) for ev in evaluations]
            lines.append(f"| {k} | " + " | ".join("-" if c is None or c != c else _number(k, c) for c in cells) + " |")
        lines.append("")
    elif results or evaluations:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(k, v)} |" for k, v in (results or evaluations[0]["results"]).items()]
        lines.append("")
    for title, text in sections or []:
        lines += [f"## {title}", "", text.strip(), ""]
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
        reason = _error_text(f"{type(e).__name__}: {e}", token)
        log(f"push to the Hub failed ({reason}). The run's files are safe in {run_dir}; "
            f"retry with: {retry}  (log in first with `hf auth login` or set HF_TOKEN)")
        return None
    url = getattr(commit, "commit_url", None) or str(commit)
    log(f"pushed {len(files)} files to https://huggingface.co/{repo_id} ({url})")
    return url


# ---- a Gradio Space of the app ------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
# Binary files go through Git LFS on the Hub: a plain `git push` of a Space is refused without it.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.npz", "*.npy", "*.zip", "*.png", "*.jpg",
                "*.jpeg", "*.webp", "*.gif", "*.mp4")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)

SPACE_CARD = """---
title: {title}
emoji: 🚦
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
python_version: "3.11"
models: [{models}]
license: mit
short_description: Segmentation and depth from one street photo (MTAN)
pinned: false
---

# {title}

Upload a street photo: one Multi-Task Attention Network (MTAN, Liu, Johns and Davison, CVPR 2019)
labels every pixel with the 7 CityScapes categories and estimates how far away it is, and shows
which features each task's attention masks select. The model: {model_line}.

Made with mtan, the open-source home of MTAN; its `python -m mtan.hub deploy-space USER/SPACE`
updates this Space.
"""


def space_files(space_id: str, model: str | None = None, zerogpu: bool = False,
                root: Path = REPO_ROOT) -> dict[str, Path | str]:
    """What a Space of the app holds, by its path in the Space: a file of this project, or a text
    written for the Space (its card, requirements, ``.gitattributes``). With ``model`` (a Hub
    model id) the Space loads that model; without, it carries the default model in ``weights/``."""
    files: dict[str, Path | str] = {"app.py": root / "app.py", "LICENSE": root / "LICENSE"}
    files.update({p.relative_to(root).as_posix(): p for p in sorted((root / "mtan").rglob("*.py"))})
    files.update({f"examples/{p.name}": p for p in sorted((root / "examples").glob("*.jpg"))})
    if model is None:
        weights = [p for p in sorted((root / "weights").glob("*")) if p.suffix in (".json", ".safetensors", ".md")]
        if not any(p.name == "model.safetensors" for p in weights):
            raise ModelConfigError(f"{root / 'weights'} holds no model.safetensors: give --model USER/MODEL")
        files.update({f"weights/{p.name}": p for p in weights})
    requirements = (root / "requirements.txt").read_text()
    files["requirements.txt"] = requirements.rstrip() + ("\nspaces\n" if zerogpu else "\n")
    import gradio

    title = space_id.split("/")[-1].replace("-", " ").replace("_", " ").strip() or "mtan"
    files["README.md"] = SPACE_CARD.format(
        title=title[:1].upper() + title[1:], gradio_version=gradio.__version__, models=model or "",
        model_line=f"[{model}](https://huggingface.co/{model})" if model else
        "the small default model in `weights/` (its card is there)")
    files[".gitattributes"] = GITATTRIBUTES
    return files


def deploy_space(space_id: str, model: str | None = None, hardware: str | None = None, private: bool = False,
                 token: str | None = None, log=print) -> str | None:
    """Create or update the Gradio Space ``space_id`` with the app (and the default model, or the
    ``model`` repo id as its ``MTAN_MODEL``). ``hardware`` e.g. ``cpu-basic``, ``t4-small`` or
    ``zero-a10g`` (ZeroGPU: the ``spaces`` package joins the requirements). Returns the Space's URL,
    or None after saying why it failed (nothing here is changed)."""
    import tempfile

    from huggingface_hub import HfApi

    zerogpu = bool(hardware and hardware.startswith("zero"))
    files = space_files(space_id, model, zerogpu)
    retry = f"python -m mtan.hub deploy-space {space_id}" + (f" --model {model}" if model else "") + \
        (f" --hardware {hardware}" if hardware else "")
    with tempfile.TemporaryDirectory(prefix="mtan-space-") as staging:
        for name, source in files.items():
            target = Path(staging) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, target)
            else:
                target.write_text(source)
        try:
            api = HfApi(token=token)
            repo = api.create_repo(repo_id=space_id, repo_type="space", space_sdk="gradio", private=private,
                                   exist_ok=True)
            space_id = getattr(repo, "repo_id", space_id)
            if model:
                api.add_space_variable(space_id, "MTAN_MODEL", model)
            api.upload_folder(repo_id=space_id, repo_type="space", folder_path=staging,
                              commit_message="Deploy the mtan app")
            if hardware:
                api.request_space_hardware(space_id, hardware)
        except Exception as e:  # offline, no token, no permission, unknown hardware ...
            log(f"deploying the Space failed ({_error_text(f'{type(e).__name__}: {e}', token)}); retry with: "
                f"{retry}  (log in first with `hf auth login` or set HF_TOKEN)")
            return None
    url = f"https://huggingface.co/spaces/{space_id}"
    log(f"deployed {len(files)} files to {url}")
    return url


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mtan.hub", description="Hub helpers for mtan models.")
    sub = p.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload a run folder's model (config, weights, card, curves, metrics)")
    push.add_argument("run_dir", help="a training run folder or a save_pretrained folder")
    push.add_argument("repo_id", help="USER/REPO on the Hugging Face Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    space = sub.add_parser("deploy-space", help="create or update a Gradio Space with the app")
    space.add_argument("space_id", help="USER/SPACE on the Hugging Face Hub")
    space.add_argument("--model", default=None, help="a Hub model id for the Space to load (default: ship weights/)")
    space.add_argument("--hardware", default=None, help="cpu-basic, t4-small, zero-a10g (ZeroGPU) ...")
    space.add_argument("--private", action="store_true", help="create the Space as private")
    args = p.parse_args(argv)
    try:
        if args.command == "deploy-space":
            url = deploy_space(args.space_id, args.model, args.hardware, private=args.private)
        else:
            url = push_run(args.run_dir, args.repo_id, private=args.private)
    except ModelConfigError as e:
        import sys

        print(f"error: {_redact(str(e))}", file=sys.stderr)
        return 2
    return 0 if url else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
