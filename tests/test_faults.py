"""Faults in weights files and training runs: each is refused or survived with a clear message.

Weights: tampered or truncated safetensors, dtypes edited in the header, NaN / inf weights and
pickle files planted in a model folder (proved never unpickled with a payload that would leave
a marker file). Training: a real SIGKILL while a checkpoint is being written, a corrupted or
truncated newest checkpoint, a full disk (a partial write that fails with ENOSPC in-process, and
a real partial write under RLIMIT_FSIZE in a subprocess), a bad value in the data, a NaN that
appears in one task's loss mid-run, and the command-line mistakes a user can make.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtan import MTAN, ModelConfigError
from mtan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from mtan.train import Engine
from mtan.train.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--size", "32x64", "--train-frames", "8", "--val-frames", "4", "--width", "0.0625",
        "--batch-size", "4", "--lr", "1e-3", "--no-progress", "--amp", "off", "--channels-last", "off"]
TMP_RE = re.compile(r"^\..+\.tmp-\d+$")


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = load_train_script()


def main(argv, capsys) -> tuple[int, str, str]:
    """train.py's main() in this process (no interpreter start-up): exit code, stdout, stderr."""
    capsys.readouterr()
    code = train_script.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_train(args, timeout=600, env=None):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if TMP_RE.match(p.name) or p.name == ".export-tmp")


def assert_all_checkpoints_load(folder: Path) -> list[int]:
    epochs = []
    for epoch, path in list_checkpoints(folder):
        tensors, header = load_checkpoint(path)
        assert header["epoch"] == epoch
        epochs.append(epoch)
    return sorted(epochs)


# ======================================================================================
# Weights
# ======================================================================================


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def first_float_tensor(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32" and
                v["data_offsets"][1] - v["data_offsets"][0] >= 64)


def edit_header(**change):
    def edit(raw):
        header, body = split_safetensors(raw)
        name = first_float_tensor(header)
        entry = header[name]
        if "dtype" in change:
            entry["dtype"] = change["dtype"]
        if change.get("offsets") == "past_end":
            size = entry["data_offsets"][1] - entry["data_offsets"][0]
            entry["data_offsets"] = [len(body) + 64, len(body) + 64 + size]
        if change.get("offsets") == "overlap":
            other = next(v for k, v in header.items() if k not in ("__metadata__", name))
            entry["data_offsets"] = list(other["data_offsets"])
        return join_safetensors(header, body)
    return edit


def garbage_header_of_valid_length(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[:8] + b"!" * n + raw[8 + n:]


def pickle_named_safetensors(raw):
    import io

    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buffer)
    return buffer.getvalue()


TAMPERED = {
    "garbage JSON header of a valid length": garbage_header_of_valid_length,
    "offsets past the end of the file": edit_header(offsets="past_end"),
    "overlapping offsets": edit_header(offsets="overlap"),
    "dtype F32 -> F16 (sizes disagree)": edit_header(dtype="F16"),
    "dtype F32 -> I32 (same size)": edit_header(dtype="I32"),
    "dtype F32 -> an unknown name": edit_header(dtype="F33"),
    "header length of 1 TB": lambda raw: struct.pack("<Q", 2 ** 40) + raw[8:],
    "header length past the end": lambda raw: struct.pack("<Q", len(raw)) + raw[8:],
    "truncated inside the header": lambda raw: raw[:200],
    "truncated inside the data": lambda raw: raw[:len(raw) * 2 // 3],
    "one byte short": lambda raw: raw[:-1],
    "trailing bytes": lambda raw: raw + b"\0" * 16,
    "empty file": lambda raw: b"",
    "a torch pickle renamed model.safetensors": pickle_named_safetensors,
}


@pytest.mark.parametrize("damage", list(TAMPERED), ids=list(TAMPERED))
def test_tampered_or_truncated_weights_are_refused_naming_the_file(tmp_path, tiny_model, damage):
    tiny_model.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(TAMPERED[damage](weights.read_bytes()))
    with pytest.raises(ModelConfigError) as err:
        MTAN.from_pretrained(tmp_path / "model")
    message = str(err.value)
    assert str(weights) in message
    assert "damaged" in message or "altered" in message, message


@pytest.mark.parametrize("value, where", [(float("nan"), "heads.depth.0.weight"),
                                          (float("inf"), "encoder.stages.0.first.1.running_var"),
                                          (float("-inf"), "attention.normal.encoder.1.0.bias")])
def test_nonfinite_weights_are_refused(tmp_path, tiny_model, value, where):
    """Decision: refuse (a NaN weight can only give NaN predictions); the tensor and file are named."""
    from safetensors.torch import save_file

    tiny_model.save_pretrained(tmp_path / "model")
    state = {k: v.clone().contiguous() for k, v in tiny_model.state_dict().items()}
    state[where].view(-1)[0] = value
    save_file(state, str(tmp_path / "model" / "model.safetensors"))
    with pytest.raises(ModelConfigError, match="NaN or infinite") as err:
        MTAN.from_pretrained(tmp_path / "model")
    assert where in str(err.value) and str(tmp_path / "model" / "model.safetensors") in str(err.value)


class Exploit:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle code ran')",))


def test_planted_pickles_are_never_unpickled(tmp_path, tiny_model):
    folder = tmp_path / "model"
    marker = tmp_path / "PWNED"
    tiny_model.save_pretrained(folder)
    torch.save({"state_dict": Exploit(marker)}, folder / "pytorch_model.bin")
    torch.save(Exploit(marker), folder / "model.pt")
    torch.save(Exploit(marker), folder / "model.ckpt")
    (folder / "model.pkl").write_bytes(pickle.dumps(Exploit(marker)))

    # next to a valid model.safetensors: the model loads from the safetensors, the pickles are not touched
    loaded = MTAN.from_pretrained(folder)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["depth"], tiny_model.eval()(x)["depth"])
    assert not marker.exists()

    # without it: refused, the pickles are named, still nothing unpickled
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelConfigError) as err:
        MTAN.from_pretrained(folder)
    assert "pytorch_model.bin" in str(err.value) and "model.pkl" in str(err.value) and str(folder) in str(err.value)
    assert not marker.exists()

    # a pickle renamed model.safetensors is read as safetensors (and refused), never unpickled
    shutil.copy(folder / "pytorch_model.bin", folder / "model.safetensors")
    with pytest.raises(ModelConfigError, match="not a readable safetensors file"):
        MTAN.from_pretrained(folder)
    assert not marker.exists()

    # the converter reads .pth with weights_only=True: refused too
    from mtan.convert import ConversionError, convert

    with pytest.raises(ConversionError):
        convert(folder / "pytorch_model.bin", tmp_path / "converted")
    assert not marker.exists()

    # control: the planted files are live exploits (a plain torch.load would have run them)
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.read_text() == "pickle code ran"


# ======================================================================================
# Checkpoints, unit level
# ======================================================================================


def tiny_training_state(width=1 / 16):
    from mtan import preset_tasks
    from mtan.train.weighting import build_weighting

    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=width)
    weighting = build_weighting("dwa", model.task_names, 2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model(torch.rand(2, 3, 32, 64))
    (out["depth"].mean() + out["semantic"].mean()).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    return dict(model=model, optimizer=optimizer, scheduler=scheduler, weighting=weighting)


def flip_bytes(path: Path, at: float, count: int = 4) -> None:
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * at)
    for i in range(start, start + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flipped bytes in the weights", "flipped bytes in the header",
                                    "truncated", "saved with NaN"])
def test_damaged_checkpoints_are_detected(tmp_path, damage):
    state = tiny_training_state()
    path = tmp_path / "epoch_0000.safetensors"
    if damage == "saved with NaN":
        with torch.no_grad():
            state["model"].heads["depth"][0].weight.view(-1)[0] = float("nan")
    save_checkpoint(path, meta={"epoch": 0, "best_score": 0.123456}, **state)
    if damage == "flipped bytes in the weights":
        flip_bytes(path, 0.6)
    elif damage == "flipped bytes in the header":
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b'"best_score\\": 0.123456', b'"best_score\\": 0.923456'))
        assert path.read_bytes() != raw
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-777])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    expected = {"flipped bytes in the weights": "checksum", "flipped bytes in the header": "JSON header",
                "truncated": "damaged or truncated", "saved with NaN": "NaN"}[damage]
    assert expected in str(err.value)


def test_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The writer fails with ENOSPC after writing part of the temporary file."""
    import safetensors.torch

    import mtan.checkpoint

    state = tiny_training_state()
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "epoch_0000.safetensors", meta={"epoch": 0}, **state)
    before = (folder / "epoch_0000.safetensors").read_bytes()
    real = safetensors.torch.save_file
    partial = {}

    def disk_full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        os.truncate(filename, size // 3)  # what got written before the disk filled up
        partial["size"] = os.path.getsize(filename)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(mtan.checkpoint, "save_file", disk_full)  # the writer the checkpoints use
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(folder / "epoch_0001.safetensors", meta={"epoch": 1}, **state)
    message = str(err.value)
    assert partial["size"] > 0  # a partial temporary file really existed
    assert "epoch_0001.safetensors" in message and "No space left on device" in message
    assert "previous checkpoint is intact" in message and "free disk space" in message and "--resume" in message
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0000.safetensors"]  # no temporary file left
    assert (folder / "epoch_0000.safetensors").read_bytes() == before
    load_checkpoint(folder / "epoch_0000.safetensors")


RLIMIT_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_faults import tiny_training_state
    from mtan.checkpoint import CheckpointError, save_checkpoint

    folder = {folder!r}
    state = tiny_training_state()
    save_checkpoint(os.path.join(folder, "epoch_0000.safetensors"), meta={{"epoch": 0}}, **state)
    size = os.path.getsize(os.path.join(folder, "epoch_0000.safetensors"))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint(os.path.join(folder, "epoch_0001.safetensors"), meta={{"epoch": 1}}, **state)
        print(json.dumps({{"error": None}}))
    except CheckpointError as e:
        print(json.dumps({{"error": str(e)}}))
""")


def test_file_size_limit_mid_write_keeps_the_previous_checkpoint(tmp_path):
    """A real partial write: the safetensors writer hits RLIMIT_FSIZE halfway through the file."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    script = RLIMIT_SCRIPT.format(tests=str(REPO / "tests"), folder=str(folder))
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    error = json.loads(r.stdout.strip().splitlines()[-1])["error"]
    assert error and "epoch_0001.safetensors" in error and "previous checkpoint is intact" in error
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0000.safetensors"]
    load_checkpoint(folder / "epoch_0000.safetensors")


# ======================================================================================
# Training runs
# ======================================================================================


def test_sigkill_while_a_checkpoint_is_being_written(tmp_path):
    """Kill train.py while `.epoch_0001.safetensors.tmp-PID` exists (31 MB of model + Adam state).

    Every epoch_*.safetensors left must load; the stale temporary file is ignored, removed on
    --resume, and the run continues from the last complete checkpoint (epoch 1)."""
    out = tmp_path / "run"
    folder = out / "checkpoints"
    args = [*TINY, "--width", "0.25", "--epochs", "2", "--out", out]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr_file:  # (a file, not a pipe: the child can never block on it)
        proc = subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr_file)
    pattern = re.compile(r"^\.epoch_0001\.safetensors\.tmp-(\d+)$")
    caught, deadline = None, time.monotonic() + 400
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                names = []
            hits = [n for n in names if pattern.match(n)]
            if hits:
                os.kill(proc.pid, signal.SIGKILL)
                caught = hits[0]
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and caught is None:
            proc.kill()
        proc.wait()
    assert caught, f"never saw the temporary checkpoint file (exit {proc.returncode}): {log.read_text()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert int(pattern.match(caught)[1]) == proc.pid
    left = sorted(os.listdir(folder))
    assert left == sorted(["epoch_0000.safetensors", caught])  # the partial file, never under a real name
    assert assert_all_checkpoints_load(folder) == [0]
    assert len(read_metrics(out / "metrics.jsonl")) == 2  # epoch 2 was logged, but its checkpoint never finished

    resumed = run_train(["--resume", out, "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed 1 temporary file" in resumed.stdout and caught in resumed.stdout
    assert "resumed" in resumed.stdout and "1 of" in resumed.stdout
    assert "epochs done (from epoch_0000.safetensors), continuing with epoch 2" in resumed.stdout
    assert sorted(os.listdir(folder)) == ["epoch_0000.safetensors", "epoch_0001.safetensors"]
    assert assert_all_checkpoints_load(folder) == [0, 1]
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert temporaries(out) == [] and temporaries(out / "best") == []
    MTAN.from_pretrained(out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-epoch tiny run: checkpoints epoch_0001 and epoch_0002 (keep 2)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    r = run_train([*TINY, "--epochs", "3", "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, finished_run, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    newest = out / "checkpoints" / "epoch_0002.safetensors"
    if damage == "flip":
        flip_bytes(newest, 0.5)
    else:
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    code, stdout, stderr = main(["--resume", out, "--no-progress"], capsys)
    assert code == 0, stderr
    assert f"warning: checkpoint {newest}" in stdout and "falling back to the previous checkpoint" in stdout
    assert "2 of" in stdout and "epochs done (from epoch_0001.safetensors), continuing with epoch 3" in stdout
    assert assert_all_checkpoints_load(out / "checkpoints") == [1, 2]  # epoch 3 was trained again and saved
    original, again = read_metrics(finished_run / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in again] == [1, 2, 3]
    assert again[2]["train"] == pytest.approx(original[2]["train"], rel=1e-5)  # the same epoch 3


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path, finished_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for _, path in list_checkpoints(out / "checkpoints"):
        flip_bytes(path, 0.5)
    code, stdout, stderr = main(["--resume", out, "--no-progress"], capsys)
    assert code == 2
    assert "epoch_0002.safetensors" in stdout and "epoch_0001.safetensors" in stdout
    assert "no readable checkpoint" in stderr


def test_a_new_run_refuses_a_folder_holding_a_run(tmp_path, finished_run, capsys):
    code, _, stderr = main([*TINY, "--epochs", "3", "--out", finished_run], capsys)
    assert code == 2 and "already holds a training run" in stderr and f"--resume {finished_run}" in stderr


@pytest.mark.parametrize("where", ["checkpoint", "export"])
def test_full_disk_during_a_run_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, where):
    """safetensors' writer fails with ENOSPC part-way through epoch 2's checkpoint (or its model export)."""
    import safetensors.torch

    import mtan.checkpoint

    out = tmp_path / "run"
    real = safetensors.torch.save_file

    def failing(filename: str) -> bool:
        name = Path(filename).name
        if where == "checkpoint":
            return name.startswith(".epoch_0001.safetensors.tmp-")
        return ".export-tmp" in str(filename) and (out / "checkpoints" / "epoch_0000.safetensors").exists()

    def save_file(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if failing(filename):
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    for module in (safetensors.torch, mtan.checkpoint):  # the model export's writer, the checkpoints'
        monkeypatch.setattr(module, "save_file", save_file)
    code, stdout, stderr = main([*TINY, "--epochs", "2", "--out", out], capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "No space left on device" in stderr
    assert f"python train.py --resume {out}" in stderr and "Free disk space" in stderr
    checkpoints = out / "checkpoints"
    assert ("epoch 2: could not write checkpoint" if where == "checkpoint" else "epoch 2: could not export") in stderr
    assert f"Its checkpoint was not saved; the newest complete checkpoint, {checkpoints / 'epoch_0000.safetensors'}, " \
           f"is intact" in stderr
    assert assert_all_checkpoints_load(checkpoints) == [0]
    assert temporaries(checkpoints) == [] and temporaries(out) == [] and temporaries(out / "best") == []
    MTAN.from_pretrained(out)  # the last exported model is intact

    for module in (safetensors.torch, mtan.checkpoint):  # space freed: the run continues
        monkeypatch.setattr(module, "save_file", real)
    code, stdout, stderr = main(["--resume", out, "--no-progress"], capsys)
    assert code == 0, stderr
    assert "epochs done (from epoch_0000.safetensors), continuing with epoch 2" in stdout  # epoch 2 again
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert assert_all_checkpoints_load(checkpoints) == [0, 1]


def test_nan_loss_mid_run_stops_naming_the_task(tmp_path, capsys, monkeypatch):
    """The depth loss turns NaN during epoch 2: exit 3, the task named, epoch 1's checkpoint intact."""
    out = tmp_path / "run"
    train_epoch, task_losses = Engine.train_epoch, Engine._task_losses

    def patched_epoch(self, epoch):
        self.test_epoch = epoch
        return train_epoch(self, epoch)

    def patched_losses(self, outputs, batch):
        losses, has_valid = task_losses(self, outputs, batch)
        if getattr(self, "test_epoch", None) == 1:  # not in the timing steps before the first epoch
            losses["depth"] = losses["depth"] * float("nan")
        return losses, has_valid

    monkeypatch.setattr(Engine, "train_epoch", patched_epoch)
    monkeypatch.setattr(Engine, "_task_losses", patched_losses)
    code, stdout, stderr = main([*TINY, "--epochs", "3", "--out", out], capsys)
    assert code == 3
    assert "epoch 2: the 'depth' task's training loss became NaN or infinite" in stderr
    assert "'semantic'" not in stderr
    assert str(out / "checkpoints" / "epoch_0000.safetensors") in stderr and "--resume" in stderr
    assert assert_all_checkpoints_load(out / "checkpoints") == [0]
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    model = MTAN.from_pretrained(out)  # the exported epoch-1 model: finite (it would be refused otherwise)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())

    monkeypatch.setattr(Engine, "train_epoch", train_epoch)
    monkeypatch.setattr(Engine, "_task_losses", task_losses)
    code, stdout, stderr = main(["--resume", out, "--no-progress"], capsys)
    assert code == 0, stderr
    assert "epochs done (from epoch_0000.safetensors), continuing with epoch 2" in stdout
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_nan_loss_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, capsys, monkeypatch):
    task_losses = Engine._task_losses

    def patched_losses(self, outputs, batch):
        losses, has_valid = task_losses(self, outputs, batch)
        losses["semantic"] = losses["semantic"] + float("inf")
        return losses, has_valid

    monkeypatch.setattr(Engine, "_task_losses", patched_losses)
    code, _, stderr = main([*TINY, "--epochs", "2", "--out", tmp_path / "run"], capsys)
    assert code == 3 and "epoch 1: the 'semantic' task's training loss" in stderr
    assert "No checkpoint had been written yet" in stderr
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def write_cityscapes_release(root: Path, train: int = 8, val: int = 4, h: int = 32, w: int = 64) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for folder in ("image", "label_7", "depth"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
            np.save(root / split / "label_7" / f"{i}.npy", rng.integers(-1, 7, (h, w)).astype(np.float32))
            np.save(root / split / "depth" / f"{i}.npy", (rng.random((h, w, 1)) * 0.3).astype(np.float32))


def test_inf_in_a_depth_target_is_reported_before_the_first_step(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    write_cityscapes_release(root)
    bad = root / "train" / "depth" / "5.npy"
    depth = np.load(bad)
    depth[10, 20, 0] = np.inf
    np.save(bad, depth)
    out = tmp_path / "run"
    code, stdout, stderr = main(["--data", "cityscapes", "--data-root", root, "--width", "0.0625", "--batch-size",
                                 "4", "--epochs", "1", "--no-progress", "--out", out], capsys)
    assert code == 2
    assert str(bad) in stderr and "inf" in stderr and "store 0 for pixels without depth" in stderr
    assert "training mtan" not in stdout  # no step was taken
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()

    depth[10, 20, 0] = 0.1  # fixed: the same command trains
    np.save(bad, depth)
    code, stdout, stderr = main(["--data", "cityscapes", "--data-root", root, "--width", "0.0625", "--batch-size",
                                 "4", "--epochs", "1", "--no-progress", "--out", out], capsys)
    assert code == 0, stderr


# ======================================================================================
# Command-line mistakes: a message and exit code 2, never a traceback
# ======================================================================================


def _not_a_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return ["--out", tmp_path / "a-file" / "run"]


def _resume_without_checkpoints(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train_config.json").write_text("{}")
    return ["--resume", tmp_path / "r"]


def _resume_with_broken_config(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train_config.json").write_text("{\"epochs\": 3,")
    return ["--resume", tmp_path / "r"]


USER_ERRORS = {
    "bad --size": (lambda t: ["--size", "32y64"], "size must look like '128x256'"),
    "--size not a multiple of 32": (lambda t: ["--size", "30x64"], "multiples of 32"),
    "unknown --data": (lambda t: ["--data", "nosuch"], "unknown dataset 'nosuch'"),
    "negative --width": (lambda t: ["--width", "-1"], "--width -1.0: must be a finite number > 0"),
    "huge --width": (lambda t: ["--width", "100"], "config field 'width': must be a number in (0, 8]"),
    "--batch-size 0": (lambda t: ["--batch-size", "0"], "--batch-size 0: must be a whole number >= 1"),
    "--solve-every with a loss weighting": (lambda t: ["--solve-every", "2"],
                                            "--solve-every 2: applies to the gradient methods but pcgrad"),
    "--epochs 0": (lambda t: ["--epochs", "0"], "--epochs 0"),
    "--eval-every 0": (lambda t: ["--eval-every", "0"], "--eval-every 0"),
    "--keep-checkpoints 0": (lambda t: ["--keep-checkpoints", "0"], "--keep-checkpoints 0"),
    "--lr nan": (lambda t: ["--lr", "nan"], "--lr nan"),
    "unknown --device": (lambda t: ["--device", "potato"], "--device 'potato': not a device"),
    "single-task run of a missing task": (lambda t: ["--arch", "single", "--task", "flow"], "--task 'flow'"),
    "unwritable --out": (_not_a_folder, "the run folder cannot be written"),
    "--resume without a run": (lambda t: ["--resume", t / "nowhere"], "no train_config.json there"),
    "--resume without checkpoints": (_resume_without_checkpoints, "no checkpoint to resume from"),
    "--resume with a broken train_config.json": (_resume_with_broken_config, "train_config.json is not readable"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS), ids=list(USER_ERRORS))
def test_user_errors_give_a_message_and_exit_code_2(tmp_path, capsys, case):
    make_args, expected = USER_ERRORS[case]
    extra = make_args(tmp_path)
    base = [] if "--resume" in extra else [*TINY, "--epochs", "1", "--out", tmp_path / "out"]
    code, _, stderr = main([*base, *extra], capsys)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and expected in stderr, stderr


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    r = run_train([*TINY, "--width", "100", "--epochs", "1", "--out", tmp_path / "out"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'width'" in r.stderr
