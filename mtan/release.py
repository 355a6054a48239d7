"""Turn a finished training run into a documented model folder (how ``weights/`` is made).

    python -m mtan.release runs/demo weights

The run's model is evaluated with :func:`mtan.evaluate.evaluate` on the validation split of
every part of its training data (exactly what ``python -m mtan.evaluate`` prints, so the card's
numbers can be checked with the commands it lists); it is scored at each of the app's processing
resolutions (``resolutions.json``) and in each reduced precision (``precisions.json``: which keep
its quality, see :mod:`mtan.precision`); its forward time is measured on this machine's CPU at
256x512 through the app's inference path (``mtan.inference.fast``, in the fastest kept precision), and the
folder gets ``model.safetensors``, ``config.json`` and a model card with the data, the command,
the training time and hardware, the metrics, the speed and the limits.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mtan.calibrate import CALIBRATION_FILE, fit
from mtan.cli import help_text
from mtan.data import DatasetError, build_dataset, parse_size
from mtan.data.registry import SPECS, spec
from mtan.evaluate import evaluate
from mtan.inference.fast import optimize_for_inference
from mtan.malloc import tune_malloc
from mtan.model import MTAN, ModelConfigError, count_parameters
from mtan.precision import (
    ERROR_TOLERANCE,
    MIOU_TOLERANCE,
    calibration_images,
    check_precisions,
)
from mtan.precision import table as precision_table
from mtan.records import (
    DEFAULT_RESOLUTION,
    MIRROR_GAIN,
    PRECISIONS_FILE,
    RESOLUTION_GAIN,
    RESOLUTION_TOLERANCE,
    RESOLUTIONS,
    RESOLUTIONS_FILE,
    ResolutionAdvice,
    allowed_precisions,
    int8_scales,
    write_record,
)
from mtan.tasks import find_task
from mtan.timing import cpu_name
from mtan.train import TrainConfig
from mtan.train.datasets import builder_options
from mtan.twin import measure_twin, twin_of, twin_text


def data_description(part: str, options: dict | None = None) -> tuple[str, str]:
    """(the card's name, the Hub's dataset type) of a part's validation data with these options."""
    return spec(part).describe(options)


LIMITS = """\
- **Trained on**: {trained_on}. Nothing else: no night, rain, snow, motorway, rural or indoor
  scenes, no cameras other than a car's forward view. Photos far from that (a selfie, a
  bird's-eye view, a painting) get confident but meaningless maps.
- **Classes**: the 7 CityScapes categories only (flat, construction, object, nature, sky, human,
  vehicle). Small objects (poles, signs, distant people) are the weakest, as the per-dataset
  mIoU above shows; the network is {width_note}.
- **Depth on real photos** was learned from generated scenes (exact depth) and from ground-plane
  pseudo-depth on CamVid (no measured depth): it is a relative map, right in its ordering (the
  road recedes towards the horizon, the sky is farthest, what stands closer is brighter) and only
  roughly right in metres (the camera height and field of view of the CamVid camera are
  assumed, not known). Do not use it to measure distances.
- **Resolution**: trained at {size}; how well it holds up at each of the app's processing
  resolutions is measured under *Processing resolutions* (the app offers only those within 0.03
  mIoU of the best).
"""

PSEUDO_DEPTH = """\
CamVid has no depth ground truth, so its depth targets are geometric (`mtan/data/pseudo_depth.py`):
the horizon row is estimated from the CamVid training labels (a low percentile of the highest
road pixel per frame: {horizon:.3f} of the image height), road and pavement pixels get the
inverse depth of a level ground plane seen from an assumed camera (height {cam_h} m, horizontal
field of view {hfov} degrees: the middle of the generated cameras' ranges), every vertical run of
one class that stands on road or pavement (facades, poles, people, cars) gets the depth of its
contact row, a facade or tree whose foot a nearer car or person hides gets the depth of its
visible foot in the same row (so depth steps back behind objects), and sky gets a far target
({sky:g}, i.e. 18.5 km). Other pixels have no target.
The generated scenes (domain-randomised cameras, lighting, materials, weather haze) supply exact
depth, with the same far target for sky. Validation keeps the CityScapes convention (sky has no
depth), so the generated-scene depth errors above are over surfaces only.
"""


def forward_latency(model, size=(256, 512), repeats: int = 7, allowed=("fp32",), int8_scales=None) -> dict:
    """Median forward time (s) at ``size``, batch 1, on the CPU, through the app's path (mtan.inference.fast):
    the precision the app would choose here among ``allowed`` (timed afresh), and float32."""
    from mtan.data.synthetic import render_frame

    frame = render_frame(0, 0, *size, stream=1)["image"]
    x = torch.from_numpy(frame).permute(2, 0, 1).float().div(255)[None]
    model = model.cpu().eval()
    runner = optimize_for_inference(model, device="cpu", allowed=allowed, size=size, remember=False,
                                    int8_scales=int8_scales)
    times = []
    with torch.inference_mode():
        runner(x)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            runner(x)
            times.append(time.perf_counter() - t)
    return {"size": f"{size[0]}x{size[1]}", "median_s": statistics.median(times), "min_s": min(times),
            "precision": runner.precision, "choice": runner.choice, "cpu": cpu_name(),
            "threads": torch.get_num_threads()}


def run_datasets(config) -> list[dict]:
    """The validation split of every part of the run's data: ``evaluate`` keyword arguments (real
    photos at their own size, generated scenes at the run's) and the command that scores it."""
    parts = config.data.name.split("+")
    roots = (config.data.root or "").split("+") if config.data.root else [None] * len(parts)
    roots = roots if len(roots) == len(parts) else [None] * len(parts)
    datasets = []
    for part, root in zip(parts, roots):
        options = builder_options(config, part, "val")
        size = None if spec(part).own_size else config.data.size  # real photos are scored at their own size
        command = ["python -m mtan.evaluate --model MODEL", f"--data {part}"]
        if root:
            command.append(f"--data-root {root}")
        if size:
            command.append(f"--size {size}")
        command += spec(part).evaluate_args(options, config.data.labels)
        command += [f"--data-option {k}={v}" for k, v in sorted(config.data.options.get(part, {}).items())]
        name, kind = data_description(part, config.data.options.get(part, {}))
        datasets.append({"name": name, "type": kind, "data": part, "command": " ".join(command),
                         "kwargs": {"data": part, "data_root": root or None, "split": "val", "size": size,
                                    "options": options}})
    return datasets


def evaluate_run(model, config) -> list[dict]:
    """The model on the validation split of every part of the run's data, with the command that
    reproduces each figure."""
    return [{k: d[k] for k in ("name", "type", "data", "command")} | {"results": evaluate(model, **d["kwargs"])}
            for d in run_datasets(config)]


def check_run_precisions(model, config, resolution: str, log=print) -> dict:
    """Which precisions keep the model's quality (:mod:`mtan.precision`) on the run's validation
    sets, scored as the app runs photos at ``resolution``."""
    datasets = run_datasets(config)
    evaluations = [{"name": f"{d['data']} val at {resolution}", "kwargs": d["kwargs"] | {"app_resolution": resolution}}
                   for d in datasets]
    calibration = calibration_images([d["data"] for d in datasets], parse_size(resolution),
                                     roots=[d["kwargs"]["data_root"] for d in datasets])
    return check_precisions(model, evaluations, calibration=calibration, log=log)


def augmentation_text(config) -> str:
    """The run's augmentation in words, for a card."""
    if not config.data.augment:
        return "without augmentation"
    zoom = (f"random zoom {config.data.scale_range.replace(',', '-')} (out as well as in)" if config.data.scale_range
            else "random scale-crop {1, 1.2, 1.5}")
    parts = [zoom + (f" to {config.data.crop} crops" if config.data.crop else ""), "horizontal flip"]
    if config.data.focus_crops:
        parts.append(f"{config.data.focus_crops:.0%} of the crops centred on a pixel drawn with every class in the "
                     "photo equally likely")
    if config.data.paste_names():
        parts.append(f"{' and '.join(config.data.paste_names())} pixels pasted from crop to crop in half of the crops")
    if config.data.photometric:
        parts.append("photometric augmentation (colour, gamma, blur, JPEG artefacts, noise)")
    return "with " + ", ".join(parts)


def optimiser_text(config) -> str:
    name = "AdamW" if config.optim.optimizer == "adamw" else "Adam"
    decay = f", weight decay {config.optim.weight_decay:g}" if config.optim.weight_decay else ""
    if config.optim.schedule == "step":
        return f"{name} lr {config.optim.lr:g}{decay} (x{config.optim.gamma:g} every {config.optim.step_size} epochs)"
    warmup = f"{config.optim.warmup_epochs:g}-epoch warm-up, then " if config.optim.warmup_epochs else ""
    return f"{name} lr {config.optim.lr:g}{decay} ({warmup}{config.optim.schedule} decay to 0)"


def training_facts(run: Path) -> dict:
    """Epochs, total training time and throughput from the run's metrics.jsonl."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(r.get("epoch_seconds", 0) + r.get("eval_seconds", 0) for r in lines)
    return {"epochs": len(lines), "seconds": seconds,
            "images_per_second": statistics.median(r["images_per_second"] for r in lines) if lines else None}


def training_stages(run: Path, config) -> list[tuple[object, dict]]:
    """(config, facts) of the run and of the runs it was initialised from (``--init-from`` a run
    folder), oldest first."""
    stages = [(config, training_facts(run))]
    seen = {run.resolve()}
    while config.model.init_from and (Path(config.model.init_from) / "train_config.json").is_file() \
            and Path(config.model.init_from).resolve() not in seen:
        run = Path(config.model.init_from)
        seen.add(run.resolve())
        config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
        stages.insert(0, (config, training_facts(run)))
    return stages


def measure_resolutions(model, config) -> dict | None:
    """mIoU at each of the app's processing resolutions, scored as the app sees photos, on the
    validation photos of the run's real data (CamVid when it is part of it, else its first part)."""
    parts = config.data.name.split("+")
    part = next((p for p in parts if spec(p).own_size), parts[0])
    roots = (config.data.root or "").split("+") if config.data.root else [None] * len(parts)
    root = roots[parts.index(part)] if len(roots) == len(parts) else None
    options = builder_options(config, part, "val")
    size = None if spec(part).own_size else config.data.size  # real photos at their own size
    scores = {}
    for resolution in RESOLUTIONS:
        result = evaluate(model, part, data_root=root or None, split="val", size=size, options=options,
                          app_resolution=resolution)
        if result.get("semantic.miou") is None:
            return None
        scores[resolution] = result["semantic.miou"]
    start = ResolutionAdvice.from_record({"scores": scores}).default
    mirrored = evaluate(model, part, data_root=root or None, split="val", size=size, options=options,
                        app_resolution=start, flip=True)["semantic.miou"]
    name = data_description(part, config.data.options.get(part, {}))[0]
    extra = "".join(f" --data-option {k}={v}" for k, v in sorted(config.data.options.get(part, {}).items()))
    command = f"python -m mtan.evaluate --model MODEL --data {part}{extra} --app-resolution RESOLUTION"
    return {"dataset": name, "metric": "semantic.miou", "scores": scores, "mirror": {start: mirrored},
            "command": command, "mirror_command": command.replace("RESOLUTION", start) + " --flip"}


def home_to_tilde(text: str | None) -> str | None:
    """A command as a card shows it: the home folder written ``~`` (no machine's paths on a card)."""
    return text.replace(str(Path.home()) + "/", "~/") if text else text


def start_of(config, share: float) -> str:
    """The model folder a run started from (``--init-from``), checked for ``--average-start share``
    (a clear error for a share outside (0, 1], a run trained from scratch, or a start that is gone)."""
    if not 0 < share <= 1:
        raise ValueError(f"--average-start {share:g}: the run's share must be above 0 and at most 1 (e.g. 0.5)")
    start = config.model.init_from
    if not start:
        raise ValueError("--average-start: this run trained from scratch (no --init-from), so it has no start to "
                         "average with")
    if not (Path(start) / "model.safetensors").is_file():
        raise FileNotFoundError(f"--average-start: the run's start {start} is not a model folder any more "
                                "(model.safetensors is missing); put it back where the run found it")
    return start


def average_with_start(model, config, share: float, log=print) -> None:
    """Replace ``model``'s weights by ``share`` x its own + (1 - share) x those of the model its run
    started from (``--init-from``): weight-space averaging of a fine-tuned model with its start
    (WiSE-FT, Wortsman et al., CVPR 2022), which keeps part of what fine-tuning changed and part of
    what the start knew. Buffers that count (BatchNorm's batch counter) are kept as they are."""
    start = start_of(config, share)
    log(f"averaging the weights with the run's start ({start}), {share:g} / {1 - share:g} ...")
    own, theirs = model.state_dict(), MTAN.from_pretrained(start).state_dict()
    differ = sorted(k for k in own.keys() | theirs.keys() if k not in own or k not in theirs
                    or own[k].shape != theirs[k].shape)
    if differ:
        raise ValueError(f"--average-start: the run's start {start} has another architecture ({len(differ)} "
                         f"weights differ, e.g. {differ[0]}); only a run with the start's width and tasks can be "
                         "averaged with it")
    model.load_state_dict({k: torch.lerp(theirs[k].to(v.dtype), v, share) if v.is_floating_point() else v
                           for k, v in own.items()})


def calibrate_on_run(model, config, log=print) -> tuple[object, dict]:
    """The class bias (:mod:`mtan.calibrate`) fitted on the training photos of the run's real data
    (its first part of real photos, at their own size, as the app runs them) and scored on
    its validation photos; and the record."""
    datasets = [d for d in run_datasets(config) if spec(d["data"]).own_size]
    if not datasets:
        real = ", ".join(name for name, s in SPECS.items() if s.own_size)
        raise ValueError(f"--calibrate fits the class bias on labelled real photos, and the run's data "
                         f"({config.data.name}) has none of {real}")
    kw = datasets[0]["kwargs"]
    fit_data = build_dataset(kw["data"], root=kw["data_root"], split="train", **kw["options"])
    held_out = spec(kw["data"]).holds_out(kw["options"])  # else val is among the photos fitted on: no check
    check = build_dataset(kw["data"], root=kw["data_root"], split="val", **kw["options"]) if held_out else None
    bias, record = fit(model, fit_data, check, DEFAULT_RESOLUTION, log=log)
    options = "".join(f" --data-option {k}={v}" for k, v in sorted(kw["options"].items()))
    record["fitted_on"].update({"data": kw["data"], "split": "train", "options": kw["options"],
                                "command": f"python -m mtan.calibrate MODEL --data {kw['data']}{options} --split train"
                                           + (" --check-split val" if held_out else "")})
    if held_out:
        record["check"]["split"] = "val"
    return bias, record


def calibration_text(record: dict) -> str:
    """The card's section on the class bias: what it is, where it was fitted, what it changes."""
    fit, check = record["fit"], record.get("check") or {}
    names = list(record["class_bias"])
    rows = [f"| mIoU | {fit['miou_without']:.4f} | {fit['miou_with']:.4f} |"
            + (f" {check['miou_without']:.4f} | {check['miou_with']:.4f} |" if check else "")]
    for n in names:
        def cell(part, key):
            v = part[key].get(n)
            return "-" if v is None else f"{v:.3f}"
        rows.append(f"| IoU {n} | {cell(fit, 'iou_without')} | {cell(fit, 'iou_with')} |"
                    + (f" {cell(check, 'iou_without')} | {cell(check, 'iou_with')} |" if check else ""))
    if check:
        human = "human" if "human" in names else None
        if human:
            s = check["shares_without"][human], check["shares_with"][human]
            rows.append(f"| pixels called {human} (labelled {s[0]['labelled']:.2%}) | | | {s[0]['predicted']:.2%} | "
                        f"{s[1]['predicted']:.2%} |")
    head = "| | fitted on: without | with |" + (" not fitted on: without | with |" if check else "")
    line = "|---|---|---|" + ("---|---|" if check else "")
    bias = ", ".join(f"{n} {v:+.2f}" for n, v in record["class_bias"].items())
    fitted = record["fitted_on"]
    return (f"A per-class bias is added to the segmentation's class scores before the class is chosen "
            f"({bias}; `class_bias` in `config.json`, applied wherever the model is used). It is fitted after "
            f"training on {fitted['photos']} labelled {fitted['data']} photos ({fitted['split']} split), run as the "
            f"app runs photos at {fitted['app_resolution']}, to the best mean IoU: the class balance used in "
            f"training makes rare classes (people, poles and signs) seem far more likely than they are, and this "
            f"undoes most of that. Scored as the app runs photos at {fitted['app_resolution']}"
            + (f"; \"not fitted on\" is the {check['photos']} photos of the {check.get('split', 'val')} split" if check
               else "") + f" (`calibration.json`; `{fitted.get('command', 'python -m mtan.calibrate')}`):\n\n"
            + head + "\n" + line + "\n" + "\n".join(rows))


@dataclass
class Figures:
    """What a release measures of a run's model before it writes anything."""

    evaluations: list[dict]            # each validation set's metrics and the command that scores them
    resolutions: dict | None           # mIoU at each of the app's processing resolutions
    best: str                          # the resolution the app starts at
    precisions: dict | None            # each precision's quality (precisions.json)
    speed: dict | None                 # the forward time as the app runs it
    calibration: dict | None           # the class bias's record, when one was fitted
    twin: dict | None = None           # a twin run's figures on the photos it held out (--twin)
    average: float | None = None       # the run's share when averaged with its start (--average-start)

    @property
    def allowed(self) -> tuple[str, ...]:
        return allowed_precisions(self.precisions)


def measure(model, config, latency: bool = True, check_precision: bool = True, calibrate: bool = False,
            twin: Path | None = None, average: float | None = None, log=print) -> Figures:
    """Average with the run's start (when asked, :func:`average_with_start`), calibrate (when
    asked: the class bias goes into ``model``), score every validation set, the app's processing
    resolutions and each precision, time the forward pass, and score the ``twin`` run (the same
    recipe with photos held out, averaged and calibrated the same way) on the photos it held out."""
    if average is not None:
        average_with_start(model, config, average, log=log)
    calibration = None
    if calibrate:
        log("fitting the class bias on the run's real training photos ...")
        bias, calibration = calibrate_on_run(model, config, log=log)
        find_task(model.tasks, "semantic").class_bias = tuple(float(v) for v in bias)
    log(f"evaluating the run on the validation split of {config.data.name} ...")
    evaluations = evaluate_run(model, config)
    log("scoring the app's processing resolutions ...")
    resolutions = measure_resolutions(model, config)
    best = ResolutionAdvice.from_record(resolutions).default
    precisions = check_run_precisions(model, config, best, log=log) if check_precision else None
    speed = (forward_latency(model, allowed=allowed_precisions(precisions), int8_scales=int8_scales(precisions))
             if latency else None)
    held_out = measure_twin(twin, config, best, calibrate, average, log=log) if twin else None
    return Figures(evaluations, resolutions, best, precisions, speed, calibration, held_out, average)


def training_text(run: Path, config, hardware: str | None, average: float | None = None) -> tuple[str, dict, int]:
    """The card's *Training* section (each stage's command, epochs, hours and settings, and the
    averaging with the last stage's start), the facts behind it, and how many stages there were."""
    stages = training_stages(run, config)
    total_hours = sum(f["seconds"] for _, f in stages) / 3600
    texts = []
    for n, (cfg, f) in enumerate(stages, 1):
        head = f"Stage {n}" if len(stages) > 1 else "The run"
        texts.append(
            f"{head}:\n\n```bash\n{home_to_tilde(cfg.command) or 'python train.py --preset ' + str(cfg.preset)}\n```\n\n"
            f"{f['epochs']} epoch{'s' if f['epochs'] != 1 else ''}, {f['seconds'] / 3600:.2f} h of training and "
            f"validation ({f['images_per_second']:.1f} training images/s). {optimiser_text(cfg)}, batch "
            f"{cfg.optim.batch_size}, {cfg.optim.weighting} loss weighting"
            + (f", {cfg.loss.semantic.class_weights} class weights" if cfg.loss.semantic.class_weights != "none" else "")
            + (f", label smoothing {cfg.loss.semantic.label_smoothing:g}" if cfg.loss.semantic.label_smoothing else "")
            + (f", hard-pixel share {cfg.loss.semantic.hard_pixels:g}" if cfg.loss.semantic.hard_pixels < 1 else "")
            + (f", Lovasz-softmax {cfg.loss.semantic.lovasz:g}" if cfg.loss.semantic.lovasz else "")
            + (f", edge-aware depth smoothness {cfg.loss.depth.smoothness:g}" if cfg.loss.depth.smoothness else "")
            + (f", depth ranking {cfg.loss.depth.ranking:g}" if cfg.loss.depth.ranking else "")
            + (f", depth occlusion {cfg.loss.depth.occlusion:g}" if cfg.loss.depth.occlusion else "")
            + (f", depth sky {cfg.loss.depth.sky:g}" if cfg.loss.depth.sky else "")
            + (f", starting from `{home_to_tilde(cfg.model.init_from)}`" if cfg.model.init_from else "") + ".")
    where = hardware or f"{cpu_name()}, {torch.get_num_threads()} threads"  # --hardware says it all
    text = "\n\n".join(texts) + f"\n\n{total_hours:.2f} h in all on {where}."
    if average is not None:
        text += (f"\n\nThe weights released are {average:g} x the last stage's plus {1 - average:g} x those it "
                 f"started from (`{home_to_tilde(config.model.init_from)}`), averaged weight by weight "
                 f"(`python -m mtan.release RUN OUT --average-start {average:g}`; weight-space averaging of a "
                 "fine-tuned model with its start, WiSE-FT, Wortsman et al., CVPR 2022).")
    return text, {"stages": [f for _, f in stages], "seconds": total_hours * 3600}, len(stages)


def figure_sections(figures: Figures, out: Path) -> list[tuple[str, str]]:
    """The card's sections of measured figures: how to check them, the calibration, the
    precisions, the speed."""
    check = "\n".join(f"    {ev['command']}".replace("MODEL", str(out)) for ev in figures.evaluations)
    sections = [("How to check the results", (
        "Reproduce every figure (`depth_order.*` is scored without depth ground truth: "
        "`ground_row_spearman` is Spearman's rho between the predicted inverse depth of road and pavement "
        "pixels and their image row, averaged over images; `sky_farthest` the share of images whose sky "
        "has the lowest mean inverse depth of all classes in view):\n\n" + check))]
    if figures.twin:
        sections.append(("Held-out figures", twin_text(figures.twin)))
    if figures.calibration:
        sections.append(("Calibration", calibration_text(figures.calibration)))
    precisions = figures.precisions
    if precisions:
        kept = ", ".join(p for p in figures.allowed)
        sections.append(("Precision", (
            f"Each precision scored as the app runs photos at {figures.best} (`python -m mtan.precision MODEL`; int8 "
            f"with activation scales from {precisions['precisions'].get('int8', {}).get('calibrated_on', 'no calibration')}); a "
            f"reduced one is kept when every mIoU stays within {MIOU_TOLERANCE:g} of fp32 and every depth error "
            f"within {ERROR_TOLERANCE:.0%} (`{PRECISIONS_FILE}`). Kept: {kept}. The app times the kept ones on "
            f"the machine it runs on and uses the fastest.\n\n{precision_table(precisions)}")))
    speed = figures.speed
    if speed:
        choice = speed.get("choice")
        times = (" (" + ", ".join(f"{p} {t * 1000:.0f} ms" for p, t in choice["seconds"].items()) + ")") if choice else ""
        sections.append(("Speed", f"Forward pass at {speed['size']}, batch 1, as the app runs it (BatchNorm "
                                  f"folded, fused convolutions, channels-last, {speed['precision']}{times}): median "
                                  f"{speed['median_s'] * 1000:.0f} ms (best {speed['min_s'] * 1000:.0f} ms) on "
                                  f"{speed['cpu']}, {speed['threads']} threads."))
    return sections


def card_kwargs_of(run: Path, out: Path, config, model, figures: Figures, repo_id: str | None,
                   hardware: str | None) -> tuple[dict, dict]:
    """The model card's contents (for ``save_pretrained``) and the training facts behind them."""
    from mtan.data.pseudo_depth import CAMERA_HEIGHT_M, HFOV_DEG, SKY_INVERSE_DEPTH

    parts = config.data.name.split("+")
    trained_on = {p: spec(p).trained_on(config) for p in parts}
    data_text = "\n".join(f"- `{p}`: {trained_on[p]}" for p in parts) + (
        f"\n\nAt {config.data.size}, {augmentation_text(config)}. CamVid's 11 classes are mapped to the 7 CityScapes "
        "categories (its README's table); CamVid frames are centre-cropped to the training aspect ratio. CamVid "
        "val figures are at the photos' own 360x480.")
    train_text, facts, n_stages = training_text(run, config, hardware, figures.average)
    sections = [("Data", data_text), ("Training", train_text)]
    if config.data.pseudo_depth:
        from mtan.data.camvid import default_root
        from mtan.data.pseudo_depth import estimate_horizon

        root = default_root()
        horizon = estimate_horizon(str(Path(root) / "train" / "labels"), road_value=3) if root else float("nan")
        sections.append(("Depth on real photos", PSEUDO_DEPTH.format(horizon=horizon, cam_h=CAMERA_HEIGHT_M,
                                                                      hfov=HFOV_DEG, sky=SKY_INVERSE_DEPTH)))
    sections += figure_sections(figures, out)
    width_note = (f"narrow (width x{model.width:g}, {count_parameters(model) / 1e6:.1f} M parameters) so that it "
                  "answers fast on a small CPU" if model.width < 1 else "the paper's full width")
    sections.append(("Limits", LIMITS.format(trained_on="; ".join(trained_on[p] for p in parts),
                                             width_note=width_note,
                                             size=f"{config.data.size}" + (f" ({config.data.crop} crops)" if config.data.crop else ""))))
    how = (f"fine-tuned from an earlier model (`{home_to_tilde(config.model.init_from)}`)"
           if config.model.init_from and n_stages == 1
           else "trained from scratch")
    summary = ("The default model of the mtan app: segmentation into the 7 CityScapes categories and a depth map "
               f"for street photos, {how} on real CamVid street photos and mtan's generated street scenes"
               + (", then averaged weight by weight with the model it started from (*Training*)."
                  if figures.average is not None else ".")
               + (" A per-class bias fitted on labelled photos after training calibrates its segmentation "
                  "(*Calibration*)." if figures.calibration else "") if set(parts) == {"synthetic", "camvid"} else None)
    resolutions = figures.resolutions
    if resolutions:
        rows = "\n".join(f"| {r} | {v:.4f} |" for r, v in resolutions["scores"].items())
        sections.insert(-1, ("Processing resolutions", (
            f"mIoU on {resolutions['dataset']} scored as the app sees photos (fitted inside each resolution, "
            f"outputs brought back to the photo's size): the app offers the resolutions within "
            f"{RESOLUTION_TOLERANCE:g} of the best and starts at the smallest within {RESOLUTION_GAIN:g} of the "
            f"best, {figures.best} here (each step up is four times the pixels; `{RESOLUTIONS_FILE}`).\n\n"
            f"| resolution | mIoU |\n|---|---|\n{rows}\n\n" + mirror_text(resolutions))))
    return dict(evaluations=[{k: ev[k] for k in ("name", "type", "results")} for ev in figures.evaluations],
                sections=sections, summary=summary, repo_id=repo_id, dataset_name=None, training_command=None,
                data=None), facts


def mirror_text(resolutions: dict) -> str:
    """The card's sentence on the mirror average, from the resolutions record (none without its figure)."""
    if len(resolutions.get("mirror") or {}) != 1:
        return ""
    (at, mirrored), = resolutions["mirror"].items()
    plain = resolutions["scores"][at]
    on = ResolutionAdvice.from_record(resolutions).mirror
    return (f"With the mirror average (the photo and its mirror image run and their outputs averaged, twice the "
            f"network's time) at {at}: {mirrored:.4f} against {plain:.4f}, so the app starts with it "
            + ("on." if on else f"off (it starts with it on where it adds at least {MIRROR_GAIN:g}).")
            + " The visitor can switch it under *Settings*.")


def write_release(out: Path, model, card_kwargs: dict, figures: Figures) -> None:
    """The model folder: weights and config, the card, and the records of what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, model_card_kwargs=card_kwargs)
    if figures.resolutions:
        (out / RESOLUTIONS_FILE).write_text(json.dumps(figures.resolutions, indent=1) + "\n")
    if figures.precisions:
        write_record(out, figures.precisions)
    if figures.calibration:
        (out / CALIBRATION_FILE).write_text(json.dumps(figures.calibration, indent=1) + "\n")
    # save_pretrained keeps an existing README.md: the card of the model written now replaces it
    model.generate_model_card(**card_kwargs).save(out / "README.md")


def release(run: str | Path, out: str | Path, repo_id: str | None = None, hardware: str | None = None,
            latency: bool = True, check_precision: bool = True, calibrate: bool = False, twin=None,
            average: float | None = None, log=print) -> dict:
    """A finished run's model as a model folder in ``out``: measured (:func:`measure`), its card
    written from the figures (:func:`card_kwargs_of`), saved (:func:`write_release`)."""
    run, out = Path(run), Path(out)
    for name in ("train_config.json", "metrics.jsonl", "model.safetensors", "config.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a finished training run: {name} is missing (train.py --out "
                                    "writes it; a run folder needs train_config.json, metrics.jsonl and the model)")
    config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    if twin is not None:  # a wrong twin, or a start that cannot be averaged, fails before anything is measured
        twin = Path(twin)
        twin_config, _ = twin_of(config, twin)
        if average is not None:
            start_of(twin_config, average)
    if average is not None:
        start_of(config, average)
    model = MTAN.from_pretrained(run).eval()
    log(f"measuring {run} ...")
    figures = measure(model, config, latency=latency, check_precision=check_precision, calibrate=calibrate,
                      twin=twin, average=average, log=log)
    card_kwargs, facts = card_kwargs_of(run, out, config, model, figures, repo_id, hardware)
    write_release(out, model, card_kwargs, figures)
    report = {"evaluations": figures.evaluations, "training": facts, "speed": figures.speed,
              "precisions": figures.precisions, "calibration": figures.calibration, "twin": figures.twin,
              "size_mb": (out / "model.safetensors").stat().st_size / 1e6}
    log(json.dumps(report, indent=2, default=float))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtan.release", description=help_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (train.py --out)")
    p.add_argument("out", help="the model folder to write (e.g. weights)")
    p.add_argument("--repo-id", help="the Hub name to show on the card")
    p.add_argument("--hardware", help="what the run trained on (default: this machine's CPU)")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the CPU timing")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a per-class bias on the segmentation's scores on the run's real training photos first "
                        "(python -m mtan.calibrate); every figure and record is then of the calibrated model, and the "
                        "card reports both")
    p.add_argument("--twin", metavar="RUN",
                   help="for a run trained on every labelled photo: a finished run of the same command with photos held "
                        "out (e.g. camvid.splits=blocks); its figures on them go on the card (with --calibrate, it is "
                        "calibrated the same way first)")
    p.add_argument("--average-start", type=float, metavar="SHARE",
                   help="release SHARE x the run's weights + (1 - SHARE) x those of the model it started from "
                        "(--init-from), averaged weight by weight, before anything is measured (with --twin, the twin "
                        "is averaged with its own start the same way); e.g. 0.5")
    p.add_argument("--no-precision-check", dest="check_precision", action="store_false",
                   help="skip scoring the reduced precisions (the model then runs in fp32 only)")
    args = p.parse_args(argv)
    tune_malloc()  # each batch's feature maps reuse the last one's memory: no fresh pages per batch

    try:
        release(args.run, args.out, args.repo_id, args.hardware, args.latency, args.check_precision, args.calibrate,
                args.twin, args.average_start)
    except (DatasetError, ModelConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
