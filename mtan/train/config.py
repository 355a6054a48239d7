"""A training run in one object: :class:`TrainConfig`, nested by part (``data``, ``model``,
``optim``, ``loss`` per task, ``engine``, ``hub``; saved as ``train_config.json`` in the run
folder), its checks, and the presets (the paper's protocols, the app's street recipe).

Each setting is declared once, as a field of its part with :func:`option`: its default, its
check and its command-line flag. Flags, presets and error messages use the setting's flat name
(``--lr``, ``lr=1e-3``), which is unique across the parts; code reads the nested one
(``config.optim.lr``)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from mtan.data.common import parse_size
from mtan.data.registry import SPECS, spec
from mtan.losses import CLASS_BALANCE
from mtan.train.weighting import GRADIENT_METHODS, METHODS


def option(default=None, help: str = "", *, flag: str | None = None, choices=None, whole: int | None = None,
           number: tuple[float, bool] | None = None, show_default: bool = True, cli: dict | None = None,
           factory=None):
    """A setting of one part of :class:`TrainConfig`, with everything the command line and the
    checks need: ``help``; ``flag``: its flat name when it differs from the field's (``data_root``
    for ``data.root``); ``choices``; ``whole``: a whole number at least this; ``number``: a finite
    number above ``low`` (``strict``) or at least it; ``cli``: argparse settings of its own
    (flags, action), or ``False`` for a setting that is not a flag."""
    meta = {"help": help, "flag": flag, "choices": choices, "whole": whole, "number": number,
            "show_default": show_default, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def part(cls):
    """A field holding one part of the config (a dataclass of settings, or of parts)."""
    return field(default_factory=cls, metadata={"part": cls})


ON_OFF = ("auto", "on", "off")


@dataclass
class DataConfig:
    """What the run trains and validates on, and how each batch is augmented."""
    title = "data"
    name: str = option("cityscapes", "dataset by registry name: cityscapes, cityscapes-raw, nyuv2, camvid, "
                       "synthetic, or a mixture like synthetic+camvid", flag="data")
    root: str | None = option(None, "dataset folder; for a mixture ROOT_A+ROOT_B (synthetic needs none)",
                              flag="data_root")
    size: str | None = option(None, "HxW to train at, e.g. 128x256 (default: the dataset's own)")
    labels: str = option("label_7", "CityScapes label set: label_7, label_19, label_2")
    train_frames: int | None = option(None, "synthetic: frames to generate for training", whole=1)
    val_frames: int | None = option(None, "synthetic: frames to generate for validation", whole=1)
    options: dict = option(help="an option of one dataset's builder, e.g. camvid.splits=blocks (train and val "
                           "split by time, so tuning photos have no near-copy in training) or camvid.splits=all "
                           "(every labelled photo in training); repeatable", flag="data_options", factory=dict,
                           cli={"flags": ["--data-option"], "action": "append", "metavar": "PART.KEY=VALUE",
                                "type": "data_option"})
    workers: int = option(0, "processes that read or render the data once, before training (default 0: the "
                          "main process; e.g. 16 on a 16-core GPU machine)", flag="data_workers", whole=0,
                          show_default=False)
    augment: bool = option(False, "random scale-crop {1, 1.2, 1.5} + horizontal flip, on the GPU on whole batches",
                           cli={"no": "no augmentation (the paper)"})
    scale_range: str | None = option(None, "with --augment: zoom scales drawn log-uniformly in [LOW, HIGH], e.g. "
                                     "0.5,2.0 (below 1 zooms out: the image sits inside a black, ignored border)",
                                     cli={"metavar": "LOW,HIGH"})
    crop: str | None = option(None, "with --augment: train on crops of this size (multiples of 32) of the --size "
                              "data; validation stays whole", cli={"metavar": "HxW"})
    focus_crops: float = option(0.0, "with --augment: this share of the crops is centred on a labelled pixel drawn "
                                "with every class in the photo equally likely, so thin, rare classes (poles, signs, "
                                "people) are the centre as often as the road", number=(0.0, False),
                                cli={"metavar": "SHARE"})
    copy_paste: str | None = option(None, "with --augment: classes of the segmentation labels, by name (e.g. object, "
                                    "or object,human): half of the crops get those pixels of the next crop of the "
                                    "batch pasted over them at the same place, the image with them (no depth target "
                                    "there)", cli={"metavar": "CLASS[,CLASS]"})
    photometric: bool = option(False, "colour, gamma, blur, JPEG and noise augmentation on whole batches "
                               "(mtan/data/photometric.py)")
    pseudo_depth: bool = option(False, "train split: CamVid gets ground-plane pseudo-depth, sky gets a far target "
                                "(mtan/data/pseudo_depth.py; the demo preset's default)",
                                cli={"no": "no pseudo-depth: CamVid trains segmentation only, sky has no depth "
                                           "target"})

    @property
    def parts(self) -> list[str]:
        """The datasets of ``name`` (one, or those of a mixture ``a+b``)."""
        return str(self.name).split("+")

    def paste_names(self) -> tuple[str, ...]:
        """``--copy-paste`` as a tuple of class names (empty without it)."""
        return tuple(n.strip() for n in str(self.copy_paste or "").split(",") if n.strip())

    def scale_bounds(self) -> tuple[float, float] | None:
        """``--scale-range`` as (low, high), or None."""
        if self.scale_range is None:
            return None
        lo, hi = (float(v) for v in str(self.scale_range).split(","))
        return lo, hi


@dataclass
class ModelSettings:
    """Which network is trained, and from what weights."""
    title = "model"
    arch: str = option("mtan", "architecture", choices=("mtan", "split", "single"))
    task: str | None = option(None, "the task of --arch single: semantic, depth or normal")
    width: float = option(1.0, "width multiplier, 1.0 = the paper's 64..512", number=(0.0, True))
    init_from: str | None = option(None, "start from the weights of a saved model with the same architecture and "
                                   "tasks (a folder, a run folder or a Hub repo id): fine-tuning; a narrower model "
                                   "is first grown to --width, computing the same outputs",
                                   cli={"metavar": "MODEL"})


@dataclass
class OptimConfig:
    """How the task losses are balanced and the weights stepped (defaults = the paper)."""
    title = "optimisation"
    weighting: str = option("dwa", "how the task losses are balanced: equal, dwa (the paper), uncertainty, imtl-l, "
                            "random (random loss weights), famo, gradnorm, or a gradient method on the shared "
                            "parameters: pcgrad, mgda, cagrad, imtl-g, nash-mtl, fairgrad (one backward pass per "
                            "task), mgda-ub (MGDA on the shared features)", choices=METHODS)
    temperature: float = option(2.0, "DWA temperature T", number=(0.0, True))
    solve_every: int = option(1, "gradient methods but pcgrad: find the task weights from the per-task gradients "
                              "every N optimiser steps, and in between take one backward pass of the losses "
                              "weighted by the last weights found (cheaper; Nash-MTL's paper studies this "
                              "frequency)", whole=1)
    optimizer: str = option("adam", "optimiser: adam (the paper) or adamw (decoupled weight decay)",
                            choices=("adam", "adamw"))
    lr: float = option(1e-4, "peak learning rate", number=(0.0, True))
    weight_decay: float = option(0.0, "weight decay (decoupled with adamw)", number=(0.0, False))
    schedule: str = option("step", "learning-rate schedule: step (StepLR, the paper), cosine or poly (power 0.9) "
                           "decay to 0 over the run, per step", choices=("step", "cosine", "poly"))
    warmup_epochs: float = option(0.0, "cosine / poly: linear warm-up over this many epochs", number=(0.0, False),
                                  show_default=False)
    step_size: int = option(100, "StepLR: epochs between learning-rate drops", whole=1)
    gamma: float = option(0.5, "StepLR: learning-rate factor at each drop", number=(0.0, True))
    epochs: int = option(200, "number of epochs", whole=1)
    batch_size: int = option(8, "images per step and process", whole=1)
    accumulate: int = option(1, "gradient accumulation: batches per optimiser step (a step then sees batch-size x "
                                "accumulate images per process; an epoch's last incomplete group is left out)",
                             whole=1)


@dataclass
class SemanticLoss:
    """The semantic task's loss options (read by :meth:`mtan.tasks.SemanticTask.loss_options`)."""
    class_weights: str = option("none", "semantic training loss: none (the paper), median-frequency balancing of the "
                                "classes (as SegNet on CamVid, from the training labels), or its square root (a "
                                "tempered balance: a class 16x rarer than the median weighs 4x)",
                                choices=tuple(CLASS_BALANCE), show_default=False)
    label_smoothing: float = option(0.0, "semantic cross-entropy label smoothing", number=(0.0, False))
    hard_pixels: float = option(1.0, "share of each batch's pixels the semantic loss counts, the hardest ones (online "
                                "hard-pixel mining, e.g. 0.25; 1 counts every pixel)", number=(0.0, True))
    lovasz: float = option(0.0, "weight of a Lovasz-softmax term added to the semantic cross-entropy: a surrogate "
                           "of 1 - IoU for each class in the batch, all classes alike, so thin rare classes count "
                           "as much as the road", number=(0.0, False))


@dataclass
class DepthLoss:
    """The depth task's loss options (read by :meth:`mtan.tasks.DepthTask.loss_options`)."""
    smoothness: float = option(0.0, "weight of an edge-aware smoothness term on the predicted depth (needs no "
                               "depth labels)", flag="depth_smoothness", number=(0.0, False))
    ranking: float = option(0.0, "weight of a pairwise ranking term on the predicted depth: pixel pairs a few pixels "
                            "apart are pushed into the order of their depth targets, in log depth so that a far "
                            "object's outline counts as much as a near one's", flag="depth_ranking", number=(0.0, False))
    occlusion: float = option(0.0, "weight of an occlusion term on the predicted depth: people and vehicles are "
                              "pushed nearer than the buildings, vegetation and sky they are seen against, read "
                              "from the segmentation labels (street class sets)", flag="depth_occlusion",
                              number=(0.0, False))
    sky: float = option(0.0, "weight of a term that keeps the sky behind whatever it is seen next to, read from "
                        "the segmentation labels (street class sets; the occlusion term's counterweight)",
                        flag="depth_sky", number=(0.0, False))


@dataclass
class LossConfig:
    """Each task's own loss options, by task name; a task without options has no entry."""
    title = "task losses"
    semantic: SemanticLoss = part(SemanticLoss)
    depth: DepthLoss = part(DepthLoss)

    def of(self, task: str):
        """The options of task ``task`` (None for a task that has none)."""
        return getattr(self, task, None)


@dataclass
class EngineConfig:
    """Where and how the run computes, validates and keeps its files."""
    title = "engine"
    seed: int = option(0, "random seed: same seed, same run")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    amp: str = option("auto", "bf16 autocast: auto = on CUDA; on a CPU the faster of off and bf16, timed on this "
                      "machine at start (the choice is logged and kept by --resume)", choices=("auto", "bf16", "off"),
                      show_default=False)
    channels_last: str = option("auto", "channels-last memory: auto = on CUDA; on a CPU the faster layout, timed "
                                "at start with --amp auto's precisions (logged and kept by --resume)", choices=ON_OFF,
                                show_default=False)
    compile: bool = option(False, "torch.compile the model (eager fallback)")
    batched_attention: str = option("auto", "run all tasks' attention branches as one batched computation (same "
                                    "math): auto = on CUDA", choices=ON_OFF, show_default=False)
    eval_every: int = option(1, "validate every N epochs (and after the last)", whole=1, show_default=False)
    eval_batch_size: int | None = option(None, "validation batch size (default: --batch-size)", whole=1)
    baseline: list | None = option(None, "single-task run folders (train.py --arch single --task ...) on the same "
                                   "data: each validation adds delta_m against their last validation, the multi-task "
                                   "papers' Delta_m in percent (lower is better)", cli={"nargs": "+", "metavar": "RUN"})
    out: str = option("runs/mtan", "run folder (default runs/mtan; the smoke preset uses runs/smoke)",
                      show_default=False)
    keep_checkpoints: int = option(2, "checkpoints kept in RUN_DIR/checkpoints", whole=1)
    progress: bool = option(True, "no tqdm bars", cli={"flags": ["--no-progress"], "action": "store_false"})


@dataclass
class HubConfig:
    """Where the finished run's model is published."""
    title = "hub"
    repo: str | None = option(None, "upload the final model, card, curves and metrics", flag="push_to_hub",
                              cli={"metavar": "USER/REPO"})
    private: bool = option(False, "create the Hub repo as private")


def settings(cls=None, path: tuple = ()):
    """Every setting of the config class ``cls`` (default :class:`TrainConfig`), depth first:
    ``(path, field)`` with ``path`` the names from the top (``("loss", "depth", "smoothness")``)."""
    for f in dataclasses.fields(cls or TrainConfig):
        if "part" in f.metadata:
            yield from settings(f.metadata["part"], path + (f.name,))
        else:
            yield path + (f.name,), f


def flat_name(f: dataclasses.Field) -> str:
    """A setting's flat name: its flag without the dashes (the ``root`` of ``data`` -> ``data_root``)."""
    return f.metadata.get("flag") or f.name


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json`` in the run folder),
    nested by part. ``train.py``'s parser is made from the parts' settings
    (:func:`mtan.train.cli.parser`); build one from flat settings with :meth:`from_flags`."""

    data: DataConfig = part(DataConfig)
    model: ModelSettings = part(ModelSettings)
    optim: OptimConfig = part(OptimConfig)
    loss: LossConfig = part(LossConfig)
    engine: EngineConfig = part(EngineConfig)
    hub: HubConfig = part(HubConfig)
    preset: str | None = option(None, cli=False)    # the preset the run started from
    command: str | None = option(None, cli=False)   # the command line that started it (model card)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Reject values that would only fail later (mid-run, or with a traceback); the message
        names the command-line flag. What each setting takes is declared with it (:func:`option`)."""
        flat = self.flat()

        def flag(name):
            return "--" + name.replace("_", "-")

        def bad(name, why):
            raise ValueError(f"{flag(name)} {flat[name]!r}: {why}")

        for path, f in settings():
            name = flat_name(f)
            value, meta = flat[name], f.metadata
            if value is None and f.default is None:
                continue
            if meta.get("whole") is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                  or value < meta["whole"]):
                bad(name, f"must be a whole number >= {meta['whole']}")
            if meta.get("number") is not None:
                low, strict = meta["number"]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or (value <= low if strict else value < low):
                    bad(name, f"must be a finite number {'>' if strict else '>='} {low:g}")
            if meta.get("choices") and value not in meta["choices"]:
                bad(name, f"must be one of {', '.join(meta['choices'])}")
        data = self.data
        if data.pseudo_depth and not any(spec(p).fills_depth for p in data.parts):
            takes = " and ".join(name for name, s in SPECS.items() if s.fills_depth)
            bad("pseudo_depth", f"applies to {takes} data, and --data is {data.name!r}")
        for name in ("size", "crop"):
            if getattr(data, name) is not None:
                try:
                    h, w = parse_size(getattr(data, name))
                except ValueError as e:
                    raise ValueError(f"{flag(name)} {getattr(data, name)!r}: {e}") from None
                if h % 32 or w % 32:
                    bad(name, "height and width must be multiples of 32 (the network pools five times), "
                              "e.g. 128x256")
        if self.optim.solve_every > 1 and (self.optim.weighting not in GRADIENT_METHODS
                                           or self.optim.weighting == "pcgrad"):
            bad("solve_every", f"applies to the gradient methods but pcgrad ({', '.join(GRADIENT_METHODS[1:])}), "
                               f"and --weighting is {self.optim.weighting}")
        if self.loss.semantic.label_smoothing >= 1:
            bad("label_smoothing", "must be below 1")
        if self.loss.semantic.hard_pixels > 1:
            bad("hard_pixels", "is a share of the pixels: above 0 and at most 1")
        if data.focus_crops > 1:
            bad("focus_crops", "is a share of the crops: between 0 and 1")
        if data.focus_crops and not data.augment:
            bad("focus_crops", "needs --augment (it places the augmentation's window)")
        if data.copy_paste is not None and not data.paste_names():
            bad("copy_paste", "names no class: give class names such as object or object,human")
        if data.copy_paste and not data.augment:
            bad("copy_paste", "needs --augment (it pastes between the augmented crops)")
        if data.crop is not None and not data.augment:
            bad("crop", "needs --augment (the crop is where the augmentation's window lands)")
        if data.scale_range is not None:
            try:
                lo, hi = data.scale_bounds()
            except ValueError:
                bad("scale_range", "must be two numbers LOW,HIGH such as 0.5,2.0")
            if not (0 < lo <= hi and math.isfinite(hi)):
                bad("scale_range", "must be LOW,HIGH with 0 < LOW <= HIGH")
            if not data.augment:
                bad("scale_range", "needs --augment")

    def flat(self) -> dict:
        """Every setting by its flat name (``{"lr": 1e-4, "data_root": ..., ...}``)."""
        out = {}
        for path, f in settings():
            value = self
            for name in path:
                value = getattr(value, name)
            out[flat_name(f)] = value
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_flags(cls, values: dict | None = None, **more) -> "TrainConfig":
        """A config from flat settings (``lr=1e-3, data="synthetic", depth_smoothness=0.02``);
        those not given keep their defaults."""
        values = {**(values or {}), **more}
        unknown = set(values) - set(FLAT)
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        nested: dict = {}
        for name, value in values.items():
            *parents, last = FLAT[name]
            node = nested
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        return build(cls, nested)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a saved ``train_config.json``: nested by part, or flat (the settings by
        their flat names, as run folders written before the parts existed hold them)."""
        if not isinstance(values.get("data", {}), dict):
            return cls.from_flags(values)
        return build(cls, values)


def build(cls, values: dict, path: tuple = ()):
    """An instance of the config class ``cls`` from its settings nested by part (``path``: where
    ``cls`` sits in :class:`TrainConfig`, for the messages)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        names = sorted(".".join(path + (u,)) for u in unknown)
        raise ValueError(f"unknown training option(s): {names}")
    kwargs = {}
    for name, value in values.items():
        sub = fields[name].metadata.get("part")
        if sub is not None:
            if not isinstance(value, dict):
                raise ValueError(f"training option {'.'.join(path + (name,))} must be a group of settings, "
                                 f"not {value!r}")
            value = build(sub, value, path + (name,))
        kwargs[name] = value
    return cls(**kwargs)


#: flat name -> path of every setting (``"data_root" -> ("data", "root")``), each name once.
FLAT: dict[str, tuple] = {}
for _path, _f in settings():
    assert flat_name(_f) not in FLAT, f"two settings are called {flat_name(_f)}"
    FLAT[flat_name(_f)] = _path


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
    return TrainConfig.from_flags(values)
