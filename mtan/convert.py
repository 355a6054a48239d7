"""Convert a checkpoint of the original MTAN implementation into an ``MTAN.from_pretrained`` folder.

    python -m mtan.convert model_segnet_mtan.pth converted/
    python -c "from mtan import MTAN; MTAN.from_pretrained('converted')"

The original code saves ``model.state_dict()`` with keys such as ``encoder_block.0.0.weight``,
``encoder_att.1.3.0.weight`` and ``pred_task2.1.weight`` (the full list for NYUv2 is in
``tests/data/reference_state_dict_manifest.tsv``). The converter reads the file with
``torch.load(..., weights_only=True)`` (no code from the file is executed), finds the tasks,
class count and width from the tensors, renames every tensor to this project's layout and
writes ``config.json`` + ``model.safetensors`` + a model card.

Task order is the original's: ``pred_task1`` semantic, ``pred_task2`` depth, ``pred_task3``
normals. CityScapes checkpoints have two tasks (inverse depth), NYUv2 ones three (metric
depth). ``logsigma`` (uncertainty weighting's log-variances) is training state, not part of
the network, and is reported but not kept.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from mtan.model import MTAN, NUM_STAGES, ModelConfigError, count_parameters
from mtan.tasks import CLASS_SETS, class_set_for

TASK_ORDER = ("semantic", "depth", "normal")


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the tensors or fields at fault."""


def _level(j: str) -> int:
    """Original decoder modules are indexed by encoder level j; ours by run order i = 4 - j."""
    return NUM_STAGES - 1 - int(j)


def rename(key: str, task_names: list[str]) -> str | None:
    """This project's name for an original key (``None`` for keys that are not network weights)."""

    def task(n: str) -> str:
        return task_names[int(n)]

    def refine(j: str, rest: str) -> str:
        # conv_block_enc/dec: stages j <= 1 have a single conv_layer ("0.weight" = conv,
        # "1.*" = BN); stages j >= 2 a Sequential of two ("k.0.weight").
        return f"refine.{rest}" if re.match(r"\d+\.\d+\.", rest) else f"refine.0.{rest}"

    rules = [
        (r"encoder_block\.(\d)\.(.+)", lambda m: f"encoder.stages.{m[1]}.first.{m[2]}"),
        (r"conv_block_enc\.(\d)\.(.+)", lambda m: f"encoder.stages.{m[1]}.{refine(m[1], m[2])}"),
        (r"decoder_block\.(\d)\.(.+)", lambda m: f"decoder.stages.{_level(m[1])}.first.{m[2]}"),
        (r"conv_block_dec\.(\d)\.(.+)", lambda m: f"decoder.stages.{_level(m[1])}.{refine(m[1], m[2])}"),
        (r"encoder_att\.(\d+)\.(\d)\.(.+)", lambda m: f"attention.{task(m[1])}.encoder.{m[2]}.{m[3]}"),
        (r"decoder_att\.(\d+)\.(\d)\.(.+)", lambda m: f"attention.{task(m[1])}.decoder.{_level(m[2])}.{m[3]}"),
        (r"encoder_block_att\.(\d)\.(.+)", lambda m: f"attention_convs.encoder.{m[1]}.{m[2]}"),
        (r"decoder_block_att\.(\d)\.(.+)", lambda m: f"attention_convs.decoder.{_level(m[1])}.{m[2]}"),
        (r"pred_task(\d)\.(.+)", lambda m: f"heads.{task_names[int(m[1]) - 1]}.{m[2]}"),
        (r"pred_task\.(.+)", lambda m: f"heads.{task_names[0]}.{m[1]}"),
    ]
    for pattern, build in rules:
        m = re.fullmatch(pattern, key)
        if m:
            try:
                return build(m)
            except IndexError:
                raise ConversionError(f"tensor {key!r} refers to a task the checkpoint's heads do not define") from None
    return None


def load_original(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Read an original checkpoint safely and return its flat state_dict."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise ConversionError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}). "
            f"The converter only reads tensors; if the file holds a whole pickled model object, load it "
            f"in the original code and save model.state_dict() instead") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state_dict (a dict of tensor names to tensors)")
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in obj.items())


def infer_config(state: dict, class_set: str | None = None, depth_kind: str | None = None,
                 single_task: str | None = None) -> dict:
    """Tasks, architecture and width from the tensors of an original checkpoint."""
    if "encoder_block.0.0.weight" not in state:
        raise ConversionError("missing tensor 'encoder_block.0.0.weight': this is not an original SegNet/MTAN checkpoint")
    width = state["encoder_block.0.0.weight"].shape[0] / 64
    heads = sorted(int(m[1]) for k in state if (m := re.fullmatch(r"pred_task(\d)\.1\.weight", k)))
    if "pred_task.1.weight" in state:
        arch = "single"
        channels = state["pred_task.1.weight"].shape[0]
        kind = single_task or {1: "depth", 3: "normal"}.get(channels, "semantic")
        kinds = [kind]
    else:
        if heads != list(range(1, len(heads) + 1)) or not heads:
            raise ConversionError(f"prediction heads pred_task{heads} found; expected pred_task1..N "
                                  f"(1 semantic, 2 depth, 3 normals)")
        arch = "mtan" if any(k.startswith("encoder_att.") for k in state) else "split"
        kinds = list(TASK_ORDER[: len(heads)])
    def semantic(key: str, channels: int) -> dict:
        if class_set:
            if class_set not in CLASS_SETS:
                raise ConversionError(f"--class-set {class_set!r} unknown; known: {', '.join(CLASS_SETS)}")
            if CLASS_SETS[class_set].num_classes != channels:
                raise ConversionError(f"--class-set {class_set} has {CLASS_SETS[class_set].num_classes} classes "
                                      f"but {key} predicts {channels}")
            cs = CLASS_SETS[class_set]
        else:
            cs = class_set_for(channels)
        cfg = {"name": "semantic", "kind": "semantic"}
        if cs.name in CLASS_SETS:
            cfg["class_set"] = cs.name
        else:
            cfg["num_classes"] = channels
        return cfg

    def depth(key: str, channels: int) -> dict:
        return {"name": "depth", "kind": "depth", "depth_kind": depth_kind or ("metric" if len(kinds) == 3 else "inverse")}

    def normal(key: str, channels: int) -> dict:
        return {"name": "normal", "kind": "normal"}

    config_of = {"semantic": semantic, "depth": depth, "normal": normal}
    tasks = []
    for n, kind in enumerate(kinds, start=1):
        key = "pred_task.1.weight" if arch == "single" else f"pred_task{n}.1.weight"
        tasks.append(config_of[kind](key, state[key].shape[0]))
    return {"tasks": tasks, "arch": arch, "width": width}


def convert_state_dict(state: dict, config: dict) -> tuple[MTAN, list[str]]:
    """Build the model for ``config`` and fill it from the original ``state``.

    Returns the model and notes on what was dropped. Missing, unexpected or mis-shaped tensors
    raise a ConversionError naming them (by their original names).
    """
    try:
        model = MTAN(**config)
    except ModelConfigError as e:
        raise ConversionError(str(e)) from None
    names = [t["name"] for t in config["tasks"]]
    target = model.state_dict()
    converted, origin, unexpected, wrong, notes = {}, {}, [], [], []
    for key, value in state.items():
        if key == "logsigma":
            notes.append(f"dropped 'logsigma' {[round(float(v), 4) for v in value.reshape(-1)]} "
                         f"(uncertainty weighting's log-variances: training state, not network weights)")
            continue
        new = rename(key, names)
        if new is None or new not in target:
            unexpected.append(key)
            continue
        if value.shape != target[new].shape:
            wrong.append(f"{key} {tuple(value.shape)} (expected {tuple(target[new].shape)})")
            continue
        converted[new] = value.to(target[new].dtype)
        origin[new] = key
    missing = [k for k in target if k not in converted]
    if missing or unexpected or wrong:
        msg = []
        if missing:
            msg.append(f"missing tensors (this project's names): {', '.join(missing[:8])}"
                       + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        if unexpected:
            msg.append(f"unexpected tensors: {', '.join(unexpected[:8])}"
                       + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
        if wrong:
            msg.append(f"mis-shaped tensors: {', '.join(wrong[:8])}" + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""))
        raise ConversionError("the checkpoint does not match an original "
                              f"{config['arch']} network with tasks {names} and width {config['width']:g}: "
                              + "; ".join(msg))
    model.load_state_dict(converted, strict=True)
    model.eval()
    return model, notes


def convert(checkpoint: str | Path, out_dir: str | Path, class_set: str | None = None,
            depth_kind: str | None = None, single_task: str | None = None) -> MTAN:
    """Read ``checkpoint`` (original layout), write an ``MTAN.from_pretrained`` folder to ``out_dir``."""
    state = load_original(checkpoint)
    config = infer_config(state, class_set=class_set, depth_kind=depth_kind, single_task=single_task)
    model, notes = convert_state_dict(state, config)
    data = {"cityscapes-7": "CityScapes (7 categories)", "cityscapes-19": "CityScapes (19 classes)",
            "nyuv2-13": "NYUv2 (13 classes)"}.get(config["tasks"][0].get("class_set", ""))
    model.save_pretrained(out_dir, model_card_kwargs={
        "training_command": None,
        "data": (data + ", " if data else "") + f"converted from the original implementation's checkpoint "
                f"`{Path(checkpoint).name}` with `python -m mtan.convert`",
        "notes": "\n".join(notes) or None})
    for n in notes:
        print(n)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtan.convert",
        description="Convert a state_dict saved by the original MTAN implementation (SegNet-MTAN, split or "
                    "single-task SegNet) into a folder that MTAN.from_pretrained loads (config.json + "
                    "model.safetensors + model card). Tasks, class count and width are read from the tensors: "
                    "pred_task1 = semantic, pred_task2 = depth, pred_task3 = normals. Two tasks are taken as "
                    "CityScapes (inverse depth), three as NYUv2 (metric depth). The file is read with "
                    "torch.load(weights_only=True), so no code inside it runs.",
        epilog="example: python -m mtan.convert model_segnet_mtan.pth converted/ && "
               "python -c \"from mtan import MTAN; MTAN.from_pretrained('converted')\"")
    parser.add_argument("checkpoint", help="the original .pth file (a state_dict, optionally wrapped in "
                                           "{'state_dict': ...} or with DataParallel's 'module.' prefix)")
    parser.add_argument("out_dir", help="output folder (created)")
    parser.add_argument("--class-set", choices=sorted(CLASS_SETS), default=None,
                        help="name the semantic classes (default: guessed from the class count: 7 CityScapes "
                             "categories, 19 CityScapes classes, 13 NYUv2, 11 CamVid)")
    parser.add_argument("--depth-kind", choices=("inverse", "metric"), default=None,
                        help="depth units (default: inverse for 2-task CityScapes checkpoints, metric for 3-task NYUv2)")
    parser.add_argument("--task", choices=TASK_ORDER, default=None,
                        help="for single-task checkpoints: which task the 'pred_task' head predicts "
                             "(default: from its channels: 1 depth, 3 normal, else semantic)")
    args = parser.parse_args(argv)
    try:
        model = convert(args.checkpoint, args.out_dir, class_set=args.class_set, depth_kind=args.depth_kind,
                        single_task=args.task)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: arch={model.arch}, tasks={model.task_names}, width={model.width:g}, "
          f"{count_parameters(model):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
