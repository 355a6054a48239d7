"""What differs between the datasets, in one place: a :class:`DatasetSpec` per name.

The trainer, the evaluator and the release ask the spec (which options a split is built with,
what the data is called on a model card, whether its photos are scored at their own size)
instead of testing the dataset's name. The builders themselves are in :mod:`mtan.data`.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtan.data.pseudo_depth import SKY_INVERSE_DEPTH


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the rest of the project sees it.

    ``name``: its registry name; ``title``: the dataset's own name; ``val_name``: its validation data on a model card; ``hub_type``:
    the Hub's dataset type; ``trained_text``: what training on it means, in a few words;
    ``own_size``: real photos, scored at their own size on a card (else at the run's size);
    ``fills_depth``: ``--pseudo-depth`` gives its training split depth targets where it has none.
    """

    name: str
    title: str
    val_name: str
    hub_type: str
    trained_text: str
    own_size: bool = False
    fills_depth: bool = False

    def split_options(self, split: str, labels: str = "label_7", frames: int | None = None, seed: int = 0,
                      pseudo_depth: bool = False) -> dict:
        """The builder options of ``split`` for a run with these settings: ``frames`` and ``seed``
        of generated scenes (this split's), ``pseudo_depth`` (the training split's depth targets
        filled where the data has none)."""
        return {}

    def evaluate_args(self, options: dict, labels: str = "label_7") -> list[str]:
        """The ``python -m mtan.evaluate`` flags that rebuild a split with ``options``."""
        return []

    def describe(self, options: dict | None = None) -> tuple[str, str]:
        """(its validation data's name on a card, the Hub's dataset type), for these options."""
        return self.val_name, self.hub_type

    def holds_out(self, options: dict | None = None) -> bool:
        """Whether its validation split, with these options, shares no photo with its training split."""
        return True

    def trained_on(self, config) -> str:
        """What a run with ``config`` (a :class:`mtan.train.TrainConfig`) trained on, for its card."""
        return self.trained_text


class _CityScapes(DatasetSpec):
    def split_options(self, split, labels="label_7", frames=None, seed=0, pseudo_depth=False):
        return {"labels": labels}

    def evaluate_args(self, options, labels="label_7"):
        return [f"--labels {labels}"]


class _Synthetic(DatasetSpec):
    def split_options(self, split, labels="label_7", frames=None, seed=0, pseudo_depth=False):
        options = {"seed": seed}
        if frames is not None:
            options["num_frames"] = frames
        if pseudo_depth and split == "train":  # the sky gets a far target; validation keeps it invalid
            options["sky_depth"] = SKY_INVERSE_DEPTH
        return options

    def evaluate_args(self, options, labels="label_7"):
        return [f"--frames {options['num_frames']}"] if "num_frames" in options else []

    def trained_on(self, config):
        return f"{config.data.train_frames or 500} generated street scenes"


class _CamVid(DatasetSpec):
    def split_options(self, split, labels="label_7", frames=None, seed=0, pseudo_depth=False):
        return {"pseudo_depth": True} if pseudo_depth and split == "train" else {}

    def describe(self, options=None):
        if (options or {}).get("splits") == "blocks":
            return "CamVid held-out blocks (real street photos, Cambridge)", self.hub_type
        if not self.holds_out(options):
            return "CamVid val (real street photos, Cambridge; seen in training)", self.hub_type
        return self.val_name, self.hub_type

    def holds_out(self, options=None):
        return (options or {}).get("splits") != "all"  # splits=all trains on val too

    def trained_on(self, config):
        splits = config.data.options.get(self.name, {}).get("splits", "standard")
        if splits == "blocks":
            from mtan.data.camvid import BLOCK_GAP_FRAMES, CamVidDataset

            try:
                train, val = (len(CamVidDataset(None, s, splits="blocks")) for s in ("train", "val"))
            except Exception:  # noqa: BLE001 (CamVid not here: say it without the counts)
                return ("CamVid's train and val photos split by time (Cambridge, UK, daytime): blocks of "
                        "consecutive frames held out for validation")
            return (f"{train} of CamVid's 468 labelled photos (Cambridge, UK, daytime); {val} others, blocks of "
                    f"consecutive frames from each sequence, are held out for validation, and the frames within "
                    f"{BLOCK_GAP_FRAMES // 30} s of them are used for neither")
        if splits == "all":
            return "all 468 of CamVid's labelled photos, train and val (Cambridge, UK, daytime)"
        return self.trained_text


SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    _CityScapes("cityscapes", "CityScapes", "CityScapes val", "cityscapes", "CityScapes (50 German cities, daytime)"),
    _CityScapes("cityscapes-raw", "CityScapes", "CityScapes val", "cityscapes",
                "CityScapes (50 German cities, daytime)"),
    DatasetSpec("nyuv2", "NYUv2", "NYUv2 val", "nyuv2", "NYUv2 indoor scenes"),
    _CamVid("camvid", "CamVid", "CamVid val (real street photos, Cambridge)", "camvid",
            "CamVid's 367 training photos (Cambridge, UK, daytime)", own_size=True, fills_depth=True),
    _Synthetic("synthetic", "mtan procedural street scenes", "mtan generated street scenes, val", "synthetic",
               "generated street scenes", fills_depth=True),
)}


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset name (one part of a mixture); an unknown name gets a plain one."""
    return SPECS.get(name) or DatasetSpec(name, name, f"{name} val", name, name)
