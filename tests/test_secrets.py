"""The Hub token never reaches logs, model cards, configs, metrics, checkpoints or error messages.

A local stand-in for the Hub answers every request with 401 and echoes the Authorization header
back in its error message (the worst case: a server that repeats the secret). The token really
is sent (the server records it), so the checks below prove redaction, not absence of use.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtokenZq7Xw3Lp9Rt2Vb6Nm4Kc8Jd1Hs5"  # a fake token: the shape of a real one
OTHER = "plain-secret-without-prefix-0a9b8c7d6e5f"  # a token of another shape, passed explicitly
TINY = ["--data", "synthetic", "--size", "32x64", "--train-frames", "8", "--val-frames", "4", "--width", "0.0625",
        "--batch-size", "4", "--no-progress", "--amp", "off", "--channels-last", "off"]


class EchoHub:
    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                auth = self.headers.get("Authorization", "")
                seen.append(auth)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps({"error": f"Invalid credentials in Authorization header ({auth})"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Message", f"Invalid token {auth}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub():
    server = EchoHub()
    yield server
    server.close()


def hub_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def secrets_in(data: bytes, *secrets: str) -> list[str]:
    found = []
    for s in secrets:
        for piece in (s, s[3:] if s.startswith("hf_") else s[4:], s[:12]):  # the whole, and telling pieces
            if piece.encode() in data:
                found.append(piece)
    return found


def assert_no_secret_in_folder(folder: Path, *secrets: str) -> int:
    checked = 0
    for path in folder.rglob("*"):
        if path.is_file():
            assert not secrets_in(path.read_bytes(), *secrets), f"a token leaked into {path}"
            checked += 1
    return checked


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, hub):
    """A tiny run with HF_TOKEN set and --push-to-hub: the push fails (401 from the stand-in Hub)."""
    tmp = tmp_path_factory.mktemp("secrets")
    out = tmp / "run"
    r = subprocess.run([sys.executable, "train.py", *TINY, "--epochs", "2", "--push-to-hub", "user/repo",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=hub_env(tmp, hub.url))
    return out, r


def test_training_with_a_token_writes_it_nowhere(pushed_run, hub):
    out, r = pushed_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(TOKEN in seen for seen in hub.seen)  # the token was used, and the server echoed it back
    assert "push to the Hub failed" in r.stdout and "401" in r.stdout
    assert f"retry with: python -m mtan.hub push {out} user/repo" in r.stdout
    assert "Bearer ***" in r.stdout  # the server's message is shown, redacted
    assert not secrets_in((r.stdout + r.stderr).encode(), TOKEN)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "metrics.jsonl", "train_config.json",
            "curves.png", "checkpoints"} <= names  # the files are kept
    assert assert_no_secret_in_folder(out, TOKEN) >= 9  # model, card, configs, metrics, curves, checkpoints, best/
    assert "user/repo" in (out / "README.md").read_text()  # (the card does name the repo)


def test_hub_push_command_with_a_bad_token(pushed_run, hub, tmp_path):
    out, _ = pushed_run
    bad = "hf_BADtokenQq1Ww2Ee3Rr4Tt5Yy6Uu7Ii8Oo9"
    for endpoint in (hub.url, "http://127.0.0.1:9"):  # 401 with the token echoed; connection refused
        r = subprocess.run([sys.executable, "-m", "mtan.hub", "push", str(out), "user/repo"], cwd=REPO,
                           capture_output=True, text=True, timeout=300, env=hub_env(tmp_path, endpoint, bad))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"retry with: python -m mtan.hub push {out} user/repo" in r.stdout
        assert not secrets_in((r.stdout + r.stderr).encode(), bad, TOKEN)
    assert any(bad in seen for seen in hub.seen)
    assert_no_secret_in_folder(out, bad)


def test_explicit_token_and_other_shapes_are_redacted(pushed_run, hub, tmp_path, monkeypatch):
    """A token passed as an argument (any shape) and one from HUGGING_FACE_HUB_TOKEN are redacted too."""
    import huggingface_hub.constants

    from mtan import MTAN, ModelConfigError
    from mtan.hub import _redact, push_run

    out, _ = pushed_run
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    messages = []
    assert push_run(out, "user/repo", token=OTHER, log=messages.append) is None
    assert any(OTHER in seen for seen in hub.seen)
    assert "retry with" in messages[0] and not secrets_in(messages[0].encode(), OTHER)

    with pytest.raises(ModelConfigError) as err:
        MTAN.from_pretrained("user/repo", token=OTHER, cache_dir=tmp_path / "cache")
    assert not secrets_in(str(err.value).encode(), OTHER)

    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy-variable-secret-1234567")
    assert "legacy-variable-secret" not in _redact("failed: legacy-variable-secret-1234567 was refused")
    assert _redact(f"Authorization: Bearer {OTHER}", OTHER) == "Authorization: Bearer ***"
    assert TOKEN not in _redact(f"saw {TOKEN} in a message")  # any hf_... token, even one not configured
