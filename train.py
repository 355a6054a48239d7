"""Train MTAN (or its split / single-task baselines) with one command.

    python train.py --preset smoke                                   # under a minute on 2 CPU cores, generated data
    python train.py --preset street --init-from weights              # fine-tune the app's default model (CPU: hours)
    python recipes/street_gpu.py                                     # the full-width street model on one GPU
    python train.py --preset paper-cityscapes --data-root data/cityscapes
    python train.py --preset benchmark-cityscapes --data-root data/cityscapes --compile
    python train.py --preset paper-nyuv2 --data-root data/nyuv2
    torchrun --nproc_per_node 4 train.py --preset benchmark-cityscapes --data-root data/cityscapes
    python train.py --resume runs/smoke                             # continue a killed run exactly

Defaults are the paper's protocol (Adam 1e-4, StepLR 100 / 0.5, 200 epochs, batch 8, DWA T=2);
a preset sets a group of them and any flag given explicitly wins over the preset. The run
folder gets metrics.jsonl, curves.png, checkpoints/, the last model (config.json,
model.safetensors, README.md model card) and the best one in best/.

Exit codes: 0 finished (also when a --push-to-hub upload failed: the files stay and the retry
command is printed); 2 a bad flag, bad data, an unusable run folder or a failed write such as a
full disk (the message says what is intact and what to do); 3 a training loss became NaN or
infinite (the task is named, the last good checkpoint kept); 130 interrupted with Ctrl-C.
"""
import sys

from mtan.train.cli import config_from_args, main, parser  # noqa: F401 (the command's parts, for tools)

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
