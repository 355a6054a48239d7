"""``python -m mtan.data.synthetic``: write a release and / or a preview sheet."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


from mtan.data.common import parse_size
from mtan.data.synthetic.frames import preview, write_release


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    if not re.fullmatch(r"\s*\d+\s*[xX×]\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 128x256, got {text!r}")
    try:
        return parse_size(text, minimum=8)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    v = _non_negative(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtan.data.synthetic",
        description="Render procedural street frames (image, CityScapes 7-category labels, inverse\n"
                    "depth 1.85/m with sky 0) in the MTAN CityScapes release layout, and/or a preview grid.",
        epilog="examples:\n"
               "  python -m mtan.data.synthetic --out data/synthetic --train 3000 --val 500 --workers 2\n"
               "  python -m mtan.data.synthetic --preview grid.png --size 256x512",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory ({train,val}/{image,label_7,depth}/{i}.npy); "
                                            "existing frames are kept, so an interrupted run can be resumed")
    p.add_argument("--train", type=_non_negative, default=0, metavar="N", help="number of training frames (default 0)")
    p.add_argument("--val", type=_non_negative, default=0, metavar="M", help="number of validation frames (default 0)")
    p.add_argument("--size", type=_size, default=(128, 256), metavar="HxW", help="frame size, e.g. 128x256 (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed; frame i of a seed is always the same (default 0)")
    p.add_argument("--workers", type=_positive, default=1, metavar="K", help="worker processes (default 1)")
    p.add_argument("--preview", type=Path, metavar="PNG", help="also save a grid of frames as a PNG")
    p.add_argument("--preview-frames", type=_positive, default=8, metavar="N", help="frames in the preview (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("nothing to do: give --out DIR with --train/--val, and/or --preview PNG")
    if args.out is not None and args.train + args.val == 0:
        parser.error("--out needs --train N and/or --val M greater than 0")
    h, w = args.size
    if args.out is not None:
        write_release(args.out, args.train, args.val, h, w, seed=args.seed, workers=args.workers,
                      progress=not args.quiet)
        print(f"wrote {args.train} train + {args.val} val frames of {h}x{w} to {args.out}")
    if args.preview is not None:
        preview(args.preview, n=args.preview_frames, seed=args.seed, height=h, width=w, workers=args.workers)
        print(f"wrote preview {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
