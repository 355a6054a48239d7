"""Losses ignore invalid pixels and give zero, not NaN, when a batch has none."""
import math

import pytest
import torch
import torch.nn.functional as F

from mtan.losses import depth_loss, normal_loss, semantic_loss


def test_semantic_loss_ignores_void_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0] = -1
    valid = target != -1
    manual = -F.log_softmax(logits, 1).gather(1, target.clamp_min(0)[:, None])[:, 0][valid].mean()
    torch.testing.assert_close(semantic_loss(logits, target), manual)
    # changing the prediction at void pixels changes nothing
    other = logits.detach().clone()
    other[0, :, 0] = 100.0
    torch.testing.assert_close(semantic_loss(other, target), manual.detach())


def test_depth_loss_is_mae_over_valid_pixels():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.5, 0.0], [2.0, 0.0]]]])  # two valid pixels: errors 0.5 and 1.0
    assert depth_loss(pred, target).item() == 0.75


def test_normal_loss_is_one_minus_mean_cosine():
    pred = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 3), dim=1)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    # valid pixels: cos 1 and cos 0 -> mean 0.5; the third target is all zero (invalid)
    assert math.isclose(normal_loss(pred, target).item(), 0.5, abs_tol=1e-6)


def test_batches_without_valid_pixels_give_zero_loss_and_finite_gradients():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    depth = torch.randn(1, 1, 4, 4, requires_grad=True)
    normal = F.normalize(torch.randn(1, 3, 4, 4), dim=1).requires_grad_()
    losses = [semantic_loss(logits, torch.full((1, 4, 4), -1)),
              depth_loss(depth, torch.zeros(1, 1, 4, 4)),
              normal_loss(normal, torch.zeros(1, 3, 4, 4))]
    for loss in losses:
        assert loss.item() == 0.0
    sum(losses).backward()
    for t in (logits, depth, normal):
        assert torch.isfinite(t.grad).all()


def test_losses_run_under_bf16_autocast():
    logits = torch.randn(1, 3, 4, 4).bfloat16()
    assert semantic_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long)).dtype == torch.float32


def test_weighted_semantic_loss_is_the_weighted_mean():
    from mtan.losses import median_frequency_weights, semantic_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(-1, 3, (2, 4, 5))
    weight = torch.tensor([0.5, 2.0, 1.0])
    valid = target >= 0
    ce = torch.nn.functional.cross_entropy(logits, target.clamp_min(0), reduction="none")
    w = weight[target.clamp_min(0)] * valid
    assert semantic_loss(logits, target, weight) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-6)
    assert semantic_loss(logits, target, torch.ones(3)) == pytest.approx(float(semantic_loss(logits, target)), rel=1e-6)
    void = torch.full((2, 4, 5), -1)
    assert semantic_loss(logits, void, weight).item() == 0.0
    # median frequency: shares 0.6 / 0.3 / 0.1 (median 0.3) -> 0.5, 1, 3; an absent class gets 1
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] + [-1] * 5)
    assert median_frequency_weights(labels, 4).tolist() == pytest.approx([0.5, 1.0, 3.0, 1.0])


def test_hard_pixel_mining_counts_only_the_hardest_share_of_the_pixels():
    """Known answers: four pixels with cross-entropies a < b < c < d and two void ones; a share of
    1/3 of the six pixels keeps the two hardest valid ones, with class weights the hardest by
    weighted loss, divided by their weights; a share that reaches past the valid pixels keeps them all."""
    probs = torch.tensor([0.9, 0.7, 0.4, 0.1, 0.5, 0.5])  # probability of class 0 at each pixel
    logits = torch.stack([probs.log(), (1 - probs).log()]).reshape(1, 2, 1, 6)
    target = torch.tensor([[[0, 0, 0, 0, -1, -1]]])
    ce = -probs[:4].log()
    assert semantic_loss(logits, target, hard_share=2 / 6).item() == pytest.approx(((ce[2] + ce[3]) / 2).item())
    assert semantic_loss(logits, target, hard_share=1.0).item() == pytest.approx(ce.mean().item())
    assert semantic_loss(logits, target, hard_share=5 / 6).item() == pytest.approx(ce.mean().item())
    # class 1 at the easiest pixel, weighted 10x: its weighted loss (10 * -log 0.1) is now the hardest
    target = torch.tensor([[[1, 0, 0, 0, -1, -1]]])
    weight = torch.tensor([1.0, 10.0])
    ce1 = -(1 - probs[0]).log()
    assert semantic_loss(logits, target, weight, hard_share=1 / 6).item() == pytest.approx(ce1.item())
    expected = (10 * ce1 + ce[3]) / 11
    assert semantic_loss(logits, target, weight, hard_share=2 / 6).item() == pytest.approx(expected.item())
    # an all-void batch stays exactly zero with a finite gradient
    void = torch.full_like(target, -1)
    logits.requires_grad_(True)
    loss = semantic_loss(logits, void, hard_share=0.5)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="hard_share"):
        semantic_loss(logits, target, hard_share=0.0)


def test_a_hard_pixel_share_above_one_is_refused_by_the_config():
    from mtan.train.config import TrainConfig

    with pytest.raises(ValueError, match="hard.pixels"):
        TrainConfig.from_flags(hard_pixels=1.5).validate()
    with pytest.raises(ValueError, match="hard.pixels"):
        TrainConfig.from_flags(hard_pixels=0.0).validate()


def _one_hot_logits(classes: torch.Tensor, k: int, scale: float = 60.0) -> torch.Tensor:
    return F.one_hot(classes.clamp_min(0), k).permute(0, 3, 1, 2).float() * scale


def test_lovasz_softmax_of_sure_predictions_is_one_minus_the_mean_iou_of_the_classes_present():
    """With a sure prediction (probabilities 0 or 1) the Lovasz extension is the Jaccard loss
    itself: 1 - IoU per class, averaged over the classes the labels hold; void pixels count nowhere."""
    from mtan.losses import lovasz_softmax_loss

    torch.manual_seed(0)
    k = 5
    target = torch.randint(0, 4, (2, 6, 7))  # class 4 never labelled
    target[0, :2] = -1
    predicted = torch.where(torch.rand(target.shape) < 0.6, target, torch.randint(0, 5, target.shape))
    predicted[0, :2] = 4  # predictions on void pixels change nothing
    valid = target != -1
    ious = [((predicted == c) & (target == c) & valid).sum() / (((predicted == c) | (target == c)) & valid).sum()
            for c in range(4)]
    expected = 1 - torch.stack(ious).mean()
    loss = lovasz_softmax_loss(_one_hot_logits(predicted, k), target)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert 0.2 < expected.item() < 0.8  # a case where the order of the errors matters
    perfect = lovasz_softmax_loss(_one_hot_logits(target, k), target)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    assert lovasz_softmax_loss(torch.randn(1, k, 3, 3), torch.full((1, 3, 3), -1)).item() == 0.0


def test_lovasz_softmax_pulls_a_rare_class_as_hard_as_a_common_one():
    """Cross-entropy averages pixels, so the one pixel of a rare class among 64 gets 1/64 of the
    push; the Lovasz term averages classes, so that pixel's gradient is far larger than any one
    road pixel's (and than cross-entropy's there), and raising its true class's score lowers the loss."""
    from mtan.losses import lovasz_softmax_loss

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 3, 3] = 1  # the one pixel of class 1 (a pole)
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 0] = 1.0  # everything called class 0
    logits.requires_grad_(True)
    lovasz_softmax_loss(logits, target).backward()
    rare = logits.grad[0, 1, 3, 3].item()
    common = logits.grad[0, 0, 0, 0].abs().max().item()
    assert rare < 0 and abs(rare) > 5 * common
    plain = logits.detach().clone().requires_grad_(True)
    semantic_loss(plain, target).backward()
    assert abs(rare) > 5 * abs(plain.grad[0, 1, 3, 3].item())


def test_the_semantic_task_adds_the_lovasz_term_at_its_weight():
    from mtan.losses import lovasz_softmax_loss
    from mtan.tasks import SemanticTask

    torch.manual_seed(1)
    logits, target = torch.randn(2, 7, 4, 6), torch.randint(-1, 7, (2, 4, 6))
    task = SemanticTask("semantic")
    plain = task.loss(logits, target)
    torch.testing.assert_close(task.loss(logits, target, lovasz=0.5),
                               plain + 0.5 * lovasz_softmax_loss(logits, target))
    with pytest.raises(ValueError, match="lovasz"):
        from mtan.train.config import TrainConfig
        TrainConfig.from_flags(lovasz=-0.1).validate()


def test_each_task_reads_only_its_own_loss_options():
    """The trainer asks each task for its loss options: segmentation takes the class weights and
    label smoothing, depth the smoothness and ranking terms, normals nothing; a task's loss refuses another's."""
    from mtan import preset_tasks
    from mtan.tasks import tasks_from_config
    from mtan.train.config import TrainConfig

    config = TrainConfig.from_flags(label_smoothing=0.1, hard_pixels=0.25, lovasz=0.5, depth_smoothness=0.05,
                                    depth_ranking=0.2)
    weight = torch.ones(13)
    options = {t.kind: t.loss_options(config.loss.of(t.name), weight if t.kind == "semantic" else None)
               for t in tasks_from_config(preset_tasks("nyuv2"))}
    assert options == {"semantic": {"class_weight": weight, "label_smoothing": 0.1, "hard_share": 0.25, "lovasz": 0.5},
                       "depth": {"smoothness": 0.05, "ranking": 0.2, "occlusion": 0.0, "sky": 0.0},
                       "normal": {}}
    depth = next(t for t in tasks_from_config(preset_tasks("nyuv2")) if t.kind == "depth")
    with pytest.raises(TypeError):
        depth.loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), label_smoothing=0.1)


def test_depth_ranking_penalises_the_wrong_order_and_ignores_scale_and_invalid_pixels():
    """Known answers of the ranking term on a two-level map: a near block (inverse depth 0.4) on a
    far background (0.1), pairs 2 and 6 pixels apart."""
    from mtan.losses import depth_ranking_loss

    target = torch.full((1, 1, 20, 20), 0.1)
    target[..., 3:17, 3:17] = 0.4
    right = target.clone()
    flat = torch.full_like(target, 0.2)
    wrong = 0.5 - target  # the block farther than the background
    # a flat prediction: every ordered pair costs log 2, every equal pair 0
    assert float(depth_ranking_loss(flat, target)) == pytest.approx(math.log(2), rel=1e-6)
    # the right order: each ordered pair costs softplus(-log 4), equal pairs 0
    assert float(depth_ranking_loss(right, target)) == pytest.approx(math.log(1 + 1 / 4), rel=1e-6)
    assert float(depth_ranking_loss(wrong, target)) == pytest.approx(math.log(1 + 4), rel=1e-6)
    # scale does not matter, and neither does the target's
    assert float(depth_ranking_loss(right * 7, target / 3)) == pytest.approx(float(depth_ranking_loss(right, target)), rel=1e-5)
    # equal pairs: squared log ratio (background noise costs, the order being kept)
    noisy = right.clone()
    noisy[..., 0, 0] = 0.2
    assert float(depth_ranking_loss(noisy, target)) > float(depth_ranking_loss(right, target))
    # invalid target pixels take no part: hiding the block leaves only equal pairs, all exact
    hidden = target.clone()
    hidden[..., 3:17, 3:17] = 0
    assert float(depth_ranking_loss(wrong, hidden)) == pytest.approx(0.0, abs=1e-7)
    assert float(depth_ranking_loss(flat, torch.zeros_like(target))) == 0.0
    # the gradient moves the block nearer and the background farther
    p = flat.clone().requires_grad_()
    depth_ranking_loss(p, target).backward()
    assert float(p.grad[..., 10, 10]) == 0.0  # deep inside the block: no pair crosses its outline
    assert float(p.grad[..., 3, 10]) < 0 and float(p.grad[..., 2, 10]) > 0


def test_the_depth_task_adds_the_ranking_term_with_its_weight():
    from mtan import preset_tasks
    from mtan.losses import depth_loss, depth_ranking_loss
    from mtan.tasks import tasks_from_config

    depth = next(t for t in tasks_from_config(preset_tasks("cityscapes-7")) if t.kind == "depth")
    pred, target = torch.rand(2, 1, 16, 16) + 0.05, torch.rand(2, 1, 16, 16)
    expected = depth_loss(pred, target) + 0.3 * depth_ranking_loss(pred, target)
    assert float(depth.loss(pred, target, ranking=0.3)) == pytest.approx(float(expected), rel=1e-6)
    assert float(depth.loss(pred, target)) == pytest.approx(float(depth_loss(pred, target)), rel=1e-6)


def test_occlusion_order_pushes_people_and_vehicles_in_front_of_what_they_are_seen_against():
    """Known answers of the occlusion term on a car (label 6) parked before a facade (label 1) above
    a road (label 0), CityScapes 7 categories."""
    from mtan.losses import occlusion_order_loss
    from mtan.tasks import CITYSCAPES_7

    front, behind = CITYSCAPES_7.occlusion_ids()
    assert (front, behind) == ((5, 6), (1, 3, 4))
    labels = torch.ones(1, 20, 20, dtype=torch.long)
    labels[:, 14:] = 0                 # road below
    labels[:, 5:14, 4:16] = 6          # the car, standing on it
    flat = torch.full((1, 1, 20, 20), 0.2)
    nearer = flat.clone()
    nearer[..., 5:14, 4:16] = 0.8      # the car 4x nearer than the facade
    farther = flat.clone()
    farther[..., 5:14, 4:16] = 0.05
    assert float(occlusion_order_loss(flat, labels, front, behind)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(occlusion_order_loss(nearer, labels, front, behind)) == pytest.approx(math.log(1.25), rel=1e-6)
    assert float(occlusion_order_loss(farther, labels, front, behind)) == pytest.approx(math.log(5), rel=1e-6)
    # the road takes no part: a road far away changes nothing
    road_far = nearer.clone()
    road_far[..., 14:, :] = 0.01
    assert float(occlusion_order_loss(road_far, labels, front, behind)) == pytest.approx(math.log(1.25), rel=1e-6)
    # metric depth: nearer is smaller
    assert float(occlusion_order_loss(1 / nearer, labels, front, behind, nearer_is_larger=False)) == \
        pytest.approx(math.log(1.25), rel=1e-5)
    # depth targets that say the facade is nearer leave those pairs out; targets that agree keep them
    target = torch.zeros_like(flat)
    target[..., 5:14, 4:16] = 0.1
    target[..., :5, :] = 0.5           # the facade above the car: nearer, by its targets
    with_target = float(occlusion_order_loss(farther, labels, front, behind, target=target))
    assert with_target == pytest.approx(math.log(5), rel=1e-6)  # the pairs left are the car's sides
    above_only = torch.zeros_like(labels)
    above_only[:, :5] = 1
    above_only[:, 5:14, 4:16] = 6
    assert float(occlusion_order_loss(farther, above_only, front, behind, target=target)) == 0.0
    target[..., :5, :] = 0.02
    assert float(occlusion_order_loss(farther, above_only, front, behind, target=target)) == \
        pytest.approx(math.log(5), rel=1e-6)
    # no front or no behind class in view: zero, not NaN
    assert float(occlusion_order_loss(flat, torch.zeros_like(labels), front, behind)) == 0.0


def test_the_depth_task_adds_the_occlusion_term_only_with_street_labels():
    from mtan import preset_tasks
    from mtan.losses import depth_loss, occlusion_order_loss
    from mtan.tasks import CITYSCAPES_7, NYUV2_13, tasks_from_config

    depth = next(t for t in tasks_from_config(preset_tasks("cityscapes-7")) if t.kind == "depth")
    pred, target = torch.rand(2, 1, 16, 16) + 0.05, torch.rand(2, 1, 16, 16)
    labels = torch.randint(0, 7, (2, 16, 16))
    expected = depth_loss(pred, target) + 0.5 * occlusion_order_loss(pred, labels, *CITYSCAPES_7.occlusion_ids(),
                                                                       target=target)
    got = depth.loss(pred, target, segmentation=(labels, CITYSCAPES_7), occlusion=0.5)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert NYUV2_13.occlusion is None
    with pytest.raises(ValueError, match="occlusion term needs"):
        depth.loss(pred, target, segmentation=(labels, NYUV2_13), occlusion=0.5)
    with pytest.raises(ValueError, match="occlusion term needs"):
        depth.loss(pred, target, occlusion=0.5)
    # the sky term: every other class in front of the sky, its own mean, added with its own weight
    others, sky = CITYSCAPES_7.sky_ids()
    assert (others, sky) == ((0, 1, 2, 3, 5, 6), (4,))
    expected = expected + 0.2 * occlusion_order_loss(pred, labels, others, sky, target=target)
    got = depth.loss(pred, target, segmentation=(labels, CITYSCAPES_7), occlusion=0.5, sky=0.2)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="sky term needs"):
        depth.loss(pred, target, segmentation=(labels, NYUV2_13), sky=0.5)


def test_the_sky_term_keeps_the_sky_behind_a_skyline_pushed_back():
    """Known answers on a facade (label 1) under the sky (label 4): a facade predicted as far as the
    sky costs log 2, one 4x nearer log 1.25, one pushed behind the sky (5x farther) log 6."""
    from mtan.losses import occlusion_order_loss
    from mtan.tasks import CITYSCAPES_7

    others, sky = CITYSCAPES_7.sky_ids()
    labels = torch.full((1, 20, 20), 4, dtype=torch.long)
    labels[:, 10:] = 1
    pred = torch.full((1, 1, 20, 20), 0.01)
    assert float(occlusion_order_loss(pred, labels, others, sky)) == pytest.approx(math.log(2), rel=1e-5)
    pred[..., 10:, :] = 0.04
    assert float(occlusion_order_loss(pred, labels, others, sky)) == pytest.approx(math.log(1.25), rel=1e-5)
    pred[..., 10:, :] = 0.002
    assert float(occlusion_order_loss(pred, labels, others, sky)) == pytest.approx(math.log(6), rel=1e-5)
