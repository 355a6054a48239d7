"""The network: sizes of the paper's configurations, outputs, attention masks, input checks."""
import pytest
import torch
import torch.nn.functional as F

from mtan import MTAN, ModelConfigError, count_parameters
from mtan.train.weighting import UncertaintyWeighting


def test_parameter_counts_match_the_original(nyuv2_tasks, cityscapes_tasks):
    nyu = MTAN(nyuv2_tasks, arch="mtan")
    assert count_parameters(nyu) == 44_229_073
    # the original also counts the three uncertainty log-variances
    assert count_parameters(nyu) + count_parameters(UncertaintyWeighting(nyu.task_names)) == 44_229_076
    single = MTAN([{"name": "semantic", "kind": "semantic", "class_set": "nyuv2-13"}], arch="single")
    assert count_parameters(single) == 24_981_069
    assert count_parameters(MTAN(cityscapes_tasks)) == 41_206_984  # the paper's full-width network
    # the state_dict has the original's 685 tensors minus logsigma
    assert len(nyu.state_dict()) == 684


def test_outputs_and_attention_masks(tiny_model):
    tiny_model.eval()
    x = torch.rand(2, 3, 64, 96)
    out, masks = tiny_model(x, return_attention=True)
    assert out["semantic"].shape == (2, 13, 64, 96)
    assert out["depth"].shape == (2, 1, 64, 96)
    assert out["normal"].shape == (2, 3, 64, 96)
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 64, 96))
    w = tiny_model.widths
    for task in ("semantic", "depth", "normal"):
        enc, dec = masks[task]["encoder"], masks[task]["decoder"]
        assert [tuple(m.shape[1:]) for m in enc] == [(w[j], 64 >> j, 96 >> j) for j in range(5)]
        # decoder stage i works at level 4 - i, gating a feature of width F[level - 1]
        assert [tuple(m.shape[1:]) for m in dec] == [(w[max(3 - i, 0)], 64 >> (4 - i), 96 >> (4 - i)) for i in range(5)]
        assert all(((m > 0) & (m < 1)).all() for m in enc + dec)
    # the masks are task-specific: different tasks, different masks
    assert not torch.equal(masks["semantic"]["decoder"][-1], masks["depth"]["decoder"][-1])
    # without the option, only the predictions
    assert set(tiny_model(x)) == {"semantic", "depth", "normal"}


@pytest.mark.parametrize("arch", ["split", "single"])
def test_baseline_architectures_have_no_attention(arch, cityscapes_tasks):
    tasks = cityscapes_tasks[:1] if arch == "single" else cityscapes_tasks
    model = MTAN(tasks, arch=arch, width=1 / 16).eval()
    assert not hasattr(model, "attention")
    out, masks = model(torch.rand(1, 3, 32, 64), return_attention=True)
    assert masks == {} and set(out) == {t["name"] for t in tasks}


@pytest.mark.parametrize("size", [(63, 64), (64, 48), (0, 32)])
def test_sizes_that_are_not_multiples_of_32_are_refused(tiny_model, size):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_model(torch.rand(1, 3, *size))


def test_wrong_input_layout_is_refused(tiny_model):
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        tiny_model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        tiny_model(torch.rand(1, 64, 64, 3))


def test_predict_pads_and_crops_back(tiny_model):
    tiny_model.eval()
    image = torch.rand(3, 50, 70)
    out, masks = tiny_model.predict(image, return_attention=True)
    assert out["semantic"].shape[-2:] == (50, 70) and out["depth"].shape == (1, 1, 50, 70)
    # same as running the network on the edge-padded image and cropping
    padded = F.pad(image[None], (0, 26, 0, 14), mode="replicate")
    with torch.no_grad():
        full = tiny_model(padded)
    torch.testing.assert_close(out["depth"], full["depth"][..., :50, :70])
    # masks are cropped at their own scale, covering the image
    assert masks["depth"]["encoder"][0].shape[-2:] == (50, 70)
    assert masks["depth"]["encoder"][4].shape[-2:] == (4, 5)  # ceil(50/16), ceil(70/16)
    # a size that is already a multiple of 32 is not padded
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.predict(x)["semantic"], tiny_model(x)["semantic"])


def test_predict_restores_training_mode(tiny_model):
    tiny_model.train()
    tiny_model.predict(torch.rand(3, 40, 40))
    assert tiny_model.training


def test_gradients_reach_every_parameter(tiny_model):
    tiny_model.train()
    out = tiny_model(torch.rand(2, 3, 32, 32))
    sum(v.float().mean() for v in out.values()).backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("config, field", [
    ({"arch": "unet"}, "arch"),
    ({"width": 0}, "width"),
    ({"width": "wide"}, "width"),
    ({"tasks": [{"name": "x", "kind": "optical-flow"}]}, "tasks"),
    ({"tasks": [{"name": "semantic", "kind": "semantic", "class_set": "ade20k"}]}, "tasks"),
    ({"tasks": [{"name": "semantic", "kind": "semantic", "colour": 1}]}, "tasks"),
    ({"arch": "single"}, "arch"),
])
def test_bad_configs_name_the_field(config, field, cityscapes_tasks):
    kwargs = {"tasks": cityscapes_tasks, "width": 1 / 16, **config}
    with pytest.raises(ModelConfigError, match=f"'{field}'"):
        MTAN(**kwargs)


def test_initialisation_follows_the_original(tiny_model):
    conv = tiny_model.encoder.stages[0].first[0]
    assert torch.count_nonzero(conv.bias) == 0
    bn = tiny_model.encoder.stages[0].first[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out))
    w = tiny_model.decoder.stages[0].first[0].weight
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    assert abs(w.std().item() / (2 / (fan_in + fan_out)) ** 0.5 - 1) < 0.15
