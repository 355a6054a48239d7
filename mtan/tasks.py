"""The tasks MTAN predicts: semantic segmentation, depth and surface normals.

A task knows its output channels, how its prediction is finished (normals are made unit
length), its loss, its metrics, and what an "unknown" target looks like (so that datasets
which lack a task, such as CamVid's depth, can be mixed with those that have it).

Tasks are described by small JSON-friendly dicts (they live in a model's ``config.json``)::

    {"name": "semantic", "kind": "semantic", "class_set": "cityscapes-7"}
    {"name": "depth", "kind": "depth", "depth_kind": "inverse"}
    {"name": "normal", "kind": "normal"}
"""
from __future__ import annotations

from dataclasses import dataclass, field

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

    def __post_init__(self):
        if len(self.classes) != len(self.palette):
            raise ValueError(f"class set {self.name!r}: {len(self.classes)} classes but {len(self.palette)} colours")

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
    import colorsys

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

    @property
    def out_channels(self) -> int:
        raise NotImplementedError

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn the head's raw output into the task's prediction."""
        return raw

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_metric(self, device: torch.device | str = "cpu") -> metrics.Metric:
        raise NotImplementedError

    def missing_target(self, height: int, width: int) -> torch.Tensor:
        """A target of the right shape whose pixels are all invalid (for samples lacking the task)."""
        raise NotImplementedError

    def to_config(self) -> dict:
        return {"name": self.name, "kind": self.kind}


@dataclass
class SemanticTask(Task):
    class_set: ClassSet = CITYSCAPES_7
    kind: str = field(init=False, default="semantic")

    @property
    def num_classes(self) -> int:
        return self.class_set.num_classes

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def loss(self, pred, target):
        return losses.semantic_loss(pred, target)

    def new_metric(self, device="cpu"):
        return metrics.SegmentationMetric(self.num_classes, device=device, class_names=self.class_set.classes)

    def missing_target(self, height, width):
        return torch.full((height, width), -1, dtype=torch.long)

    def to_config(self):
        cfg = super().to_config()
        if self.class_set.name in CLASS_SETS:
            cfg["class_set"] = self.class_set.name
        else:
            cfg["classes"] = list(self.class_set.classes)
            cfg["palette"] = [list(c) for c in self.class_set.palette]
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

    def loss(self, pred, target):
        return losses.depth_loss(pred, target)

    def new_metric(self, device="cpu"):
        return metrics.DepthMetric(device=device)

    def missing_target(self, height, width):
        return torch.zeros((1, height, width), dtype=torch.float32)

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

    def loss(self, pred, target):
        return losses.normal_loss(pred, target)

    def new_metric(self, device="cpu"):
        return metrics.NormalMetric(device=device)

    def missing_target(self, height, width):
        return torch.zeros((3, height, width), dtype=torch.float32)


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
        known |= {"class_set", "classes", "palette", "num_classes"}
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
        task: Task = SemanticTask(name, cs)
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
