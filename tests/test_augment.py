"""Augmentation keeps the image and every target aligned, and treats depth and normals right.

The test batch encodes each pixel's source position in all fields at once: the image holds
(x + 0.5) / W and (y + 0.5) / H (a linear ramp, which bilinear sampling reproduces exactly),
the label holds the column x, and the depth holds a code of (y, x). After augmentation, every
field must point back to the same source pixel.
"""
from __future__ import annotations

import pytest
import torch

from mtan.data.augment import AugmentParams, BatchAugment, apply_augment, augment_batch

H, W = 16, 32
INVERSE = {"name": "depth", "kind": "depth", "depth_kind": "inverse"}
METRIC = {"name": "depth", "kind": "depth", "depth_kind": "metric"}
SEMANTIC = {"name": "semantic", "kind": "semantic", "num_classes": W}
NORMAL = {"name": "normal", "kind": "normal"}


def coded_batch(b: int = 6) -> dict:
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([(x + 0.5) / W, (y + 0.5) / H, torch.zeros(H, W)])
    depth = (y * W + x + 1).float()[None]  # never 0: every pixel valid
    depth[:, 0, 0] = 0  # ... except one invalid pixel
    normal = torch.zeros(3, H, W)
    normal[0] = 0.6
    normal[2] = 0.8
    normal[:, H - 1, :] = 0  # an invalid row
    return {"image": image.expand(b, -1, -1, -1).clone(), "semantic": x.expand(b, -1, -1).clone(),
            "depth": depth.expand(b, -1, -1, -1).clone(), "normal": normal.expand(b, -1, -1, -1).clone(),
            "name": ["kept"] * b}


def check_aligned(out: dict, scale: torch.Tensor, depth_kind: str = "inverse"):
    """Every field of every sample refers to the same source pixel."""
    b = out["image"].shape[0]
    factor = (scale if depth_kind == "inverse" else 1 / scale).view(b, 1, 1)
    code = out["depth"][:, 0] / factor  # y * W + x + 1, or 0 where the source was invalid
    valid = code > 0.5
    src = code.round().long() - 1
    src_y, src_x = src // W, src % W
    assert torch.allclose(code[valid], code[valid].round(), atol=1e-3)  # nearest: never blended
    assert torch.equal(out["semantic"][valid], src_x[valid])
    img_x = out["image"][:, 0] * W - 0.5
    img_y = out["image"][:, 1] * H - 0.5
    assert (img_x[valid] - src_x[valid]).abs().max() <= 0.5 + 1e-4
    assert (img_y[valid] - src_y[valid]).abs().max() <= 0.5 + 1e-4


def test_identity_parameters_change_nothing():
    batch = coded_batch(2)
    out = apply_augment(batch, [SEMANTIC, INVERSE, NORMAL], AugmentParams.identity(2))
    for key in ("image", "semantic", "depth", "normal"):
        assert torch.allclose(out[key].float(), batch[key].float(), atol=1e-6), key
    assert out["semantic"].dtype == torch.int64 and out["name"] == ["kept"] * 2


@pytest.mark.parametrize("depth", [INVERSE, METRIC])
def test_zoom_and_flip_keep_fields_aligned(depth):
    scale = torch.tensor([1.0, 1.2, 1.5, 1.5, 1.2, 1.0])
    flip = torch.tensor([False, False, True, False, True, True])
    params = AugmentParams(scale, torch.tensor([0.0, 1.0, 0.3, 0.9, 0.5, 0.2]),
                           torch.tensor([0.0, 0.7, 1.0, 0.1, 0.5, 0.6]), flip)
    out = apply_augment(coded_batch(), [SEMANTIC, depth, NORMAL], params)
    check_aligned(out, scale, depth["depth_kind"])
    # Flipped samples read columns right to left, the others left to right.
    step = out["semantic"][:, 5, -1] - out["semantic"][:, 5, 0]
    assert ((step < 0) == flip).all()
    # The window spans W / s source columns.
    assert torch.allclose((step.abs() + 1).float(), W / scale, atol=1.01)


def test_depth_scales_with_zoom():
    params = AugmentParams(torch.tensor([1.5, 1.5]), torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    batch = coded_batch(2)
    batch["depth"] = torch.full((2, 1, H, W), 2.0)
    batch["depth"][:, :, :4] = 0  # invalid rows stay invalid
    inverse = apply_augment(batch, [INVERSE], params)["depth"]
    metric = apply_augment(batch, [METRIC], params)["depth"]
    assert set(inverse.unique().tolist()) == {0.0, 3.0}  # inverse depth x s: the scene is closer
    assert torch.equal(metric.unique(), torch.tensor([0.0, 2.0 / 1.5]))  # metres / s (float32)
    assert (inverse == 0).sum() == (metric == 0).sum() > 0


def test_normals_flip_x_and_invalid_stay_zero():
    params = AugmentParams(torch.ones(2), torch.zeros(2), torch.zeros(2), torch.tensor([True, False]))
    out = apply_augment(coded_batch(2), [NORMAL], params)["normal"]
    assert torch.equal(out[0, 0, :-1], torch.full((H - 1, W), -0.6))
    assert torch.equal(out[1, 0, :-1], torch.full((H - 1, W), 0.6))
    assert torch.equal(out[:, 2, :-1], torch.full((2, H - 1, W), 0.8))
    assert (out[:, :, -1] == 0).all()


def test_random_batches_are_aligned_and_reproducible():
    tasks = [SEMANTIC, INVERSE, NORMAL]
    batch = coded_batch(16)
    a = augment_batch(batch, tasks, generator=torch.Generator().manual_seed(0))
    b = BatchAugment(tasks, generator=torch.Generator().manual_seed(0))(batch)
    assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["image"], b["image"])
    params = AugmentParams.draw(16, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.isin(params.scale, torch.tensor([1.0, 1.2, 1.5])).all()
    check_aligned(a, params.scale)
    assert params.flip.any() and not params.flip.all()


def test_focused_crops_centre_every_class_equally_and_stay_aligned():
    """focus: the chosen share of crops is centred on a pixel drawn with every class present equally
    likely, so a small blob is the centre of about half the crops of a two-class photo (against its
    area share without focus), zoomed-out windows keep their place, and every field stays aligned."""
    from mtan.data.augment import focus_on_classes

    b, h, w = 400, 64, 128
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, 40:44, 100:103] = 2  # 12 of 8192 pixels
    labels[:, :6] = -1             # void rows are never a centre
    batch = {"image": torch.rand(b, 3, h, w), "semantic": labels}
    tasks = [{"name": "semantic", "kind": "semantic", "num_classes": 7}]

    def centres(focus, seed=0):
        out = augment_batch(batch, tasks, torch.Generator().manual_seed(seed), scale_range=(2, 2), out_size=(32, 64),
                            focus=focus)["semantic"]
        return out[:, 16, 32]

    plain, focused, half = centres(0.0), centres(1.0), centres(0.5)
    assert (plain == 2).float().mean() < 0.03
    assert 0.4 < (focused == 2).float().mean() < 0.6 and (focused >= 0).all()
    assert 0.15 < (half == 2).float().mean() < 0.35
    # a window larger than the image keeps the place it was drawn at
    params = AugmentParams(torch.full((4,), 0.5), torch.rand(4), torch.rand(4), torch.zeros(4, dtype=torch.bool))
    moved = focus_on_classes(params, labels[:4], 1.0, (32, 64), torch.Generator().manual_seed(0))
    assert torch.equal(moved.top, params.top) and torch.equal(moved.left, params.left)
    # the coded batch (a class per column): focused, zoomed and flipped crops keep every field aligned
    coded = coded_batch(16)
    out = augment_batch(coded, [SEMANTIC, INVERSE, NORMAL], torch.Generator().manual_seed(1), scales=(1.5,),
                        focus=1.0)
    check_aligned(out, torch.full((16,), 1.5))
    with pytest.raises(ValueError, match="focus"):
        BatchAugment(tasks, focus=1.5)


def test_copy_paste_moves_a_class_with_its_pixels_and_leaves_no_depth_under_it():
    """paste: the chosen samples get the next sample's pixels of the pasted classes, image and
    labels both, at the same place; depth and normals have no value there; everything else, and
    the samples not chosen, are untouched. Through augment_batch it runs after the crop."""
    from mtan.data.augment import paste_classes

    b, h, w = 4, 8, 12
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        labels[i, 2:7, 3 * i: 3 * i + 2] = 2  # a "pole" at a different place in each photo
    labels[1, 0] = 5
    batch = {"image": torch.rand(b, 3, h, w, generator=g), "semantic": labels,
             "depth": torch.rand(b, 1, h, w, generator=g) + 0.1, "normal": torch.rand(b, 3, h, w, generator=g)}
    tasks = [{"name": "semantic", "kind": "semantic", "num_classes": 7}, INVERSE, NORMAL]
    out = paste_classes(batch, tasks, (2,), share=1.0, generator=g)
    for i in range(b):
        donor = (i + 1) % b
        pasted = labels[donor] == 2
        assert pasted.sum() == 10
        assert (out["semantic"][i][pasted] == 2).all()
        assert torch.equal(out["image"][i][:, pasted], batch["image"][donor][:, pasted])
        assert (out["depth"][i, 0][pasted] == 0).all() and (out["normal"][i][:, pasted] == 0).all()
        keep = ~pasted
        assert torch.equal(out["image"][i][:, keep], batch["image"][i][:, keep])
        assert torch.equal(out["semantic"][i][keep], labels[i][keep])
        assert torch.equal(out["depth"][i, 0][keep], batch["depth"][i, 0][keep])
    assert torch.equal(out["semantic"][0][0], labels[0][0])  # class 5 of the donor was not asked for
    # share 0: nothing changes; about half the samples with the default share
    none = paste_classes(batch, tasks, (2,), share=0.0, generator=g)
    assert all(torch.equal(none[k], batch[k]) for k in batch)
    many = {"image": torch.rand(200, 3, 4, 4), "semantic": torch.full((200, 4, 4), 2)}
    many["semantic"][:, 0] = 0
    many["image"][::2] += 10  # mark every other sample so a paste shows as a jump in the image
    moved = paste_classes(many, tasks[:1], (2,), generator=torch.Generator().manual_seed(1))
    changed = (moved["image"] != many["image"]).flatten(1).any(1).float().mean()
    assert 0.35 < changed < 0.65
    # a batch of one, or no segmentation task, passes through
    one = {k: v[:1] for k, v in batch.items()}
    assert paste_classes(one, tasks, (2,), share=1.0) is one
    assert paste_classes({"image": batch["image"], "depth": batch["depth"]}, [INVERSE], (2,), 1.0)["image"] is batch["image"]
    # through the augmentation: pasted after the crop, so the crop size holds
    aug = BatchAugment(tasks, generator=torch.Generator().manual_seed(2), out_size=(4, 8), paste=(2,))
    assert aug(batch)["semantic"].shape == (b, 4, 8) and "paste=(2,)" in repr(aug)
