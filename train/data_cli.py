"""``maedet-data``: make data for training; ``maedet-data shapes`` writes the synthetic COCO-format demo set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from maedet.cli import add_subparsers, add_verbosity, make_parser, progress_bar, run_cli

from .shapes import SHAPE_CLASSES, generate_shapes

__all__ = ["main"]


def _shapes(args: argparse.Namespace) -> int:
    total = args.train + args.val
    with progress_bar() as progress:
        task = progress.add_task("drawing shapes", total=max(total, 0))
        out = generate_shapes(
            args.out,
            train=args.train,
            val=args.val,
            size=args.size,
            seed=args.seed,
            classes=args.classes,
            on_image=lambda: progress.advance(task),
        )
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("maedet-data", "Make data for maedet-train.")
    commands = add_subparsers(parser)
    shapes = commands.add_parser(
        "shapes",
        help="a synthetic COCO-format detection set of coloured shapes (offline, deterministic for a seed)",
        description="Write DIR/train, DIR/val (JPEG) and DIR/train.json, DIR/val.json (COCO format).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_verbosity(shapes)
    shapes.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    shapes.add_argument("--train", type=int, default=2000, metavar="N", help="training images")
    shapes.add_argument("--val", type=int, default=200, metavar="M", help="validation images")
    shapes.add_argument("--size", type=int, default=256, metavar="S", help="long side of every image, pixels")
    shapes.add_argument("--seed", type=int, default=0, metavar="K", help="the same seed gives the same files")
    shapes.add_argument(
        "--classes", nargs="+", default=list(SHAPE_CLASSES), metavar="NAME", help=f"from {' '.join(SHAPE_CLASSES)}"
    )
    shapes.set_defaults(handler=_shapes)
    return run_cli(parser, lambda args: args.handler(args), argv)
