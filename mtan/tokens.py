"""Hub tokens never reach a message: the ones given, those in the environment or the login
cache, and anything shaped like a Hub token or a bearer header are replaced by ``***``."""
from __future__ import annotations

import os
import re

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{16,}|(?i:bearer)\s+[A-Za-z0-9_.\-]{8,}")


def _known_tokens(extra=()) -> list[str]:
    tokens = [t for t in extra if isinstance(t, str)]
    tokens += [os.environ[v] for v in TOKEN_ENV_VARS if os.environ.get(v)]
    try:  # the token saved by `hf auth login`
        from huggingface_hub import get_token

        tokens.append(get_token() or "")
    except Exception:
        pass
    return sorted({t.strip() for t in tokens if t and len(t.strip()) >= 4}, key=len, reverse=True)


def redact(text: str, *tokens) -> str:
    """Never let a token reach a message: the given tokens, those in the environment or the
    login cache, and anything shaped like a Hub token or a bearer header."""
    for token in _known_tokens(tokens):
        text = text.replace(token, "***")
    return TOKEN_RE.sub("***", text)


def error_text(text: str, *tokens, limit: int = 400) -> str:
    """A Hub error on one line, redacted: the status line and the server's own message."""
    lines = [ln.strip() for ln in redact(text, *tokens).splitlines()]
    return "; ".join(ln for ln in lines if ln and not ln.startswith("For more information"))[:limit]


__all__ = ["redact", "error_text", "TOKEN_ENV_VARS"]
