"""Metrics accumulated over a whole split, on the device where the predictions live.

``update`` only adds to tensors on that device (no ``.item()``, no host synchronisation per
batch); ``compute`` moves the few accumulated numbers to the host once at the end.

- Segmentation: one confusion matrix; mIoU over the classes that occur in prediction or
  target (nan-safe), pixel accuracy = trace / total.
- Depth: absolute and relative error averaged over every valid pixel of the split.
- Normals: angle error in degrees over valid pixels: mean, median, and the fractions within
  11.25, 22.5 and 30 degrees. The median comes from a 0.01-degree histogram.
- ``delta_m``: the multi-task summary against single-task baselines.
- Depth ordering on photos without depth ground truth (:class:`DepthOrderMetric`): whether the
  predicted inverse depth of the ground falls towards the horizon, and whether sky is the
  farthest thing in each image.
"""
from __future__ import annotations

import math

import torch

from mtan.losses import depth_valid_mask, normal_valid_mask



def class_ids(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The argmax over the class dimension ``dim``. The classes are made the innermost dimension
    first: on the CPU an argmax over an outer dimension is several times slower (7 classes at
    384x768: 89 ms against 10 ms with the copy)."""
    return logits.movedim(dim, -1).contiguous().argmax(-1)

class Metric:
    """Accumulates over batches; ``compute()`` returns a dict of floats."""

    #: metric name -> True when lower is better (used by delta_m and model cards)
    lower_is_better: dict[str, bool] = {}

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> list[torch.Tensor]:
        """The accumulator tensors (summed across processes in distributed evaluation)."""
        raise NotImplementedError


class SegmentationMetric(Metric):
    lower_is_better = {"miou": False, "pixel_acc": False}

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", class_names=None):
        """``class_names``: also report each class's IoU as ``iou.<name>`` (nan where the class is
        in neither prediction nor target)."""
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.class_names = tuple(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.reset()

    def reset(self):
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)

    def update(self, pred, target):
        """pred: N x K x H x W logits (or N x H x W class ids); target: N x H x W, -1 ignored."""
        if pred.dim() == 4:
            pred = class_ids(pred, dim=1)
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).long().to(pred.device)
        valid = (target >= 0) & (target < self.num_classes)
        # Invalid pixels go to an extra bin that is dropped, so no boolean indexing (no sync).
        k = self.num_classes
        index = torch.where(valid, target * k + pred, torch.full_like(target, k * k))
        counts = torch.bincount(index, minlength=k * k + 1)[: k * k]
        self.confusion += counts.reshape(k, k).to(self.confusion.device)

    def compute(self):
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = tp / union  # nan where a class is in neither prediction nor target
        present = union > 0
        total = cm.sum()
        result = {
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }
        for name, value in zip(self.class_names or (), iou.tolist()):
            result[f"iou.{name}"] = value
        return result

    def confusion_table(self) -> dict:
        """The confusion matrix as plain numbers: ``matrix[target][prediction]`` pixel counts."""
        names = list(self.class_names or range(self.num_classes))
        return {"classes": names, "rows": "target", "columns": "prediction",
                "matrix": self.confusion.cpu().tolist()}

    def class_balance(self) -> dict[str, float]:
        """How often each class is called against how often it is there: ``precision.<class>``,
        the share of the pixels predicted as the class that are labelled so, and
        ``called_vs_labelled.<class>``, the pixels predicted as the class over those labelled so
        (1 = called as often as it occurs; above 1, called where it is not). NaN where undefined."""
        cm = self.confusion.double().cpu()
        called, labelled, tp = cm.sum(0), cm.sum(1), cm.diag()
        nan = float("nan")
        names = list(self.class_names or range(self.num_classes))
        out = {}
        for i, name in enumerate(names):
            out[f"precision.{name}"] = float(tp[i] / called[i]) if called[i] > 0 else nan
        for i, name in enumerate(names):
            out[f"called_vs_labelled.{name}"] = float(called[i] / labelled[i]) if labelled[i] > 0 else nan
        return out

    def per_class_iou(self) -> list[float]:
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        return [float(v) for v in tp / union]

    def state(self):
        return [self.confusion]


class DepthMetric(Metric):
    lower_is_better = {"abs_err": True, "rel_err": True}

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.reset()

    def reset(self):
        # float64 sums: millions of pixels per split must not lose precision.
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # abs, rel, count

    def update(self, pred, target):
        """pred, target: N x 1 x H x W; target 0 = invalid."""
        target = target.to(pred.device).double()
        pred = pred.double()
        mask = depth_valid_mask(target)
        err = (pred - target).abs() * mask
        rel = torch.where(mask, err / torch.where(mask, target, torch.ones_like(target)).abs(), torch.zeros_like(err))
        self.sums += torch.stack([err.sum(), rel.sum(), mask.sum().double()]).to(self.sums.device)

    def compute(self):
        abs_sum, rel_sum, count = (float(v) for v in self.sums.cpu())
        if count == 0:
            return {"abs_err": float("nan"), "rel_err": float("nan")}
        return {"abs_err": abs_sum / count, "rel_err": rel_sum / count}

    def state(self):
        return [self.sums]


class NormalMetric(Metric):
    lower_is_better = {"mean_deg": True, "median_deg": True, "within_11.25": False,
                       "within_22.5": False, "within_30": False}
    BINS_PER_DEGREE = 100

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.reset()

    def reset(self):
        nbins = 180 * self.BINS_PER_DEGREE
        self.histogram = torch.zeros(nbins, dtype=torch.int64, device=self.device)
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # angle sum, count
        self.within = torch.zeros(3, dtype=torch.int64, device=self.device)

    def update(self, pred, target):
        """pred: unit normals N x 3 x H x W; target: N x 3 x H x W, all-zero = invalid."""
        target = target.to(pred.device).float()
        mask = normal_valid_mask(target)[:, 0]
        cos = (pred.float() * torch.nn.functional.normalize(target, dim=1)).sum(1).clamp(-1, 1)
        angle = torch.rad2deg(torch.acos(cos)).double()
        angle = torch.where(mask, angle, torch.zeros_like(angle))
        nbins = self.histogram.numel()
        index = torch.where(mask, (angle * self.BINS_PER_DEGREE).long().clamp(0, nbins - 1),
                            torch.full_like(angle, nbins, dtype=torch.long))
        self.histogram += torch.bincount(index.reshape(-1), minlength=nbins + 1)[:nbins]
        self.sums += torch.stack([angle.sum(), mask.sum().double()])
        self.within += torch.stack([((angle < t) & mask).sum() for t in (11.25, 22.5, 30.0)])

    def compute(self):
        total_angle, count = (float(v) for v in self.sums.cpu())
        if count == 0:
            return {k: float("nan") for k in self.lower_is_better}
        cumulative = self.histogram.cpu().cumsum(0)
        median_bin = int(torch.searchsorted(cumulative, torch.tensor(math.ceil(count / 2))))
        within = self.within.cpu().double() / count
        return {
            "mean_deg": total_angle / count,
            "median_deg": (median_bin + 0.5) / self.BINS_PER_DEGREE,
            "within_11.25": float(within[0]),
            "within_22.5": float(within[1]),
            "within_30": float(within[2]),
        }

    def state(self):
        return [self.histogram, self.sums, self.within]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties given their mean rank (as Spearman's rho needs)."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    n = values.numel()
    new_group = torch.ones(n, dtype=torch.bool, device=values.device)
    new_group[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    positions = torch.arange(n, dtype=torch.float64, device=values.device)
    count = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=values.device).index_add_(
        0, group, torch.ones(n, dtype=torch.float64, device=values.device))
    total = torch.zeros_like(count).index_add_(0, group, positions)
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = (total / count)[group]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (nan when either is constant)."""
    rx, ry = average_ranks(x.flatten()), average_ranks(y.flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


class DepthOrderMetric(Metric):
    """Plausibility of predicted inverse depth on labelled photos that have no depth ground truth.

    Per image with at least ``min_pixels`` pixels of ``ground`` class (CityScapes-7 ``flat``:
    road and pavement): Spearman's rho between the predicted inverse depth of those pixels and
    their image row (near the bottom = near = large inverse depth, so a plausible map gives rho
    close to 1). Per image with ``sky`` pixels: whether the sky's mean predicted inverse depth
    is below that of every other class present (with ``min_pixels`` or more). Both are averaged
    over the images that qualify.

    ``roughness`` measures noise and texture in the map: per image, the mean absolute 4-neighbour
    Laplacian of log inverse depth over the pixels whose 3x3 neighbourhood lies inside one
    labelled region (so object boundaries, where depth may jump, do not count), averaged over
    images. It does not depend on the depth's scale; 0 for a map that is planar in log depth
    inside every region; blotches and grid patterns raise it. Runs per image on the host: meant
    for evaluation, not training.

    Objects against what stands behind them (``objects``: CityScapes-7 human and vehicle; behind
    them: every other class but the ground, which lies in front of an object's foot): pixel pairs
    ``gap`` pixels apart, across rows or columns, one on an object and the other behind it, so
    that the object's outline lies between them. ``objects_nearer``: the share of such pairs
    whose object pixel is predicted nearer (larger inverse depth); 0.5 is a map without objects in
    it. ``object_edge_contrast``: the mean |difference of log inverse depth| across those pairs
    over the same inside one object (pairs as far apart with both ends on one object class): 1 is
    a map in which an object's outline is no sharper than its inside; above 1, objects stand out.
    """

    lower_is_better = {"ground_row_spearman": False, "sky_farthest": False, "roughness": True,
                       "objects_nearer": False, "object_edge_contrast": False}

    def __init__(self, num_classes: int, ground: int = 0, sky: int = 4, min_pixels: int = 50,
                 objects: tuple[int, ...] = (5, 6), gap: int = 6):
        self.num_classes, self.ground, self.sky, self.min_pixels = num_classes, ground, sky, min_pixels
        self.objects, self.gap = objects, gap
        self.reset()

    def reset(self) -> None:
        self.rhos: list[float] = []
        self.sky_checks: list[bool] = []
        self.roughness: list[float] = []
        self.edge_pairs = self.edge_nearer = 0
        self.edge_step = self.inside_step = 0.0
        self.inside_pairs = 0

    def _objects_against_background(self, p: torch.Tensor, lab: torch.Tensor) -> None:
        """Accumulate the object-outline pairs of one image (see the class docstring)."""
        g = self.gap
        if min(lab.shape) <= g:
            return
        obj = torch.zeros_like(lab, dtype=torch.bool)
        for c in self.objects:
            obj |= lab == c
        behind = (lab >= 0) & ~obj & (lab != self.ground)
        logv = p.clamp_min(1e-6).log()
        for a, b in (((slice(None), slice(None, -g)), (slice(None), slice(g, None))),
                     ((slice(None, -g), slice(None)), (slice(g, None), slice(None)))):
            for first, second in ((a, b), (b, a)):
                pairs = obj[first] & behind[second]
                n = int(pairs.sum())
                if n:
                    self.edge_pairs += n
                    self.edge_nearer += int((p[first][pairs] > p[second][pairs]).sum())
                    self.edge_step += float((logv[first][pairs] - logv[second][pairs]).abs().sum())
            same = obj[a] & (lab[a] == lab[b])
            m = int(same.sum())
            if m:
                self.inside_pairs += m
                self.inside_step += float((logv[a][same] - logv[b][same]).abs().sum())

    def update(self, pred_depth: torch.Tensor, labels: torch.Tensor) -> None:
        """``pred_depth`` N x 1 x H x W inverse depth, ``labels`` N x H x W (-1 = void)."""
        pred = pred_depth.detach().float().cpu()[:, 0]
        labels = labels.cpu()
        rows = torch.arange(pred.shape[-2]).view(-1, 1).expand(pred.shape[-2:])
        for p, lab in zip(pred, labels):
            ground = lab == self.ground
            if int(ground.sum()) >= self.min_pixels:
                rho = spearman(p[ground], rows[ground].double())
                if rho == rho:
                    self.rhos.append(rho)
            sky = lab == self.sky
            if int(sky.sum()) >= self.min_pixels:
                others = [p[lab == c].mean() for c in range(self.num_classes)
                          if c != self.sky and int((lab == c).sum()) >= self.min_pixels]
                if others:
                    self.sky_checks.append(bool(p[sky].mean() < min(others)))
            value = laplacian_roughness(p, lab)
            if value == value:
                self.roughness.append(value)
            self._objects_against_background(p, lab)

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        inside = self.inside_step / self.inside_pairs if self.inside_pairs else nan
        edge = self.edge_step / self.edge_pairs if self.edge_pairs else nan
        return {"ground_row_spearman": sum(self.rhos) / len(self.rhos) if self.rhos else nan,
                "sky_farthest": sum(self.sky_checks) / len(self.sky_checks) if self.sky_checks else nan,
                "roughness": sum(self.roughness) / len(self.roughness) if self.roughness else nan,
                "objects_nearer": self.edge_nearer / self.edge_pairs if self.edge_pairs else nan,
                "object_edge_contrast": edge / inside if inside == inside and inside > 0 else nan,
                "images_ground": float(len(self.rhos)), "images_sky": float(len(self.sky_checks)),
                "object_edge_pairs": float(self.edge_pairs)}


def laplacian_roughness(inverse_depth: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean |4-neighbour Laplacian| of log inverse depth (H x W) over the interior pixels of the
    labelled regions of ``labels`` (H x W, -1 = void): see :class:`DepthOrderMetric`."""
    if inverse_depth.shape[-1] < 3 or inverse_depth.shape[-2] < 3:
        return float("nan")
    logd = inverse_depth.double().clamp_min(1e-4).log()
    lap = (4 * logd[1:-1, 1:-1] - logd[:-2, 1:-1] - logd[2:, 1:-1] - logd[1:-1, :-2] - logd[1:-1, 2:]).abs()
    lab = labels.long()
    centre = lab[1:-1, 1:-1]
    inside = centre >= 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inside &= lab[1 + dy: lab.shape[0] - 1 + dy, 1 + dx: lab.shape[1] - 1 + dx] == centre
    return float(lap[inside].mean()) if bool(inside.any()) else float("nan")


#: The metrics Delta_m averages over, and whether lower is better (the multi-task papers' set).
DELTA_M_METRICS = {"semantic.miou": False, "semantic.pixel_acc": False, "depth.abs_err": True, "depth.rel_err": True,
                   "normal.mean_deg": True, "normal.median_deg": True, "normal.within_11.25": False,
                   "normal.within_22.5": False, "normal.within_30": False}


def relative_changes(results: dict[str, float], baselines: dict[str, float],
                     lower_is_better: dict[str, bool]) -> dict[str, float]:
    """Each metric's change against its baseline in percent, signed so that positive is worse:
    ``(-1)^h (M - B) / B * 100`` with ``h = 1`` when higher is better. Every metric in
    ``baselines`` must be in ``results`` and ``lower_is_better``."""
    if not baselines:
        raise ValueError("delta_m needs at least one baseline metric")
    terms = {}
    for key, base in baselines.items():
        if key not in results:
            raise KeyError(f"delta_m: metric {key!r} has a baseline but no result")
        if key not in lower_is_better:
            raise KeyError(f"delta_m: say whether lower is better for {key!r}")
        if base == 0:
            raise ValueError(f"delta_m: baseline of {key!r} is 0, the relative change is undefined")
        sign = 1.0 if lower_is_better[key] else -1.0
        terms[key] = sign * (results[key] - base) / base * 100.0
    return terms


def delta_m(results: dict[str, float], baselines: dict[str, float], lower_is_better: dict[str, bool]) -> float:
    """Delta_m in percent as the multi-task papers report it (Maninis et al., CVPR 2019; Nash-MTL,
    Navon et al. 2022, Section 6): the mean of :func:`relative_changes`, so **lower is better** and
    a negative Delta_m beats the single-task baselines."""
    terms = relative_changes(results, baselines, lower_is_better)
    return sum(terms.values()) / len(terms)


def with_delta_m(result: dict, baselines: list[dict]) -> dict:
    """``result`` with ``delta_m`` and ``delta_m.changes`` against the baselines' scores (each a
    result of the same evaluation; a single-task baseline gives its task's metrics). A result
    with one entry per part of a mixture gets them per part."""
    if result and all(isinstance(v, dict) for v in result.values()):  # per part of a mixture
        return {part: with_delta_m(scores, [b.get(part, {}) for b in baselines]) for part, scores in result.items()}
    reference: dict[str, float] = {}
    for scores in baselines:
        for key in DELTA_M_METRICS:
            if isinstance(scores.get(key), (int, float)) and key not in reference:
                reference[key] = scores[key]
    reference = {k: v for k, v in reference.items() if isinstance(result.get(k), (int, float))}
    if not reference:
        raise ValueError("--baseline: the baselines share no metric with this model on this data "
                         f"(Delta_m uses {', '.join(DELTA_M_METRICS)})")
    changes = relative_changes(result, reference, DELTA_M_METRICS)
    return {**result, "delta_m": delta_m(result, reference, DELTA_M_METRICS),
            "delta_m.changes": {k: round(v, 3) for k, v in changes.items()},
            "delta_m.baselines": {k: reference[k] for k in changes}}
