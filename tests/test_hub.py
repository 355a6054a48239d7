"""save_pretrained / from_pretrained: identical models, safetensors only, clear errors."""
import json
from pathlib import Path

import pytest
import torch

from mtan import MTAN, ModelConfigError
from mtan.hub import HubUnavailableError

REPO = Path(__file__).resolve().parents[1]


def trained_a_little(model):
    """Move the BatchNorm statistics away from their defaults so a round trip has something to lose."""
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 64))
    return model.eval()


@pytest.mark.parametrize("arch, width", [("mtan", 1 / 16), ("mtan", 0.1), ("split", 1 / 8), ("single", 1 / 16)])
def test_round_trip_is_bit_identical(tmp_path, cityscapes_tasks, arch, width):
    torch.manual_seed(1)
    tasks = cityscapes_tasks[:1] if arch == "single" else cityscapes_tasks
    model = trained_a_little(MTAN(tasks, arch=arch, width=width))
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arch"] == arch and config["width"] == width and config["tasks"] == [
        {k: v for k, v in t.items()} | ({"scale": 1.85} if t["kind"] == "depth" else {}) for t in tasks]
    loaded = MTAN.from_pretrained(tmp_path)
    assert not loaded.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_model_card_has_hub_metadata(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, model_card_kwargs={
        "training_command": "python train.py --preset smoke", "dataset_name": "CityScapes",
        "results": {"semantic.miou": 0.5, "depth.abs_err": 0.02}, "repo_id": "someone/mtan-test"})
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: mtan" in card and "model-index" in card
    assert "python train.py --preset smoke" in card and "mean_iou" in card
    assert "MTAN.from_pretrained(\"someone/mtan-test\")" in card


def test_pickle_weights_are_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelConfigError, match=r"pytorch_model\.bin.*never loaded"):
        MTAN.from_pretrained(tmp_path)


def test_truncated_weights_are_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelConfigError, match="truncated or damaged"):
        MTAN.from_pretrained(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: "{not json", "not valid JSON"),
    (lambda c: json.dumps({**c, "arch": "pspnet"}), "'arch'"),
    (lambda c: json.dumps({**c, "tasks": [{"name": "flow", "kind": "flow"}]}), "unknown kind 'flow'"),
    (lambda c: json.dumps({**c, "colour": "red"}), "unknown config field"),
    (lambda c: json.dumps([c]), "JSON object"),
    (lambda c: json.dumps({**c, "width": 0.125}), "does not match its config.json"),
    (lambda c: json.dumps({**c, "tasks": c["tasks"][:2]}), "unexpected tensors: attention.normal"),
])
def test_bad_configs_are_named(tmp_path, tiny_model, edit, message):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(edit(config))
    with pytest.raises(ModelConfigError, match=message):
        MTAN.from_pretrained(tmp_path)


def hub_cache(tmp_path, model, repo_id="someone/mtan-tiny"):
    """Lay out a Hugging Face cache holding ``repo_id`` at one commit, as hf_hub_download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return tmp_path / "cache"


def test_load_by_repo_id_from_the_hub_cache(tmp_path, tiny_model):
    cache = hub_cache(tmp_path, trained_a_little(tiny_model))
    loaded = MTAN.from_pretrained("someone/mtan-tiny", cache_dir=cache, local_files_only=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)["depth"], tiny_model(x)["depth"])


def test_unreachable_hub_gives_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(HubUnavailableError, match="unreachable"):
        MTAN.from_pretrained("someone/not-cached", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(ModelConfigError, match="no such model folder"):
        MTAN.from_pretrained(str(tmp_path / "missing" / "folder"))


# ---- the app as a Space, tested up to the network boundary ---------------------------------------


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi's network calls replaced at the last step: each records what it was given (the staged
    Space's files are read while the upload is running, as the Hub would receive them)."""
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, repo_type=None, space_sdk=None, private=False, exist_ok=False, **kw):
        calls["create"] = dict(repo_id=repo_id, repo_type=repo_type, space_sdk=space_sdk, private=private)
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, repo_type=None, **kw):
        root = Path(folder_path)
        calls["upload"] = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        calls["upload_repo"] = (repo_id, repo_type)

    def add_space_variable(self, repo_id, key, value, **kw):
        calls.setdefault("variables", {})[key] = value

    def request_space_hardware(self, repo_id, hardware, **kw):
        calls["hardware"] = hardware

    for name, fn in (("create_repo", create_repo), ("upload_folder", upload_folder),
                     ("add_space_variable", add_space_variable), ("request_space_hardware", request_space_hardware)):
        monkeypatch.setattr(huggingface_hub.HfApi, name, fn)
    return calls


def test_deploy_space_with_the_default_model(hub_calls):
    from mtan.hub import main

    assert main(["deploy-space", "someone/mtan-demo"]) == 0
    assert hub_calls["create"] == dict(repo_id="someone/mtan-demo", repo_type="space", space_sdk="gradio",
                                       private=False)
    files = hub_calls["upload"]
    assert hub_calls["upload_repo"] == ("someone/mtan-demo", "space")
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes", "LICENSE", "mtan/__init__.py",
            "mtan/serve/prediction.py", "weights/model.safetensors", "weights/config.json"} <= set(files)
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in files)
    assert sum(name.startswith("examples/") for name in files) >= 8
    assert files["weights/model.safetensors"] == (REPO / "weights" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    front = card.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front and "models: []" in front
    assert "Mtan demo" in card and "weights/" in card
    assert "*.safetensors filter=lfs" in files[".gitattributes"].decode()
    assert "*.jpg filter=lfs" in files[".gitattributes"].decode()
    assert b"spaces" not in files["requirements.txt"] and "variables" not in hub_calls


def test_deploy_space_with_a_hub_model_on_zerogpu(hub_calls):
    from mtan.hub import deploy_space

    messages = []
    url = deploy_space("someone/mtan-gpu", model="someone/mtan-streets", hardware="zero-a10g", log=messages.append)
    assert url == "https://huggingface.co/spaces/someone/mtan-gpu"
    files = hub_calls["upload"]
    assert not any(name.startswith("weights/") for name in files)  # the Space loads the model from the Hub
    assert hub_calls["variables"] == {"MTAN_MODEL": "someone/mtan-streets"}
    assert hub_calls["hardware"] == "zero-a10g" and files["requirements.txt"].decode().splitlines()[-1] == "spaces"
    assert "models: [someone/mtan-streets]" in files["README.md"].decode()


def test_deploy_space_offline_says_how_to_retry(monkeypatch):
    import huggingface_hub

    from mtan.hub import deploy_space

    def offline(self, *a, **kw):
        raise OSError("Name or service not known (token hf_secret_token_for_test)")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    messages = []
    assert deploy_space("someone/x", token="hf_secret_token_for_test", log=messages.append) is None
    assert "retry with: python -m mtan.hub deploy-space someone/x" in messages[0]
    assert "hf_secret_token_for_test" not in messages[0]


def test_the_gpu_decorator_is_applied_on_zerogpu_only(monkeypatch):
    import sys
    import types

    from mtan.serve.zerogpu import gpu_task

    def work():
        return 1

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert gpu_task(work) is work  # a laptop, a CPU Space: unchanged, `spaces` not needed
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    seen = {}
    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn, duration=None: seen.setdefault("wrapped", (fn, duration)) and fn
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu_task(work, duration=30) is work and seen["wrapped"] == (work, 30)
    monkeypatch.setitem(sys.modules, "spaces", None)  # ZeroGPU without the package: a clear message
    with pytest.raises(RuntimeError, match="add `spaces` to requirements.txt"):
        gpu_task(work)


def test_deploy_space_dry_run_lists_the_files_and_touches_no_network(monkeypatch, capsys):
    import huggingface_hub

    from mtan.hub import main

    def no_network(*a, **k):
        raise AssertionError("a dry run must not call the Hub")

    for name in ("create_repo", "upload_folder", "add_space_variable", "request_space_hardware"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)
    assert main(["deploy-space", "someone/demo", "--dry-run", "--hardware", "cpu-basic"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would create or update the Gradio Space https://huggingface.co/spaces/someone/demo" in out
    assert "app.py" in out and "weights/model.safetensors" in out and "on cpu-basic hardware" in out
