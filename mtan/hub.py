"""The Hugging Face Hub from the command line: push a run folder's model, deploy the app as a
Space. ``python -m mtan.hub push RUN USER/REPO``, ``python -m mtan.hub deploy-space USER/SPACE``.

Loading a model from the Hub is :func:`mtan.model.files.resolve_model_files`'s job; its names are
also importable from here.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mtan.model.files import (CONFIG_NAME, WEIGHTS_NAME, HubUnavailableError, ModelConfigError,  # noqa: F401
                              check_weights_file, resolve_model_files)
from mtan.tokens import error_text as _error_text
from mtan.tokens import redact as _redact

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
                 token: str | None = None, log=print, dry_run: bool = False) -> str | None:
    """Create or update the Gradio Space ``space_id`` with the app (and the default model, or the
    ``model`` repo id as its ``MTAN_MODEL``). ``hardware`` e.g. ``cpu-basic``, ``t4-small`` or
    ``zero-a10g`` (ZeroGPU: the ``spaces`` package joins the requirements). Returns the Space's URL,
    or None after saying why it failed (nothing here is changed). ``dry_run``: say what would be
    uploaded and where, and touch no network."""
    zerogpu = bool(hardware and hardware.startswith("zero"))
    files = space_files(space_id, model, zerogpu)
    url = f"https://huggingface.co/spaces/{space_id}"
    if dry_run:
        sizes = {name: (source.stat().st_size if isinstance(source, Path) else len(source.encode()))
                 for name, source in files.items()}
        log(f"dry run: would create or update the Gradio Space {url}" + (" (private)" if private else "")
            + (f" on {hardware} hardware" if hardware else "") + (f" with MTAN_MODEL={model}" if model else "")
            + f", uploading {len(files)} files ({sum(sizes.values()) / 1e6:.1f} MB):")
        for name in sorted(sizes):
            log(f"  {name}  ({sizes[name] / 1e3:,.1f} kB)")
        return url

    from huggingface_hub import HfApi

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
    space.add_argument("--dry-run", action="store_true", help="print what would be uploaded and where; no network")
    args = p.parse_args(argv)
    try:
        if args.command == "deploy-space":
            url = deploy_space(args.space_id, args.model, args.hardware, private=args.private, dry_run=args.dry_run)
        else:
            url = push_run(args.run_dir, args.repo_id, private=args.private)
    except ModelConfigError as e:
        print(f"error: {_redact(str(e))}", file=sys.stderr)
        return 2
    return 0 if url else 1


if __name__ == "__main__":
    sys.exit(main())
