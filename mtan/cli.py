"""What the command-line tools share: a module's docstring as plain ``--help`` text."""
from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr):`~?([^`]+)`")


def help_text(doc: str | None) -> str:
    """``doc`` without reStructuredText markup: ``code`` and :func:`name` become code and name."""
    text = _ROLE.sub(r"\1", doc or "")
    return text.replace("``", "")
