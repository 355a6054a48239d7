"""A training run in one object: :class:`TrainConfig` (saved as ``train_config.json`` in the run
folder), its checks, and the presets (the paper's protocols, the app's street recipe)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from mtan.data.common import parse_size
from mtan.data.registry import SPECS, spec
from mtan.weighting import METHODS


# --class-weights: the power of the median-frequency balance (none: no weights).
CLASS_BALANCE = {"none": None, "median-frequency": 1.0, "sqrt-median-frequency": 0.5}


def option(default=None, help: str = "", *, group: str, choices=None, whole: int | None = None,
           number: tuple[float, bool] | None = None, show_default: bool = True, cli: dict | None = None,
           factory=None):
    """A field of :class:`TrainConfig` with everything the command line and the checks need: its
    ``help`` and command-line ``group``; ``choices``; ``whole``: a whole number at least this;
    ``number``: a finite number above ``low`` (``strict``) or at least it; ``cli``: argparse
    settings of its own (flags, action), or ``False`` for a field that is not a flag."""
    meta = {"help": help, "group": group, "choices": choices, "whole": whole, "number": number,
            "show_default": show_default, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


DATA, MODEL, OPTIM, ENGINE, HUB = "data", "model", "optimisation", "engine", "hub"
ON_OFF = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json`` in the run folder).
    Each field is declared once, here: its default, its check and its command-line flag
    (``train.py``'s parser is made from these fields, :func:`mtan.train.cli.parser`)."""

    # data
    data: str = option("cityscapes", "dataset by registry name: cityscapes, cityscapes-raw, nyuv2, camvid, "
                       "synthetic, or a mixture like synthetic+camvid", group=DATA)
    data_root: str | None = option(None, "dataset folder; for a mixture ROOT_A+ROOT_B (synthetic needs none)",
                                   group=DATA)
    size: str | None = option(None, "HxW to train at, e.g. 128x256 (default: the dataset's own)", group=DATA)
    labels: str = option("label_7", "CityScapes label set: label_7, label_19, label_2", group=DATA)
    train_frames: int | None = option(None, "synthetic: frames to generate for training", group=DATA, whole=1)
    val_frames: int | None = option(None, "synthetic: frames to generate for validation", group=DATA, whole=1)
    data_options: dict = option(help="an option of one dataset's builder, e.g. camvid.splits=blocks (train and val "
                                "split by time, so tuning photos have no near-copy in training) or camvid.splits=all "
                                "(every labelled photo in training); repeatable", group=DATA, factory=dict,
                                cli={"flags": ["--data-option"], "action": "append", "metavar": "PART.KEY=VALUE",
                                     "type": "data_option"})
    data_workers: int = option(0, "processes that read or render the data once, before training (default 0: the "
                               "main process; e.g. 16 on a 16-core GPU machine)", group=DATA, whole=0,
                               show_default=False)
    augment: bool = option(False, "random scale-crop {1, 1.2, 1.5} + horizontal flip, on the GPU on whole batches",
                           group=DATA, cli={"no": "no augmentation (the paper)"})
    scale_range: str | None = option(None, "with --augment: zoom scales drawn log-uniformly in [LOW, HIGH], e.g. "
                                     "0.5,2.0 (below 1 zooms out: the image sits inside a black, ignored border)",
                                     group=DATA, cli={"metavar": "LOW,HIGH"})
    crop: str | None = option(None, "with --augment: train on crops of this size (multiples of 32) of the --size "
                              "data; validation stays whole", group=DATA, cli={"metavar": "HxW"})
    photometric: bool = option(False, "colour, gamma, blur, JPEG and noise augmentation on whole batches "
                               "(mtan/data/photometric.py)", group=DATA)
    pseudo_depth: bool = option(False, "train split: CamVid gets ground-plane pseudo-depth, sky gets a far target "
                                "(mtan/data/pseudo_depth.py; the demo preset's default)", group=DATA,
                                cli={"no": "no pseudo-depth: CamVid trains segmentation only, sky has no depth "
                                           "target"})
    # model
    arch: str = option("mtan", "architecture", group=MODEL, choices=("mtan", "split", "single"))
    task: str | None = option(None, "the task of --arch single: semantic, depth or normal", group=MODEL)
    width: float = option(1.0, "width multiplier, 1.0 = the paper's 64..512", group=MODEL, number=(0.0, True))
    init_from: str | None = option(None, "start from the weights of a saved model with the same architecture, tasks "
                                   "and width (a folder, a run folder or a Hub repo id): fine-tuning", group=MODEL,
                                   cli={"metavar": "MODEL"})
    # optimisation (defaults = the paper)
    weighting: str = option("dwa", "how the task losses are balanced: equal, dwa (the paper), uncertainty, imtl-l, "
                            "random (random loss weights), famo, gradnorm, or a gradient method on the shared "
                            "parameters: pcgrad, mgda, cagrad, imtl-g, nash-mtl, fairgrad (one backward pass per "
                            "task), mgda-ub (MGDA on the shared features)", group=OPTIM, choices=METHODS)
    temperature: float = option(2.0, "DWA temperature T", group=OPTIM, number=(0.0, True))
    optimizer: str = option("adam", "optimiser: adam (the paper) or adamw (decoupled weight decay)", group=OPTIM,
                            choices=("adam", "adamw"))
    lr: float = option(1e-4, "peak learning rate", group=OPTIM, number=(0.0, True))
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)", group=OPTIM, number=(0.0, False))
    schedule: str = option("step", "learning-rate schedule: step (StepLR, the paper), cosine or poly (power 0.9) "
                           "decay to 0 over the run, per step", group=OPTIM, choices=("step", "cosine", "poly"))
    warmup_epochs: float = option(0.0, "cosine / poly: linear warm-up over this many epochs", group=OPTIM,
                                  number=(0.0, False), show_default=False)
    step_size: int = option(100, "StepLR: epochs between learning-rate drops", group=OPTIM, whole=1)
    gamma: float = option(0.5, "StepLR: learning-rate factor at each drop", group=OPTIM, number=(0.0, True))
    class_weights: str = option("none", "semantic training loss: none (the paper), median-frequency balancing of the "
                                "classes (as SegNet on CamVid, from the training labels), or its square root (a "
                                "tempered balance: a class 16x rarer than the median weighs 4x)", group=OPTIM,
                                choices=tuple(CLASS_BALANCE), show_default=False)
    label_smoothing: float = option(0.0, "semantic cross-entropy label smoothing", group=OPTIM, number=(0.0, False))
    depth_smoothness: float = option(0.0, "weight of an edge-aware smoothness term on the predicted depth (needs no "
                                     "depth labels)", group=OPTIM, number=(0.0, False))
    epochs: int = option(200, "number of epochs", group=OPTIM, whole=1)
    batch_size: int = option(8, "images per step and process", group=OPTIM, whole=1)
    accumulate: int = option(1, "gradient accumulation: batches per optimiser step (a step then sees batch-size x "
                                "accumulate images per process; an epoch's last incomplete group is left out)",
                             group=OPTIM, whole=1)
    baseline: list | None = option(None, "single-task run folders (train.py --arch single --task ...) on the same "
                                   "data: each validation adds delta_m against their last validation, the multi-task "
                                   "papers' Delta_m in percent (lower is better)", group=OPTIM,
                                   cli={"nargs": "+", "metavar": "RUN"})
    # engine
    seed: int = option(0, "random seed: same seed, same run", group=ENGINE)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N", group=ENGINE)
    amp: str = option("auto", "bf16 autocast: auto = on CUDA; on a CPU the faster of off and bf16, timed on this "
                      "machine at start (the choice is logged and kept by --resume)", group=ENGINE,
                      choices=("auto", "bf16", "off"), show_default=False)
    channels_last: str = option("auto", "channels-last memory: auto = on CUDA only", group=ENGINE, choices=ON_OFF,
                                show_default=False)
    compile: bool = option(False, "torch.compile the model (eager fallback)", group=ENGINE)
    batched_attention: str = option("auto", "run all tasks' attention branches as one batched computation (same "
                                    "math): auto = on CUDA", group=ENGINE, choices=ON_OFF, show_default=False)
    eval_every: int = option(1, "validate every N epochs (and after the last)", group=ENGINE, whole=1,
                             show_default=False)
    eval_batch_size: int | None = option(None, "validation batch size (default: --batch-size)", group=ENGINE,
                                         whole=1)
    out: str = option("runs/mtan", "run folder (default runs/mtan; the smoke preset uses runs/smoke)", group=ENGINE,
                      show_default=False)
    keep_checkpoints: int = option(2, "checkpoints kept in RUN_DIR/checkpoints", group=ENGINE, whole=1)
    progress: bool = option(True, "no tqdm bars", group=ENGINE,
                            cli={"flags": ["--no-progress"], "action": "store_false"})
    push_to_hub: str | None = option(None, "upload the final model, card, curves and metrics", group=HUB,
                                     cli={"metavar": "USER/REPO"})
    private: bool = option(False, "create the Hub repo as private", group=HUB)
    preset: str | None = option(None, group=ENGINE, cli=False)    # the preset the run started from
    command: str | None = option(None, group=ENGINE, cli=False)   # the command line that started it (model card)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Reject values that would only fail later (mid-run, or with a traceback); the message
        names the command-line flag. What each field takes is declared with it (:func:`option`)."""
        def flag(name):
            return "--" + name.replace("_", "-")

        def bad(name, why):
            raise ValueError(f"{flag(name)} {getattr(self, name)!r}: {why}")

        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue
            if meta.get("whole") is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                  or value < meta["whole"]):
                bad(f.name, f"must be a whole number >= {meta['whole']}")
            if meta.get("number") is not None:
                low, strict = meta["number"]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or (value <= low if strict else value < low):
                    bad(f.name, f"must be a finite number {'>' if strict else '>='} {low:g}")
            if meta.get("choices") and value not in meta["choices"]:
                bad(f.name, f"must be one of {', '.join(meta['choices'])}")
        if self.pseudo_depth and not any(spec(p).fills_depth for p in str(self.data).split("+")):
            takes = " and ".join(name for name, s in SPECS.items() if s.fills_depth)
            bad("pseudo_depth", f"applies to {takes} data, and --data is {self.data!r}")
        for name in ("size", "crop"):
            if getattr(self, name) is not None:
                try:
                    h, w = parse_size(getattr(self, name))
                except ValueError as e:
                    raise ValueError(f"{flag(name)} {getattr(self, name)!r}: {e}") from None
                if h % 32 or w % 32:
                    bad(name, "height and width must be multiples of 32 (the network pools five times), "
                              "e.g. 128x256")
        if self.label_smoothing >= 1:
            bad("label_smoothing", "must be below 1")
        if self.crop is not None:
            if not self.augment:
                bad("crop", "needs --augment (the crop is where the augmentation's window lands)")
        if self.scale_range is not None:
            try:
                lo, hi = self.scale_bounds()
            except ValueError:
                bad("scale_range", "must be two numbers LOW,HIGH such as 0.5,2.0")
            if not (0 < lo <= hi and math.isfinite(hi)):
                bad("scale_range", "must be LOW,HIGH with 0 < LOW <= HIGH")
            if not self.augment:
                bad("scale_range", "needs --augment")

    def scale_bounds(self) -> tuple[float, float] | None:
        """``--scale-range`` as (low, high), or None."""
        if self.scale_range is None:
            return None
        lo, hi = (float(v) for v in str(self.scale_range).split(","))
        return lo, hi

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**values)


PRESETS: dict[str, dict] = {
    # The paper's protocol (Liu et al. 2019): 7 classes + inverse depth at 128x256, DWA (T=2),
    # Adam 1e-4 halved every 100 epochs, 200 epochs, batch 8, no augmentation.
    "paper-cityscapes": dict(data="cityscapes", labels="label_7", size="128x256", arch="mtan", weighting="dwa",
                             temperature=2.0, lr=1e-4, step_size=100, gamma=0.5, epochs=200, batch_size=8,
                             augment=False),
    # NYUv2: 13 classes + metric depth + normals at 288x384, batch 2.
    "paper-nyuv2": dict(data="nyuv2", size="288x384", arch="mtan", weighting="dwa", temperature=2.0, lr=1e-4,
                        step_size=100, gamma=0.5, epochs=200, batch_size=2, augment=False),
    # The modern benchmark protocol (CAGrad, Nash-MTL, FAMO): same, with scale-crop + flip augmentation.
    "benchmark-cityscapes": dict(data="cityscapes", labels="label_7", size="128x256", arch="mtan", weighting="dwa",
                                 temperature=2.0, lr=1e-4, step_size=100, gamma=0.5, epochs=200, batch_size=8,
                                 augment=True),
    # The app's default model (weights/), in two stages on a 2-core CPU (about 2 hours in all). Real CamVid
    # streets (7 categories, ground-plane pseudo-depth) with generated scenes (7 categories, exact depth),
    # narrow and at 128x256 so that it trains on a CPU and answers fast. Stage 1 learns the scenes with the
    # paper's loss; stage 2 continues from it with median-frequency class balancing, so that the rare
    # classes (poles and signs, people: 2-4 % of the pixels) are learned too.
    "demo-pretrain": dict(data="synthetic+camvid", size="128x256", train_frames=600, val_frames=200, arch="mtan",
                          width=0.25, weighting="dwa", temperature=2.0, lr=1e-3, step_size=11, gamma=0.2, epochs=10,
                          batch_size=8, augment=True, pseudo_depth=True, out="runs/demo-pretrain"),
    "demo": dict(data="synthetic+camvid", size="128x256", train_frames=600, val_frames=200, arch="mtan", width=0.25,
                 init_from="runs/demo-pretrain", class_weights="median-frequency", weighting="dwa", temperature=2.0,
                 lr=5e-4, step_size=10, gamma=0.25, epochs=22, batch_size=8, augment=True, pseudo_depth=True,
                 eval_every=3, out="runs/demo"),
    # Street photos as visitors upload them (the recipe of the app's model): real CamVid streets and
    # generated scenes stored at 288x384 (4:3, CamVid's shape) and seen as 192x256 crops at zoom
    # scales 0.5-2.0 (objects at every size the app's resolutions produce), photometric
    # augmentation (colour, gamma, blur, JPEG, noise), AdamW with warm-up and cosine decay,
    # median-frequency class balance with label smoothing, and an edge-aware depth smoothness term.
    "street": dict(data="synthetic+camvid", size="288x384", crop="192x256", train_frames=600, val_frames=200,
                   arch="mtan", width=0.25, weighting="dwa", temperature=2.0, optimizer="adamw", lr=1e-3,
                   weight_decay=1e-4, schedule="cosine", warmup_epochs=1.0, epochs=40, batch_size=8, augment=True,
                   scale_range="0.5,2.0", photometric=True, class_weights="median-frequency", label_smoothing=0.05,
                   depth_smoothness=0.02, pseudo_depth=True, eval_every=2, out="runs/street"),
    # One minute on a CPU: a narrow MTAN on generated street scenes.
    "smoke": dict(data="synthetic", size="64x128", train_frames=96, val_frames=32, arch="mtan", width=0.125,
                  weighting="dwa", lr=2e-3, step_size=100, gamma=0.5, epochs=4, batch_size=8, augment=True,
                  out="runs/smoke"),
}


def apply_preset(name: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then the preset, then explicit ``overrides`` (keys with value None are ignored)."""
    values: dict = {}
    if name:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        values.update(PRESETS[name])
        values["preset"] = name
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
