"""The trainer really learns: a small MTAN on generated street scenes beats a constant predictor.

Thresholds, and why they mean something:
- A constant predictor answers the training set's majority class everywhere; its mIoU is that
  class's share divided by the number of classes present (about 0.05 here) and its pixel accuracy
  that share (about 0.36). Reaching 3x its mIoU and +0.20 pixel accuracy needs several classes
  recognised in the right places.
- For depth the best constant is the median training inverse depth (abs error about 0.10 here);
  staying below 0.8x of it needs the depth to vary with the scene (road near, facades far).
On 2 idle CPU cores the run takes well under 2 minutes. It trains in fp32: ``--amp auto`` would
time bf16 against fp32 and could pick either on a busy machine, and these floors are for fp32.
"""
import torch

from mtan.data import build_dataset, to_memory
from mtan.train import apply_preset, train
from mtan.metrics import DepthMetric, SegmentationMetric

SIZE, TRAIN, VAL = "64x128", 96, 24


def constant_predictor_scores():
    train_set = to_memory(build_dataset("synthetic", split="train", size=SIZE, num_frames=TRAIN), progress=False)
    val_set = to_memory(build_dataset("synthetic", split="val", size=SIZE, num_frames=VAL), progress=False)
    tr, va = train_set.batch(torch.arange(len(train_set))), val_set.batch(torch.arange(len(val_set)))
    labels = tr["semantic"][tr["semantic"] >= 0]
    majority = int(torch.bincount(labels).argmax())
    seg = SegmentationMetric(7)
    seg.update(torch.full_like(va["semantic"], majority), va["semantic"])
    depth = DepthMetric()
    depth.update(torch.full_like(va["depth"], float(tr["depth"][tr["depth"] > 0].median())), va["depth"])
    return {**seg.compute(), **depth.compute()}


def test_small_mtan_learns_street_scenes(tmp_path):
    constant = constant_predictor_scores()
    config = apply_preset(None, dict(data="synthetic", size=SIZE, train_frames=TRAIN, val_frames=VAL, width=0.125,
                                     batch_size=8, epochs=10, lr=3e-3, weighting="dwa", out=str(tmp_path / "run"),
                                     progress=False, amp="off", channels_last="off"))  # fp32: the same run whatever the timing says
    history = train(config, log=lambda *a: None)
    val = history[-1]["val"]["synthetic"]
    print("constant:", constant, "trained:", val)
    assert val["semantic.miou"] >= 3 * constant["miou"]
    assert val["semantic.pixel_acc"] >= constant["pixel_acc"] + 0.20
    assert val["depth.abs_err"] <= 0.8 * constant["abs_err"]
    # and training loss went down for both tasks
    first, last = history[0]["train"], history[-1]["train"]
    assert last["loss.semantic"] < 0.7 * first["loss.semantic"] and last["loss.depth"] < first["loss.depth"]
