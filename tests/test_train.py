"""train.py end to end on the CPU: outputs, DWA, resume after SIGKILL, torchrun, evaluation, Hub push."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.train import TrainConfig, apply_preset, train
from mtan.train.run_folder import read_metrics
from mtan.train.weighting import dwa_weights

REPO = Path(__file__).resolve().parents[1]

# A run small enough for CI: 32x64 generated street scenes, a 1/16-width MTAN.
TINY = ["--data", "synthetic", "--size", "32x64", "--train-frames", "16", "--val-frames", "8",
        "--width", "0.0625", "--batch-size", "4", "--lr", "1e-3", "--no-progress", "--amp", "off", "--channels-last", "off"]


def run_train(args, timeout=600, env=None, **kwargs):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture(scope="module")
def dwa_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dwa"
    result = run_train([*TINY, "--epochs", "4", "--weighting", "dwa", "--temperature", "2", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_folder_has_every_output(dwa_run):
    names = {p.name for p in dwa_run.iterdir()}
    assert {"metrics.jsonl", "curves.png", "config.json", "model.safetensors", "README.md", "train_config.json",
            "checkpoints", "best"} <= names
    assert sorted(p.name for p in (dwa_run / "checkpoints").iterdir()) == ["epoch_0002.safetensors",
                                                                          "epoch_0003.safetensors"]
    records = read_metrics(dwa_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert set(r["train"]) == {"loss.semantic", "loss.depth"}
        assert r["images_per_second"] > 0 and r["epoch_seconds"] > 0 and r["lr"] == 1e-3
        val = r["val"]["synthetic"]
        assert {"semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err", "loss.semantic",
                "loss.depth"} <= set(val)
    card = (dwa_run / "README.md").read_text()
    assert "model-index" in card and "train.py" in card and "semantic.miou" in card
    MTAN.from_pretrained(dwa_run)
    MTAN.from_pretrained(dwa_run / "best")


def test_dwa_weights_follow_the_logged_losses(dwa_run):
    records = read_metrics(dwa_run / "metrics.jsonl")
    losses = [[r["train"]["loss.semantic"], r["train"]["loss.depth"]] for r in records]
    for e, r in enumerate(records):
        logged = [r["weights"]["semantic"], r["weights"]["depth"]]
        if e < 2:
            assert logged == [1.0, 1.0]
        else:
            ratio = [losses[e - 1][k] / losses[e - 2][k] for k in range(2)]
            expected = [2 * math.exp(w / 2) / sum(math.exp(v / 2) for v in ratio) for w in ratio]
            assert logged == pytest.approx(expected, rel=1e-9)
            assert logged == pytest.approx(dwa_weights(losses[:e], 2.0), rel=1e-12)
    assert records[2]["weights"] != records[3]["weights"]


def test_equal_weighting_logs_ones(tmp_path):
    cfg = apply_preset(None, dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625,
                                  batch_size=4, epochs=2, weighting="equal", out=str(tmp_path / "eq"), progress=False))
    history = train(cfg, log=lambda *a: None)
    assert [r["weights"] for r in history] == [{"semantic": 1.0, "depth": 1.0}] * 2


def test_evaluate_reproduces_the_last_validation(dwa_run):
    last = read_metrics(dwa_run / "metrics.jsonl")[-1]["val"]["synthetic"]
    # the same command-line tool a user runs
    out = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(dwa_run), "--data", "synthetic",
                          "--size", "32x64", "--frames", "8", "--split", "val", "--batch-size", "4",
                          "--out", str(dwa_run / "eval.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == json.loads((dwa_run / "eval.json").read_text())
    for key, value in last.items():
        assert printed[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # the run folder alone: its data, size and frames come from its train_config.json
    alone = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(dwa_run)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    by_itself = json.loads(alone.stdout)
    for key, value in last.items():
        assert by_itself[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    weights = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(REPO / "weights")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert weights.returncode == 2 and "--data is needed" in weights.stderr  # a model folder, not a run


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    args = [*TINY, "--epochs", "4", "--weighting", "dwa", "--augment"]
    straight = run_train([*args, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *args, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "epoch_0001.safetensors"  # written at the end of epoch 2
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "the run never finished epoch 2"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(killed / "metrics.jsonl")) < 4  # it really was cut short

    resumed = run_train(["--resume", str(killed), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout
    a, b = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:]):
        assert ra["train"] == rb["train"] and ra["weights"] == rb["weights"] and ra["val"] == rb["val"]


def test_resume_refuses_changed_settings(dwa_run):
    r = run_train(["--resume", str(dwa_run), "--lr", "0.5"])
    assert r.returncode == 2 and "would change" in r.stderr and "Traceback" not in r.stderr


def test_torchrun_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "train.py", *TINY, "--epochs", "2", "--out", str(out), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # one set of outputs, written once
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    assert "x 2 processes" in result.stdout
    MTAN.from_pretrained(out)
    # every validation frame was scored exactly once across the two processes
    assert records[-1]["val"]["synthetic"]["semantic.pixel_acc"] is not None


def test_push_to_hub_uploads_the_run_folder(dwa_run, monkeypatch):
    """Everything up to the network: the repo is created and the run's model files are uploaded."""
    import huggingface_hub

    from mtan.hub import push_run

    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kw):
        calls["create"] = dict(repo_id=repo_id, private=private, token=self.token)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, allow_patterns=None, **kw):
        calls["upload"] = dict(repo_id=repo_id, files=sorted(p for p in os.listdir(folder_path)
                                                           if p in allow_patterns))
        return "https://huggingface.co/user/mtan-test/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = push_run(dwa_run, "user/mtan-test", private=True, token="hf_secret_token_for_test", log=lambda *a: None)
    assert url.endswith("/commit/abc")
    assert calls["create"] == {"repo_id": "user/mtan-test", "private": True, "token": "hf_secret_token_for_test"}
    assert calls["upload"]["files"] == ["README.md", "config.json", "curves.png", "metrics.jsonl",
                                        "model.safetensors", "train_config.json"]


def test_failed_push_keeps_files_and_says_how_to_retry(dwa_run, monkeypatch):
    import huggingface_hub

    from mtan.hub import push_run

    def offline(self, *a, **k):
        raise OSError("[Errno -2] Name or service not known (token hf_secret_token_for_test)")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_for_test")
    messages = []
    assert push_run(dwa_run, "user/mtan-test", log=messages.append) is None
    assert f"python -m mtan.hub push {dwa_run} user/mtan-test" in messages[0]
    assert "hf_secret_token_for_test" not in messages[0]
    assert (dwa_run / "model.safetensors").exists()


def test_bad_data_is_reported_before_training(tmp_path):
    r = run_train(["--data", "cityscapes", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nowhere" in r.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_help_documents_every_flag():
    text = run_train(["--help"]).stdout
    for flag in ("--preset", "--data", "--data-root", "--arch", "--task", "--width", "--weighting", "--temperature",
                 "--lr", "--step-size", "--gamma", "--epochs", "--batch-size", "--augment", "--seed", "--out",
                 "--resume", "--compile", "--amp", "--push-to-hub", "--private", "--eval-every"):
        assert flag in text
    for preset in ("paper-cityscapes", "paper-nyuv2", "benchmark-cityscapes", "smoke"):
        assert preset in text


def test_presets_match_the_paper():
    paper = apply_preset("paper-cityscapes", {})
    o = paper.optim
    assert (o.lr, o.step_size, o.gamma, o.epochs, o.batch_size, paper.data.augment, o.weighting,
            o.temperature, paper.data.size) == (1e-4, 100, 0.5, 200, 8, False, "dwa", 2.0, "128x256")
    assert apply_preset("paper-nyuv2", {}).optim.batch_size == 2
    assert apply_preset("benchmark-cityscapes", {}).data.augment is True
    assert apply_preset("paper-cityscapes", {"epochs": 3}).optim.epochs == 3  # explicit flags win
    assert TrainConfig().optim.lr == 1e-4


def test_mixed_datasets_mask_the_missing_task(tmp_path, camvid_root):
    """synthetic+camvid: CamVid frames have no depth; their depth loss is masked per sample."""
    from mtan.data import build_dataset
    from mtan.losses import depth_loss

    mix = build_dataset("synthetic+camvid", root={"camvid": str(camvid_root)}, split="val", size="32x64",
                        synthetic={"num_frames": 4})
    synthetic, camvid = mix[0], mix[len(mix) - 1]
    assert torch.count_nonzero(camvid["depth"]) == 0 and torch.count_nonzero(synthetic["depth"]) > 0
    pred = torch.rand(2, 1, 32, 64)
    both = depth_loss(pred, torch.stack([synthetic["depth"], camvid["depth"]]))
    alone = depth_loss(pred[:1], synthetic["depth"][None])
    assert both.item() == pytest.approx(alone.item())  # the CamVid sample adds nothing

    out = tmp_path / "mix"
    r = run_train(["--data", "synthetic+camvid", "--data-root", f"+{camvid_root}", "--size", "32x64",
                   "--train-frames", "16", "--val-frames", "8", "--width", "0.0625", "--batch-size", "8",
                   "--epochs", "3", "--no-progress", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    val = records[-1]["val"]
    assert set(val) == {"synthetic", "camvid"}
    assert "depth.abs_err" in val["synthetic"] and "depth.abs_err" not in val["camvid"]
    # DWA sees the depth loss of the frames that have depth, not diluted by the CamVid majority
    depth_losses = [rec["train"]["loss.depth"] for rec in records]
    assert all(0.01 < v < 1.0 for v in depth_losses)
    assert records[2]["weights"]["depth"] != 1.0


def test_compile_failing_at_the_first_step_falls_back_to_eager(tmp_path, monkeypatch):
    """torch.compile only fails when the compiled module first runs (no compiler, an unsupported
    op): the run must go on eagerly, say so, and match an eager run exactly."""
    class FailsOnFirstCall(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("InductorError: C++ compile error (test)")

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or FailsOnFirstCall(model))
    base = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=4,
                epochs=2, lr=1e-3, progress=False, amp="off", channels_last="off")
    lines = []
    history = train(apply_preset(None, {**base, "compile": True, "out": str(tmp_path / "c")}), log=lines.append)
    assert len(compiled) == 1
    assert sum("torch.compile failed at the first step" in str(line) for line in lines) == 1
    eager = train(apply_preset(None, {**base, "out": str(tmp_path / "e")}), log=lambda *a: None)
    assert [r["train"] for r in history] == [r["train"] for r in eager]


def test_data_workers_give_the_same_run(tmp_path):
    """--data-workers 2 (frames rendered in processes) gives exactly the run of the default."""
    base = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=4,
                epochs=2, lr=1e-3, progress=False, batched_attention="off", amp="off", channels_last="off")
    runs = [train(apply_preset(None, {**base, "data_workers": workers, "out": str(tmp_path / str(workers))}),
                  log=lambda *a: None) for workers in (2, 0)]
    assert [r["train"] for r in runs[0]] == [r["train"] for r in runs[1]]
    with pytest.raises(ValueError, match="--batched-attention 'yes': must be one of auto, on, off"):
        TrainConfig.from_flags(batched_attention="yes")
    with pytest.raises(ValueError, match="--data-workers -1: must be a whole number >= 0"):
        TrainConfig.from_flags(data_workers=-1)


def _one_step(dtype, batched: bool):
    """Outputs, parameter gradients and BatchNorm buffers after one training forward + backward."""
    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=0.0625).to(dtype).train().set_batched_attention(batched)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 64, generator=g).to(dtype)
    targets = {"semantic": torch.randint(0, 7, (4, 32, 64), generator=g),
               "depth": torch.rand(4, 1, 32, 64, generator=g).to(dtype)}
    out = model(x)
    sum(t.loss(out[t.name], targets[t.name]) for t in model.tasks).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers() if b.is_floating_point()}
    return {k: v.detach() for k, v in out.items()}, grads, buffers


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
def test_batched_attention_differs_from_the_task_loop_by_round_off_only(dtype, bound):
    """The two schedules sum in different orders, so one step is not bit-identical (on any CPU);
    the differences, relative to each tensor's scale, stay at round-off size for the precision:
    about 1e-6 in float32 and 1e-15 in float64 (a real difference in the math would be as large
    in float64 as in float32). Over many float32 steps Adam can still amplify them: it divides
    each gradient by its own magnitude, so the gradients of the convolution biases in front of
    BatchNorm (zero in exact arithmetic, round-off noise in practice) become full-size steps in
    whatever direction the noise points. Two float32 runs of the two schedules therefore drift
    apart slowly, as runs on two machines do."""
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = _one_step(dtype, False), _one_step(dtype, True)

    def worst(a: dict, b: dict, scale: float) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a) / scale

    assert worst(out_a, out_b, max(float(v.abs().max()) for v in out_a.values())) < bound
    assert worst(grads_a, grads_b, max(float(v.abs().max()) for v in grads_a.values())) < bound
    assert worst(bufs_a, bufs_b, max(float(v.abs().max()) for v in bufs_a.values())) < bound


def test_init_from_and_class_weights(tmp_path, dwa_run):
    from mtan.train import Engine

    base = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=4,
                epochs=1, progress=False, out=str(tmp_path / "ft"))
    lines = []
    engine = Engine(apply_preset(None, {**base, "init_from": str(dwa_run), "class_weights": "median-frequency"}),
                    log=lines.append)
    source = MTAN.from_pretrained(dwa_run).state_dict()
    assert all(torch.equal(v, source[k]) for k, v in engine.model.state_dict().items())
    assert any(f"initialised from {dwa_run}" in line for line in lines)
    weights = engine.class_weights["semantic"]
    assert weights.shape == (7,) and (weights > 0).all()
    assert any("class weights (median-frequency) for semantic: flat" in line for line in lines)
    # the rarest class present in the generated frames gets the largest weight
    labels = engine.train_data.targets["semantic"].long()
    counts = torch.bincount(labels[labels >= 0], minlength=7)
    assert int(weights.argmax()) == int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
    # a narrower model is grown to the run's width, computing the same outputs
    lines = []
    wider = Engine(apply_preset(None, {**base, "width": 0.125, "init_from": str(dwa_run)}), log=lines.append)
    assert any("grown from width 0.0625 to 0.125 (each channel copied; same outputs)" in line for line in lines)
    x = torch.rand(2, 3, 32, 64)
    narrow = MTAN.from_pretrained(dwa_run).eval()
    with torch.no_grad():
        want, got = narrow(x), wider.model.eval()(x)
    assert all(torch.allclose(got[k], want[k], atol=1e-4, rtol=1e-4) for k in want)
    with pytest.raises(ValueError, match="--init-from .*width 0.0625.*this run builds mtan width 0.03125"):
        Engine(apply_preset(None, {**base, "width": 0.03125, "init_from": str(dwa_run)}), log=lambda *a: None)
    with pytest.raises(ValueError, match="width 0.0625 cannot grow to 0.1: the layers grow by different factors"):
        Engine(apply_preset(None, {**base, "width": 0.1, "init_from": str(dwa_run)}), log=lambda *a: None)
    # a calibrated model (a class bias in its config) is fine-tuned from its weights; the bias stays behind
    calibrated = MTAN.from_pretrained(dwa_run)
    calibrated.tasks[0].class_bias = tuple(float(i) / 10 for i in range(7))
    calibrated.save_pretrained(tmp_path / "calibrated")
    lines = []
    engine = Engine(apply_preset(None, {**base, "init_from": str(tmp_path / "calibrated")}), log=lines.append)
    assert all(torch.equal(v, source[k]) for k, v in engine.model.state_dict().items())
    assert engine.model.tasks[0].class_bias is None
    assert any("its calibration of semantic is not carried over" in line for line in lines)
    with pytest.raises(ValueError, match="--class-weights 'inverse': must be one of none, median-frequency"):
        TrainConfig.from_flags(class_weights="inverse")


def test_a_run_resumed_on_another_cpu_times_its_precision_again(tmp_path, monkeypatch):
    """--amp auto keeps its choice on the CPU that made it; resumed on another kind of CPU it times
    float32 and bf16 again, and the run continues where it stopped (its finished epochs kept)."""
    import mtan.train.cpu_speed as cpu_speed
    import mtan.train.engine as engine

    base = dict(data="synthetic", size="32x64", train_frames=16, val_frames=8, width=0.0625, batch_size=4, lr=1e-3,
                progress=False, amp="auto", out=str(tmp_path / "run"))
    train(TrainConfig.from_flags(**base, epochs=2), log=lambda *a: None)
    first_two = read_metrics(tmp_path / "run" / "metrics.jsonl")
    lines: list[str] = []
    train(TrainConfig.from_flags(**base, epochs=3), resume=True, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert any("as the run being resumed chose on this CPU" in line for line in lines), lines
    assert not any("amp auto:" in line for line in lines), lines
    for module in (engine, cpu_speed):  # the CPU the checkpoints record, and the one the choice compares with
        monkeypatch.setattr(module, "cpu_identity", lambda: "Another CPU [00000000]")
    again: list[str] = []
    train(TrainConfig.from_flags(**base, epochs=4), resume=True, log=lambda *a: again.append(" ".join(map(str, a))))
    assert any("resuming on another CPU" in line for line in again), again
    assert any("amp auto:" in line for line in again), again
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[:2] == first_two


def test_data_options_on_the_command_line():
    sys.path.insert(0, str(REPO))
    import train as train_script

    args = train_script.parser().parse_args(["--data", "camvid", "--data-option", "camvid.splits=blocks",
                                             "--data-option", "camvid.classes=11", "--data-option", "synthetic.cache=false"])
    config, _ = train_script.config_from_args(args)
    assert config.data.options == {"camvid": {"splits": "blocks", "classes": 11}, "synthetic": {"cache": False}}
    with pytest.raises(SystemExit):
        train_script.parser().parse_args(["--data-option", "splits"])


def test_the_first_line_comes_at_once_and_a_log_gets_progress_lines(tmp_path, monkeypatch):
    import mtan.train.engine as engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    lines: list[str] = []
    train(TrainConfig.from_flags(data="synthetic", size="32x64", train_frames=16, val_frames=8, width=0.0625, batch_size=4,
                      epochs=1, progress=False, amp="off", channels_last="off", out=str(tmp_path / "run")),
          log=lambda *a: lines.append(" ".join(map(str, a))))
    assert lines[0].startswith("preparing synthetic: reading")
    progress = [line for line in lines if line.startswith("epoch 1/1: ")]
    assert progress and "batches" in progress[0] and "images/s" in progress[0]


def test_every_setting_is_declared_once_and_has_its_flag():
    """train.py's flags are made from TrainConfig's settings: each setting of every part (but the
    run's own record of its command) has one flag, named by its flat name, whose help states the
    setting's default, and no flag sets anything unless it is given; the flat names are unique
    and the saved (nested) config reads back as it was."""
    from mtan.train.cli import parser
    from mtan.train.config import FLAT, flat_name, settings

    p = parser()
    dests: dict = {}
    for action in p._actions:
        dests.setdefault(action.dest, action)
    names = [flat_name(f) for _, f in settings()]
    assert len(names) == len(set(names)) == len(FLAT) and {"data_root", "depth_smoothness", "push_to_hub"} <= set(names)
    for name in names:
        assert (name in dests) == (name != "command"), name  # --preset is the preset's own flag
    config = apply_preset("street", {"depth_smoothness": 0.5, "data_root": "x+y"})
    assert (config.loss.depth.smoothness, config.data.root, config.loss.semantic.class_weights) == (
        0.5, "x+y", "median-frequency")
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    assert TrainConfig.from_dict(config.flat()) == config  # a run folder's flat train_config.json
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"optim": {"speed": 1}})
    assert "(default 0.0001)" in dests["lr"].help and "(default dwa)" in dests["weighting"].help
    from mtan.train.weighting import METHODS

    assert dests["weighting"].choices == METHODS and {"equal", "dwa", "pcgrad", "nash-mtl"} <= set(METHODS)
    assert p.parse_args(["--baseline", "a", "b"]).baseline == ["a", "b"]
    assert all(v is None for k, v in vars(p.parse_args([])).items())
    args = p.parse_args(["--no-augment", "--no-progress", "--lr", "0.5", "--train-frames", "3"])
    assert (args.augment, args.progress, args.lr, args.train_frames) == (False, False, 0.5, 3)
    with pytest.raises(ValueError, match="--weighting 'often': must be one of equal, dwa, uncertainty, imtl-l, random, famo"):
        TrainConfig.from_flags(weighting="often")


def test_delta_m_against_single_task_runs_at_each_validation(tmp_path):
    """--baseline RUN ...: each validation records Delta_m against the single-task runs' last
    validation (and each metric's change), and the epoch line shows it."""
    from mtan.metrics import delta_m, DELTA_M_METRICS
    from mtan.train import train

    base = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=4, epochs=1,
                progress=False, amp="off", channels_last="off")
    runs = {}
    for task in ("semantic", "depth"):
        runs[task] = tmp_path / task
        train(apply_preset(None, {**base, "arch": "single", "task": task, "out": str(runs[task])}), log=lambda *a: None)
    lines: list[str] = []
    history = train(apply_preset(None, {**base, "out": str(tmp_path / "multi"),
                                        "baseline": [str(runs["semantic"]), str(runs["depth"])]}), log=lines.append)
    val = history[-1]["val"]["synthetic"]
    reference = {}
    for task in ("semantic", "depth"):
        last = [json.loads(line) for line in (runs[task] / "metrics.jsonl").read_text().splitlines()][-1]
        reference.update({k: v for k, v in last["val"]["synthetic"].items() if k in DELTA_M_METRICS})
    assert set(reference) == {"semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err"}
    assert val["delta_m"] == pytest.approx(delta_m(val, reference, DELTA_M_METRICS))
    assert {f"delta_m.{k}" for k in reference} <= set(val)
    assert f"delta_m {val['delta_m']:.4f}" in lines[-1]
    with pytest.raises(ValueError, match="--baseline .*no validation in its metrics.jsonl"):
        train(apply_preset(None, {**base, "out": str(tmp_path / "again"), "baseline": [str(tmp_path / "nothing")]}),
              log=lambda *a: None)


@pytest.mark.parametrize("method", ["famo", "gradnorm", "pcgrad", "imtl-l", "nash-mtl/3"])
def test_a_stateful_weighting_resumes_exactly(tmp_path, method):
    """FAMO's logits, GradNorm's weights and first losses, PCGrad's random order, IMTL-L's
    scales and Nash-MTL's last weights and step count (solved every 3 steps) are in the
    checkpoint: two epochs and a resumed third match three straight epochs."""
    name, _, every = method.partition("/")
    args = [*TINY, "--weighting", name] + (["--solve-every", every] if every else [])
    straight = run_train([*args, "--epochs", "3", "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_train([*args, "--epochs", "2", "--out", str(tmp_path / "cut")])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_train(["--resume", str(tmp_path / "cut"), "--epochs", "3"])
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr[-3000:]
    a, b = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert a[2]["train"] == b[2]["train"] and a[2]["weights"] == b[2]["weights"] and a[2]["val"] == b[2]["val"]
    assert a[2]["weights"] != a[1]["weights"]  # the weights really move


def test_gradient_methods_under_torchrun_with_accumulation_and_bf16(tmp_path):
    """Gradient methods average each task's gradient over the processes themselves, with gradient
    accumulation too (DDP's own path for the others), and so do the in-between steps of one that
    solves every other step; under bf16 autocast they train as in float32."""
    for method, port, accumulate, extra in (("pcgrad", "29519", "2", []), ("gradnorm", "29521", "1", []),
                                            ("famo", "29523", "2", []),
                                            ("nash-mtl", "29525", "2", ["--solve-every", "2"])):
        out = tmp_path / method
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
             "train.py", *TINY, "--epochs", "2", "--weighting", method, "--accumulate", accumulate, *extra,
             "--out", str(out), "--device", "cpu"],
            cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        records = read_metrics(out / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2] and "x 2 processes" in result.stdout
        assert all(math.isfinite(v) for r in records for v in r["train"].values())
    for method in ("mgda-ub", "famo"):
        out = tmp_path / f"{method}-bf16"
        result = run_train([*TINY[:-2], "--amp", "bf16", "--epochs", "1", "--weighting", method, "--out", str(out)])
        assert result.returncode == 0, result.stderr[-3000:]
        record = read_metrics(out / "metrics.jsonl")[0]
        assert "amp bf16" in result.stdout and all(math.isfinite(v) for v in record["train"].values())
        if method == "mgda-ub":  # min-norm weights lie on the simplex
            assert sum(record["weights"].values()) == pytest.approx(1.0, rel=1e-3)
        else:
            assert all(v > 0 for v in record["weights"].values())


def test_accumulation_makes_fewer_larger_steps_and_mgda_ub_refuses_it(tmp_path):
    """--accumulate 2: half the optimiser steps an epoch (the schedule counts steps), every batch
    still trained on; MGDA-UB, whose weights need every batch's graph at once, says so."""
    from mtan.train.engine import Engine

    cfg = apply_preset(None, dict(data="synthetic", size="32x64", train_frames=16, val_frames=4, width=0.0625,
                                  batch_size=4, epochs=1, weighting="pcgrad", accumulate=2, amp="off", channels_last="off",
                                  out=str(tmp_path / "acc"), progress=False))
    trainer = Engine(cfg, log=lambda *a: None)
    trainer.fit()
    adam_steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert trainer.steps_per_epoch == 2 and adam_steps == {2}  # 16 frames, batches of 4, 2 batches a step
    assert read_metrics(tmp_path / "acc" / "metrics.jsonl")[0]["images_per_second"] > 0
    refused = run_train([*TINY, "--epochs", "1", "--weighting", "mgda-ub", "--accumulate", "2",
                         "--out", str(tmp_path / "ub")])
    assert refused.returncode == 2 and "does not accumulate gradients" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
