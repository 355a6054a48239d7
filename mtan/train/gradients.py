"""How per-task gradients become one update: the gradient-balancing methods of multi-task learning.

Every function here takes ``grads``, a T x P matrix whose row i is task i's gradient (of the
shared parameters, or of the shared representation, flattened), and returns the combined update
direction (P values, to be followed by a descent step) together with the task weights it used
where the method has them. They are pure tensor functions: which gradients are taken, and how
the update reaches the parameters, is the trainer's business.

Notation: ``K = G G^T`` is the T x T Gram matrix of the gradients; the probability simplex
``Delta`` holds the weight vectors with non-negative entries that sum to 1.
"""
from __future__ import annotations

import math

import torch


def _gram(grads: torch.Tensor) -> torch.Tensor:
    g = grads.double()
    return g @ g.T


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1):
    each task's gradient, against every other task's gradient in a random order, loses its
    component along that gradient when the two conflict (negative dot product):
    ``g_i <- g_i - (g_i . g_j / |g_j|^2) g_j``; the update is the sum of the projected gradients."""
    t = grads.shape[0]
    out = grads.clone()
    for i in range(t):
        others = [j for j in torch.randperm(t, generator=generator).tolist() if j != i]
        g = out[i]
        for j in others:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        out[i] = g
    return out.sum(0)


def min_norm_weights(grads: torch.Tensor, iterations: int = 250, tolerance: float = 1e-10) -> torch.Tensor:
    """The weights ``w`` in Delta that minimise ``|sum_i w_i g_i|``: the min-norm point of the
    convex hull of the gradients (Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018, Algorithm 2). Two tasks: the closed form of their Algorithm 1,
    ``w_1 = clip(((g_2 - g_1) . g_2) / |g_1 - g_2|^2, 0, 1)``; more: Frank-Wolfe steps, each
    solved exactly on the segment between the current point and the best vertex."""
    k = _gram(grads)
    t = k.shape[0]
    if t == 1:
        return torch.ones(1, dtype=grads.dtype)
    if t == 2:
        denom = k[0, 0] + k[1, 1] - 2 * k[0, 1]
        w1 = ((k[1, 1] - k[0, 1]) / denom).clamp(0, 1) if denom > 0 else torch.tensor(0.5, dtype=k.dtype)
        return torch.stack([w1, 1 - w1]).to(grads.dtype)
    w = torch.full((t,), 1.0 / t, dtype=k.dtype)
    for _ in range(iterations):
        kw = k @ w
        s = int(torch.argmin(kw))  # the vertex along which the norm falls fastest
        e = torch.zeros_like(w)
        e[s] = 1
        d = e - w
        denom = d @ k @ d
        if denom <= 0:
            break
        step = float((-(d @ kw) / denom).clamp(0, 1))
        if step * float(d.abs().max()) < tolerance:
            break
        w = w + step * d
    return w.to(grads.dtype)


def mgda(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDA (Sener & Koltun 2018): the min-norm combination of the gradients, a direction that
    decreases every task's loss (or zero at a Pareto-stationary point). Given the gradients of
    the shared representation instead of the shared parameters, this is their upper-bound
    variant, MGDA-UB (their Section 3.3). Returns (update, weights)."""
    w = min_norm_weights(grads)
    return w @ grads, w


def cagrad(grads: torch.Tensor, c: float = 0.4, steps: int = 300, lr: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021, Algorithm 1): with ``g0`` the average gradient and ``phi = c^2 |g0|^2``, find ``w`` in
    Delta minimising ``g_w . g0 + sqrt(phi) |g_w|`` (``g_w = sum_i w_i g_i``); the update is
    ``g0 + sqrt(phi) g_w / |g_w|``. ``c = 0`` gives the average gradient. The small dual
    problem is solved by gradient descent on softmax logits. Returns (update, weights)."""
    t = grads.shape[0]
    g0 = grads.mean(0)
    if c <= 0:
        return g0, torch.full((t,), 1.0 / t, dtype=grads.dtype)
    k = _gram(grads)
    kmean = k.mean(1)            # g_i . g0
    g0_norm = math.sqrt(max(float(kmean.mean()), 0.0))
    sqrt_phi = c * g0_norm
    logits = torch.zeros(t, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        w = logits.softmax(0)
        objective = w @ kmean + sqrt_phi * torch.sqrt((w @ k @ w).clamp_min(1e-20))
        opt.zero_grad()
        objective.backward()
        opt.step()
    w = logits.detach().softmax(0)
    gw = w.to(grads.dtype) @ grads
    norm = gw.norm().clamp_min(1e-20)
    return g0 + (sqrt_phi / norm) * gw, w.to(grads.dtype)


def imtl_g(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Section 3.2): the
    weights (summing to 1) whose combination ``g`` has the same projection on every task's unit
    gradient ``u_i = g_i / |g_i|``; closed form, with ``D`` the rows ``g_1 - g_i`` and ``U`` the
    rows ``u_1 - u_i`` (i > 1): ``alpha_{2..T} = g_1 U^T (D U^T)^-1``, ``alpha_1 = 1 - sum``.
    Returns (update, weights)."""
    g = grads.double()
    t = g.shape[0]
    if t == 1:
        return grads[0], torch.ones(1, dtype=grads.dtype)
    u = g / g.norm(dim=1, keepdim=True).clamp_min(1e-20)
    d, uu = g[:1] - g[1:], u[:1] - u[1:]
    rest = g[0] @ uu.T @ torch.linalg.pinv(d @ uu.T)
    alpha = torch.cat([1 - rest.sum().view(1), rest])
    return (alpha @ g).to(grads.dtype), alpha.to(grads.dtype)


def _positive_root(residual, jacobian, t: int, iterations: int = 100, tolerance: float = 1e-12) -> torch.Tensor:
    """A positive solution ``x`` of ``residual(x) = 0`` by damped Newton steps on ``log x``."""
    y = torch.zeros(t, dtype=torch.float64)  # log x
    for _ in range(iterations):
        x = y.exp()
        r = residual(x)
        if float(r.abs().max()) < tolerance:
            break
        jac = jacobian(x) * x  # d r / d log x
        step = torch.linalg.lstsq(jac, -r.unsqueeze(1)).solution.squeeze(1)
        scale = 1.0
        base = float(r.norm())
        while scale > 1e-4:  # backtrack until the residual falls
            if float(residual((y + scale * step).exp()).norm()) < base:
                break
            scale /= 2
        y = y + scale * step
    return y.exp()


def nash_mtl(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Theorem 5.4):
    the weights ``alpha > 0`` with ``G G^T alpha = 1 / alpha`` (element-wise), the Nash bargaining
    solution; the update is ``G^T alpha``. Solved here by Newton's method in ``log alpha`` (the
    paper uses a sequence of convex problems; the solution is the same). Returns (update, weights)."""
    k = _gram(grads)
    k = k + 1e-12 * torch.eye(k.shape[0], dtype=k.dtype) * k.diagonal().mean().clamp_min(1e-20)
    alpha = _positive_root(lambda a: k @ a - 1 / a, lambda a: k + torch.diag(1 / a ** 2), k.shape[0])
    alpha = alpha.to(grads.dtype)
    return alpha @ grads, alpha


def fairgrad(grads: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, eq. 7):
    alpha-fair allocation of the update: the weights ``w > 0`` with ``G G^T w = w^(-1/alpha)``
    (element-wise power); the update is ``G^T w``. ``alpha = 1`` is proportional fairness (the
    Nash-MTL condition), larger alpha moves towards max-min fairness. Returns (update, weights)."""
    if alpha <= 0:
        raise ValueError(f"FairGrad's alpha must be above 0, got {alpha}")
    k = _gram(grads)
    k = k + 1e-12 * torch.eye(k.shape[0], dtype=k.dtype) * k.diagonal().mean().clamp_min(1e-20)
    p = 1.0 / alpha
    w = _positive_root(lambda x: k @ x - x ** (-p), lambda x: k + torch.diag(p * x ** (-p - 1)), k.shape[0])
    w = w.to(grads.dtype)
    return w @ grads, w


def random_weights(t: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR
    2022): each step's task weights are the softmax of T standard normal draws."""
    return torch.randn(t, generator=generator).softmax(0)


def famo_weights(logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, Section 3):
    the step follows ``sum_i c z_i grad L_i / L_i`` with ``z = softmax(logits)`` and
    ``c = 1 / sum_i (z_i / L_i)``; these are the loss weights ``c z_i / L_i`` of that step."""
    z = logits.softmax(0)
    losses = losses.clamp_min(1e-12)
    c = 1.0 / (z / losses).sum()
    return c * z / losses


def famo_update(logits: torch.Tensor, losses_before: torch.Tensor, losses_after: torch.Tensor,
                lr: float = 0.025, decay: float = 1e-3) -> torch.Tensor:
    """FAMO's logits after a step: ``xi <- xi - lr (delta + decay xi)`` with
    ``delta = J^T (log L_before - log L_after)`` and ``J = diag(z) - z z^T`` the softmax's Jacobian,
    so that weight moves towards the tasks whose loss fell least."""
    z = logits.softmax(0)
    jac = torch.diag(z) - torch.outer(z, z)
    delta = jac.T @ (losses_before.clamp_min(1e-12).log() - losses_after.clamp_min(1e-12).log())
    return logits - lr * (delta + decay * logits)


def gradnorm_update(weights: torch.Tensor, grad_norms: torch.Tensor, loss_ratios: torch.Tensor,
                    alpha: float = 1.5, lr: float = 0.025) -> torch.Tensor:
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018, eqs. 1-2): ``grad_norms[i] = |grad_W w_i L_i|`` on the last
    shared layer, ``loss_ratios[i] = L_i(t) / L_i(0)``. The target of task i is the mean norm times
    ``r_i^alpha`` (``r_i``: its ratio over the mean ratio), held constant; one gradient step of
    ``sum_i |G_i - target_i|`` in the weights (``dG_i / dw_i = G_i / w_i``), then the weights are
    renormalised to sum to the number of tasks."""
    r = loss_ratios / loss_ratios.mean()
    target = grad_norms.mean() * r ** alpha
    grad = torch.sign(grad_norms - target) * grad_norms / weights.clamp_min(1e-12)
    new = (weights - lr * grad).clamp_min(1e-6)
    return new * (len(new) / new.sum())


__all__ = ["famo_weights", "famo_update", "gradnorm_update", "pcgrad", "min_norm_weights", "mgda", "cagrad", "imtl_g", "nash_mtl", "fairgrad", "random_weights"]
