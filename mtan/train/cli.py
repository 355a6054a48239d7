"""``train.py``'s command line, made from :class:`mtan.train.TrainConfig`'s settings (each declares
its help, choices and checks once; its part of the config is its group of flags), and the command itself: a config from the flags (a
preset first, explicit flags over it; or a run folder to resume), the run, and exit codes."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mtan.data.common import option_value
from mtan.train.config import PRESETS, TrainConfig, apply_preset, flat_name, settings

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3
# What --resume may change in a run's settings: where and how it runs, not what it computes.
RESUMABLE = {"epochs", "device", "progress", "eval_batch_size", "push_to_hub", "private", "compile",
             "batched_attention", "data_workers", "eval_every"}


def data_option(text: str) -> tuple[str, str, object]:
    """``camvid.splits=blocks`` -> ("camvid", "splits", "blocks"); numbers and true/false are read as such."""
    part, _, rest = text.partition(".")
    key, eq, value = rest.partition("=")
    if not (part and key and eq):
        raise argparse.ArgumentTypeError(f"expected PART.KEY=VALUE such as camvid.splits=blocks, got {text!r}")
    return part, key, option_value(value)


# A field's type (as annotated) -> what argparse converts its flag's text with (str, list: none needed).
TYPES = {"data_option": data_option, "int": int, "int | None": int, "float": float, "float | None": float}


def _add(group, name: str, f: dataclasses.Field) -> None:
    """The flag (or ``--x`` / ``--no-x`` pair) of setting ``f``, whose flat name is ``name``, in
    ``group``; every default None, so that only what was given overrides the preset."""
    meta, cli = f.metadata, dict(f.metadata.get("cli") or {})
    flag = "--" + name.replace("_", "-")
    text = meta["help"]
    if meta.get("show_default") and f.default not in (None, False, dataclasses.MISSING):
        text += f" (default {f.default:g})" if isinstance(f.default, float) else f" (default {f.default})"
    no = cli.pop("no", None)
    flags = cli.pop("flags", [flag])
    if f.type in ("bool", bool):
        if no is not None:
            both = group.add_mutually_exclusive_group()
            both.add_argument(flag, dest=name, action="store_true", default=None, help=text)
            both.add_argument("--no-" + flag[2:], dest=name, action="store_false", help=no)
            return
        group.add_argument(*flags, dest=name, action=cli.pop("action", "store_true"), default=None, help=text)
        return
    kind = TYPES.get(cli.pop("type", f.type))
    group.add_argument(*flags, dest=name, type=kind, choices=meta.get("choices"), default=None, help=text, **cli)


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``train.py``: ``--preset``, ``--resume``, then one per setting, grouped by the
    part of the config it belongs to."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a group of settings: " + "; ".join(
        f"{k}: {v.get('data')} {v.get('size', '')} {v.get('epochs')} epochs batch {v.get('batch_size')}"
        f"{' +aug' if v.get('augment') else ''}" for k, v in PRESETS.items()))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last good checkpoint "
                   "(its train_config.json is used; --epochs may extend it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    parts = {f.name: f.metadata["part"] for f in dataclasses.fields(TrainConfig) if "part" in f.metadata}
    for path, f in settings():
        if f.metadata.get("cli") is False:
            continue
        title = parts[path[0]].title
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        _add(groups[title], flat_name(f), f)
    return p


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's config from parsed flags, and whether it resumes a run."""
    values = {k: v for k, v in vars(args).items() if k not in ("preset", "resume")}
    if values.get("data_options") is not None:
        options: dict = {}
        for part, key, value in values["data_options"]:
            options.setdefault(part, {})[key] = value
        values["data_options"] = options
    if args.resume:
        saved = Path(args.resume) / "train_config.json"
        if not saved.is_file():
            raise ValueError(f"--resume {args.resume}: no train_config.json there; is it a run folder?")
        try:
            base = json.loads(saved.read_text(encoding="utf-8"))
            if not isinstance(base, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            raise ValueError(f"--resume {args.resume}: {saved} is not readable ({e}); it is written at the start "
                             f"of every run, so this folder's run cannot be continued: start a new one") from None
        try:
            saved_config = TrainConfig.from_dict(base)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--resume {args.resume}: {saved} does not hold a run's settings ({e}); start a new "
                             f"run (another --out) instead") from None
        flat = saved_config.flat()
        changed = sorted(k for k, v in values.items() if v is not None and k not in RESUMABLE and flat.get(k) != v)
        if changed:
            raise ValueError(f"--resume keeps the run's settings; these flags would change them: {changed}. "
                             f"Start a new run (another --out) instead")
        flat.update({k: v for k, v in values.items() if v is not None})
        flat["out"] = str(args.resume)
        return TrainConfig.from_flags(flat), True
    from mtan.train.run_folder import command_line

    config = apply_preset(args.preset, values)
    config.command = command_line()
    return config, False


def main(argv=None, description: str | None = None) -> int:
    """``python train.py ...``: the run, and its exit code (0 finished, 2 bad input or an unusable
    run folder or a failed write, 3 a loss that became NaN or infinite, 130 interrupted)."""
    args = parser(description).parse_args(argv)
    import torch

    from mtan.checkpoint import CheckpointError
    from mtan.data import DatasetError
    from mtan.model import ModelConfigError
    from mtan.train import NonFiniteLossError, train

    config = None
    try:
        config, resume = config_from_args(args)
        train(config, resume=resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except (DatasetError, ModelConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # e.g. a full disk or a vanished folder outside the checkpoint writer
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except torch.OutOfMemoryError:
        print("error: the device ran out of memory; lower --batch-size (or --size, --width), or use --amp bf16 "
              "on a GPU", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch's checkpoint is kept; continue with "
              f"python train.py --resume {config.out if config else args.resume or args.out or 'RUN_DIR'}",
              file=sys.stderr)
        return 130
    return 0
