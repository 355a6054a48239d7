"""NYUv2 in the MTAN release format: 13-class segmentation, metric depth and surface normals.

Layout (795 train / 654 val frames, 288 x 384)::

    ROOT/{train,val}/image/{i}.npy    float H x W x 3 in [0, 1]
    ROOT/{train,val}/label/{i}.npy    float H x W, 13 classes, -1 = void
    ROOT/{train,val}/depth/{i}.npy    float H x W x 1, metres, 0 = invalid
    ROOT/{train,val}/normal/{i}.npy   float H x W x 3, unit vectors, 0 = invalid
"""
from __future__ import annotations

from mtan.data.common import Field, ReleaseDataset
from mtan.tasks import preset_tasks

FIELDS = {
    "image": Field("image", "image", "image"),
    "semantic": Field("semantic", "label", "semantic"),
    "depth": Field("depth", "depth", "depth"),
    "normal": Field("normal", "normal", "normal"),
}


class NYUv2Dataset(ReleaseDataset):
    """A split of the NYUv2 release with the tasks of ``preset_tasks("nyuv2")``.

    ``tasks`` picks a subset of ``("semantic", "depth", "normal")`` (all by default);
    ``size=(H, W)`` resizes on load (``None`` keeps the stored 288x384).
    """

    how_to_get = ("Download the MTAN-preprocessed NYUv2 release (folders train/ and val/, each with "
                  "image/, label/, depth/ and normal/) and pass its folder as root.")

    def __init__(self, root, split: str = "train", size=None, tasks=("semantic", "depth", "normal"),
                 name: str = "nyuv2"):
        unknown = set(tasks) - {"semantic", "depth", "normal"}
        if unknown or not tasks:
            raise ValueError(f"nyuv2 tasks must be a non-empty subset of semantic, depth, normal; got {tasks!r}")
        configs = [t for t in preset_tasks("nyuv2") if t["name"] in tasks]
        fields = [FIELDS["image"]] + [FIELDS[t["name"]] for t in configs]
        super().__init__(root, split, fields, configs, name, size)
