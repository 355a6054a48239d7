"""A twin run: the same training command with photos held out, whose figures on them stand in
for a run trained on every labelled photo (``python -m mtan.release RUN OUT --twin TWIN_RUN``).

:func:`twin_of` checks that the twin is the run's recipe, :func:`measure_twin` scores it on the
photos it held out as the app runs photos, :func:`twin_text` is the card's section.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mtan.data import build_dataset
from mtan.data.registry import spec
from mtan.evaluate import evaluate
from mtan.model import MTAN
from mtan.tasks import find_task
from mtan.train import TrainConfig

# (mtan.release's run helpers are imported where they are used: mtan.release imports this module)

TWIN_MAY_DIFFER = ("command", "engine.out", "model.init_from")  # and data.options: how the photos are split


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _same_start(a: str | None, b: str | None) -> bool:
    """Whether two ``--init-from`` values start from the same weights (the same name, or folders
    whose model.safetensors are byte for byte the same)."""
    if a == b:
        return True
    files = [Path(x) / "model.safetensors" for x in (a, b) if x]
    return len(files) == 2 and all(f.is_file() for f in files) and files[0].read_bytes() == files[1].read_bytes()


def twin_of(run_config, twin_run: Path) -> tuple[object, dict]:
    """The twin run's config and the ``evaluate`` arguments of its held-out real photos, after
    checking that it is this run's recipe with photos held out (an error that names every other
    difference otherwise)."""
    from mtan.release import run_datasets

    for name in ("train_config.json", "model.safetensors", "config.json"):
        if not (twin_run / name).is_file():
            raise FileNotFoundError(f"--twin {twin_run}: not a finished training run ({name} is missing)")
    twin_config = TrainConfig.from_dict(json.loads((twin_run / "train_config.json").read_text()))
    mine, theirs = _flat(dataclasses.asdict(run_config)), _flat(dataclasses.asdict(twin_config))
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                    and k not in TWIN_MAY_DIFFER and not k.startswith("data.options."))
    if not _same_start(run_config.model.init_from, twin_config.model.init_from):
        differ.append("model.init_from (other weights)")
    if differ:
        raise ValueError(f"--twin {twin_run}: its recipe differs from this run's in {', '.join(differ)}; a twin is "
                         "the same training command with photos held out (only its data options may differ)")
    real = [d for d in run_datasets(twin_config) if spec(d["data"]).own_size]
    if not real or not spec(real[0]["data"]).holds_out(real[0]["kwargs"]["options"]):
        raise ValueError(f"--twin {twin_run}: it holds no real photos out of its training, so it has no unseen "
                         "photos to score (train it with e.g. --data-option camvid.splits=blocks)")
    mine_real = [d for d in run_datasets(run_config) if spec(d["data"]).own_size]
    if mine_real and spec(mine_real[0]["data"]).holds_out(mine_real[0]["kwargs"]["options"]):
        raise ValueError("--twin: this run holds photos out already (its own validation figures are of unseen "
                         "photos); a twin stands in for a run trained on every photo (e.g. camvid.splits=all)")
    return twin_config, real[0]


def measure_twin(twin_run: Path, config, resolution: str, calibrate: bool, average: float | None = None,
                 log=print) -> dict:
    """The twin's figures on the photos it held out, as the app runs them at ``resolution``,
    with and without the mirror average (averaged with its own start first when ``average`` is
    the run's share, then calibrated on its own training photos when ``calibrate``), and the
    commands that reproduce them."""
    from mtan.release import average_with_start, calibrate_on_run, home_to_tilde

    twin_config, held = twin_of(config, twin_run)
    model = MTAN.from_pretrained(twin_run).eval()
    if average is not None:
        average_with_start(model, twin_config, average, log=log)
    calibration = None
    if calibrate:
        log(f"fitting the twin's class bias on its training photos ({twin_run}) ...")
        bias, calibration = calibrate_on_run(model, twin_config, log=log)
        find_task(model.tasks, "semantic").class_bias = tuple(float(v) for v in bias)
    log(f"scoring the twin on the {held['name']} it held out ...")
    kwargs = held["kwargs"] | {"app_resolution": resolution}
    results, mirrored = evaluate(model, **kwargs), evaluate(model, **kwargs, flip=True)
    photos = len(build_dataset(held["data"], root=held["kwargs"]["data_root"], split="val", **held["kwargs"]["options"]))
    command = f"{held['command'].replace('MODEL', 'TWIN')} --app-resolution {resolution}"
    return {"run": home_to_tilde(str(twin_run)), "training_command": home_to_tilde(twin_config.command),
            "dataset": held["name"], "photos": photos, "resolution": resolution, "results": results,
            "mirrored": mirrored, "command": command, "mirror_command": command + " --flip",
            "calibration_command": calibration["fitted_on"]["command"].replace("MODEL", "TWIN") if calibration else None,
            "average": average, "start": home_to_tilde(twin_config.model.init_from) if average is not None else None}


TWIN_ROWS = ("semantic.miou", "semantic.iou.*", "depth_order.objects_nearer", "depth_order.sky_farthest",
             "depth_order.ground_row_spearman")


def twin_text(twin: dict) -> str:
    """The card's section on the twin's held-out figures."""
    keys = [k for pattern in TWIN_ROWS for k in twin["results"]
            if (k.startswith(pattern[:-1]) if pattern.endswith("*") else k == pattern)]
    rows = "\n".join(f"| {k} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.4f}"
                                              for r in (twin["results"], twin["mirrored"])) + " |" for k in keys)
    average = twin.get("average")
    averaged = (f", averaged with its start the same way ({average:g} / {1 - average:g}, `{twin['start']}`)"
                if average is not None else "")
    folder = ("TWIN is the twin's run folder" if average is None else
              f"TWIN is the twin averaged with its start: `python -m mtan.release TWIN_RUN TWIN --average-start "
              f"{average:g} --no-latency --no-precision-check`, TWIN_RUN the twin's run folder")
    calibrated = (f", calibrated the same way on its own training photos (`{twin['calibration_command']}`)"
                  if twin["calibration_command"] else "")
    return (f"Every labelled real photo is in this model's training, so none is left to show how it does on photos it "
            f"has not seen. Its twin is trained by the same command with photos held out (`{twin['training_command']}`)"
            f"{averaged}{calibrated}; its figures on {twin['dataset']}, the {twin['photos']} photos it held out, scored as the "
            f"app runs photos at {twin['resolution']}, stand for this model's on unseen photos (`{twin['command']}`, "
            f"and with `--flip` for the mirror average; {folder}):\n\n"
            f"| held out, twin | as the app runs photos | with the mirror average |\n|---|---|---|\n{rows}")
