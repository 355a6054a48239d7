"""A training run in one object: :class:`TrainConfig` (saved as ``train_config.json`` in the run
folder), its checks, and the presets (the paper's protocols, the app's street recipe)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from mtan.data.common import parse_size
from mtan.data.registry import SPECS, spec


# --class-weights: the power of the median-frequency balance (none: no weights).
CLASS_BALANCE = {"none": None, "median-frequency": 1.0, "sqrt-median-frequency": 0.5}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json`` in the run folder)."""

    # data
    data: str = "cityscapes"              # registry name, e.g. cityscapes, nyuv2, camvid, synthetic, synthetic+camvid
    data_root: str | None = None          # folder(s); for mixtures "ROOT_A+ROOT_B"
    size: str | None = None               # "HxW"; None = the dataset's native size
    labels: str = "label_7"               # CityScapes release labels: label_7, label_19, label_2
    train_frames: int | None = None       # synthetic only: frames to generate per split
    val_frames: int | None = None
    data_options: dict = field(default_factory=dict)  # extra builder options, e.g. {"camvid": {"classes": 7}}
    data_workers: int = 0                 # processes that read / render the data once before training (0: this one)
    pseudo_depth: bool = False            # train split only: CamVid ground-plane depth, sky targets (mtan.data.pseudo_depth)
    # model
    arch: str = "mtan"                    # mtan | split | single
    task: str | None = None               # the task of a single-task run
    width: float = 1.0
    init_from: str | None = None          # start from this model's weights (folder, run folder or Hub id): fine-tuning
    # optimisation (defaults = the paper)
    weighting: str = "dwa"                # equal | dwa | uncertainty
    temperature: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    step_size: int = 100
    gamma: float = 0.5
    epochs: int = 200
    batch_size: int = 8
    optimizer: str = "adam"               # adam (the paper) | adamw (decoupled weight decay)
    schedule: str = "step"                # step (StepLR: x gamma every step_size epochs) | cosine | poly (per step)
    warmup_epochs: float = 0.0            # linear warm-up from 0 over this many epochs (cosine and poly)
    augment: bool = False                 # random zoom-crop + flip (scales 1, 1.2, 1.5 unless --scale-range)
    scale_range: str | None = None        # "0.5,2.0": zoom scales drawn log-uniformly, out as well as in
    crop: str | None = None               # "HxW": training crop (default the data's size); validation stays whole
    photometric: bool = False             # colour, gamma, blur, JPEG and noise augmentation (mtan.data.photometric)
    class_weights: str = "none"           # none | median-frequency | sqrt-median-frequency (tempered): class balance
    label_smoothing: float = 0.0          # semantic cross-entropy label smoothing
    depth_smoothness: float = 0.0         # weight of an edge-aware smoothness term on the predicted depth
    # engine
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    amp: str = "auto"                     # auto (bf16 on CUDA; on a CPU the faster of off and bf16, timed) | bf16 | off
    channels_last: str = "auto"           # auto (on CUDA) | on | off
    compile: bool = False
    batched_attention: str = "auto"       # auto (on CUDA) | on | off: all tasks' attention as one computation
    eval_every: int = 1
    eval_batch_size: int | None = None
    out: str = "runs/mtan"
    keep_checkpoints: int = 2
    progress: bool = True
    push_to_hub: str | None = None
    private: bool = False
    preset: str | None = None
    command: str | None = None            # the command line that started the run (for the model card)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Reject values that would only fail later (mid-run, or with a traceback); the message
        names the command-line flag."""
        def flag(name):
            return "--" + name.replace("_", "-")

        def bad(name, why):
            raise ValueError(f"{flag(name)} {getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "step_size", "eval_every", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, "must be a whole number >= 1")
        if isinstance(self.data_workers, bool) or not isinstance(self.data_workers, int) or self.data_workers < 0:
            bad("data_workers", "must be a whole number >= 0")
        for name in ("eval_batch_size", "train_frames", "val_frames"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                bad(name, "must be a whole number >= 1")
        for name, low, strict in (("lr", 0.0, True), ("gamma", 0.0, True), ("temperature", 0.0, True),
                                  ("weight_decay", 0.0, False), ("width", 0.0, True), ("warmup_epochs", 0.0, False),
                                  ("label_smoothing", 0.0, False), ("depth_smoothness", 0.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (value <= low if strict else value < low):
                bad(name, f"must be a finite number {'>' if strict else '>='} {low:g}")
        for name, allowed in (("amp", ("auto", "bf16", "off")), ("channels_last", ("auto", "on", "off")),
                              ("batched_attention", ("auto", "on", "off")),
                              ("class_weights", tuple(CLASS_BALANCE)), ("optimizer", ("adam", "adamw")),
                              ("schedule", ("step", "cosine", "poly"))):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}")
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
