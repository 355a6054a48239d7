"""Fast paths: batched attention (training and eval), BatchNorm folding and the inference copy."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from mtan import MTAN, preset_tasks
from mtan.inference.fast import (
    InferenceModel,
    cpu_bf16_support,
    onednn_fusion_available,
    optimize_for_inference,
    resolve_precision,
)
from mtan.inference.folding import fold_batchnorm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and far faster when other jobs load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tasks="nyuv2", width=1 / 16, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return MTAN(preset_tasks(tasks), arch="mtan", width=width).to(dtype)


def _calibrated(model: MTAN, n: int = 3, size=(64, 96)) -> MTAN:
    """Realistic BatchNorm statistics from a few training-mode forwards, then eval mode."""
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(n):
            model(torch.rand(2, 3, *size, generator=g, dtype=next(model.parameters()).dtype))
    return model.eval()


def _targets(outputs, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in outputs.items()}


def _loss(outputs, targets):
    return sum((outputs[k] * targets[k]).mean() for k in outputs)


def _assert_masks_close(a, b, **tol):
    assert a.keys() == b.keys()
    for task in a:
        for part in ("encoder", "decoder"):
            assert len(a[task][part]) == len(b[task][part]) == 5
            for x, y in zip(a[task][part], b[task][part]):
                torch.testing.assert_close(x, y, **tol)


# --------------------------------------------------------------------------------------
# Batched attention
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("tasks", ["nyuv2", "cityscapes-7"])
def test_batched_attention_training_step_matches_the_task_loop(tasks, channels_last):
    """Outputs, masks, gradients, BatchNorm running statistics and counters after a train step
    (float64, so that only the summation order differs)."""
    loop = _model(tasks)
    fast = copy.deepcopy(loop).set_batched_attention(True)
    assert fast._use_batched_attention() and not loop._use_batched_attention()
    x = torch.rand(2, 3, 32, 64, dtype=torch.float64)
    if channels_last:
        loop, fast = (m.to(memory_format=torch.channels_last) for m in (loop, fast))
        x = x.contiguous(memory_format=torch.channels_last)
    loop.train(), fast.train()
    out_l, masks_l = loop(x, return_attention=True)
    out_f, masks_f = fast(x, return_attention=True)
    tol = dict(rtol=1e-9, atol=1e-10)
    for k in out_l:
        torch.testing.assert_close(out_f[k], out_l[k], **tol)
    _assert_masks_close(masks_f, masks_l, **tol)
    targets = _targets(out_l)
    _loss(out_l, targets).backward()
    _loss(out_f, targets).backward()
    scale = max(p.grad.abs().max() for p in loop.parameters())
    for (name, p), q in zip(loop.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-7, atol=1e-9 * float(scale), msg=name)
    state_l, state_f = loop.state_dict(), fast.state_dict()
    assert state_l.keys() == state_f.keys()
    for k in state_l:
        torch.testing.assert_close(state_f[k], state_l[k], rtol=1e-9, atol=1e-12, msg=k)
    # the shared convs' BatchNorm takes one update per task, a task's mask BatchNorm one
    n_tasks = len(loop.tasks)
    assert int(state_f["attention_convs.encoder.0.1.num_batches_tracked"]) == n_tasks
    assert int(state_f[f"attention.{loop.task_names[0]}.encoder.0.1.num_batches_tracked"]) == 1
    if channels_last:  # the stacked features stay channels-last
        assert out_f[loop.task_names[0]].is_contiguous(memory_format=torch.channels_last)


def test_batched_attention_eval_mode_matches_the_task_loop():
    loop = _calibrated(_model(), size=(32, 64))
    fast = copy.deepcopy(loop).set_batched_attention(True)
    x = torch.rand(2, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        out_l, masks_l = loop(x, return_attention=True)
        out_f, masks_f = fast(x, return_attention=True)
    for k in out_l:
        torch.testing.assert_close(out_f[k], out_l[k], rtol=1e-9, atol=1e-10)
    _assert_masks_close(masks_f, masks_l, rtol=1e-9, atol=1e-10)
    assert fast.state_dict().keys() == loop.state_dict().keys()


def test_batched_attention_in_float32_is_as_close_as_round_off():
    """fp32: the batched and the loop path both sit within fp32 round-off of a float64 reference."""
    ref_model = _model(dtype=torch.float64).train()
    x = torch.rand(2, 3, 32, 64, dtype=torch.float64)
    ref = ref_model(x)
    errors = {}
    for batched in (False, True):
        m = copy.deepcopy(ref_model).float().set_batched_attention(batched).train()
        out = m(x.float())
        errors[batched] = max(float((out[k].detach().double() - ref[k].detach()).abs().max()
                                    / ref[k].detach().abs().max()) for k in ref)
    assert errors[True] < 1e-3
    assert errors[True] < 3 * errors[False] + 1e-5, errors


def test_batched_attention_with_cumulative_momentum_and_several_steps():
    loop = _model("cityscapes-7")
    for m in loop.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the factor depends on num_batches_tracked
    fast = copy.deepcopy(loop).set_batched_attention(True)
    loop.train(), fast.train()
    with torch.no_grad():
        for step in range(3):
            x = torch.rand(2, 3, 32, 64, dtype=torch.float64)
            loop(x), fast(x)
    for k, v in loop.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[k], v, rtol=1e-9, atol=1e-12, msg=k)


def test_batched_attention_is_a_runtime_option_not_saved(tmp_path):
    model = _model("cityscapes-7", dtype=torch.float32)
    keys = list(model.state_dict())
    assert model.batched_attention is False
    assert model.set_batched_attention(True) is model and model.batched_attention
    assert list(model.state_dict()) == keys
    assert "batched" not in json.dumps(model.config())
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert set(saved) == {"tasks", "arch", "width"}
    loaded = MTAN.from_pretrained(tmp_path / "m")
    assert loaded.batched_attention is False


def test_batched_attention_falls_back_to_the_loop_when_it_cannot_be_exact():
    model = _model().set_batched_attention(True)
    assert model._use_batched_attention()
    # one task's mask BatchNorm frozen (eval) while training: the tasks' norms differ -> the loop
    model.train()
    model.attention["depth"].encoder[2][1].eval()
    assert not model._use_batched_attention()
    model.attention["depth"].encoder[2][1].train()
    assert model._use_batched_attention()
    # SyncBatchNorm (statistics across processes) is not a plain BatchNorm2d -> the loop
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert not converted._use_batched_attention()
    # a single task has nothing to batch
    single = MTAN(preset_tasks("cityscapes-7")[:1], arch="mtan", width=1 / 16).set_batched_attention(True)
    assert not single._use_batched_attention()
    assert set(single(torch.rand(1, 3, 32, 32))) == {"semantic"}


def test_batched_batch_norm_needs_more_than_one_value_per_channel_when_training():
    from mtan.model.batched import task_batch_norm

    norm = nn.BatchNorm2d(4).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm(torch.rand(1, 4, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        task_batch_norm(torch.rand(2, 4, 1, 1), 2, norm)  # two tasks, one value each


# --------------------------------------------------------------------------------------
# BatchNorm folding and the inference copy
# --------------------------------------------------------------------------------------


def test_folding_matches_eval_mode_and_leaves_the_model_alone():
    model = _calibrated(_model("cityscapes-7", dtype=torch.float32)).train()  # the trainer's model, training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.rand(2, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        ref, ref_masks = model(x, return_attention=True)
        got, got_masks = folded(x, return_attention=True)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5 * float(ref[k].abs().max()))
    _assert_masks_close(got_masks, ref_masks, rtol=1e-5, atol=1e-5)


def test_inference_copy_predict_matches_model_predict():
    model = _calibrated(_model("nyuv2", dtype=torch.float32))
    fast = optimize_for_inference(model, device="cpu", precision="fp32")
    assert isinstance(fast, InferenceModel) and fast.precision == "fp32"
    assert fast.task_names == model.task_names and fast.config() == model.config()
    image = torch.rand(3, 70, 100)  # not multiples of 32: padded and cropped back
    ref, ref_masks = model.predict(image, return_attention=True)
    got, got_masks = fast.predict(image, return_attention=True)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4 * float(ref[k].abs().max()))
    _assert_masks_close(got_masks, ref_masks, rtol=1e-4, atol=1e-4)
    # without masks: just the predictions, like the model
    assert set(fast.predict(image)) == set(model.task_names)
    # the fast copy never trains, and modes of the wrapper do not leak into the network
    fast.train()
    assert not fast.net.training
    assert not any(p.requires_grad for p in fast.net.parameters())


def test_inference_copy_uses_fused_convolutions_on_cpu():
    model = _calibrated(_model("cityscapes-7", dtype=torch.float32))
    fast = optimize_for_inference(model, device="cpu", precision="fp32")
    if not onednn_fusion_available():
        pytest.skip("this torch build has no mkldnn::_convolution_pointwise")
    assert fast.fused_activations and "fused" in fast.describe()
    plain = optimize_for_inference(model, device="cpu", precision="fp32", fuse=False, channels_last=False)
    x = torch.rand(1, 3, 64, 128)
    a, b = fast(x), plain(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4 * float(b[k].abs().max()))


def test_inference_copy_with_batched_attention():
    model = _calibrated(_model("nyuv2", dtype=torch.float32))
    fast = optimize_for_inference(model, device="cpu", precision="fp32", batched_attention=True)
    assert fast.net._use_batched_attention()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    got = fast(x)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4 * float(ref[k].abs().max()))


def test_precision_choice(monkeypatch):
    monkeypatch.delenv("MTAN_INFERENCE_PRECISION", raising=False)
    assert resolve_precision("auto") == "auto"  # left for optimize_for_inference to measure
    assert resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("MTAN_INFERENCE_PRECISION", "bf16")
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("fp32") == "fp32"  # an explicit choice wins
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")
    supported, why = cpu_bf16_support()
    assert isinstance(supported, bool) and why


def test_bf16_inference_copy():
    """bf16 (opt-in): float32 outputs of the right structure, as close to the float32 model as plain
    bf16 autocast gets.

    Random weights are the worst case for bf16 (each layer's rounding grows through ~40 layers;
    see the README's Performance section), so the goal tolerances
    (>= 99.5 % equal labels, < 1 % mean relative depth difference) are checked by
    ``benchmarks/cpu_inference.py`` on trained weights, not here.
    """
    supported, why = cpu_bf16_support()
    if not supported:
        pytest.skip(f"this CPU has no native bf16: {why}")
    model = _calibrated(_model("cityscapes-7", dtype=torch.float32), size=(32, 64))
    fast = optimize_for_inference(model, device="cpu", precision="bf16")
    assert fast.precision == "bf16" and "bf16" in fast.describe() and "fp32 heads" in fast.describe()
    x = torch.rand(1, 3, 32, 64)
    out, masks = fast(x, return_attention=True)
    with torch.no_grad():
        ref, ref_masks = model(x, return_attention=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = {k: v.float() for k, v in model(x).items()}
    assert out.keys() == ref.keys() and masks.keys() == ref_masks.keys()
    assert all(v.dtype == torch.float32 and v.shape == ref[k].shape for k, v in out.items())

    def err(a):
        return float((a["depth"] - ref["depth"]).abs().mean() / ref["depth"].abs().mean())

    def labels(a):
        return float((a["semantic"].argmax(1) == ref["semantic"].argmax(1)).double().mean())

    assert err(out) < max(2 * err(auto), 0.05)
    assert labels(out) > min(labels(auto) - 0.15, 0.9)
