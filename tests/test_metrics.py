"""Metrics on small hand-computed examples, accumulated over batches."""
import math

import pytest
import torch

from mtan.metrics import DepthMetric, NormalMetric, SegmentationMetric, delta_m


def test_segmentation_hand_example_with_an_absent_class():
    # 4 classes; class 3 never appears in prediction or target -> excluded from the mean
    target = torch.tensor([[0, 0, 1, 1, 2, -1]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 3]])  # last pixel is void: ignored even though pred says 3
    m = SegmentationMetric(4)
    m.update(pred, target)
    # IoU: class 0: 1 / 2, class 1: 2 / 3, class 2: 1 / 1
    r = m.compute()
    assert r["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 5)
    assert math.isnan(m.per_class_iou()[3])
    # called: class 0 once (right), class 1 three times (two right), class 2 once (right)
    b = m.class_balance()
    assert (b["precision.0"], b["precision.1"], b["precision.2"]) == pytest.approx((1.0, 2 / 3, 1.0))
    assert (b["called_vs_labelled.0"], b["called_vs_labelled.1"], b["called_vs_labelled.2"]) == pytest.approx(
        (1 / 2, 3 / 2, 1.0))
    assert math.isnan(b["precision.3"]) and math.isnan(b["called_vs_labelled.3"])  # neither called nor there


def test_segmentation_accumulates_over_the_split_not_per_batch():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 8, 8)
    target = torch.randint(-1, 5, (6, 8, 8))
    whole, batched = SegmentationMetric(5), SegmentationMetric(5)
    whole.update(logits, target)
    for i in range(0, 6, 2):
        batched.update(logits[i:i + 2], target[i:i + 2])
    assert whole.compute() == batched.compute()
    assert torch.equal(whole.confusion, batched.confusion)


def test_segmentation_with_nothing_valid_is_nan_not_an_error():
    m = SegmentationMetric(3)
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -1))
    r = m.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])


def test_depth_errors_average_over_all_valid_pixels():
    m = DepthMetric()
    # batch 1: one valid pixel, abs 1, rel 0.5; batch 2: three valid pixels, abs 0.1 each, rel 0.1 each
    m.update(torch.tensor([[[[3.0, 9.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))
    m.update(torch.tensor([[[[1.1, 1.1, 0.9]]]]), torch.tensor([[[[1.0, 1.0, 1.0]]]]))
    r = m.compute()
    assert r["abs_err"] == pytest.approx((1.0 + 0.3) / 4)  # not the mean of batch means (0.55)
    assert r["rel_err"] == pytest.approx((0.5 + 0.3) / 4)


def test_depth_all_invalid_split():
    m = DepthMetric()
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(v) for v in m.compute().values())
    # an all-invalid batch leaves the other batches' figures unchanged
    m.update(torch.tensor([[[[2.0]]]]), torch.tensor([[[[1.0]]]]))
    assert m.compute() == {"abs_err": 1.0, "rel_err": 1.0}


def test_normal_angle_statistics():
    def unit(deg):
        r = math.radians(deg)
        return [math.cos(r), math.sin(r), 0.0]

    target = torch.tensor([unit(0)] * 5).T.reshape(1, 3, 1, 5)
    pred = torch.tensor([unit(a) for a in (5, 10, 20, 25, 60)]).T.reshape(1, 3, 1, 5)
    target_with_invalid = torch.cat([target, torch.zeros(1, 3, 1, 2)], dim=-1)
    pred_with_invalid = torch.cat([pred, torch.tensor([unit(90)] * 2).T.reshape(1, 3, 1, 2)], dim=-1)
    m = NormalMetric()
    m.update(pred_with_invalid, target_with_invalid)
    r = m.compute()
    assert r["mean_deg"] == pytest.approx(24.0, abs=1e-3)
    assert r["median_deg"] == pytest.approx(20.0, abs=0.01)
    assert r["within_11.25"] == pytest.approx(2 / 5)
    assert r["within_22.5"] == pytest.approx(3 / 5)
    assert r["within_30"] == pytest.approx(4 / 5)


def test_delta_m_against_baselines():
    results = {"miou": 0.55, "abs_err": 0.011}
    baselines = {"miou": 0.50, "abs_err": 0.010}
    lower = {"miou": False, "abs_err": True}
    # (10 % better mIoU, 10 % worse error) / 2 = 0; lower is better, as the papers report it
    assert delta_m(results, baselines, lower) == pytest.approx(0.0)
    assert delta_m({"miou": 0.6, "abs_err": 0.008}, baselines, lower) == pytest.approx(-(20 + 20) / 2)
    assert delta_m({"miou": 0.45, "abs_err": 0.012}, baselines, lower) == pytest.approx((10 + 20) / 2)
    from mtan.metrics import relative_changes

    assert relative_changes({"miou": 0.45, "abs_err": 0.012}, baselines, lower) == pytest.approx(
        {"miou": 10.0, "abs_err": 20.0})
    with pytest.raises(KeyError, match="lower is better"):
        delta_m(results, baselines, {"miou": False})


def test_objects_stand_out_of_what_is_behind_them():
    """A car (vehicle) drawn nearer than the building behind it: every outline pair says nearer and
    the outline is sharper than the inside; the same labels over a map without the car: half and 1."""
    from mtan.metrics import DepthOrderMetric

    lab = torch.full((1, 60, 80), 1)            # construction behind
    lab[0, 40:, :] = 0                            # ground in front
    lab[0, 20:45, 20:50] = 6                      # a vehicle
    depth = torch.full((1, 1, 60, 80), 0.02)
    depth[0, 0, 20:45, 20:50] = 0.1 + torch.linspace(0, 0.01, 30)  # nearer, a little slope inside
    m = DepthOrderMetric(7, gap=4)
    m.update(depth, lab)
    out = m.compute()
    assert out["objects_nearer"] == 1.0 and out["object_edge_contrast"] > 10
    assert out["object_edge_pairs"] > 0
    rng = torch.Generator().manual_seed(0)
    flat = 0.05 + 0.001 * torch.rand(1, 1, 60, 80, generator=rng)  # no object in the depth: only noise
    m.reset()
    m.update(flat, lab)
    noise = m.compute()
    assert 0.3 < noise["objects_nearer"] < 0.7 and 0.5 < noise["object_edge_contrast"] < 2.0
