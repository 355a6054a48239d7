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
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtan.train import PRESETS, NonFiniteLossError, TrainConfig, apply_preset, command_line, train
from mtan.data.common import option_value
from mtan.train.config import CLASS_BALANCE

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a group of settings: " + "; ".join(
        f"{k}: {v.get('data')} {v.get('size', '')} {v.get('epochs')} epochs batch {v.get('batch_size')}"
        f"{' +aug' if v.get('augment') else ''}" for k, v in PRESETS.items()))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last good checkpoint "
                   "(its train_config.json is used; --epochs may extend it)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help=f"dataset by registry name: cityscapes, cityscapes-raw, nyuv2, camvid, synthetic, "
                   f"or a mixture like synthetic+camvid (default {d.data})")
    g.add_argument("--data-root", help="dataset folder; for a mixture ROOT_A+ROOT_B (synthetic needs none)")
    g.add_argument("--size", help="HxW to train at, e.g. 128x256 (default: the dataset's own)")
    g.add_argument("--labels", help=f"CityScapes label set: label_7, label_19, label_2 (default {d.labels})")
    g.add_argument("--train-frames", type=int, help="synthetic: frames to generate for training")
    g.add_argument("--val-frames", type=int, help="synthetic: frames to generate for validation")
    g.add_argument("--data-option", dest="data_options", action="append", metavar="PART.KEY=VALUE",
                   type=data_option, help="an option of one dataset's builder, e.g. camvid.splits=blocks (train and "
                   "val split by time, so tuning photos have no near-copy in training) or camvid.splits=all "
                   "(every labelled photo in training); repeatable")
    g.add_argument("--data-workers", type=int, help="processes that read or render the data once, before training "
                   "(default 0: the main process; e.g. 16 on a 16-core GPU machine)")
    aug = g.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random scale-crop {1, 1.2, 1.5} + horizontal flip, on the GPU on whole batches")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation (the paper)")
    g.add_argument("--scale-range", metavar="LOW,HIGH", help="with --augment: zoom scales drawn log-uniformly in "
                   "[LOW, HIGH], e.g. 0.5,2.0 (below 1 zooms out: the image sits inside a black, ignored border)")
    g.add_argument("--crop", metavar="HxW", help="with --augment: train on crops of this size (multiples of 32) of "
                   "the --size data; validation stays whole")
    g.add_argument("--photometric", action="store_true", default=None, help="colour, gamma, blur, JPEG and noise "
                   "augmentation on whole batches (mtan/data/photometric.py)")
    pd = g.add_mutually_exclusive_group()
    pd.add_argument("--pseudo-depth", dest="pseudo_depth", action="store_true", default=None,
                    help="train split: CamVid gets ground-plane pseudo-depth, sky gets a far target "
                         "(mtan/data/pseudo_depth.py; the demo preset's default)")
    pd.add_argument("--no-pseudo-depth", dest="pseudo_depth", action="store_false",
                    help="no pseudo-depth: CamVid trains segmentation only, sky has no depth target")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["mtan", "split", "single"], help=f"architecture (default {d.arch})")
    g.add_argument("--task", help="the task of --arch single: semantic, depth or normal")
    g.add_argument("--width", type=float, help=f"width multiplier, 1.0 = the paper's 64..512 (default {d.width:g})")
    g.add_argument("--init-from", metavar="MODEL", help="start from the weights of a saved model with the same "
                   "architecture, tasks and width (a folder, a run folder or a Hub repo id): fine-tuning")
    g = p.add_argument_group("optimisation")
    g.add_argument("--weighting", choices=["equal", "dwa", "uncertainty"], help=f"loss weighting (default {d.weighting})")
    g.add_argument("--temperature", type=float, help=f"DWA temperature T (default {d.temperature:g})")
    g.add_argument("--optimizer", choices=["adam", "adamw"], help=f"optimiser (default {d.optimizer})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr:g})")
    g.add_argument("--weight-decay", type=float, help=f"weight decay (default {d.weight_decay:g}; decoupled with adamw)")
    g.add_argument("--schedule", choices=["step", "cosine", "poly"], help="learning-rate schedule: step (StepLR, the "
                   "paper), cosine or poly (power 0.9) decay to 0 over the run, per step (default step)")
    g.add_argument("--warmup-epochs", type=float, help="cosine / poly: linear warm-up over this many epochs")
    g.add_argument("--step-size", type=int, help=f"StepLR: epochs between learning-rate drops (default {d.step_size})")
    g.add_argument("--gamma", type=float, help=f"StepLR: learning-rate factor at each drop (default {d.gamma:g})")
    g.add_argument("--class-weights", choices=list(CLASS_BALANCE),
                   help="semantic training loss: none (the paper), median-frequency balancing of the classes "
                        "(as SegNet on CamVid, from the training labels), or its square root (a tempered balance: a "
                        "class 16x rarer than the median weighs 4x)")
    g.add_argument("--label-smoothing", type=float, help="semantic cross-entropy label smoothing (default 0)")
    g.add_argument("--depth-smoothness", type=float, help="weight of an edge-aware smoothness term on the predicted "
                   "depth (needs no depth labels; default 0)")
    g.add_argument("--epochs", type=int, help=f"number of epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, help=f"images per step and process (default {d.batch_size})")
    g = p.add_argument_group("engine")
    g.add_argument("--seed", type=int, help=f"random seed: same seed, same run (default {d.seed})")
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    g.add_argument("--amp", choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on CUDA; on a CPU the faster "
                   "of off and bf16, timed on this machine at start (the choice is logged and kept by --resume)")
    g.add_argument("--channels-last", choices=["auto", "on", "off"], help="channels-last memory: auto = on CUDA only")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (eager fallback)")
    g.add_argument("--batched-attention", choices=["auto", "on", "off"],
                   help="run all tasks' attention branches as one batched computation (same math): auto = on CUDA")
    g.add_argument("--eval-every", type=int, help="validate every N epochs (and after the last)")
    g.add_argument("--eval-batch-size", type=int, help="validation batch size (default: --batch-size)")
    g.add_argument("--out", help=f"run folder (default {d.out}; the smoke preset uses runs/smoke)")
    g.add_argument("--keep-checkpoints", type=int, help="checkpoints kept in RUN_DIR/checkpoints (default 2)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no tqdm bars")
    g = p.add_argument_group("hub")
    g.add_argument("--push-to-hub", metavar="USER/REPO", help="upload the final model, card, curves and metrics")
    g.add_argument("--private", action="store_true", default=None, help="create the Hub repo as private")
    return p


def data_option(text: str) -> tuple[str, str, object]:
    """``camvid.splits=blocks`` -> ("camvid", "splits", "blocks"); numbers and true/false are read as such."""
    part, _, rest = text.partition(".")
    key, eq, value = rest.partition("=")
    if not (part and key and eq):
        raise argparse.ArgumentTypeError(f"expected PART.KEY=VALUE such as camvid.splits=blocks, got {text!r}")
    return part, key, option_value(value)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    values = {k: v for k, v in vars(args).items() if k not in ("preset", "resume")}
    if values.get("data_options") is not None:
        options: dict = {}
        for part, key, value in values["data_options"]:
            options.setdefault(part, {})[key] = value
        values["data_options"] = options
    if args.resume:
        saved = Path(args.resume) / "train_config.json"
        if not saved.is_file():
            raise ValueError(f"--resume {args.resume}: no train_config.json there; is it a run folder?")
        try:
            base = json.loads(saved.read_text(encoding="utf-8"))
            if not isinstance(base, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            raise ValueError(f"--resume {args.resume}: {saved} is not readable ({e}); it is written at the start "
                             f"of every run, so this folder's run cannot be continued: start a new one") from None
        allowed = {"epochs", "device", "progress", "eval_batch_size", "push_to_hub", "private", "compile",
                   "batched_attention", "data_workers", "eval_every"}
        changed = sorted(k for k, v in values.items() if v is not None and k not in allowed and base.get(k) != v)
        if changed:
            raise ValueError(f"--resume keeps the run's settings; these flags would change them: {changed}. "
                             f"Start a new run (another --out) instead")
        base.update({k: v for k, v in values.items() if v is not None})
        base["out"] = str(args.resume)
        return TrainConfig.from_dict(base), True
    config = apply_preset(args.preset, values)
    config.command = command_line()
    return config, False


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import torch

    from mtan.checkpoint import CheckpointError
    from mtan.data import DatasetError
    from mtan.model import ModelConfigError

    config = None
    try:
        config, resume = config_from_args(args)
        train(config, resume=resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except (DatasetError, ModelConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # e.g. a full disk or a vanished folder outside the checkpoint writer
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except torch.OutOfMemoryError:
        print("error: the device ran out of memory; lower --batch-size (or --size, --width), or use --amp bf16 "
              "on a GPU", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch's checkpoint is kept; continue with "
              f"python train.py --resume {config.out if config else args.resume or args.out or 'RUN_DIR'}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
