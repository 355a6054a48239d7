"""A model card as the page shows it: what the model is and its limits first, the rest on request."""
from __future__ import annotations

import re

FIRST_SECTIONS = ("Limits",)


def split_card(card: str) -> tuple[str, str]:
    """``card`` (Markdown, front matter removed) -> (summary, details). The summary is the text
    before the first ``##`` section (its title dropped) and the *Limits* section; the details are
    every other section. Headings move two levels down, to sit under the page's own."""
    parts = re.split(r"^(?=## )", card.strip(), flags=re.M)
    intro, sections = parts[0], parts[1:]
    intro = re.sub(r"^# .*\n", "", intro).strip()
    first = [s for s in sections if s.splitlines()[0][3:].strip() in FIRST_SECTIONS]
    rest = [s for s in sections if s not in first]
    demote = lambda text: re.sub(r"^(#+) ", r"\1## ", text, flags=re.M)  # noqa: E731
    return demote("\n\n".join([intro, *first]).strip()), demote("\n\n".join(rest).strip())
