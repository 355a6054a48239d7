"""The converter reproduces the original implementation's outputs on the known-answer fixture."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mtan import MTAN
from mtan.convert import ConversionError, convert
from reference import fixture, reference_state_dict



@pytest.fixture(scope="module")
def expected():
    return fixture()


def run_fixture(model, expected):
    """The converted model's answer for the fixture, computed in float64: SegNet's max-unpooling
    puts each value where the encoder's max was, so where two pooled values are within float32
    round-off (ReLU zeros against tiny positives) the order in which a CPU's convolution kernels
    add up their terms decides the position, and a float32 run differs from the fixture by up to
    1e-2 on some CPUs (oneDNN on AMD EPYC) while matching to 3e-5 on others. In float64 the
    answer is the same on every CPU, within the fixture's own float32 round-off."""
    model = model.double()
    with torch.no_grad():
        out = {k: v.float() for k, v in model(torch.from_numpy(expected["input"]).double()).items()}
    return {
        "semantic": float(np.abs(torch.log_softmax(out["semantic"], 1).numpy() - expected["semantic_log_probs"]).max()),
        "depth": float(np.abs(out["depth"].numpy() - expected["depth"]).max() / np.ptp(expected["depth"])),
        **({"normal": float(np.abs(out["normal"].numpy() - expected["normal"]).max())} if "normal" in out else {}),
    }


def test_three_task_checkpoint_converts_via_the_cli(tmp_path, expected):
    ckpt = tmp_path / "model_segnet_mtan.pth"
    torch.save(reference_state_dict(3), ckpt)
    out_dir = tmp_path / "converted"
    result = subprocess.run([sys.executable, "-m", "mtan.convert", str(ckpt), str(out_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "logsigma" in result.stdout  # reported as dropped
    model = MTAN.from_pretrained(out_dir)
    assert model.arch == "mtan" and model.task_names == ["semantic", "depth", "normal"]
    assert model.task("depth").depth_kind == "metric" and model.task("semantic").class_set.name == "nyuv2-13"
    diffs = run_fixture(model, expected)
    print("max differences on the fixture:", diffs)
    assert diffs["semantic"] < 1e-4 and diffs["normal"] < 1e-4 and diffs["depth"] < 1e-4


def test_two_task_checkpoint_converts(tmp_path, expected):
    ckpt = tmp_path / "cityscapes.pth"
    state = reference_state_dict(2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)  # wrapped, DataParallel names
    model = convert(ckpt, tmp_path / "out")
    assert model.task_names == ["semantic", "depth"] and model.task("depth").depth_kind == "inverse"
    diffs = run_fixture(MTAN.from_pretrained(tmp_path / "out"), expected)
    assert diffs["semantic"] < 1e-4 and diffs["depth"] < 1e-4


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    state = reference_state_dict(2)
    del state["decoder_att.1.2.3.weight"]
    state["extra_layer.weight"] = torch.zeros(3)
    state["encoder_block_att.1.0.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        convert(tmp_path / "bad.pth", tmp_path / "out")
    msg = str(err.value)
    assert "attention.depth.decoder.2.3.weight" in msg  # decoder_att level 2 = our decoder stage 2
    assert "extra_layer.weight" in msg
    assert "encoder_block_att.1.0.bias (7,)" in msg and "(256,)" in msg
    assert not (tmp_path / "out").exists()


def test_pickled_objects_are_not_executed(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="weights-only"):
        convert(tmp_path / "evil.pth", tmp_path / "out")
    assert "pickle code ran" not in capsys.readouterr().out


def test_cli_help_and_errors(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "mtan.convert", "--help"], capture_output=True, text=True).stdout
    assert "weights_only" in help_text and "pred_task1" in help_text
    r = subprocess.run([sys.executable, "-m", "mtan.convert", str(tmp_path / "nope.pth"), str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
