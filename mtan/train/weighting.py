"""How the task losses are combined into one training loss.

- ``equal``: the plain sum of the task losses.
- ``dwa`` (Dynamic Weight Average, the MTAN paper's proposal): from the epoch-mean unweighted
  training losses L_k(e), epochs 0 and 1 use weight 1; from epoch 2 on,
  w_k = L_k(e-1) / L_k(e-2) and lambda_k = K * softmax_k(w / T). Weights are fixed within an epoch.
- ``uncertainty`` (Kendall et al.): sum_k L_k / (2 exp(s_k)) + s_k / 2 with learnable s_k (init -0.5).
- ``random`` (random loss weighting, Lin et al. 2022): each step's weights are a softmax of K
  standard normal draws (seeded; the draws continue exactly after a resume).
- ``imtl-l`` (IMTL-L, Liu et al. 2021): sum_k exp(s_k) L_k - s_k with learnable s_k (init 0).
- ``famo`` (Liu et al. 2023): loss weights from learnt logits, moved after each step towards the
  tasks whose loss fell least (one extra forward pass per step, without gradients).
- ``gradnorm`` (Chen et al. 2018): weights moved each step so that the tasks' gradient norms on the
  last shared layer follow their relative training rates.
- Gradient methods, on the gradients of the shared parameters (encoder, decoder, the shared
  attention convolutions), each task's gradient computed apart (:mod:`mtan.train.gradients` has each
  method with its paper and equation): ``pcgrad``, ``mgda``, ``cagrad``, ``imtl-g``, ``nash-mtl``,
  ``fairgrad``. Each task's own parameters (its attention masks and head) take that task's own
  gradient. They cost one backward pass per task. ``mgda-ub`` is MGDA on the gradients of the
  shared representation (the encoder's and decoder's features that the task branches read), one
  backward pass through the branches per task and one through the shared network. With
  ``solve_every`` N > 1 (all but ``pcgrad``, whose update is no weighted sum of the gradients),
  the weights are found every N optimiser steps and the steps in between take one backward pass
  of the losses weighted by the last weights found: the cheaper variant whose update frequency
  Nash-MTL's paper studies (Navon et al. 2022, Section 6).

Every weighting has the same interface: ``begin_epoch(epoch)`` before an epoch,
``backward(losses, parts)`` per step (a dict task -> scalar loss tensor; ``parts`` says which
parameters are shared, see :class:`Parts`), ``after_step(...)`` for the methods that learn from the
step's effect, ``end_epoch(mean_losses)`` after it, ``weights()`` for logging, and
``state_dict()`` / ``load_state_dict()`` for resume (their state is in the checkpoint).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from mtan.train import gradients

GRADIENT_METHODS = ("pcgrad", "mgda", "mgda-ub", "cagrad", "imtl-g", "nash-mtl", "fairgrad")
METHODS = ("equal", "dwa", "uncertainty", "imtl-l", "random", "famo", "gradnorm") + GRADIENT_METHODS


@dataclass
class Parts:
    """Which parameters a weighting may treat apart.

    ``shared``: read by every task (encoder, decoder, shared attention convolutions); ``own``: a
    task's own (its attention masks and head); ``last_shared``: the weight of the last shared layer
    (GradNorm's W); ``cut``: for methods on the shared representation, (feature, leaf) pairs of the
    last forward pass, where each task branch read ``leaf``, a detached copy of ``feature``;
    ``after_cut``: the parameters behind the cut (the branches). ``average``: averages tensors
    over the processes of a distributed run, in place (identity in one process). ``micro``: with
    gradient accumulation, which of a step's batches this is: gradients add up over the step's
    batches (each weighted 1 / batches) and a method that combines them acts on the last one."""

    shared: list = field(default_factory=list)
    own: list = field(default_factory=list)
    last_shared: nn.Parameter | None = None
    cut: list = field(default_factory=list)
    after_cut: list = field(default_factory=list)
    average: Callable[[list[torch.Tensor]], None] = lambda tensors: None
    micro: tuple[int, int] = (0, 1)   # (this batch's index, batches) within an optimiser step (accumulation)

    @property
    def first(self) -> bool:
        return self.micro[0] == 0

    @property
    def last(self) -> bool:
        return self.micro[0] == self.micro[1] - 1


def model_parts(model: nn.Module, cut: bool = False, average: Callable | None = None) -> Parts:
    """The :class:`Parts` of an MTAN network: each task's own parameters (its attention masks and
    head), those all tasks share, the last shared layer (the decoder's last convolution) and the
    branches' parameters. ``cut``: hooks make the task branches read detached copies of the
    encoder's and decoder's features, kept with the originals in ``Parts.cut`` at each forward pass
    with gradients (the network computes the same values)."""
    own = tuple(f"{part}.{t}." for part in ("attention", "heads") for t in model.task_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    parts = Parts(shared=[p for n, p in named if not n.startswith(own)],
                  own=[p for n, p in named if n.startswith(own)],
                  last_shared=[p for p in model.decoder.parameters() if p.dim() > 1][-1],
                  after_cut=[p for n, p in named if not n.startswith(("encoder.", "decoder."))])
    if average is not None:
        parts.average = average
    if cut:
        def leaf(x):
            if isinstance(x, (list, tuple)):
                return type(x)(leaf(v) for v in x)
            if isinstance(x, torch.Tensor) and x.requires_grad:
                copy = x.detach().requires_grad_()
                parts.cut.append((x, copy))
                return copy
            return x

        def after_encoder(module, inputs, output):  # a new forward pass: a new cut
            if not torch.is_grad_enabled():
                return output
            parts.cut.clear()
            us, ps, indices, pooled = output  # the decoder reads the pooled output itself: not cut
            return leaf(us), leaf(ps), indices, pooled

        def after_decoder(module, inputs, output):
            return leaf(output) if torch.is_grad_enabled() else output

        model.encoder.register_forward_hook(after_encoder)
        model.decoder.register_forward_hook(after_decoder)
    return parts


def _stack(losses: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.stack([losses[t].float() for t in names])


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
    uses_gradients = False     # True: ``backward`` needs each task's gradient of the shared parameters
    on_representation = False  # True: the task branches must read detached copies (``Parts.cut``)
    learns_from_step = False   # True: ``after_step`` wants the step's losses again after the update
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

    can_accumulate = True      # False: a step's batches cannot be combined (MGDA-UB)

    def backward(self, losses: dict[str, torch.Tensor], parts: Parts) -> None:
        """Accumulate one batch's gradients into the parameters' ``.grad`` (1 / batches of a step each)."""
        (self.combine(losses) / parts.micro[1]).backward()

    def after_step(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """With ``learns_from_step``: the task losses of the step's batch before and after the
        update (T values each, averaged over the processes)."""

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

    def __init__(self, task_names: list[str], method: str, seed: int = 0, solve_every: int = 1):
        super().__init__(task_names, seed)
        self.name = method
        if solve_every > 1 and method == "pcgrad":
            raise ValueError("--solve-every applies to gradient methods whose update is a weighted sum of the "
                             "task gradients; pcgrad projects them, so it needs the gradients at every step: "
                             "leave out --solve-every")
        self.solve_every = solve_every
        self.solved: torch.Tensor | None = None  # the task weights last found (float64, T)
        self.steps = 0  # optimiser steps taken
        self._rows: torch.Tensor | None = None  # a step's task gradients, summed over its batches

    def between_solves(self, losses: dict[str, torch.Tensor], parts: Parts) -> bool:
        """On a step between two solves (``solve_every`` > 1): one backward pass of the losses
        weighted by the last weights found, and True; False on a step that finds new weights."""
        if self.solve_every == 1 or self.solved is None or self.steps % self.solve_every == 0:
            return False
        w = self.solved.to(next(iter(losses.values())).device)
        (sum(w[k].float() * losses[t] for k, t in enumerate(self.task_names)) / parts.micro[1]).backward()
        if parts.last:
            self.record(self.solved)
            self.steps += 1
        return True

    def solved_with(self, w: torch.Tensor) -> None:
        """A step found the weights ``w``: logged, kept for the steps until the next solve."""
        self.record(w)
        self.solved = w.detach().double().cpu()
        self.steps += 1

    def extra_state(self):
        return {**super().extra_state(), "steps": self.steps,
                "solved": None if self.solved is None else self.solved.tolist()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.steps = int(state.get("steps", 0))
        solved = state.get("solved")
        self.solved = None if solved is None else torch.tensor(solved, dtype=torch.float64)

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

    def task_gradients(self, losses: dict[str, torch.Tensor], inputs: list[torch.Tensor],
                       average: Callable = lambda tensors: None) -> torch.Tensor:
        """The T x P matrix of each task's gradient of ``inputs`` (flattened, fp32), averaged over
        the processes of a distributed run (so every process finds the same direction)."""
        rows = []
        for t in self.task_names:
            g = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for x, p in zip(g, inputs)]))
        grads = torch.stack(rows)
        average([grads])
        return grads

    def backward(self, losses: dict[str, torch.Tensor], parts: Parts) -> None:
        """Set the gradients of one step: the shared parameters' from :meth:`direction` of the
        tasks' gradients (summed over a step's batches, 1 / batches each), each task's own
        parameters' from that task's loss."""
        if self.between_solves(losses, parts):
            return
        index, count = parts.micro
        rows = self.task_gradients(losses, parts.shared) / count
        self._rows = rows if index == 0 or self._rows is None else self._rows + rows
        if parts.own:
            (sum(losses[t] for t in self.task_names) / count).backward(inputs=parts.own)
        if not parts.last:
            return
        grads, self._rows = self._rows, None
        parts.average([grads])
        d, w = self.direction(grads)
        self.solved_with(w)
        offset = 0
        for p in parts.shared:
            n = p.numel()
            g = d[offset:offset + n].view_as(p).to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
            offset += n

    def combine(self, losses):
        return sum(losses[t] for t in self.task_names)


class RepresentationMGDA(GradientWeighting):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018, Section 3.3): the min-norm weights are found from
    each task's gradient of the shared representation Z (the features the task branches read)
    instead of the shared parameters; since ``grad_theta L_t = J^T grad_Z L_t``, the min-norm point
    of the Z-gradients minimises an upper bound of the parameters' one (their eq. 8 to 10). One
    backward pass through the branches per task, one through the shared network for the weighted
    sum. In MTAN the shared attention convolutions sit inside the branches: they take the same
    weighted sum."""

    on_representation = True
    can_accumulate = False  # the weights of a step need every batch's graph at once

    def __init__(self, task_names: list[str], seed: int = 0, solve_every: int = 1):
        super().__init__(task_names, "mgda-ub", seed, solve_every)

    def backward(self, losses, parts):
        if self.between_solves(losses, parts):
            return
        if not parts.cut:
            raise RuntimeError("mgda-ub: the forward pass kept no shared representation (Parts.cut is empty)")
        features, leaves = zip(*parts.cut)
        w = gradients.min_norm_weights(self.task_gradients(losses, list(leaves), parts.average))
        self.solved_with(w)
        total = sum(float(w[k]) * losses[t] for k, t in enumerate(self.task_names))
        # the branches' parameters, and sum_t w_t dL_t/dZ on the leaves, in one pass
        for leaf in leaves:
            leaf.grad = None
        total.backward(inputs=list(parts.after_cut) + list(leaves))
        pairs = [(f, leaf.grad) for f, leaf in zip(features, leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([f for f, _ in pairs], grad_tensors=[g for _, g in pairs])


class FAMOWeighting(PerStepWeighting):
    """FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, Algorithm 1):
    each step descends ``sum_i c z_i log L_i`` (``z = softmax(xi)``, see
    :func:`mtan.train.gradients.famo_weights`), i.e. the losses weighted by ``c z_i / L_i``; after the
    update, the logits ``xi`` move with the change of the log losses on the same batch
    (:func:`mtan.train.gradients.famo_update`, step ``lr``, decay ``decay``), so the next steps favour the
    tasks that improved least. The logits are kept in checkpoints. A task with no valid target in a
    batch (loss 0) sits that step out."""

    name = "famo"
    learns_from_step = True

    def __init__(self, task_names: list[str], lr: float = 0.025, decay: float = 1e-3, seed: int = 0):
        super().__init__(task_names, seed)
        self.lr, self.decay = float(lr), float(decay)
        self.register_buffer("logits", torch.zeros(len(task_names)))

    def combine(self, losses):  # FAMO: the weights of each batch from its own losses
        stacked = _stack(losses, self.task_names)
        present = stacked.detach() > 0
        w = torch.zeros_like(stacked)
        if bool(present.any()):
            w[present] = gradients.famo_weights(self.logits[present].float(), stacked.detach()[present])
        self.record(w)
        return (w.detach() * stacked).sum()

    def after_step(self, before, after):
        present = (before > 0) & (after > 0)
        if bool(present.all()):
            self.logits.copy_(gradients.famo_update(self.logits.double(), before.double(), after.double(),
                                                    self.lr, self.decay).to(self.logits.dtype))


class GradNormWeighting(PerStepWeighting):
    """GradNorm (Chen et al., ICML 2018, Algorithm 1): the loss weights ``w_i`` (starting at 1,
    summing to the number of tasks) take one step per training step on
    ``sum_i |G_i - mean(G) r_i^alpha|``, where ``G_i = |grad_W w_i L_i|`` on the last shared layer
    W and ``r_i`` is task i's loss ratio ``L_i(t) / L_i(0)`` over the mean ratio
    (:func:`mtan.train.gradients.gradnorm_update`). The weights and the first losses are kept in
    checkpoints. One extra backward pass per task down to W."""

    name = "gradnorm"
    uses_gradients = True

    def __init__(self, task_names: list[str], alpha: float = 1.5, lr: float = 0.025, seed: int = 0):
        super().__init__(task_names, seed)
        self.alpha, self.lr = float(alpha), float(lr)
        self.register_buffer("task_weights", torch.ones(len(task_names)))
        self.register_buffer("initial_losses", torch.zeros(len(task_names)))
        self._step: torch.Tensor | None = None  # a step's gradient norms and losses, summed over its batches

    def backward(self, losses, parts):
        if parts.last_shared is None:
            raise RuntimeError("gradnorm needs the last shared layer (Parts.last_shared)")
        index, count = parts.micro
        stacked = _stack(losses, self.task_names)
        w = self.task_weights.clone()
        norms = []
        for k, t in enumerate(self.task_names):
            (g,) = torch.autograd.grad(losses[t], [parts.last_shared], retain_graph=True, allow_unused=True)
            norms.append(w[k] * (g.float().norm() if g is not None else torch.zeros((), device=w.device)))
        step = torch.stack([torch.stack(norms), stacked.detach()]) / count  # a step's mean over its batches
        self._step = step if index == 0 or self._step is None else self._step + step
        ((w * stacked).sum() / count).backward()
        if not parts.last:
            return
        (norms, now), self._step = self._step.clone(), None
        parts.average([norms, now])
        # a task's L(0) is its first loss with a valid target
        self.initial_losses.copy_(torch.where(self.initial_losses > 0, self.initial_losses, now))
        ratios = torch.where(self.initial_losses > 0, now / self.initial_losses.clamp_min(1e-12),
                             torch.ones_like(now))
        self.record(w)
        if bool((norms > 0).all()):
            self.task_weights.copy_(gradients.gradnorm_update(w.double(), norms.double(), ratios.double(),
                                                              self.alpha, self.lr).to(w.dtype))

    def combine(self, losses):
        return sum(float(self.task_weights[k]) * losses[t] for k, t in enumerate(self.task_names))


class IMTLLWeighting(Weighting):
    """IMTL-L (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Section 3.1): each
    loss is scaled by ``exp(s_k)`` with a learnable ``s_k`` (init 0), minus ``s_k``:
    ``sum_k exp(s_k) L_k - s_k``. The optimum in ``s_k`` is ``exp(s_k) L_k = 1``: every scaled
    loss is driven to the same value. ``s`` is trained with the network."""

    name = "imtl-l"
    weights_after_epoch = True

    def __init__(self, task_names: list[str]):
        super().__init__(task_names)
        self.log_scales = nn.Parameter(torch.zeros(len(self.task_names)))

    def weights(self) -> dict[str, float]:
        """The loss scales ``exp(s_k)`` (reads the parameters: once per epoch, not per step)."""
        return dict(zip(self.task_names, torch.exp(self.log_scales.detach()).tolist()))

    def combine(self, losses):
        s = self.log_scales
        return sum(torch.exp(s[k]) * losses[t] - s[k] for k, t in enumerate(self.task_names))


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


def build_weighting(method: str, task_names: list[str], temperature: float = 2.0, seed: int = 0,
                    solve_every: int = 1) -> Weighting:
    if solve_every > 1 and method not in GRADIENT_METHODS:
        raise ValueError(f"--solve-every applies to the gradient methods ({', '.join(GRADIENT_METHODS)}), "
                         f"and --weighting is {method}")
    if method == "mgda-ub":
        return RepresentationMGDA(task_names, seed, solve_every)
    if method in GRADIENT_METHODS:
        return GradientWeighting(task_names, method, seed, solve_every)
    if method == "random":
        return RandomWeighting(task_names, seed)
    if method == "famo":
        return FAMOWeighting(task_names, seed=seed)
    if method == "gradnorm":
        return GradNormWeighting(task_names, seed=seed)
    if method == "imtl-l":
        return IMTLLWeighting(task_names)
    if method == "equal":
        return EqualWeighting(task_names)
    if method == "dwa":
        return DynamicWeightAverage(task_names, temperature)
    if method == "uncertainty":
        return UncertaintyWeighting(task_names)
    raise ValueError(f"unknown weighting {method!r}; choose one of {', '.join(METHODS)}")
