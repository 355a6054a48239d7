"""Reduced precisions: kept only where the quality stays (mtan.precision), run only where they are
faster on the machine at hand (mtan.inference.fast.optimize_for_inference), the choice remembered."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.inference.fast import InferenceModel, optimize_for_inference
from mtan.inference.int8 import Int8ConvReLU, int8_available, int8_calibration
from mtan.model import AttentionMask, ConvBNReLU
from mtan.precision import check_precisions, verdict
from mtan.records import allowed_precisions, int8_scales, read_record
from mtan.serve import ModelRegistry
from mtan.timing import choice_cache_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test measures afresh into its own cache folder, whatever the environment says."""
    monkeypatch.setenv("MTAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MTAN_INFERENCE_PRECISION", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _street_model(seed=0) -> MTAN:
    """A tiny street model with realistic BatchNorm statistics (a few training-mode forwards)."""
    torch.manual_seed(seed)
    model = MTAN(preset_tasks("cityscapes-7"), width=1 / 16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 32, 64, generator=g))
    return model.eval()


def test_verdict_keeps_what_stays_within_the_tolerances():
    ref = {"semantic.miou": 0.60, "depth.abs_err": 0.100, "depth.rel_err": 0.300, "loss.depth": 1.0,
           "semantic.pixel_acc": 0.9, "semantic.iou.human": None}
    assert verdict(ref, dict(ref)) == []
    assert verdict(ref, ref | {"semantic.miou": 0.596, "depth.abs_err": 0.1019, "depth.rel_err": 0.25}) == []
    assert verdict(ref, ref | {"semantic.miou": 0.70, "loss.depth": 9.0, "semantic.pixel_acc": 0.5}) == []
    low = verdict(ref, ref | {"semantic.miou": 0.594})
    assert len(low) == 1 and "semantic.miou 0.5940 against 0.6000" in low[0]
    worse = verdict(ref, ref | {"depth.rel_err": 0.307, "depth.abs_err": 0.103})
    assert len(worse) == 2 and all("2% higher" in r for r in worse)
    assert verdict(ref, {"semantic.miou": None}) == []  # not scored: nothing to judge


def test_allowed_precisions_read_from_a_record():
    assert allowed_precisions(None) == ("fp32",)
    assert allowed_precisions({"precisions": "junk"}) == ("fp32",)
    record = {"precisions": {"bf16": {"kept": False}, "bf16-convs": {"kept": True}, "fp8": {"kept": True}}}
    assert allowed_precisions(record) == ("fp32", "bf16-convs")


def test_bf16_convs_keeps_the_attention_masks_and_heads_in_float32():
    model = _street_model()
    fast = optimize_for_inference(model, precision="bf16-convs")
    assert fast.precision == "bf16-convs" and "fp32 attention masks and heads" in fast.describe()
    masks = [m for m in fast.net.modules() if isinstance(m, AttentionMask)]
    assert len(masks) == 2 * 2 * 5
    assert all(p.dtype == torch.float32 for m in masks for p in m.parameters())
    assert all(p.dtype == torch.float32 for p in fast.net.heads.parameters())
    assert all(p.dtype == torch.bfloat16 for p in fast.net.encoder.parameters())
    assert all(p.dtype == torch.bfloat16 for p in fast.net.attention_convs.parameters())
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    out, att = fast(x, return_attention=True)
    with torch.no_grad():
        ref = model(x)
    assert all(v.dtype == torch.float32 and v.shape == ref[k].shape for k, v in out.items())
    assert att["semantic"]["encoder"][0].dtype == torch.float32
    rel = float((out["depth"] - ref["depth"]).abs().mean() / ref["depth"].abs().mean())
    assert rel < 0.1
    with pytest.raises(ValueError, match="batched_attention"):
        optimize_for_inference(model, precision="bf16-convs", batched_attention=True)


def test_auto_times_only_the_allowed_precisions_and_remembers_the_choice(monkeypatch):
    import mtan.timing as timing

    # this test is about remembering: every measurement counts as quiet and every figure as fresh
    # (the rules for a busy machine have their own tests)
    monkeypatch.setattr(timing, "MAX_SPREAD", 1e9)
    monkeypatch.setattr(timing, "MIN_CPU_SHARE", 0.0)
    monkeypatch.setattr(timing, "STALE_FACTOR", 1e9)
    model = _street_model()
    assert optimize_for_inference(model).precision == "fp32"  # only fp32 allowed: nothing to time
    assert not choice_cache_path().exists()
    first = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    assert set(first.choice["seconds"]) == {"fp32", "bf16-convs"} and first.precision == first.choice["precision"]
    assert not first.choice.get("remembered")
    again = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    assert again.choice["remembered"] and again.precision == first.precision
    assert "measured earlier" in again.describe()
    # other candidates, another measurement; a corrupt cache is measured afresh and rewritten
    other = optimize_for_inference(model, allowed=("fp32", "bf16"), size=(32, 64))
    assert set(other.choice["seconds"]) == {"fp32", "bf16"} and len(json.loads(choice_cache_path().read_text())) == 2
    choice_cache_path().write_text("{not json")
    fresh = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    assert not fresh.choice.get("remembered") and len(json.loads(choice_cache_path().read_text())) == 1
    # remember=False neither reads nor writes
    before = choice_cache_path().read_text()
    assert not optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64),
                                      remember=False).choice.get("remembered")
    assert choice_cache_path().read_text() == before


def test_a_slower_reduced_precision_falls_back_to_fp32(monkeypatch):
    """Where a reduced precision is slower (as bf16 is on CPUs without fast bf16 units), fp32 runs."""
    forward = InferenceModel.forward

    def slow_bf16(self, x, return_attention=False):
        if self.precision != "fp32":
            time.sleep(0.05)
        return forward(self, x, return_attention)

    monkeypatch.setattr(InferenceModel, "forward", slow_bf16)
    fast = optimize_for_inference(_street_model(), allowed=("fp32", "bf16", "bf16-convs"), size=(32, 64))
    assert fast.precision == "fp32"
    assert all(fast.choice["seconds"][p] > fast.choice["seconds"]["fp32"] for p in ("bf16", "bf16-convs"))


def test_an_explicit_precision_or_the_environment_wins(monkeypatch):
    model = _street_model()
    assert optimize_for_inference(model, precision="bf16", allowed=("fp32",)).precision == "bf16"
    monkeypatch.setenv("MTAN_INFERENCE_PRECISION", "bf16-convs")
    fast = optimize_for_inference(model, allowed=("fp32", "bf16"))
    assert fast.precision == "bf16-convs" and fast.choice is None
    monkeypatch.setenv("MTAN_INFERENCE_PRECISION", "fp8")
    with pytest.raises(ValueError, match="MTAN_INFERENCE_PRECISION"):
        optimize_for_inference(model)


def test_quality_check_scores_each_precision_and_the_app_reads_the_record(tmp_path):
    model = _street_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    proc = subprocess.run([sys.executable, "-m", "mtan.precision", str(folder), "--data", "synthetic", "--frames", "3",
                           "--app-resolution", "32x64"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_record(folder)
    int8_here = int8_available()  # int8 is scored only where this CPU's quantised kernels run
    assert list(record["precisions"]) == ["fp32", "bf16", "bf16-convs"] + ["int8"] * int8_here
    assert record["precisions"]["fp32"]["kept"]
    if int8_here:
        int8 = record["precisions"]["int8"]
        assert int8["calibrated_on"] == "4 synthetic training images at 32x64" and len(int8_scales(record)) == 2 * 13 + 10
    name = record["evaluations"][0]
    assert name == "synthetic val at 32x64"
    for r in record["precisions"].values():
        assert set(r["metrics"][name]) >= {"semantic.miou", "depth.abs_err", "depth.rel_err"}
        assert r["kept"] == (not r["reasons"])
    # the record's fp32 figures are what mtan.evaluate prints for the inference copy
    scored = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(folder), "--data", "synthetic",
                             "--frames", "3", "--app-resolution", "32x64", "--precision", "bf16"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert scored.stdout.strip(), scored.stderr[-3000:]
    assert json.loads(scored.stdout)["semantic.miou"] == record["precisions"]["bf16"]["metrics"][name]["semantic.miou"]
    assert "| precision | kept |" in proc.stdout
    if int8_here:
        int8_run = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(folder), "--data", "synthetic",
                                   "--frames", "3", "--app-resolution", "32x64", "--precision", "int8"], cwd=REPO,
                                  capture_output=True, text=True, timeout=600)  # the recorded calibration
        assert json.loads(int8_run.stdout)["semantic.miou"] == int8["metrics"][name]["semantic.miou"]
    loaded = ModelRegistry([str(folder)]).get()
    assert loaded.precisions == allowed_precisions(record) and loaded.int8_scales == int8_scales(record)
    assert loaded.running in loaded.precisions
    # a folder without the record: int8 cannot be scored, and says why
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    refused = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(bare), "--data", "synthetic",
                              "--frames", "2", "--precision", "int8"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode == 2 and "no int8 calibration" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.skipif(not int8_available(), reason="this CPU's torch build has no working quantised engine")
def test_int8_quantises_the_3x3_convolutions_with_calibrated_scales():
    model = _street_model()
    images = torch.rand(4, 3, 32, 64, generator=torch.Generator().manual_seed(5))
    scales = int8_calibration(model, images)
    blocks = [n for n, m in model.named_modules() if type(m) is ConvBNReLU]
    assert sorted(scales) == sorted(blocks) and all(s[0] > 0 and s[2] > 0 for s in scales.values())
    fast = optimize_for_inference(model, precision="int8", int8_scales=scales)
    assert fast.quantised_blocks == len(blocks) == sum(isinstance(m, Int8ConvReLU) for m in fast.net.modules())
    assert "int8" in fast.describe() and all(p.dtype == torch.float32 for p in fast.net.parameters())
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(6))
    out = fast(x)
    with torch.no_grad():
        ref = model(x)
    assert all(v.dtype == torch.float32 and v.shape == ref[k].shape for k, v in out.items())
    assert float((out["depth"] - ref["depth"]).abs().mean() / ref["depth"].abs().mean()) < 0.15
    with pytest.raises(ValueError, match="activation scales"):
        optimize_for_inference(model, precision="int8")
    # without scales int8 is no candidate of the measured choice: float32, nothing to time
    plain = optimize_for_inference(model, allowed=("fp32", "int8"), size=(32, 64))
    assert plain.precision == "fp32" and plain.choice is None
    timed = optimize_for_inference(model, allowed=("fp32", "int8"), size=(32, 64), int8_scales=scales)
    assert set(timed.choice["seconds"]) == {"fp32", "int8"}


def test_quality_check_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        check_precisions(_street_model(), [], candidates=("fp32", "int4"))


@pytest.mark.skipif(not int8_available(), reason="this CPU's torch build has no working quantised engine")
@pytest.mark.parametrize("levels", [127, 255])
def test_int8_convolution_is_right_over_its_whole_input_range(levels):
    """Large inputs times large weights: on x86 CPUs without VNNI, inputs quantised on 0..255
    overflow the 16-bit pair sums (the result was off by 18 % of its range on a Zen 3). Inputs go
    on 0..127; scales measured for 0..255 (earlier records) are widened to it."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * 0.05)  # every weight at the int8 extreme
        conv.bias.zero_()
    x = torch.rand(1, 64, 16, 16) * 4.0  # inputs over the whole calibrated range 0..4
    with torch.no_grad():
        want = torch.relu(conv(x))
    top = float(want.max())
    got = Int8ConvReLU(conv, [4.0 / levels, 0, top / 255, 0] + ([levels] if levels == 127 else []))(x)
    assert float((got - want).abs().max()) < 0.03 * top
    clipped = Int8ConvReLU(conv, [4.0 / levels, 0, top / 255, 0, levels] if levels == 127 else [4.0 / levels, 0, top / 255, 0])
    assert clipped.in_top == pytest.approx(4.0, rel=1e-6)  # larger inputs are clipped to the calibrated top


def test_a_busy_machine_cannot_poison_the_remembered_choice(monkeypatch):
    """A measurement taken while the process did not get its cores (or with scattered timings) is
    used, never kept; a remembered figure that no longer holds here is measured again."""
    import time

    import mtan.timing as timing

    quiet = timing.measure({"a": lambda: sum(range(200_000)), "b": lambda: sum(range(400_000))}, repeats=3,
                           threads=1)
    assert quiet.best == "a" and 0 < quiet.cpu_share <= 1 and quiet.spread >= 0
    asleep = timing.measure({"a": lambda: time.sleep(0.02), "b": lambda: time.sleep(0.01)}, repeats=3, threads=1)
    assert asleep.best == "b" and asleep.cpu_share < timing.MIN_CPU_SHARE and not asleep.quiet  # no CPU got
    delays = iter([0.005, 0.04, 0.005, 0.04, 0.005, 0.04] * 3)
    scattered = timing.measure({"a": lambda: time.sleep(next(delays))}, warmup=0, repeats=6, threads=1)
    assert scattered.spread > timing.MAX_SPREAD and not scattered.quiet
    assert timing.still_fresh(0.01, lambda: time.sleep(0.01))[0]
    fresh, now = timing.still_fresh(0.2, lambda: time.sleep(0.01))
    assert not fresh and now < 0.05

    model = _street_model()
    monkeypatch.setattr(timing, "MAX_SPREAD", 1e9)
    monkeypatch.setattr(timing, "MIN_CPU_SHARE", 0.0)
    first = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    key = next(iter(json.loads(choice_cache_path().read_text())))
    # the record says 100 s a photo (taken on a busy machine): not trusted, measured again, replaced
    timing.remember_choice(key, {**first.choice, "seconds": {p: 100.0 for p in first.choice["seconds"]}})
    again = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    assert not again.choice.get("remembered") and again.choice["remeasured"]["remembered_s"] == 100.0
    assert json.loads(choice_cache_path().read_text())[key]["seconds"]["fp32"] < 100
    # a measurement that is not quiet is used but not kept
    monkeypatch.setattr(timing, "MIN_CPU_SHARE", 2.0)  # nothing is quiet now
    choice_cache_path().unlink()
    busy = optimize_for_inference(model, allowed=("fp32", "bf16-convs"), size=(32, 64))
    assert busy.choice["quiet"] is False and not choice_cache_path().exists()

    # the terminal's line says which figure is not kept, and which one came from an earlier start
    from mtan.serve.registry import LoadedModel

    said = LoadedModel(key="m", source="m", model=model, precisions=("fp32", "bf16-convs"))
    said.runner = busy
    assert "the machine was busy while it measured, so this is measured again at the next start" in said.startup_line
    busy.choice.update(quiet=True, remembered=True)
    assert said.startup_line.endswith("a photo at 32x64, measured at an earlier start)")
