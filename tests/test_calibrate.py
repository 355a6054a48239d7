"""The class bias fitted after training (mtan/calibrate.py): stored with the model, applied by
every path that turns the network's scores into classes, and fitted to what the labels say."""
from __future__ import annotations

import json

import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.calibrate import Scores, calibrate, confusion, fit_class_bias, main, miou
from mtan.inference.fast import optimize_for_inference
from mtan.tasks import task_from_config


def tiny(bias=None) -> MTAN:
    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=1 / 16).eval()
    if bias is not None:
        model.tasks[0].class_bias = tuple(bias)
    return model


def test_the_bias_is_added_to_the_class_scores_by_every_path(tmp_path):
    bias = [3.0, -1.0, 0.0, 0.5, 0.0, -20.0, 0.0]
    plain, biased = tiny(), tiny(bias)
    biased.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a, b = plain(x)["semantic"], biased(x)["semantic"]
    assert torch.allclose(b - a, torch.tensor(bias).view(1, -1, 1, 1), atol=1e-5)
    assert torch.equal(plain(x)["depth"], biased(x)["depth"])
    # saved and loaded with the model (config.json), and applied by the inference copy and predict
    biased.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tasks"][0]["class_bias"] == bias
    loaded = MTAN.from_pretrained(tmp_path / "m")
    assert loaded.tasks[0].class_bias == tuple(bias)
    fast = optimize_for_inference(loaded, precision="fp32")
    with torch.no_grad():
        assert torch.allclose(fast(x)["semantic"], b, atol=1e-4)
        labels = loaded.predict(torch.rand(3, 50, 70))["semantic"].argmax(0)
    assert not (labels == 5).any()  # a class 20 below the others is never chosen


def test_a_bad_bias_in_a_config_is_named():
    with pytest.raises(ValueError, match="'class_bias' must hold 7 finite numbers"):
        task_from_config({"name": "semantic", "kind": "semantic", "class_bias": [0.0, 1.0]})
    with pytest.raises(ValueError, match="'class_bias' must be a list of numbers"):
        task_from_config({"name": "semantic", "kind": "semantic", "class_bias": "1,2,3"})


def test_the_fit_finds_the_bias_that_the_labels_ask_for():
    """Scores whose labels are what they say after a known shift: the fit recovers the shift (up
    to a constant) and the IoU it gives."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=g) * 2
    shift = torch.tensor([1.5, -1.0, 0.0, 0.5])
    labels = (logits + shift).argmax(1).to(torch.int8)
    scores = Scores(logits.half(), labels)
    before, _ = miou(confusion(scores, torch.zeros(4)))
    bias = fit_class_bias(scores)
    after, _ = miou(confusion(scores, bias))
    assert before < 0.8 and after > 0.97
    assert torch.allclose(bias, shift - shift.mean(), atol=0.15)
    assert abs(float(bias.sum())) < 1e-5


def test_calibrate_writes_the_bias_and_its_record(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    options = {"num_frames": 4}
    record = calibrate(tmp_path / "m", data="synthetic", split="train", options=options, app_resolution="64x128",
                       check_split="val", log=lambda *a: None)
    assert record["fit"]["miou_with"] >= record["fit"]["miou_without"]
    assert set(record["class_bias"]) == set(model.tasks[0].class_set.classes)
    assert record["check"]["photos"] == 4 and "shares_with" in record["check"]
    stored = MTAN.from_pretrained(tmp_path / "m").tasks[0].class_bias
    assert stored == pytest.approx(list(record["class_bias"].values()), abs=1e-4)
    assert json.loads((tmp_path / "m" / "calibration.json").read_text())["fitted_on"]["photos"] == 4
    # the command line: a dry run writes nothing; a bad option is one line
    config_before = (tmp_path / "m" / "config.json").read_text()
    assert main([str(tmp_path / "m"), "--data", "synthetic", "--data-option", "num_frames=2", "--app-resolution",
                 "64x128", "--dry-run"]) == 0
    assert (tmp_path / "m" / "config.json").read_text() == config_before
    assert main([str(tmp_path / "nothing-here"), "--data", "synthetic"]) == 2
