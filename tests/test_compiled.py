"""torch.compile for inference where it is measured faster (mtan.inference.compiled): the sizes warmed up,
the measurement and its record, compiled only for warmed sizes, eager when compiling fails."""
from __future__ import annotations

import json

import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.inference.compiled import CompileWarmUp, compile_key, warm_up_sizes
from mtan.inference.fast import optimize_for_inference
from mtan.timing import choice_cache_path, remember_choice


@pytest.fixture(autouse=True)
def own_choice_cache(tmp_path, monkeypatch):
    """Each test measures afresh: no choice remembered by another test."""
    monkeypatch.setenv("MTAN_CACHE_DIR", str(tmp_path / "cache"))


class Counting(torch.nn.Module):
    """The compiled network, counting the input shapes it is called with (or failing, ``error``)."""

    def __init__(self, inner, error: str = ""):
        super().__init__()
        self.inner, self.error, self.calls = inner, error, []

    def forward(self, x, **kwargs):
        self.calls.append(tuple(x.shape))
        if self.error:
            raise RuntimeError(self.error)
        return self.inner(x, **kwargs)


def tiny_runner():
    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=1 / 16).eval()
    return model, optimize_for_inference(model, precision="fp32")


def test_warm_up_sizes_are_the_padded_inputs_of_common_photo_shapes():
    assert warm_up_sizes((256, 512)) == [(256, 512), (256, 352), (256, 480)]  # 2:1, 4:3, 16:9
    assert warm_up_sizes((128, 256), aspects=((1, 2), (1, 2))) == [(128, 256)]  # no repeats
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in warm_up_sizes((200, 300)))


def eager_seconds(runner, size) -> float:
    """The median eager time of ``runner`` on an input of ``size``, as the warm-up times it."""
    import statistics
    import time

    x = torch.rand(1, 3, *size)
    times = []
    with torch.inference_mode():
        runner(x, return_attention=True, use_compiled=False)
        for _ in range(5):
            start = time.perf_counter()
            runner(x, return_attention=True, use_compiled=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture
def steady(monkeypatch):
    """Timings of tiny networks scatter by more than a real network's: here every measurement
    counts as quiet, and a remembered figure as fresh within 6x (a 20x one is stale): a tiny network takes
    a millisecond, which a busy machine easily triples."""
    import mtan.timing as timing

    monkeypatch.setattr(timing, "MAX_SPREAD", 1e9)
    monkeypatch.setattr(timing, "MIN_CPU_SHARE", 0.0)
    monkeypatch.setattr(timing, "STALE_FACTOR", 6.0)


def test_compiled_for_warmed_sizes_only_and_remembered(monkeypatch, steady):
    model, runner = tiny_runner()
    warm = CompileWarmUp(runner, [(64, 128)], repeats=3)
    runner._compiled = Counting(runner._compiled)
    calls = runner._compiled.calls
    status = warm.run()
    assert warm.done.is_set() and warm.error is None
    record = status["64x128"]
    assert set(record["seconds"]) == {"eager", "compiled"} and record["compile_s"] > 0
    assert ((1, 3, 64, 128) in runner.compiled_shapes) == record["compiled"]
    assert "64x128 " in warm.describe() and "eager" in warm.describe()
    with torch.inference_mode():
        calls.clear()
        runner(torch.rand(1, 3, 64, 96))  # a size not warmed up: eager, never a compile on a request
        assert calls == []
        x = torch.rand(1, 3, 64, 128)
        runner.compiled_shapes.add((1, 3, 64, 128))  # compiled and eager give the same outputs
        fast = runner(x, return_attention=True)
        assert calls == [(1, 3, 64, 128)]
        runner.compiled_shapes.discard((1, 3, 64, 128))
        eager = runner(x, return_attention=True)
    for name in fast[0]:
        assert torch.allclose(fast[0][name], eager[0][name], atol=1e-4), name
    stored = json.loads(choice_cache_path().read_text())[compile_key(runner, (64, 128))]
    assert stored["compiled"] == record["compiled"]

    # a size remembered as not faster is not compiled again, while eager still takes what it took then
    eager = eager_seconds(runner, (32, 64))
    remember_choice(compile_key(runner, (32, 64)), {"compiled": False, "seconds": {"eager": eager, "compiled": 2 * eager}})
    calls.clear()
    again = CompileWarmUp(runner, [(32, 64)])
    assert again.run()["32x64"]["remembered"] and calls == [] and (1, 3, 32, 64) not in runner.compiled_shapes
    assert again.describe() == (f"torch.compile: 32x64 eager (compiled not faster): eager {eager * 1000:.0f} ms, "
                                f"compiled {2 * eager * 1000:.0f} ms, measured earlier")
    # a verdict whose eager time no longer holds (taken on a busy machine: 20x slower) is measured again
    remember_choice(compile_key(runner, (32, 64)), {"compiled": False, "seconds": {"eager": 20 * eager,
                                                                                  "compiled": 40 * eager}})
    calls.clear()
    stale = CompileWarmUp(runner, [(32, 64)], repeats=3)
    record = stale.run()["32x64"]
    assert not record.get("remembered") and calls and "spread" in record and "cpu_share" in record


def test_a_failing_compile_falls_back_to_eager():
    model, runner = tiny_runner()

    runner._compiled = Counting(runner.net, error="inductor: no C++ compiler")
    warm = CompileWarmUp(runner, [(64, 128), (32, 64)])
    warm.run()
    assert "no C++ compiler" in warm.error and runner._compiled is None and not runner.compiled_shapes
    assert warm.describe().startswith("torch.compile unavailable (RuntimeError: inductor: no C++ compiler")
    with torch.inference_mode():
        out = runner(torch.rand(1, 3, 64, 128))
        ref = optimize_for_inference(model, precision="fp32")(torch.rand(1, 3, 64, 128))
    assert out.keys() == ref.keys()


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_the_registry_warms_up_in_the_background(tmp_path, mode, monkeypatch, steady):
    """compile="auto": the app's model starts a background warm-up of the default resolution's
    sizes (here all remembered as not faster, so the thread finishes without compiling)."""
    from mtan.serve import ModelRegistry

    monkeypatch.setenv("MTAN_FAST_INFERENCE", "1")
    model = MTAN(preset_tasks("cityscapes-7"), width=1 / 16)
    model.save_pretrained(tmp_path / "m")
    probe = optimize_for_inference(model, precision="fp32")
    for size in warm_up_sizes((256, 512)):  # the default resolution of a model without resolutions.json
        eager = eager_seconds(probe, size)
        remember_choice(compile_key(probe, size), {"compiled": False, "seconds": {"eager": eager, "compiled": 2 * eager}})
    registry = ModelRegistry([str(tmp_path / "m")], default_local=tmp_path / "m", device="cpu", compile=mode)
    loaded = registry.get()
    if mode == "off":
        assert loaded.warm_up is None and not loaded.compiled_for((1, 3, 128, 256))
        assert "torch.compile" not in loaded.runner_description
        return
    warm = loaded.warm_up
    assert warm.sizes == warm_up_sizes((256, 512)) and warm.thread.daemon
    warm.thread.join(timeout=120)
    assert warm.done.is_set() and set(warm.status) == {f"{h}x{w}" for h, w in warm.sizes}
    assert all(s["remembered"] for s in warm.status.values()) and not loaded.compiled_for((1, 3, 256, 512))
    assert "torch.compile: 256x512 eager (compiled not faster)" in loaded.runner_description
    with pytest.raises(ValueError, match="compile must be one of auto, off"):
        ModelRegistry([str(tmp_path / "m")], compile="always")


def test_requests_run_eager_while_their_size_compiles():
    """A photo of the size being compiled must not wait for the compiler: until the warm-up has
    measured that size, requests of it run the eager network."""
    import threading

    model, runner = tiny_runner()
    compiling, release = threading.Event(), threading.Event()

    class Slow(Counting):
        def forward(self, x, **kwargs):
            compiling.set()
            assert release.wait(60)  # the compiler at work
            return super().forward(x, **kwargs)

    warm = CompileWarmUp(runner, [(64, 128)], repeats=1)
    runner._compiled = Slow(runner.net)
    warm.start(low_priority=False)
    assert compiling.wait(60)
    with torch.inference_mode():
        runner(torch.rand(1, 3, 64, 128))  # answered now, eager, while the warm-up's call waits
    assert runner._compiled.calls == [] and (1, 3, 64, 128) not in runner.compiled_shapes
    release.set()
    assert warm.done.wait(120) and warm.error is None and runner._compiled.calls


def test_the_warm_up_waits_for_a_quiet_server_before_compiling_and_timing(steady):
    """The app's request counter: the warm-up compiles and times a size only once no request has
    run for a while, so a visitor's photo never competes with it."""
    import threading
    import time

    from mtan.serve.process import Activity

    activity = Activity(poll_s=0.01)
    activity.begin()  # a visitor's request is running
    model, runner = tiny_runner()
    waits = []

    def wait():
        waits.append(activity.idle_for())
        activity.wait_until_idle(quiet_s=0.2)

    warm = CompileWarmUp(runner, [(32, 64)], repeats=2, remember=False, wait_until_idle=wait)
    thread = threading.Thread(target=warm.run)
    thread.start()
    time.sleep(0.3)
    assert not warm.status and thread.is_alive()  # nothing compiled while the request runs
    activity.end()
    thread.join(timeout=300)
    assert warm.done.is_set() and "32x64" in warm.status
    assert len(waits) == 2 and waits[0] == 0.0  # before compiling and before timing


def test_the_request_counter_of_the_app():
    from mtan.serve.guard import guarded
    from mtan.serve.process import ACTIVITY

    seen = []

    @guarded
    def handler():
        seen.append(ACTIVITY.running)

    before = ACTIVITY.running
    handler()
    assert seen == [before + 1] and ACTIVITY.running == before and ACTIVITY.idle_for() < 5
