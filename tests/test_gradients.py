"""Gradient-balancing methods (mtan/train/gradients.py) on hand-made gradients with known answers."""
from __future__ import annotations

import itertools

import pytest
import torch

from mtan.train.gradients import cagrad, fairgrad, imtl_g, mgda, min_norm_weights, nash_mtl, pcgrad, random_weights

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


def test_pcgrad_projects_conflicting_gradients():
    g = T([[1.0, 0.0], [-1.0, 1.0]])  # g1 . g2 = -1: each loses its component along the other
    # g1 - (-1/2) g2 = [0.5, 0.5]; g2 - (-1/1) g1 = [0, 1]
    assert close(pcgrad(g), [0.5, 1.5])
    agree = T([[1.0, 0.0], [1.0, 1.0]])  # no conflict: the plain sum
    assert close(pcgrad(agree), [2.0, 1.0])
    g3 = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    out = pcgrad(g3, generator=torch.Generator().manual_seed(1))
    assert out.shape == (5,)


def test_mgda_is_the_min_norm_point_of_the_hull():
    assert close(mgda(T([[1.0, 0.0], [0.0, 1.0]]))[0], [0.5, 0.5])
    d, w = mgda(T([[2.0, 0.0], [0.0, 1.0]]))  # min over w of 4 w^2 + (1 - w)^2: w = 1/5
    assert close(w, [0.2, 0.8]) and close(d, [0.4, 0.8])
    d, w = mgda(T([[1.0, 0.0], [2.0, 0.0]]))  # the shorter gradient is the min-norm point
    assert close(w, [1.0, 0.0]) and close(d, [1.0, 0.0])
    d, _ = mgda(T([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))  # the hull holds 0: Pareto-stationary
    assert float(d.norm()) < 1e-3
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    w = min_norm_weights(g)
    assert float(w.min()) >= -1e-9 and close(w.sum(), 1.0)
    best = min(float(((torch.tensor([a, b, 1 - a - b]) @ g)).norm())
               for a, b in itertools.product(torch.linspace(0, 1, 101).tolist(), repeat=2) if a + b <= 1)
    assert float((w @ g).norm()) <= best + 1e-3


def test_cagrad_is_the_mean_at_c_zero_and_helps_the_worst_task():
    g = T([[1.0, 0.2], [-0.6, 1.0]])
    d, w = cagrad(g, c=0.0)
    assert close(d, g.mean(0)) and close(w, [0.5, 0.5])
    d, w = cagrad(g, c=0.5)
    g0 = g.mean(0)
    assert float((g @ d).min()) > float((g @ g0).min())  # the worst task's descent improves
    # w minimises g_w . g0 + c |g0| |g_w| over the simplex (checked on a grid)
    phi = 0.5 * float(g0.norm())

    def objective(a):
        gw = a * g[0] + (1 - a) * g[1]
        return float(gw @ g0 + phi * gw.norm())

    grid = min(objective(a) for a in torch.linspace(0, 1, 1001).tolist())
    assert objective(float(w[0])) <= grid + 1e-4
    gw = w @ g
    assert close(d, g0 + phi * gw / gw.norm(), tol=1e-4)


def test_imtl_g_gives_equal_projections_on_every_task():
    g = T([[3.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 4.0]])
    d, alpha = imtl_g(g)
    u = g / g.norm(dim=1, keepdim=True)
    projections = u @ d
    assert close(alpha.sum(), 1.0) and float(projections.max() - projections.min()) < 1e-5
    assert float(projections.min()) > 0


def test_nash_mtl_solves_its_bargaining_condition():
    d, alpha = nash_mtl(T([[2.0, 0.0], [0.0, 4.0]]))  # orthogonal: alpha_i = 1 / |g_i|
    assert close(alpha, [0.5, 0.25]) and close(d, [1.0, 1.0])
    g = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    _, alpha = nash_mtl(g)
    k = (g @ g.T).double()
    assert float(alpha.min()) > 0 and close(k @ alpha.double(), 1 / alpha.double(), tol=1e-4)


def test_fairgrad_is_nash_mtl_at_alpha_one_and_solves_its_fixed_point():
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    assert close(fairgrad(g, 1.0)[1], nash_mtl(g)[1], tol=1e-4)
    _, w = fairgrad(g, 2.0)
    k = (g @ g.T).double()
    assert float(w.min()) > 0 and close(k @ w.double(), w.double() ** -0.5, tol=1e-4)
    with pytest.raises(ValueError, match="alpha"):
        fairgrad(g, 0.0)


def test_random_weights_are_a_fresh_softmax_each_draw():
    gen = torch.Generator().manual_seed(5)
    a, b = random_weights(3, gen), random_weights(3, gen)
    assert close(a.sum(), 1.0) and float(a.min()) > 0 and not torch.equal(a, b)


def test_famo_weights_and_their_update():
    from mtan.train.gradients import famo_update, famo_weights

    logits = torch.zeros(2, dtype=torch.float64)
    assert close(famo_weights(logits, T([2.0, 2.0], dtype=torch.float64)), [0.5, 0.5])
    # weights c z_i / L_i: the task with the smaller loss weighs more (log-loss gradient), summing as c sum z / L = 1
    w = famo_weights(logits, T([1.0, 3.0], dtype=torch.float64))
    assert close(w, [0.75, 0.25]) and close((w * T([1.0, 3.0], dtype=torch.float64)).sum(), 1.5)
    # task 0's loss fell by half, task 1's not at all: weight moves to task 1
    before, after = T([1.0, 1.0], dtype=torch.float64), T([0.5, 1.0], dtype=torch.float64)
    new = famo_update(logits, before, after, lr=1.0, decay=0.0)
    # delta = J^T [log 2, 0] with J = [[.25, -.25], [-.25, .25]]: [0.25 log 2, -0.25 log 2]
    l2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    assert close(new, [-0.25 * l2, 0.25 * l2]) and new.softmax(0)[1] > 0.5


def test_gradnorm_moves_weight_to_the_task_that_trains_slower():
    from mtan.train.gradients import gradnorm_update

    weights = T([1.0, 1.0], dtype=torch.float64)
    # equal gradient norms, task 1's loss has fallen less (ratio 1.0 against 0.5): task 1 gains
    new = gradnorm_update(weights, T([1.0, 1.0], dtype=torch.float64), T([0.5, 1.0], dtype=torch.float64),
                          alpha=1.0, lr=0.1)
    assert new[1] > new[0] and close(new.sum(), 2.0)
    # targets met exactly: nothing moves but the renormalisation
    same = gradnorm_update(weights, T([2.0, 2.0], dtype=torch.float64), T([1.0, 1.0], dtype=torch.float64))
    assert close(same, weights)
