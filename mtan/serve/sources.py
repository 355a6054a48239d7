"""Where models come from: a local folder or a Hugging Face Hub repo id, whether the Hub can be
reached (asked once, quickly), the device to run on, and the small text files beside the weights."""
from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from mtan.serve.process import env_flag

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "weights"


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether one TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    result = {"ok": False}

    def attempt():  # DNS lookups can hang: run in a thread and stop waiting after `timeout`
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the Hub endpoint (``HF_ENDPOINT``), never longer than ``timeout``.

    ``huggingface_hub`` retries an unreachable host for about 20 s; asking once first keeps the
    app's start fast and its fallback immediate. ``HF_HUB_OFFLINE=1`` means unreachable.
    """
    if env_flag("HF_HUB_OFFLINE"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return False
    return host_reachable(url.hostname, url.port or (80 if url.scheme == "http" else 443), timeout)


def resolve_local(source: str) -> Path | None:
    """An existing local path for ``source``: as given, or relative to the repository (``weights``)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return None


def is_hub_id(source: str) -> bool:
    """``user/name`` that is not an existing local path."""
    return (resolve_local(source) is None and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
            and not source.startswith("."))


def strip_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


def model_label(source: str) -> str:
    """A short dropdown label: the Hub id, or the folder name marked as local."""
    if is_hub_id(source):
        return source
    path = resolve_local(source) or Path(source)
    if path.resolve() == DEFAULT_MODEL_DIR.resolve():
        return "Default street model"
    return f"{path.name or source} (local folder)"


def hub_file(repo_id: str, filename: str) -> str:
    """A small text file of a Hub model repo (its card, its resolutions record), or "" if it cannot be had."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, local_files_only=not hub_reachable(1.0))).read_text(
            encoding="utf-8", errors="replace")
    except Exception:  # nice to have, never required
        return ""


def json_or_none(text: str) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
