"""Check a dataset before training: every file readable, shapes, dtypes and values in range.

Opening a dataset already checks its structure cheaply (folders, file counts, the first
frame's shapes). :func:`validate` with ``full=True`` reads every frame and checks its values:
labels inside the class range, depth finite and non-negative, images in [0, 1], normals
finite. The first problem raises a :class:`~mtan.data.common.DatasetError` naming the file.
"""
from __future__ import annotations

from tqdm import tqdm

from mtan.data.common import DatasetError, check_sample_values
from mtan.tasks import tasks_from_config


def validate(dataset, full: bool = True, progress: bool = True) -> int:
    """Check ``dataset``; returns the number of frames checked (0 when ``full=False``).

    ``full=False`` checks only what opening the dataset checks plus the first item.
    Raises :class:`DatasetError` on the first problem, naming the file and the fix.
    """
    name = getattr(dataset, "name", type(dataset).__name__)
    for attr in ("task_configs", "name"):
        if not hasattr(dataset, attr):
            raise DatasetError(f"{name}: a dataset must expose {attr!r} (see mtan.data.common)")
    if len(dataset) == 0:
        raise DatasetError(f"{name}: the dataset is empty.")
    indices = range(len(dataset)) if full else range(1)
    for index in tqdm(indices, desc=f"validating {name}", unit="frame", disable=not progress or not full):
        check_item(dataset, index)
    return len(indices) if full else 0


def check_item(dataset, index: int) -> None:
    """Full checks of one item: the dataset's own ``check_item`` if it has one, else generic value checks."""
    if hasattr(dataset, "check_item"):
        dataset.check_item(index)
        return
    name = getattr(dataset, "name", type(dataset).__name__)
    sample = dataset[index]
    tasks = tasks_from_config(dataset.task_configs)
    missing = [t.name for t in tasks if t.name not in sample] + ([] if "image" in sample else ["image"])
    if missing:
        raise DatasetError(f"{name} item {index}: missing key(s) {missing}")
    check_sample_values(sample, tasks, lambda key: f"{name} item {index} ({key})")
