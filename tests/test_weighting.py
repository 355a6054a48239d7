"""Equal, DWA and uncertainty weighting."""
import math

import pytest
import torch

from mtan.train.weighting import (DynamicWeightAverage, EqualWeighting, UncertaintyWeighting, build_weighting,
                            dwa_weights)

HISTORY = [[1.0, 2.0, 4.0], [0.5, 1.8, 4.0], [0.25, 1.8, 2.0]]


def test_dwa_first_two_epochs_are_ones():
    assert dwa_weights([], 2.0, num_tasks=3) == [1.0, 1.0, 1.0]
    assert dwa_weights(HISTORY[:1]) == [1.0, 1.0, 1.0]


def test_dwa_matches_hand_computed_weights():
    # epoch 2: ratios 0.5, 0.9, 1.0; T = 2 -> 3 * softmax([0.25, 0.45, 0.5])
    e = [math.exp(0.25), math.exp(0.45), math.exp(0.5)]
    expected = [3 * v / sum(e) for v in e]
    assert dwa_weights(HISTORY[:2], 2.0) == pytest.approx(expected, rel=1e-12)
    assert dwa_weights(HISTORY[:2], 2.0) == pytest.approx([0.855816, 1.045295, 1.098889], abs=1e-6)
    # epoch 3 uses only the last two epochs: ratios 0.5, 1.0, 0.5; T = 1
    e = [math.exp(0.5), math.exp(1.0), math.exp(0.5)]
    assert dwa_weights(HISTORY, 1.0) == pytest.approx([3 * v / sum(e) for v in e])
    assert sum(dwa_weights(HISTORY, 1.0)) == pytest.approx(3.0)


def test_dwa_module_follows_the_epoch_protocol():
    names = ["semantic", "depth", "normal"]
    dwa = DynamicWeightAverage(names, temperature=2.0)
    seen = []
    for epoch, losses in enumerate(HISTORY + [[0.2, 1.0, 1.0]]):
        dwa.begin_epoch(epoch)
        seen.append(list(dwa.weights().values()))
        dwa.end_epoch(dict(zip(names, losses)))
    assert seen[0] == seen[1] == [1.0, 1.0, 1.0]
    assert seen[2] == pytest.approx(dwa_weights(HISTORY[:2], 2.0))
    assert seen[3] == pytest.approx(dwa_weights(HISTORY, 2.0))
    # weights are fixed within an epoch and applied in combine
    total = dwa.combine({n: torch.tensor(1.0) for n in names})
    assert total.item() == pytest.approx(sum(seen[3]))
    # state survives a save/load (resume)
    clone = DynamicWeightAverage(names)
    clone.load_state_dict(dwa.state_dict())
    clone.begin_epoch(4)
    dwa.begin_epoch(4)
    assert clone.weights() == dwa.weights()


def test_uncertainty_weighting_formula_and_learning():
    uw = UncertaintyWeighting(["a", "b"])
    assert uw.log_vars.tolist() == [-0.5, -0.5]
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.1)}
    s = -0.5
    expected = 2.0 / (2 * math.exp(s)) + s / 2 + 0.1 / (2 * math.exp(s)) + s / 2
    assert uw.combine(losses).item() == pytest.approx(expected, rel=1e-6)
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        uw.combine(losses).backward()
        opt.step()
    a, b = uw.log_vars.tolist()
    # the optimum is s_k = log(L_k): a large loss raises its log-variance, a small one lowers it
    assert a > -0.5 and b < -0.5


def test_equal_and_builder():
    eq = build_weighting("equal", ["a", "b"])
    assert isinstance(eq, EqualWeighting) and eq.weights() == {"a": 1.0, "b": 1.0}
    assert eq.combine({"a": torch.tensor(1.5), "b": torch.tensor(2.0)}).item() == 3.5
    with pytest.raises(ValueError, match="unknown weighting"):
        build_weighting("gradnorm-2", ["a"])
    with pytest.raises(ValueError, match="temperature"):
        build_weighting("dwa", ["a"], temperature=0)


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "cagrad", "imtl-g", "nash-mtl", "fairgrad"])
def test_gradient_methods_set_the_shared_gradients_from_each_tasks_gradient(method):
    """One step of a gradient method: the shared parameters' gradients are the method's direction
    of the tasks' separate gradients; each task's own parameters get its own loss's gradient."""
    from mtan import MTAN, preset_tasks
    from mtan.train.weighting import GradientWeighting, Parts

    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=1 / 16)
    x = torch.rand(2, 3, 32, 64)
    own_prefix = tuple(f"{part}.{t}." for part in ("attention", "heads") for t in model.task_names)
    shared = [p for n, p in model.named_parameters() if not n.startswith(own_prefix)]
    own = {t: [p for n, p in model.named_parameters() if n.startswith((f"attention.{t}.", f"heads.{t}."))]
           for t in model.task_names}

    def losses():
        out = model(x)
        return {"semantic": out["semantic"].square().mean(), "depth": (out["depth"] - 1).abs().mean()}

    # the expected gradients, task by task
    rows, own_grads = [], {}
    for t in model.task_names:
        model.zero_grad()
        losses()[t].backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared]))
        own_grads[t] = [p.grad.clone() for p in own[t]]
    grads = torch.stack(rows)
    weighting = GradientWeighting(model.task_names, method, seed=3)
    reference = GradientWeighting(model.task_names, method, seed=3)  # the same random order for PCGrad
    expected, w = reference.direction(grads)
    model.zero_grad()
    weighting.backward(losses(), Parts(shared=shared, own=[p for ps in own.values() for p in ps]))
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got, expected.float(), rtol=1e-4, atol=1e-7)
    for t in model.task_names:
        assert all(torch.allclose(p.grad, g, rtol=1e-4, atol=1e-8) for p, g in zip(own[t], own_grads[t]))
    logged = weighting.weights()
    assert list(logged) == model.task_names and list(logged.values()) == pytest.approx(w.double().tolist(), rel=1e-4)


@pytest.mark.parametrize("method", ["nash-mtl", "imtl-g"])
def test_between_solves_a_step_is_the_gradient_of_the_losses_weighted_by_the_last_weights(method):
    """solve_every 3: steps 0 and 3 find the weights from the tasks' gradients; steps 1 and 2 are
    one backward pass of sum_t w_t L_t with step 0's weights w; the state resumes exactly."""
    from mtan.train.weighting import GradientWeighting, Parts, build_weighting

    torch.manual_seed(0)
    shared, heads = torch.nn.Linear(4, 3), torch.nn.ModuleList([torch.nn.Linear(3, 1) for _ in range(2)])
    x = torch.rand(8, 4)

    def losses():
        z = shared(x)
        return {"a": heads[0](z).square().mean(), "b": (heads[1](z) - 1).abs().mean() + z[:, 0].mean() ** 2}

    parts = Parts(shared=list(shared.parameters()), own=list(heads.parameters()))
    weighting = GradientWeighting(["a", "b"], method, solve_every=3)
    solved = []
    for step in range(4):
        for p in [*shared.parameters(), *heads.parameters()]:
            p.grad = None
        weighting.backward(losses(), parts)
        if step % 3 == 0:
            solved.append(weighting.solved.clone())
            continue
        got = [p.grad.clone() for p in [*shared.parameters(), *heads.parameters()]]
        for p in [*shared.parameters(), *heads.parameters()]:
            p.grad = None
        found = losses()
        (float(solved[-1][0]) * found["a"] + float(solved[-1][1]) * found["b"]).backward()
        assert all(torch.allclose(g, p.grad) for g, p in zip(got, [*shared.parameters(), *heads.parameters()]))
        with torch.no_grad():  # move the parameters, so that the next solve sees other gradients
            for p in shared.parameters():
                p -= 0.5 * p.grad
    assert weighting.steps == 4 and not torch.equal(solved[0], solved[1])
    again = GradientWeighting(["a", "b"], method, solve_every=3)
    again.load_state_dict(weighting.state_dict())
    assert again.steps == 4 and torch.equal(again.solved, weighting.solved)
    with pytest.raises(ValueError, match="pcgrad projects them"):
        build_weighting("pcgrad", ["a", "b"], solve_every=2)
    with pytest.raises(ValueError, match="--solve-every applies to the gradient methods"):
        build_weighting("dwa", ["a", "b"], solve_every=2)


def test_random_weights_are_drawn_each_step_and_resume_exactly():
    from mtan.train.weighting import RandomWeighting

    a = RandomWeighting(["s", "d"], seed=5)
    losses = {"s": torch.tensor(2.0), "d": torch.tensor(1.0)}
    a.begin_epoch(0)
    first = [float(a.combine(losses)) for _ in range(3)]
    assert len(set(first)) == 3 and all(1.0 < v < 2.0 for v in first)  # a convex combination, new each step
    assert sum(a.weights().values()) == pytest.approx(1.0)
    b = RandomWeighting(["s", "d"], seed=0)
    b.load_state_dict(a.state_dict())  # the draws continue where they were
    assert float(a.combine(losses)) == float(b.combine(losses))
    assert build_weighting("random", ["s", "d"], seed=5).name == "random"
    assert build_weighting("nash-mtl", ["s", "d"]).uses_gradients


def _tiny_model(seed=0):
    from mtan import MTAN, preset_tasks

    torch.manual_seed(seed)
    return MTAN(preset_tasks("cityscapes-7"), width=1 / 16)


def _losses(model, x):
    out = model(x)
    return {"semantic": (out["semantic"] - 1).square().mean(), "depth": (out["depth"] - 1).abs().mean()}


def _flat_grads(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def test_mgda_ub_weights_come_from_the_shared_features_and_the_update_is_their_weighted_sum():
    """MGDA-UB: the weights are the min-norm point of the tasks' gradients of the features the
    branches read; every parameter's gradient is then exactly that of the weighted loss sum."""
    from mtan.train.gradients import min_norm_weights
    from mtan.train.weighting import RepresentationMGDA, model_parts

    model, x = _tiny_model(), torch.rand(2, 3, 32, 64)
    parts = model_parts(model, cut=True)
    losses = _losses(model, x)
    assert len(parts.cut) == 4 * 5  # u and p of 5 encoder stages, up and q of 5 decoder stages
    rows = []
    for t in model.task_names:
        g = torch.autograd.grad(losses[t], [leaf for _, leaf in parts.cut], retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(v if v is not None else torch.zeros_like(leaf)).reshape(-1)
                               for v, (_, leaf) in zip(g, parts.cut)]))
    expected_w = min_norm_weights(torch.stack(rows))
    assert 0 < float(expected_w[0]) < 1  # the two tasks' feature gradients conflict here: a real mix

    weighting = RepresentationMGDA(model.task_names)
    model.zero_grad()
    weighting.backward(losses, parts)
    got = _flat_grads(model.parameters())
    logged = list(weighting.weights().values())
    assert logged == pytest.approx(expected_w.tolist(), rel=1e-4)

    # the same gradients from a plain forward without the cut
    plain = _tiny_model()
    plain.load_state_dict(model.state_dict())
    plain_losses = _losses(plain, x)
    sum(w * plain_losses[t] for w, t in zip(logged, plain.task_names)).backward()
    assert torch.allclose(got, _flat_grads(plain.parameters()), rtol=1e-4, atol=1e-8)
    with torch.no_grad():  # no gradients wanted: the network is left alone
        model(x)
    assert len(parts.cut) == 20


def test_famo_weights_its_losses_and_moves_towards_the_task_that_improved_least():
    from mtan.train.gradients import famo_update
    from mtan.train.weighting import FAMOWeighting

    famo = FAMOWeighting(["s", "d"], lr=0.5, decay=0.0)
    famo.begin_epoch(0)
    losses = {"s": torch.tensor(2.0, requires_grad=True), "d": torch.tensor(0.5, requires_grad=True)}
    total = famo.combine(losses)
    # z = (1/2, 1/2): weights c z_i / L_i with c = 1 / (0.25 + 1) -> (0.2, 0.8); the loss is c
    assert list(famo.weights().values()) == pytest.approx([0.2, 0.8])
    assert total.item() == pytest.approx(0.8)
    total.backward()
    assert losses["s"].grad.item() == pytest.approx(0.2) and losses["d"].grad.item() == pytest.approx(0.8)
    # "s" fell by half, "d" not at all: the logits move weight to "d"
    before, after = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.5])
    famo.after_step(before, after)
    assert famo.logits.tolist() == pytest.approx(famo_update(torch.zeros(2, dtype=torch.float64), before.double(),
                                                             after.double(), 0.5, 0.0).tolist())
    assert famo.logits[1] > famo.logits[0]
    famo.combine({"s": torch.tensor(1.0), "d": torch.tensor(1.0)})
    w = famo.weights()  # the epoch's mean: (0.2, 0.8) then softmax of the logits
    assert w["d"] > 0.5
    # a task with no valid target sits the step out; the others share the step
    famo.begin_epoch(1)
    famo.combine({"s": torch.tensor(1.0), "d": torch.tensor(0.0)})
    assert famo.weights() == {"s": pytest.approx(1.0), "d": 0.0}
    # the logits are resumed from a checkpoint
    clone = FAMOWeighting(["s", "d"])
    clone.load_state_dict(famo.state_dict())
    assert torch.equal(clone.logits, famo.logits)


def test_gradnorm_weights_follow_the_gradient_norms_on_the_last_shared_layer():
    from mtan.train.gradients import gradnorm_update
    from mtan.train.weighting import GradNormWeighting, model_parts

    model, x = _tiny_model(), torch.rand(2, 3, 32, 64)
    parts = model_parts(model)
    assert parts.last_shared is model.decoder.stages[-1].refine[-1][0].weight
    gn = GradNormWeighting(model.task_names, alpha=1.5, lr=0.05)
    losses = _losses(model, x)
    norms = torch.stack([torch.autograd.grad(losses[t], [parts.last_shared], retain_graph=True)[0].norm()
                         for t in model.task_names]).double()
    gn.backward(losses, parts)
    # the first step: L(0) is this step's loss, every ratio is 1, weights 1
    assert gn.initial_losses.tolist() == pytest.approx([losses[t].item() for t in model.task_names])
    expected = gradnorm_update(torch.ones(2, dtype=torch.float64), norms, torch.ones(2, dtype=torch.float64), 1.5, 0.05)
    assert gn.task_weights.tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    assert sum(gn.task_weights.tolist()) == pytest.approx(2.0)
    # the task with the larger gradient norm loses weight (equal training rates at the first step)
    big = int(torch.argmax(norms))
    assert gn.task_weights[big] < 1 < gn.task_weights[1 - big]
    # the network's gradient is that of the weighted sum with the weights of the step (1, 1)
    plain = _tiny_model()
    plain.load_state_dict(model.state_dict())
    sum(_losses(plain, x).values()).backward()
    assert torch.allclose(_flat_grads(model.parameters()), _flat_grads(plain.parameters()), rtol=1e-4, atol=1e-8)
    clone = GradNormWeighting(model.task_names)
    clone.load_state_dict(gn.state_dict())
    assert torch.equal(clone.task_weights, gn.task_weights) and torch.equal(clone.initial_losses, gn.initial_losses)


def test_imtl_l_scales_every_loss_towards_one():
    from mtan.train.weighting import IMTLLWeighting

    imtl = IMTLLWeighting(["a", "b"])
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.25)}
    assert imtl.combine(losses).item() == pytest.approx(4.25)  # s = 0: the plain sum
    opt = torch.optim.SGD(imtl.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        imtl.combine(losses).backward()
        opt.step()
    # the optimum exp(s_k) L_k = 1: scales 1/4 and 4
    assert list(imtl.weights().values()) == pytest.approx([0.25, 4.0], rel=1e-3)


@pytest.mark.parametrize("method", ["equal", "uncertainty", "imtl-l", "pcgrad", "mgda", "cagrad", "imtl-g",
                                    "nash-mtl", "fairgrad", "gradnorm"])
def test_two_accumulated_batches_make_the_step_of_their_union(method):
    """Gradient accumulation: a step made of two half batches (each weighted 1/2) sets the same
    gradients as one step on the whole batch (the losses here are means over images, BatchNorm
    frozen); a gradient method combines the tasks' gradients of the whole step, once."""
    from mtan.train.weighting import model_parts

    model, x = _tiny_model(), torch.rand(4, 3, 32, 64)
    model.eval()
    whole, halves = build_weighting(method, model.task_names, seed=3), build_weighting(method, model.task_names, seed=3)
    parts = model_parts(model)
    whole.backward(_losses(model, x), parts)
    expected = _flat_grads(list(model.parameters()) + list(whole.parameters()))
    model.zero_grad()
    seen = []
    for index, part in enumerate((x[:2], x[2:])):
        parts.micro = (index, 2)
        seen.append(_losses(model, part))
        halves.backward(seen[-1], parts)
        if method == "gradnorm" and index == 0:  # it learns once a step, after the last batch
            assert torch.equal(halves.initial_losses, torch.zeros(2))
    got = _flat_grads(list(model.parameters()) + list(halves.parameters()))
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()  # float32 sums in another order
    if method == "gradnorm":  # from the step's mean losses (and norms)
        means = [(seen[0][t] + seen[1][t]).item() / 2 for t in model.task_names]
        assert halves.initial_losses.tolist() == pytest.approx(means, rel=1e-5)
    elif hasattr(whole, "record"):
        assert list(halves.weights().values()) == pytest.approx(list(whole.weights().values()), rel=1e-3, abs=1e-4)
