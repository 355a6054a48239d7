"""The tasks MTAN predicts: semantic segmentation, depth and surface normals.

A task knows everything that differs between the kinds, so that the rest of the code never asks
which kind it holds: its output channels, how its prediction is finished (normals are made unit
length), its loss and the training options that apply to it, its metrics, what an "unknown"
target looks like (so that datasets which lack a task, such as CamVid's depth, can be mixed with
those that have it), what makes a target invalid, how its values change when a view is zoomed or
mirrored, and how it is described on a model card.

Tasks are described by small JSON-friendly dicts (they live in a model's ``config.json``)::

    {"name": "semantic", "kind": "semantic", "class_set": "cityscapes-7"}
    {"name": "depth", "kind": "depth", "depth_kind": "inverse"}
    {"name": "normal", "kind": "normal"}
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from mtan import losses, metrics

# --------------------------------------------------------------------------------------
# Class sets: names and the standard colour palettes.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSet:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    #: Street scenes: the classes that stand in front (people, vehicles) and those they are seen
    #: against (buildings, vegetation, sky), for ``--depth-occlusion``; None where no such rule holds.
    occlusion: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    #: The class seen behind everything else (the sky), for ``--depth-sky``; None where there is none.
    sky: str | None = None

    def __post_init__(self):
        if len(self.classes) != len(self.palette):
            raise ValueError(f"class set {self.name!r}: {len(self.classes)} classes but {len(self.palette)} colours")
        for names in (*(self.occlusion or ()), (self.sky,) if self.sky else ()):
            unknown = set(names) - set(self.classes)
            if unknown:
                raise ValueError(f"class set {self.name!r}: occlusion names unknown classes {sorted(unknown)}")

    def ids(self, names) -> tuple[int, ...]:
        """The ids of the classes ``names``; a name not in the set is refused with the set's names."""
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} {'is not a class' if len(unknown) == 1 else 'are not classes'} "
                             f"of {self.name} ({', '.join(self.classes)})")
        return tuple(self.classes.index(n) for n in names)

    def occlusion_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The class ids of :attr:`occlusion` (front, behind), or None."""
        if self.occlusion is None:
            return None
        return tuple(tuple(self.classes.index(n) for n in names) for names in self.occlusion)

    def sky_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(every other class, the sky) as class ids, the pairs of ``--depth-sky``; None without a sky."""
        if self.sky is None:
            return None
        sky = self.classes.index(self.sky)
        return tuple(i for i in range(len(self.classes)) if i != sky), (sky,)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


CLASS_SETS: dict[str, ClassSet] = {}


def _register(cs: ClassSet) -> ClassSet:
    CLASS_SETS[cs.name] = cs
    return cs


# The 7 CityScapes categories without "void" (categoryId - 1); each coloured like the
# category's most common official label (road, building, pole, vegetation, sky, person, car).
CITYSCAPES_7 = _register(ClassSet(
    "cityscapes-7",
    ("flat", "construction", "object", "nature", "sky", "human", "vehicle"),
    ((128, 64, 128), (70, 70, 70), (153, 153, 153), (107, 142, 35), (70, 130, 180), (220, 20, 60), (0, 0, 142)),
    occlusion=(("human", "vehicle"), ("construction", "nature", "sky")), sky="sky",
))

# The 19 CityScapes evaluation classes (trainIds 0..18) and their official colours.
CITYSCAPES_19 = _register(ClassSet(
    "cityscapes-19",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
     "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
     "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
     (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    occlusion=(("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
               ("building", "wall", "vegetation", "sky")), sky="sky",
))

# CityScapes "label_2" of the MTAN release: foreground objects (human, vehicle) against the rest.
CITYSCAPES_2 = _register(ClassSet(
    "cityscapes-2", ("background", "foreground"), ((70, 130, 180), (220, 20, 60)),
))

# The 13 NYUv2 classes used by MTAN and most multi-task papers.
NYUV2_13 = _register(ClassSet(
    "nyuv2-13",
    ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
     "table", "tv", "wall", "window"),
    ((0, 0, 255), (232, 88, 47), (0, 217, 0), (148, 0, 240), (222, 241, 23), (255, 205, 205),
     (0, 223, 228), (106, 135, 204), (116, 28, 41), (240, 35, 235), (0, 166, 156), (249, 139, 0),
     (225, 228, 194)),
))

# CamVid, SegNet's 11-class version, with SegNet's colours.
CAMVID_11 = _register(ClassSet(
    "camvid-11",
    ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
     "pedestrian", "bicyclist"),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
))


def generic_class_set(num_classes: int) -> ClassSet:
    """Names ``class 0..K-1`` with colours spread around the hue circle (for unknown label sets)."""
    palette = tuple(
        tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95))
        for i in range(num_classes)
    )
    return ClassSet(f"generic-{num_classes}", tuple(f"class {i}" for i in range(num_classes)), palette)


def class_set_for(num_classes: int) -> ClassSet:
    """The known class set with this many classes (CityScapes 7/19, NYUv2 13, CamVid 11), else a generic one."""
    for cs in CLASS_SETS.values():
        if cs.num_classes == num_classes and cs.name != "cityscapes-2":
            return cs
    return generic_class_set(num_classes)


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------

# CityScapes release convention: stored value v = disparity PNG value / 65535 ~ 1.85 / metres
# (baseline 0.209 m x fx 2262 px / 256: the CityScapes stereo rig).
CITYSCAPES_INVERSE_DEPTH_SCALE = 1.85

KINDS = ("semantic", "depth", "normal")
DEPTH_KINDS = ("inverse", "metric")


@dataclass
class Task:
    """Base class. ``name`` keys the model's outputs and the datasets' targets."""

    name: str
    kind: str = field(init=False, default="")
    #: the value of a target pixel without ground truth (a zoomed-out view's border, a missing task)
    missing_value: ClassVar[float] = 0.0

    @property
    def out_channels(self) -> int:
        raise NotImplementedError

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn the head's raw output into the task's prediction."""
        return raw

    def loss(self, pred: torch.Tensor, target: torch.Tensor, *, image: torch.Tensor | None = None,
             **options) -> torch.Tensor:
        """The training loss; ``options`` are the task's own (:meth:`loss_options`)."""
        raise NotImplementedError

    def loss_options(self, options, class_weight: torch.Tensor | None = None) -> dict:
        """The keyword arguments of :meth:`loss` from this task's own part of a training config
        (``config.loss.of(name)``, None for a task without options) and the class weights found
        for it from the training labels."""
        return {}

    def class_weights(self, labels: torch.Tensor, options) -> torch.Tensor | None:
        """Per-class loss weights from the training targets, as this task's loss options ask;
        None where the task has no classes or asks for none."""
        return None

    def describe_class_weights(self, weights: torch.Tensor, options) -> str:
        """The training log's line for the class weights :meth:`class_weights` found."""
        return f"class weights for {self.name}: {', '.join(f'{w:.2f}' for w in weights.tolist())}"

    def has_valid(self, target: torch.Tensor) -> torch.Tensor:
        """Whether ``target`` has at least one valid pixel (a device tensor: no host sync)."""
        return (target != self.missing_value).any()

    def target_problem(self, target: torch.Tensor, full: bool = True) -> str | None:
        """What is wrong with a dataset's target values (a sentence that says what to store
        instead), or None when they are valid. ``full=False``: only the checks cheap enough for
        every item read (a label outside the classes would otherwise surface as an obscure
        device-side assert inside the loss)."""
        return None

    def zoom_values(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Values of a B x C x H x W target whose view was zoomed in by ``scale`` (B factors)."""
        return values

    def mirror_values(self, values: torch.Tensor, mirrored: torch.Tensor | bool = True) -> torch.Tensor:
        """Values of a B x C x H x W target whose pixels were mirrored left-right (where
        ``mirrored``: a bool or B bools); the pixels themselves are moved by the caller."""
        return values

    def missing_target(self, height: int, width: int) -> torch.Tensor:
        """A target of the right shape whose pixels are all invalid (for samples lacking the task)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the task predicts, in a few words (the model card's table)."""
        raise NotImplementedError

    def to_config(self) -> dict:
        return {"name": self.name, "kind": self.kind}


@dataclass
class SemanticTask(Task):
    """``class_bias``: one number per class added to the network's class scores (logits) before
    anything reads them: a calibration fitted after training (``python -m mtan.calibrate``) that
    moves the decision between classes, e.g. undoing the prior that class balancing taught."""

    class_set: ClassSet = CITYSCAPES_7
    class_bias: tuple[float, ...] | None = None
    kind: str = field(init=False, default="semantic")

    def __post_init__(self):
        if self.class_bias is not None:
            bias = tuple(float(v) for v in self.class_bias)
            if len(bias) != self.num_classes or not all(math.isfinite(v) for v in bias):
                raise ValueError(f"task {self.name!r}: 'class_bias' must hold {self.num_classes} finite numbers, one "
                                 f"per class, got {list(self.class_bias)!r}")
            self.class_bias = bias

    def finish(self, raw):
        if self.class_bias is None:
            return raw
        return raw + torch.tensor(self.class_bias, dtype=raw.dtype, device=raw.device).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return self.class_set.num_classes

    @property
    def out_channels(self) -> int:
        return self.num_classes

    missing_value: ClassVar[float] = -1.0

    def loss(self, pred, target, *, image=None, class_weight=None, label_smoothing=0.0, hard_share=1.0, lovasz=0.0):
        loss = losses.semantic_loss(pred, target, weight=class_weight, label_smoothing=label_smoothing,
                                    hard_share=hard_share)
        if lovasz:
            loss = loss + lovasz * losses.lovasz_softmax_loss(pred, target)
        return loss

    def loss_options(self, options, class_weight=None):
        return {"class_weight": class_weight, "label_smoothing": options.label_smoothing,
                "hard_share": options.hard_pixels, "lovasz": options.lovasz}

    def class_weights(self, labels, options):
        """Median-frequency balance raised to the power ``options.class_weights`` names."""
        power = losses.CLASS_BALANCE[options.class_weights]
        return None if power is None else losses.median_frequency_weights(labels, self.num_classes, power)

    def describe_class_weights(self, weights, options):
        pairs = ", ".join(f"{c} {w:.2f}" for c, w in zip(self.class_set.classes, weights.tolist()))
        return f"class weights ({options.class_weights}) for {self.name}: {pairs}"

    def has_valid(self, target):
        return (target >= 0).any()

    def target_problem(self, target, full=True):
        if target.numel() == 0:
            return None
        lo, hi = (int(v) for v in torch.aminmax(target))
        if lo >= -1 and hi < self.num_classes:
            return None
        outside = target[(target < -1) | (target >= self.num_classes)]
        bad = sorted(set(torch.unique(outside).tolist()))[:10]
        return (f"label value(s) {bad} outside the {self.num_classes} classes (valid: 0..{self.num_classes - 1}, "
                "-1 = void). Is this the right label folder / class set for the data?")

    def new_metric(self, device="cpu"):
        return metrics.SegmentationMetric(self.num_classes, device=device, class_names=self.class_set.classes)

    def missing_target(self, height, width):
        return torch.full((height, width), -1, dtype=torch.long)

    def describe(self):
        return f"{self.num_classes} classes ({self.class_set.name}): {', '.join(self.class_set.classes)}"

    def to_config(self):
        cfg = super().to_config()
        if self.class_set.name in CLASS_SETS:
            cfg["class_set"] = self.class_set.name
        else:
            cfg["classes"] = list(self.class_set.classes)
            cfg["palette"] = [list(c) for c in self.class_set.palette]
        if self.class_bias is not None:
            cfg["class_bias"] = [round(v, 6) for v in self.class_bias]
        return cfg


@dataclass
class DepthTask(Task):
    """``depth_kind='inverse'``: CityScapes release values (v ~ scale / metres, 0 invalid);
    ``'metric'``: metres (NYUv2, 0 invalid)."""

    depth_kind: str = "inverse"
    scale: float = CITYSCAPES_INVERSE_DEPTH_SCALE
    kind: str = field(init=False, default="depth")

    def __post_init__(self):
        if self.depth_kind not in DEPTH_KINDS:
            raise ValueError(f"task {self.name!r}: depth_kind must be one of {DEPTH_KINDS}, got {self.depth_kind!r}")

    @property
    def out_channels(self) -> int:
        return 1

    def to_metres(self, value: torch.Tensor) -> torch.Tensor:
        """Approximate distance in metres (inverse depth: scale / value; invalid or <= 0 -> inf)."""
        if self.depth_kind == "metric":
            return value
        return torch.where(value > 0, self.scale / value.clamp_min(1e-12), torch.full_like(value, float("inf")))

    @property
    def units(self) -> str:
        return "metres" if self.depth_kind == "metric" else f"inverse depth (~{self.scale:g} / metres)"

    @property
    def nearer_is_larger(self) -> bool:
        """Inverse depth grows as things come nearer; metric depth as they go away."""
        return self.depth_kind == "inverse"

    @property
    def metres_formula(self) -> str | None:
        """How a value becomes metres, when it is not already in metres (``1.85 / value``)."""
        return f"{self.scale:g} / value" if self.nearer_is_larger else None

    @property
    def meaning(self) -> str:
        """One sentence on how to read the values (the depth colour bar's note)."""
        if self.nearer_is_larger:
            return (f"Nearer things take the colours on the right. The network predicts inverse depth: "
                    f"distance ≈ {self.scale:g} / value metres, a rough guide.")
        return "Farther things take the colours on the right (depth in metres)."

    def loss_options(self, options, class_weight=None):
        return {"smoothness": options.smoothness, "ranking": options.ranking, "occlusion": options.occlusion,
                "sky": options.sky}

    def loss(self, pred, target, *, image=None, segmentation=None, smoothness=0.0, ranking=0.0, occlusion=0.0,
             sky=0.0):
        """``segmentation``: ``(labels, class_set)`` of the same batch, for the occlusion and sky terms."""
        loss = losses.depth_loss(pred, target)
        if ranking:
            loss = loss + ranking * losses.depth_ranking_loss(pred, target)
        for weight, term, rule in ((occlusion, "occlusion", "occlusion_ids"), (sky, "sky", "sky_ids")):
            if not weight:
                continue
            ids = getattr(segmentation[1], rule)() if segmentation is not None else None
            if ids is None:
                raise ValueError(f"task {self.name!r}: the {term} term needs the segmentation labels of a "
                                 f"class set that says what stands in front of what")
            loss = loss + weight * losses.occlusion_order_loss(
                pred, segmentation[0], *ids, target=target, nearer_is_larger=self.nearer_is_larger)
        if smoothness:
            if image is None:
                raise ValueError(f"task {self.name!r}: the smoothness term needs the image")
            loss = loss + smoothness * losses.edge_aware_smoothness(pred, image)
        return loss

    def target_problem(self, target, full=True):
        if not full:
            return None
        lo, hi = (float(v) for v in torch.aminmax(target))
        if lo != lo or hi != hi:
            return "the depth map contains NaN; store 0 for pixels without depth."
        if hi == float("inf"):
            return "the depth map contains inf; store 0 for pixels without depth."
        if lo < 0:
            return f"the depth map has negative values (min {lo:.4g}); depth must be >= 0, 0 = invalid."
        return None

    def zoom_values(self, values, scale):
        """Zooming in by s brings everything s times nearer: inverse depth x s, metres / s."""
        factor = scale if self.nearer_is_larger else 1.0 / scale
        return values * factor.to(values.dtype).view(-1, 1, 1, 1)

    def new_metric(self, device="cpu"):
        return metrics.DepthMetric(device=device)

    def missing_target(self, height, width):
        return torch.zeros((1, height, width), dtype=torch.float32)

    def describe(self):
        return f"depth, {self.units}"

    def to_config(self):
        cfg = super().to_config()
        cfg["depth_kind"] = self.depth_kind
        if self.depth_kind == "inverse":
            cfg["scale"] = self.scale
        return cfg


@dataclass
class NormalTask(Task):
    kind: str = field(init=False, default="normal")

    @property
    def out_channels(self) -> int:
        return 3

    def finish(self, raw):
        return F.normalize(raw, p=2, dim=1)

    def loss(self, pred, target, *, image=None):
        return losses.normal_loss(pred, target)

    def target_problem(self, target, full=True):
        if not full:
            return None
        if not torch.isfinite(target).all():
            return "the normal map contains NaN or inf; store (0, 0, 0) for pixels without a normal."
        if target.abs().max() > 1.01:
            return (f"normal components must lie in [-1, 1] (found {target.abs().max().item():.4g}); "
                    "store unit vectors.")
        return None

    def mirror_values(self, values, mirrored=True):
        """A mirrored view turns a normal's x component round."""
        flip = torch.as_tensor(mirrored, device=values.device).reshape(-1, 1, 1, 1)
        sign = torch.ones(flip.shape[0], 3, 1, 1, dtype=values.dtype, device=values.device)
        sign[:, :1] = torch.where(flip, -1.0, 1.0).to(values.dtype)
        return values * sign

    def new_metric(self, device="cpu"):
        return metrics.NormalMetric(device=device)

    def missing_target(self, height, width):
        return torch.zeros((3, height, width), dtype=torch.float32)

    def describe(self):
        return "surface normals (unit vectors)"


def task_from_config(cfg: dict) -> Task:
    """Build a task from its config dict; a wrong field gets an error that names it."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a task must be a dict like {{'name': 'semantic', 'kind': 'semantic'}}, got {cfg!r}")
    kind = cfg.get("kind", cfg.get("name"))
    name = cfg.get("name", kind)
    if not isinstance(name, str) or not name:
        raise ValueError(f"task config {cfg!r}: 'name' must be a non-empty string")
    known = {"name", "kind"}
    if kind == "semantic":
        known |= {"class_set", "classes", "palette", "num_classes", "class_bias"}
        if "classes" in cfg:
            classes = tuple(str(c) for c in cfg["classes"])
            palette = cfg.get("palette") or generic_class_set(len(classes)).palette
            try:
                cs = ClassSet(cfg.get("class_set", f"custom-{len(classes)}"), classes,
                              tuple(tuple(int(v) for v in c) for c in palette))
            except (TypeError, ValueError) as e:
                raise ValueError(f"task {name!r}: 'palette' must hold one [r, g, b] per class ({e})") from None
        elif "class_set" in cfg:
            if cfg["class_set"] not in CLASS_SETS:
                raise ValueError(f"task {name!r}: unknown class_set {cfg['class_set']!r}; "
                                 f"known: {', '.join(CLASS_SETS)} (or give 'classes' and 'palette')")
            cs = CLASS_SETS[cfg["class_set"]]
        elif "num_classes" in cfg:
            cs = class_set_for(int(cfg["num_classes"]))
        else:
            cs = CITYSCAPES_7
        bias = cfg.get("class_bias")
        if bias is not None and not (isinstance(bias, list) and all(isinstance(v, (int, float)) and
                                                                   not isinstance(v, bool) for v in bias)):
            raise ValueError(f"task {name!r}: 'class_bias' must be a list of numbers, one per class, got {bias!r}")
        task: Task = SemanticTask(name, cs, tuple(bias) if bias is not None else None)
    elif kind == "depth":
        known |= {"depth_kind", "scale"}
        task = DepthTask(name, cfg.get("depth_kind", "inverse"), float(cfg.get("scale", CITYSCAPES_INVERSE_DEPTH_SCALE)))
    elif kind == "normal":
        task = NormalTask(name)
    else:
        raise ValueError(f"task {name!r}: unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"task {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return task


def tasks_from_config(cfgs) -> list[Task]:
    if isinstance(cfgs, (str, dict)) or not cfgs:
        raise ValueError(f"'tasks' must be a non-empty list of task dicts, got {cfgs!r}")
    tasks = [t if isinstance(t, Task) else task_from_config(t) for t in cfgs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tasks


def find_task(tasks, kind: str, **settings) -> Task | None:
    """The first of ``tasks`` of this ``kind`` whose attributes equal ``settings``
    (``find_task(model.tasks, "depth", depth_kind="inverse")``), or None."""
    return next((t for t in tasks if t.kind == kind and all(getattr(t, k, None) == v for k, v in settings.items())),
                None)


# Task sets of the datasets MTAN is trained on.
TASK_PRESETS: dict[str, list[dict]] = {
    "cityscapes-7": [{"name": "semantic", "kind": "semantic", "class_set": "cityscapes-7"},
                     {"name": "depth", "kind": "depth", "depth_kind": "inverse"}],
    "cityscapes-19": [{"name": "semantic", "kind": "semantic", "class_set": "cityscapes-19"},
                      {"name": "depth", "kind": "depth", "depth_kind": "inverse"}],
    "nyuv2": [{"name": "semantic", "kind": "semantic", "class_set": "nyuv2-13"},
              {"name": "depth", "kind": "depth", "depth_kind": "metric"},
              {"name": "normal", "kind": "normal"}],
}


def preset_tasks(name: str) -> list[dict]:
    """Task configs for a known dataset layout (``cityscapes-7``, ``cityscapes-19``, ``nyuv2``)."""
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown task preset {name!r}; known: {', '.join(TASK_PRESETS)}")
    return [dict(t) for t in TASK_PRESETS[name]]
