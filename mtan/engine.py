"""The training engine: one config object, one ``train(config)`` that runs a whole experiment.

Per epoch: train on the (optionally augmented) training split, evaluate on every validation
set, log one line to ``metrics.jsonl``, redraw ``curves.png``, export the model (``config.json``
+ ``model.safetensors`` + model card) with ``save_pretrained`` and, last, write an atomic checkpoint.

Faults: a NaN or infinite training loss stops the run (``NonFiniteLossError``, naming the task)
before anything of that epoch is saved; a failed write (a full disk) stops it with a
``CheckpointError`` saying what is intact and how to continue; ``--resume`` skips damaged
checkpoints (with a warning naming them) and removes temporary files left by a killed writer.

Fast by default where it helps: data held in memory on the training device (uint8 images,
compact targets), augmentation on whole batches on that device, bf16 autocast, channels-last
and fused Adam on CUDA, optional ``torch.compile``; losses and metrics are accumulated on the
device and read once per epoch (plus a throttled read for the progress bar).

Multi-GPU / multi-node: run the same script under ``torchrun``; each process trains on its
shard of every epoch's permutation with DistributedDataParallel, metrics are summed across
processes, and only rank 0 writes files and logs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mtan.checkpoint import (CheckpointError, atomic_write_text, clean_stale_temporaries, latest_good_checkpoint,
                             list_checkpoints, prune_checkpoints, read_header, restore, save_checkpoint)
from mtan.data.common import parse_size
from mtan.data.photometric import photometric
from mtan.model import MTAN, count_parameters
from mtan.tasks import Task, tasks_from_config
from mtan.weighting import build_weighting

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


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
    class_weights: str = "none"           # none | median-frequency: balance the semantic classes in the training loss
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
                              ("class_weights", ("none", "median-frequency")), ("optimizer", ("adam", "adamw")),
                              ("schedule", ("step", "cosine", "poly"))):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}")
        if self.pseudo_depth and not {"camvid", "synthetic"} & set(str(self.data).split("+")):
            bad("pseudo_depth", f"applies to camvid and synthetic data, and --data is {self.data!r}")
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


def build_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule: ``step`` (the paper's StepLR, stepped once an epoch), or
    ``cosine`` / ``poly`` (power 0.9) decay to 0 over the run after a linear warm-up of
    ``warmup_epochs``, stepped after every optimiser step."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    kind = config.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return (1 - progress) ** 0.9

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_runtime(config: TrainConfig) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(config.device)
        except RuntimeError:
            raise ValueError(f"--device {config.device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu")
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world=world, local_rank=local_rank)


def all_reduce_(tensors: list[torch.Tensor], runtime: Runtime) -> None:
    if runtime.distributed:
        for t in tensors:
            dist.all_reduce(t)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _builder_options(config: TrainConfig, part: str, split: str) -> dict:
    options = {}
    if part in ("cityscapes", "cityscapes-raw"):
        options["labels"] = config.labels
    if part == "synthetic":
        frames = config.train_frames if split == "train" else config.val_frames
        if frames is not None:
            options["num_frames"] = frames
        options["seed"] = config.seed if split == "train" else 0
    if config.pseudo_depth and split == "train":  # validation keeps the release convention (sky = invalid)
        from mtan.data.pseudo_depth import SKY_INVERSE_DEPTH

        if part == "camvid":
            options["pseudo_depth"] = True
        if part == "synthetic":
            options["sky_depth"] = SKY_INVERSE_DEPTH
    options.update(config.data_options.get(part, {}))
    return options


def build_split(config: TrainConfig, split: str, name: str | None = None, root="config"):
    """``split`` of the run's data (or of one part ``name`` of a mixture, with its own ``root``)."""
    from mtan.data import build_dataset

    name = name or config.data
    root = config.data_root if root == "config" else root
    parts = name.split("+")
    if len(parts) == 1:
        options = _builder_options(config, name, split)
    else:  # per-part options, e.g. synthetic={"num_frames": 96}
        options = {p: _builder_options(config, p, split) for p in parts}
    return build_dataset(name, root=root, split=split, size=config.size, **options)


def validation_sets(config: TrainConfig) -> dict[str, object]:
    """One validation set per part of the training data (``synthetic+camvid`` -> both, reported apart)."""
    parts = config.data.split("+")
    if len(parts) == 1:
        return {config.data: build_split(config, "val")}
    roots = (config.data_root or "").split("+") if isinstance(config.data_root, str) else [None] * len(parts)
    roots = roots if len(roots) == len(parts) else [None] * len(parts)
    return {p: build_split(config, "val", name=p, root=r or None) for p, r in zip(parts, roots)}


def load_into_memory(dataset, device: torch.device, progress: bool, workers: int = 0):
    from mtan.data import to_memory

    return to_memory(dataset, device=device, progress=progress, workers=workers)


def shard_order(n: int, batch_size: int, runtime: Runtime, generator: torch.Generator | None, device,
                drop_last: bool) -> torch.Tensor:
    """This process's sample order for one pass (the same permutation on every process, sliced)."""
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(device)
    else:
        order = torch.arange(n, device=device)
    if runtime.distributed:
        per_rank = n // runtime.world if drop_last else math.ceil(n / runtime.world)
        order = order[runtime.rank::runtime.world][:per_rank]
    return order


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


class Engine:
    """Holds the model, optimiser, data and settings of one run; ``fit()`` trains it."""

    def __init__(self, config: TrainConfig, log=print):
        self.config = config
        self.runtime = setup_runtime(config)
        self.log = log if self.runtime.is_main else (lambda *a, **k: None)
        self.out = Path(config.out)
        # progress bars on an interactive terminal only (logs and CI get the per-epoch lines)
        self.show_progress = config.progress and self.runtime.is_main and sys.stderr.isatty()
        torch.manual_seed(config.seed)
        device = self.runtime.device
        cuda = device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (config.amp == "bf16" or (config.amp == "auto" and cuda)) else None
        self.amp_measured: dict | None = None  # the CPU timing behind --amp auto's choice
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and cuda)

        # data: validated before the first step, held in memory on the device
        from mtan.data import validate

        train_set = build_split(config, "train")
        self.val_raw = validation_sets(config)
        if config.data_workers:  # generated frames: render them in parallel before the checks read them
            for ds in [train_set, *self.val_raw.values()]:
                for part in getattr(ds, "datasets", [ds]):
                    if hasattr(part, "render_all"):
                        part.render_all(config.data_workers, progress=self.show_progress)
        for ds in [train_set, *self.val_raw.values()]:
            validate(ds, full=True, progress=self.show_progress)
        self.train_data = load_into_memory(train_set, device, self.show_progress, config.data_workers)
        self.val_data = {k: load_into_memory(v, device, False, config.data_workers) for k, v in self.val_raw.items()}
        self.data_tasks: list[Task] = tasks_from_config(train_set.task_configs)

        # model
        task_cfgs = [t.to_config() for t in self.data_tasks]
        if config.arch == "single":
            if config.task is None:
                raise ValueError(f"arch 'single' needs --task (one of {[t.name for t in self.data_tasks]})")
            task_cfgs = [t for t in task_cfgs if t["name"] == config.task]
            if not task_cfgs:
                raise ValueError(f"--task {config.task!r} is not a task of {config.data} "
                                 f"({[t.name for t in self.data_tasks]})")
        self.model = MTAN(task_cfgs, arch=config.arch, width=config.width).to(device)
        if config.init_from:
            self._init_from(config.init_from)
        # same math either way (tested); fewer, larger kernels pay off on a GPU
        self.model.set_batched_attention(config.batched_attention == "on" or (config.batched_attention == "auto" and cuda))
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tasks = self.model.tasks
        self.weighting = build_weighting(config.weighting, self.model.task_names, config.temperature).to(device)
        self.class_weights = self._class_weights()
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(params, lr=config.lr, weight_decay=config.weight_decay,
                                   **({"fused": True} if cuda else {}))
        self.steps_per_epoch = max(1, len(self.train_data) // self.runtime.world // config.batch_size)
        self.scheduler = build_schedule(self.optimizer, config, self.steps_per_epoch)
        self.step_schedule_per_batch = config.schedule != "step"

        if config.amp == "auto" and not cuda:
            self._choose_cpu_amp()
        # the module that runs the steps: compiled and/or wrapped for DDP
        self.forward_module = self._wrap(config.compile)
        self.compile_unproven = config.compile  # torch.compile fails at the first call, not when wrapping
        self.start_epoch = 0
        self.best_score = -math.inf
        self.history: list[dict] = []

    def _choose_cpu_amp(self) -> None:
        """``--amp auto`` on a CPU: time a few training steps in float32 and in bf16 autocast on this
        machine and keep the faster (bf16 is twice as fast as float32 on some CPUs and half as fast
        on others). A resumed run keeps the choice its checkpoints record."""
        from mtan.timing import fastest

        recorded = self._recorded_amp()
        if recorded is not None:
            self.amp_dtype = torch.bfloat16 if recorded == "bf16" else None
            self.log(f"amp {recorded} (as the run being resumed chose)")
            return
        batch = next(self._batches(self.train_data, self.config.batch_size, 0, self.config.augment))
        saved = ({k: v.clone() for k, v in self.model.state_dict().items()}, torch.get_rng_state())

        def step(dtype):
            self.amp_dtype = dtype
            self._forward_backward(self.model, batch)

        choice, seconds = fastest({"off": lambda: step(None), "bf16": lambda: step(torch.bfloat16)})
        self.model.load_state_dict(saved[0])  # the timing steps leave no trace (BatchNorm statistics)
        torch.set_rng_state(saved[1])
        self.optimizer.zero_grad(set_to_none=True)
        self.amp_dtype = torch.bfloat16 if choice == "bf16" else None
        self.amp_measured = {"choice": choice, "seconds_per_step": seconds}
        self.log(f"amp auto: {choice} (seconds per training step on this CPU: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()) + ")")

    def _recorded_amp(self) -> str | None:
        found = list_checkpoints(self.out / "checkpoints")
        if not found:
            return None
        try:
            return read_header(found[0][1]).get("amp")  # the header alone: resume() reads the tensors
        except CheckpointError:
            return None

    def _init_from(self, source: str) -> None:
        """Copy the weights of a saved model with the same architecture, tasks and width."""
        from mtan.model import ModelConfigError

        try:
            other = MTAN.from_pretrained(source)
        except ModelConfigError as e:
            raise ValueError(f"--init-from {source}: {e}") from None
        mine = (self.model.arch, self.model.width, [t.to_config() for t in self.model.tasks])
        theirs = (other.arch, other.width, [t.to_config() for t in other.tasks])
        if mine != theirs:
            raise ValueError(f"--init-from {source}: that model is {theirs[0]} width {theirs[1]:g} with tasks "
                             f"{[t['name'] for t in theirs[2]]}; this run builds {mine[0]} width {mine[1]:g} with "
                             f"{[t['name'] for t in mine[2]]} (and their classes must match too)")
        self.model.load_state_dict(other.state_dict())
        self.log(f"initialised from {source}")

    def _class_weights(self) -> dict[str, torch.Tensor]:
        """Per-class weights of the semantic training losses (``--class-weights``), from the training labels."""
        if self.config.class_weights == "none":
            return {}
        out = {}
        for t in self.tasks:
            weights = t.class_weights(self.train_data.targets[t.name]) if t.name in self.train_data.targets else None
            if weights is not None:
                out[t.name] = weights
                pairs = ", ".join(f"{c} {w:.2f}" for c, w in zip(t.class_set.classes, out[t.name].tolist()))
                self.log(f"class weights ({self.config.class_weights}) for {t.name}: {pairs}")
        return out

    def _wrap(self, compile: bool):
        module = compile_or_eager(self.model, self.log) if compile else self.model
        if self.runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            cuda = self.runtime.device.type == "cuda"
            module = DDP(module, device_ids=[self.runtime.device.index] if cuda else None)
        return module

    # ---- one pass ---------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.runtime.device.type, enabled=False)
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: dict) -> dict:
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _batches(self, data, batch_size: int, epoch: int | None, augment: bool):
        """Batches of ``data`` for this process. ``epoch`` seeds the shuffle and augmentation
        (so a resumed run sees exactly the same batches); ``None`` = evaluation order."""
        from mtan.data.augment import BatchAugment

        cfg = self.config
        generator = augmenter = None
        if epoch is not None:
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = shard_order(len(data), batch_size, self.runtime, generator, data.device, drop_last=epoch is not None)
        photo_gen = None
        if augment:
            aug_gen = torch.Generator(device=data.device).manual_seed(cfg.seed * 100_003 + epoch + 7_919)
            augmenter = BatchAugment(data.tasks, generator=aug_gen, scale_range=cfg.scale_bounds(),
                                     out_size=parse_size(cfg.crop) if cfg.crop else None)
        if epoch is not None and cfg.photometric:
            photo_gen = torch.Generator(device=data.device).manual_seed(cfg.seed * 100_003 + epoch + 15_013)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if epoch is not None and len(index) < batch_size and len(order) >= batch_size:
                break  # drop the last, smaller training batch (BatchNorm dislikes tiny batches)
            batch = data.batch(index)
            if augmenter is not None:
                batch = augmenter(batch)
            if photo_gen is not None:
                batch["image"] = photometric(batch["image"], photo_gen)
            yield self._prepare(batch)

    def _task_losses(self, outputs: dict, batch: dict) -> tuple[dict, torch.Tensor]:
        cfg = self.config
        losses, has_valid = {}, []
        for t in self.tasks:
            target = batch[t.name]
            losses[t.name] = t.loss(outputs[t.name], target, image=batch["image"],
                                    class_weight=self.class_weights.get(t.name),
                                    label_smoothing=cfg.label_smoothing, smoothness=cfg.depth_smoothness)
            has_valid.append(t.has_valid(target))
        return losses, torch.stack(has_valid)

    def _forward_backward(self, model, batch: dict):
        """Forward, weighted loss and backward of one batch (gradients zeroed first)."""
        with self._autocast():
            outputs = model(batch["image"])
        losses, has_valid = self._task_losses(outputs, batch)
        total = self.weighting.combine(losses)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        return losses, has_valid

    def train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        cfg, model = self.config, self.forward_module
        self.model.train()
        n_tasks = len(self.tasks)
        device = self.runtime.device
        loss_sums = torch.zeros(n_tasks, dtype=torch.float64, device=device)
        loss_batches = torch.zeros(n_tasks, dtype=torch.float64, device=device)
        nonfinite = torch.zeros(n_tasks, dtype=torch.bool, device=device)
        images = 0
        n_batches = max(1, len(self.train_data) // self.runtime.world // cfg.batch_size)
        bar = tqdm(self._batches(self.train_data, cfg.batch_size, epoch, cfg.augment), total=n_batches,
                   desc=f"epoch {epoch + 1}/{cfg.epochs} train", unit="batch", leave=False,
                   disable=not self.show_progress)
        t0, last_shown = time.perf_counter(), 0.0
        last_checked = t0
        for step, batch in enumerate(bar):
            if self.compile_unproven:  # the first compiled step: fall back to eager if compiling fails
                try:
                    losses, has_valid = self._forward_backward(model, batch)
                except Exception as e:  # noqa: BLE001 (inductor, missing compiler, unsupported op...)
                    self.log(f"warning: torch.compile failed at the first step ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else ''}); continuing eagerly")
                    self.forward_module = model = self._wrap(False)
                    losses, has_valid = self._forward_backward(model, batch)
                self.compile_unproven = False
            else:
                losses, has_valid = self._forward_backward(model, batch)
            if self.runtime.distributed and any(p.grad is not None for p in self.weighting.parameters()):
                for p in self.weighting.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= self.runtime.world
            self.optimizer.step()
            if self.step_schedule_per_batch:
                self.scheduler.step()
            stacked = torch.stack([losses[t.name].detach().double() for t in self.tasks])
            bad_now = ~torch.isfinite(stacked)
            # the tasks that went bad first (one bad step makes every task's loss NaN after it)
            nonfinite = torch.where(nonfinite.any(), nonfinite, bad_now)
            loss_sums += torch.where(has_valid, stacked, torch.zeros_like(stacked))
            loss_batches += has_valid.double()
            images += batch["image"].shape[0]
            now = time.perf_counter()
            if bar.disable is False and now - last_shown > 1.0:  # a host read at most once a second
                means = (loss_sums / loss_batches.clamp_min(1)).tolist()
                bar.set_postfix({t.name: f"{v:.4f}" for t, v in zip(self.tasks, means)})
                last_shown = now
            if not self.runtime.distributed and now - last_checked > 2.0:
                last_checked = now  # a diverged run stops within seconds, not at the end of the epoch
                if bool(nonfinite.any()):
                    break
        bar.close()
        all_reduce_([loss_sums, loss_batches], self.runtime)
        if self.runtime.distributed:
            flags = nonfinite.int()
            dist.all_reduce(flags)
            nonfinite = flags > 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        bad = [t.name for t, b in zip(self.tasks, nonfinite.tolist()) if b]
        means = (loss_sums / loss_batches.clamp_min(1)).tolist()
        result = {"loss": {t.name: m for t, m in zip(self.tasks, means)}, "seconds": seconds,
                  "images": images * self.runtime.world, "nonfinite": bad}
        return result

    @torch.no_grad()
    def evaluate(self, data) -> dict:
        """Losses and metrics of the current model on a validation set (on the device)."""
        return evaluate_model(self.model, data, self.config.eval_batch_size or self.config.batch_size,
                              runtime=self.runtime, autocast=self._autocast, prepare=self._prepare,
                              batches=lambda d, bs: self._batches(d, bs, None, False))

    # ---- the run ------------------------------------------------------------------------

    def resume(self) -> None:
        if self.runtime.is_main:
            clean_stale_temporaries([self.out, self.out / "checkpoints", self.out / "best"], log=self.log)
        found = latest_good_checkpoint(self.out / "checkpoints", log=self.log)
        if found is None:
            raise CheckpointError(f"{self.out}: no readable checkpoint to resume from (checkpoints/epoch_*.safetensors); "
                                  f"start the run again without --resume")
        epoch, tensors, header = found
        restore(tensors, header, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                weighting=self.weighting)
        self.start_epoch = epoch + 1
        self.best_score = header.get("best_score", -math.inf)
        self.history = read_metrics(self.out / "metrics.jsonl")[: epoch + 1]
        if self.runtime.is_main:
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.log(f"resumed {self.out} after epoch {epoch + 1} (checkpoint epoch_{epoch:04d})")

    def fit(self) -> list[dict]:
        cfg = self.config
        if self.runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "train_config.json", cfg.to_json() + "\n")
            if self.start_epoch == 0:  # a new run: no metrics from a run that stopped before its first checkpoint
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.log(f"training {cfg.arch} x{cfg.width:g} ({count_parameters(self.model):,} parameters) on "
                 f"{cfg.data}: {len(self.train_data)} train frames, val "
                 f"{ {k: len(v) for k, v in self.val_data.items()} }, device {self.runtime.device}"
                 f"{f' x {self.runtime.world} processes' if self.runtime.distributed else ''}, "
                 f"amp {'bf16' if self.amp_dtype is not None else 'off'}, out {self.out}")
        for epoch in range(self.start_epoch, cfg.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            self.weighting.begin_epoch(epoch)  # DWA fixes this epoch's weights from the recorded losses
            weights = self.weighting.weights() if cfg.weighting != "uncertainty" else None
            train = self.train_epoch(epoch)
            if train["nonfinite"]:
                raise NonFiniteLossError(self._nonfinite_message(epoch, train["nonfinite"]))
            if weights is None:  # uncertainty: the weights the epoch ended with
                weights = self.weighting.weights()
            self.weighting.end_epoch(train["loss"])
            if not self.step_schedule_per_batch:
                self.scheduler.step()
            record = {"epoch": epoch + 1, "lr": lr, "weights": weights,
                      "train": {f"loss.{k}": v for k, v in train["loss"].items()},
                      "epoch_seconds": round(train["seconds"], 3),
                      "images_per_second": round(train["images"] / max(train["seconds"], 1e-9), 2)}
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                t_eval = time.perf_counter()
                record["val"] = {name: self.evaluate(data) for name, data in self.val_data.items()}
                record["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
            self.history.append(record)
            if self.runtime.is_main:
                try:
                    self._write_epoch(epoch, record)
                except (CheckpointError, OSError) as e:
                    raise CheckpointError(self._write_failed_message(epoch, e)) from None
            self.log(summary_line(record, cfg.epochs))
        if self.runtime.distributed:
            dist.barrier()
        return self.history

    def _last_checkpoint(self, before: int) -> Path | None:
        found = [p for e, p in list_checkpoints(self.out / "checkpoints") if e < before]
        return found[0] if found else None

    def _nonfinite_message(self, epoch: int, tasks: list[str]) -> str:
        last = self._last_checkpoint(epoch)
        kept = (f"The last good checkpoint, {last} (epoch {int(last.stem.split('_')[1]) + 1}), and the model "
                f"exported from it are kept; try a lower --lr or check the data for bad values, then continue "
                f"with: python train.py --resume {self.out}") if last else (
                "No checkpoint had been written yet; try a lower --lr or check the data for bad values, then "
                "start the run again")
        which = " and ".join(f"'{t}'" for t in tasks) + (" task's" if len(tasks) == 1 else " tasks'")
        return (f"epoch {epoch + 1}: the {which} training loss became NaN or infinite; training stopped "
                f"before saving anything from this epoch. {kept}")

    def _write_failed_message(self, epoch: int, error: Exception) -> str:
        if isinstance(error, CheckpointError):
            reason = error.short
        else:
            where = getattr(error, "filename", None) or self.out
            reason = f"could not write {where}: {getattr(error, 'strerror', None) or error}"
        last = self._last_checkpoint(epoch + 1)
        saved = last is not None and last.name == f"epoch_{epoch:04d}.safetensors"
        then = (f"the newest complete checkpoint, {last}, is intact. Free disk space (or fix the folder's "
                f"permissions), then continue with: python train.py --resume {self.out}") if last else (
                "no checkpoint had been written yet. Free disk space (or fix the folder's permissions), then "
                "start the run again")
        return f"epoch {epoch + 1}: {reason}. Its checkpoint was {'' if saved else 'not '}saved; {then}"

    def _write_epoch(self, epoch: int, record: dict) -> None:
        from mtan.plots import plot_curves

        cfg = self.config
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        plot_curves(self.history, self.out / "curves.png")
        score = monitor_score(record)
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        card = self.card_kwargs(record)
        if "val" in record or epoch + 1 == cfg.epochs:
            export(self.model, self.out, card)  # the last model, at the top of the run folder
        if improved:
            export(self.model, self.out / "best", {**card, "notes": f"Best validation score at epoch {epoch + 1}."})
        # The checkpoint comes last: it marks the epoch as complete, so an epoch whose outputs failed
        # (or were cut short by a crash) is trained and written again by --resume.
        save_checkpoint(self.out / "checkpoints" / f"epoch_{epoch:04d}.safetensors", model=self.model,
                        optimizer=self.optimizer, scheduler=self.scheduler, weighting=self.weighting,
                        meta={"epoch": epoch, "best_score": self.best_score, "config": dataclasses.asdict(cfg),
                              "amp": "bf16" if self.amp_dtype is not None else "off"})
        prune_checkpoints(self.out / "checkpoints", keep=cfg.keep_checkpoints)

    def card_kwargs(self, record: dict) -> dict:
        cfg = self.config
        val = record.get("val") or (self.history and self._last_val()) or {}
        first = next(iter(val.values()), {}) if val else {}
        dataset_name = {"cityscapes": "CityScapes", "nyuv2": "NYUv2", "camvid": "CamVid",
                        "synthetic": "mtan procedural street scenes"}.get(cfg.data.split("+")[0], cfg.data)
        table = {f"{name}/{k}" if len(val) > 1 else k: v for name, m in val.items() for k, v in m.items()
                 if not k.startswith("loss.")}
        return {
            "training_command": cfg.command,
            "data": f"`{cfg.data}` ({cfg.size or 'native size'}), {len(self.train_data)} training frames; "
                    f"validation on {', '.join(val) or '-'}; {cfg.epochs} epochs, batch {cfg.batch_size}, "
                    f"{cfg.weighting} weighting, augmentation {'on' if cfg.augment else 'off'}",
            "dataset_name": dataset_name, "dataset_type": cfg.data.split("+")[0],
            "results": {k: v for k, v in first.items() if not k.startswith("loss.") and v is not None},
            "extra_results": table,
            "repo_id": cfg.push_to_hub,
        }

    def _last_val(self):
        for r in reversed(self.history):
            if "val" in r:
                return r["val"]
        return {}


class NonFiniteLossError(RuntimeError):
    """A task's training loss became NaN or infinite."""


def compile_or_eager(model, log):
    try:
        return torch.compile(model)
    except Exception as e:  # e.g. no compiler toolchain on this platform
        log(f"warning: torch.compile is unavailable ({type(e).__name__}: {e}); running eagerly")
        return model


def evaluate_model(model: MTAN, data, batch_size: int, runtime: Runtime | None = None, autocast=None,
                   prepare=None, batches=None, metrics_out: dict | None = None, observe=None) -> dict:
    """Validation losses and metrics of ``model`` on an in-memory dataset, as a flat dict
    (``semantic.miou``, ``semantic.iou.<class>``, ``depth.abs_err``, ``loss.semantic``, ...).
    Only the tasks the dataset provides with at least one valid pixel are scored.
    ``metrics_out``: receives each scored task's metric object (e.g. for its confusion matrix);
    ``observe(outputs, batch)``: called with every batch's outputs (for metrics beyond the tasks')."""
    runtime = runtime or Runtime(device=data.device)
    data_tasks = {t.name for t in data.tasks}
    tasks = [t for t in model.tasks if t.name in data_tasks]
    device = data.device
    metrics = {t.name: t.new_metric(device) for t in tasks}
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    loss_counts = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    autocast = autocast or (lambda: torch.autocast(device.type, enabled=False))
    if batches is None:
        def batches(d, bs):
            order = shard_order(len(d), bs, runtime, None, d.device, drop_last=False)
            for s in range(0, len(order), bs):
                yield d.batch(order[s:s + bs])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches(data, batch_size):
            batch = prepare(batch) if prepare else batch
            with autocast():
                outputs = model(batch["image"])
            if observe is not None:
                observe(outputs, batch)
            for k, t in enumerate(tasks):
                pred = outputs[t.name].float()
                metrics[t.name].update(pred, batch[t.name])
                has = t.has_valid(batch[t.name])
                loss_sums[k] += torch.where(has, t.loss(pred, batch[t.name]).double(), torch.zeros((), dtype=torch.float64, device=device))
                loss_counts[k] += has.double()
    model.train(was_training)
    for m in metrics.values():
        all_reduce_(m.state(), runtime)
    all_reduce_([loss_sums, loss_counts], runtime)
    result = {}
    for k, t in enumerate(tasks):
        if loss_counts[k] == 0:  # the set has no valid pixel for this task (e.g. CamVid depth): not scored
            continue
        for name, value in metrics[t.name].compute().items():
            result[f"{t.name}.{name}"] = None if value != value else value
        result[f"loss.{t.name}"] = float(loss_sums[k] / loss_counts[k])
        if metrics_out is not None:
            metrics_out[t.name] = metrics[t.name]
    return result


def monitor_score(record: dict) -> float | None:
    """Higher is better: the first validation set's mIoU minus its depth relative error (when present)."""
    val = record.get("val")
    if not val:
        return None
    first = next(iter(val.values()))
    score, parts = 0.0, 0
    if first.get("semantic.miou") is not None:
        score += first["semantic.miou"]
        parts += 1
    if first.get("depth.rel_err") is not None:
        score -= min(first["depth.rel_err"], 10.0)
        parts += 1
    return score if parts else None


def summary_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.2e}",
             "train " + " ".join(f"{k[5:]} {v:.4f}" for k, v in record["train"].items()),
             "w " + " ".join(f"{v:.3f}" for v in record["weights"].values()),
             f"{record['images_per_second']:.1f} img/s"]
    for name, metrics in (record.get("val") or {}).items():
        shown = [f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and not k.startswith("loss.")
                 and k.split(".")[-1] in ("miou", "pixel_acc", "abs_err", "rel_err", "mean_deg")]
        parts.append(f"val[{name}] " + " ".join(shown))
    return " | ".join(parts)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything before it is good
    return rows


def export(model: MTAN, folder: Path, card: dict) -> None:
    """save_pretrained into ``folder`` (config, weights, model card with the latest results).

    The files are written into a temporary folder and renamed into place one by one, so a run
    killed mid-export never leaves a truncated ``model.safetensors``.
    """
    import shutil

    from mtan.checkpoint import fsync_dir

    folder = Path(folder)
    staging = folder / ".export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    card = dict(card)
    extra = card.pop("extra_results", None)
    if extra and len(extra) > len(card.get("results") or {}):
        card["notes"] = ((card.get("notes") or "") + "\n\nAll validation sets:\n\n| metric | value |\n|---|---|\n"
                         + "\n".join(f"| {k} | {v:.4f} |" for k, v in extra.items() if v is not None)).strip()
    try:
        model.save_pretrained(staging, model_card_kwargs=card)
        for name in ("model.safetensors", "config.json", "README.md"):  # weights first, card last
            with open(staging / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staging / name, folder / name)
    except Exception as e:
        from safetensors import SafetensorError

        if isinstance(e, (OSError, SafetensorError)):  # a full disk surfaces as either
            short = f"could not export the model to {folder}: {getattr(e, 'strerror', None) or e}"
            raise CheckpointError(f"{short}; the files exported there before are intact", short=short) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(folder)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def check_run_folder(out: Path, resume: bool) -> None:
    """Fail early (before any data is read) when the run folder cannot be used.

    A new run needs a writable folder that does not already hold a run (its metrics would be
    mixed up and ``--resume`` would pick up the old checkpoints); ``--resume`` needs a checkpoint.
    """
    if resume:
        if not list_checkpoints(out / "checkpoints"):
            raise CheckpointError(f"{out}: no checkpoint to resume from (checkpoints/epoch_*.safetensors): the run "
                                  f"stopped before its first epoch ended, or its checkpoints were removed; start it "
                                  f"again without --resume")
        return
    if list_checkpoints(out / "checkpoints"):
        raise ValueError(f"--out {out} already holds a training run (checkpoints/epoch_*.safetensors); continue it "
                         f"with python train.py --resume {out}, or choose another --out (or delete the folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out}: the run folder cannot be written ({e.strerror or e}); choose another "
                         f"--out") from None


def train(config: TrainConfig, resume: bool = False, log=print) -> list[dict]:
    """Run (or resume) a training run; returns the per-epoch records."""
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_folder(Path(config.out), resume)
    engine = Engine(config, log=log)
    if resume:
        engine.resume()
    try:
        history = engine.fit()
    finally:
        if engine.runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()
    if config.push_to_hub and engine.runtime.is_main:
        from mtan.hub import push_run

        push_run(engine.out, config.push_to_hub, private=config.private, log=log)
    return history
