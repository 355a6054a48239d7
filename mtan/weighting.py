"""How the task losses are combined into one training loss.

- ``equal``: the plain sum of the task losses.
- ``dwa`` (Dynamic Weight Average, the MTAN paper's proposal): from the epoch-mean unweighted
  training losses L_k(e), epochs 0 and 1 use weight 1; from epoch 2 on,
  w_k = L_k(e-1) / L_k(e-2) and lambda_k = K * softmax_k(w / T). Weights are fixed within an epoch.
- ``uncertainty`` (Kendall et al.): sum_k L_k / (2 exp(s_k)) + s_k / 2 with learnable s_k (init -0.5).
- ``random`` (random loss weighting, Lin et al. 2022): each step's weights are a softmax of K
  standard normal draws (seeded; the draws continue exactly after a resume).
- Gradient methods, on the gradients of the shared parameters (encoder, decoder, the shared
  attention convolutions), each task's gradient computed apart (:mod:`mtan.gradients` has each
  method with its paper and equation): ``pcgrad``, ``mgda``, ``cagrad``, ``imtl-g``, ``nash-mtl``,
  ``fairgrad``. Each task's own parameters (its attention masks and head) take that task's own
  gradient. They run in one process (not under torchrun) and cost one backward pass per task.

Every weighting has the same interface: ``begin_epoch(epoch)`` before an epoch,
``combine(losses)`` per step (a dict task -> scalar loss tensor), ``end_epoch(mean_losses)``
after it, ``weights()`` for logging, and ``state_dict()`` / ``load_state_dict()`` for resume.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from mtan import gradients

GRADIENT_METHODS = ("pcgrad", "mgda", "cagrad", "imtl-g", "nash-mtl", "fairgrad")
METHODS = ("equal", "dwa", "uncertainty", "random") + GRADIENT_METHODS


def dwa_weights(history: list[list[float]], temperature: float = 2.0, num_tasks: int | None = None) -> list[float]:
    """DWA task weights for the next epoch from the epoch-mean training losses recorded so far.

    ``history[e][k]`` is task k's mean unweighted training loss in epoch e. With fewer than two
    recorded epochs every weight is 1 (``num_tasks`` says how many when ``history`` is empty).
    A pure function: same history, same weights.
    """
    if temperature <= 0:
        raise ValueError(f"DWA temperature must be positive, got {temperature}")
    if history:
        num_tasks = len(history[-1])
    elif num_tasks is None:
        raise ValueError("dwa_weights: with an empty history, pass num_tasks")
    if len(history) < 2:
        return [1.0] * num_tasks
    prev, prev2 = history[-1], history[-2]
    ratios = []
    for k in range(num_tasks):
        # A task with no valid pixel in an epoch has loss 0: treat its ratio as neutral (1).
        ratios.append(prev[k] / prev2[k] if prev2[k] > 0 and math.isfinite(prev[k] / prev2[k]) else 1.0)
    exps = [math.exp(r / temperature) for r in ratios]
    total = sum(exps)
    return [num_tasks * e / total for e in exps]


class Weighting(nn.Module):
    """Base class: equal weights."""

    name = "equal"
    uses_gradients = False     # True: ``backward`` sets the gradients itself from each task's gradient
    weights_after_epoch = False  # True: ``weights()`` are known once the epoch has run (learnt or per step)

    def __init__(self, task_names: list[str]):
        super().__init__()
        self.task_names = list(task_names)
        self.epoch = 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Record the epoch's mean unweighted training loss per task."""

    def weights(self) -> dict[str, float]:
        """The task weights in use (for logging)."""
        return {t: 1.0 for t in self.task_names}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w[t] * losses[t] for t in self.task_names)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def get_extra_state(self):
        return {"epoch": self.epoch, **self.extra_state()}

    def set_extra_state(self, state):
        self.epoch = int(state.get("epoch", 0))
        self.load_extra_state(state)


class EqualWeighting(Weighting):
    name = "equal"


class DynamicWeightAverage(Weighting):
    name = "dwa"

    def __init__(self, task_names: list[str], temperature: float = 2.0):
        super().__init__(task_names)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.history: list[list[float]] = []  # epoch-mean unweighted training losses
        self._weights = [1.0] * len(self.task_names)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        # Weights for epoch e use epochs e-1 and e-2 only.
        self._weights = dwa_weights(self.history[:epoch], self.temperature, len(self.task_names))

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        row = [float(mean_losses[t]) for t in self.task_names]
        self.history = self.history[: self.epoch] + [row]

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._weights))

    def extra_state(self):
        return {"history": self.history, "weights": self._weights, "temperature": self.temperature}

    def load_extra_state(self, state):
        self.history = [list(map(float, r)) for r in state.get("history", [])]
        self._weights = list(map(float, state.get("weights", [1.0] * len(self.task_names))))


class PerStepWeighting(Weighting):
    """Weights that change every step (drawn, or found from the gradients): a seeded generator
    (kept in checkpoints, so a resumed run draws what it would have drawn), and the epoch's mean
    weights for logging (:meth:`record` after each step)."""

    weights_after_epoch = True

    def __init__(self, task_names: list[str], seed: int = 0):
        super().__init__(task_names)
        self.generator = torch.Generator().manual_seed(seed)
        self._sum, self._steps = torch.zeros(len(task_names), dtype=torch.float64), 0

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self._sum.zero_()
        self._steps = 0

    def record(self, w: torch.Tensor) -> None:
        self._sum += w.detach().double().cpu()
        self._steps += 1

    def weights(self):
        if not self._steps:
            return {t: 1.0 for t in self.task_names}
        return dict(zip(self.task_names, (self._sum / self._steps).tolist()))

    def extra_state(self):
        return {"generator": self.generator.get_state().tolist()}

    def load_extra_state(self, state):
        if "generator" in state:
            self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class RandomWeighting(PerStepWeighting):
    """Random loss weighting: fresh weights each step (their epoch mean is logged)."""

    name = "random"

    def combine(self, losses):
        w = gradients.random_weights(len(self.task_names), self.generator)
        self.record(w)
        w = w.to(next(iter(losses.values())).device)
        return sum(w[k] * losses[t] for k, t in enumerate(self.task_names))


class GradientWeighting(PerStepWeighting):
    """A method that combines the tasks' gradients of the shared parameters (``method``: one of
    :data:`GRADIENT_METHODS`; the generator orders PCGrad's projections); the mean of its task
    weights over the epoch is logged."""

    uses_gradients = True

    def __init__(self, task_names: list[str], method: str, seed: int = 0):
        super().__init__(task_names, seed)
        self.name = method

    def direction(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update direction of the shared parameters from the T x P task gradients, and the
        task weights it amounts to (PCGrad: each task's share of the update, projected on its gradient)."""
        if self.name == "pcgrad":
            d = gradients.pcgrad(grads, self.generator)
            w = (grads.double() @ d.double()) / grads.double().pow(2).sum(1).clamp_min(1e-20)
            return d, w
        method = {"mgda": gradients.mgda, "cagrad": gradients.cagrad, "imtl-g": gradients.imtl_g,
                  "nash-mtl": gradients.nash_mtl, "fairgrad": gradients.fairgrad}[self.name]
        return method(grads)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[nn.Parameter], own: list[nn.Parameter]) -> None:
        """Set the gradients of one step: the shared parameters' from :meth:`direction`, each task's
        own parameters' from that task's loss."""
        rows = []
        for t in self.task_names:
            g = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for x, p in zip(g, shared)]))
        d, w = self.direction(torch.stack(rows))
        self.record(w)
        if own:
            sum(losses[t] for t in self.task_names).backward(inputs=own)
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = d[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def combine(self, losses):
        return sum(losses[t] for t in self.task_names)


class UncertaintyWeighting(Weighting):
    name = "uncertainty"
    weights_after_epoch = True

    def __init__(self, task_names: list[str], init: float = -0.5):
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init)))

    def weights(self) -> dict[str, float]:
        """Effective loss weights 1 / (2 exp(s_k)) (reads the parameters: call once per epoch, not per step)."""
        w = (0.5 * torch.exp(-self.log_vars.detach())).tolist()
        return dict(zip(self.task_names, w))

    def combine(self, losses):
        s = self.log_vars
        return sum(losses[t] * 0.5 * torch.exp(-s[k]) + 0.5 * s[k] for k, t in enumerate(self.task_names))


def build_weighting(method: str, task_names: list[str], temperature: float = 2.0, seed: int = 0) -> Weighting:
    if method in GRADIENT_METHODS:
        return GradientWeighting(task_names, method, seed)
    if method == "random":
        return RandomWeighting(task_names, seed)
    if method == "equal":
        return EqualWeighting(task_names)
    if method == "dwa":
        return DynamicWeightAverage(task_names, temperature)
    if method == "uncertainty":
        return UncertaintyWeighting(task_names)
    raise ValueError(f"unknown weighting {method!r}; choose one of {', '.join(METHODS)}")
