"""The example photos beside the app, and the cache that answers a click on one at once."""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from mtan.serve.sources import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Real photos among the examples: CamVid frames, named ``camvid_*`` (examples/CAMVID.md); the rest are generated.
PHOTO_PREFIX = "camvid_"
PHOTO_CREDIT = ("CamVid frames (Cambridge, UK): G. J. Brostow, J. Fauqueur, R. Cipolla, *Semantic object classes in "
                "video: a high-definition ground truth database*, Pattern Recognition Letters 2009. For research and "
                "non-commercial use. The model was trained on these frames.")


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_files(folder: str | os.PathLike = EXAMPLES_DIR) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_examples(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """The real photos (``camvid_*``) and the generated scenes among ``files``."""
    photos = [p for p in files if p.name.startswith(PHOTO_PREFIX)]
    return photos, [p for p in files if p not in photos]


class ExampleCache:
    """Predictions for the files in ``examples/`` (by content hash, model and resolution), so a
    click on an example shows its results at once after the first time. Uploads are never cached."""

    def __init__(self, files: list[Path], capacity: int = 16):
        self.digests = set()
        for p in files:
            try:
                self.digests.add(file_digest(p))
            except OSError:
                pass
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def key(self, digest: str, model_key: str, resolution: str):
        """The cache key of a photo whose content has SHA-1 ``digest``, or None if it is no example."""
        return (digest, model_key, resolution) if digest in self.digests else None

    def get(self, key):
        if key is None:
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        if key is None:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
