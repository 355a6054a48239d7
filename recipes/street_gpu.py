"""Train the full-width street model on one GPU with the street recipe, then write a release folder.

    python recipes/street_gpu.py --out runs/streets-gpu --release streets    # one H100 / H200
    python recipes/street_gpu.py --tiny --out /tmp/street-tiny --release /tmp/street-tiny-model  # CPU check

The recipe is the ``street`` preset of ``train.py`` (CamVid + generated scenes at 288x384, 192x256
crops at zoom 0.5-2.0, photometric augmentation, AdamW with warm-up and cosine decay, class
balance, label smoothing, depth smoothness) at the paper's width (1.0), with what a GPU allows:
3,000 generated scenes instead of 600, batch 32, bf16, channels-last, torch.compile, all tasks'
attention batched, and the data rendered by 16 processes before training. ``--tiny`` runs the
same two steps in a minute on a CPU (narrow model, generated scenes only, small sizes): what the
test suite runs. ``--epochs`` and ``--batch-size`` override the recipe's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU = dict(width=1.0, train_frames=3000, val_frames=500, batch_size=32, epochs=60, compile=True,
           data_workers=16, eval_every=10, progress=False)
TINY = dict(data="synthetic", width=0.0625, size="64x96", crop="32x64", train_frames=16, val_frames=8, batch_size=4,
            epochs=2, eval_every=1, data_workers=2, progress=False, amp="off")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/streets-gpu", help="the run folder")
    p.add_argument("--release", default=None, help="also write a documented model folder here (mtan.release)")
    p.add_argument("--tiny", action="store_true", help="a one-minute CPU version of the same steps")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--hardware", default=None, help="what it trains on, for the card (default: this machine)")
    args = p.parse_args(argv)

    from mtan.train import apply_preset, train
    from mtan.release import release

    overrides = dict(TINY if args.tiny else GPU, out=args.out)
    overrides.update({k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v})
    config = apply_preset("street", overrides)
    config.command = "python recipes/street_gpu.py" + (" --tiny" if args.tiny else "")
    start = time.perf_counter()
    train(config)
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    if args.release:
        release(args.out, args.release, hardware=args.hardware, latency=not args.tiny)
        print(f"release folder: {args.release}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
