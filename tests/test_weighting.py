"""Equal, DWA and uncertainty weighting."""
import math

import pytest
import torch

from mtan.weighting import (DynamicWeightAverage, EqualWeighting, UncertaintyWeighting, build_weighting,
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
        build_weighting("gradnorm", ["a"])
    with pytest.raises(ValueError, match="temperature"):
        build_weighting("dwa", ["a"], temperature=0)
