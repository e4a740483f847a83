"""``maedet-train``: train a GFocalV2 detector on COCO-format data, alone, under torchrun, or with ``--nproc N``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from maedet.cli import deprecated_alias, make_parser, run_cli
from maedet.errors import MaeDetError
from maedet.sizes import OneSizeAction
from maedet.zoo.detectors import list_detectors

from .distributed import launch_torchrun
from .model import ModelSpec
from .recipe import RECIPES, Recipe, recipe_with
from .run import TrainingInterrupted, resume, train
from .settings import TrainSettings

__all__ = ["main"]

PROG = "maedet-train"
_EPILOG = """examples:
  maedet-train --recipe demo --model gfl --structure runs/s/best.json --data shapes/train.json \\
      --images shapes/train --val-data shapes/val.json --val-images shapes/val --out runs/train
  torchrun --nproc_per_node 8 -m maedet.train --recipe maedet-6x --model maedet_m_gfl --data ... --out ...
  maedet-train --resume runs/train
"""


def _add_data_model(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and output")
    data.add_argument("--data", help="training annotations (COCO json); the class count comes from it")
    data.add_argument("--images", help="folder the training file names are relative to")
    data.add_argument("--val-data", help="val annotations (COCO json), evaluated every --eval-every epochs")
    data.add_argument("--val-images", help="folder of the val images")
    data.add_argument("--out", help="a new (or empty) folder for checkpoints, metrics, plot and the detector")
    data.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR exactly (other options ignored)")
    data.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final detector folder at the end")
    model = parser.add_argument_group("detector")
    model.add_argument("--model", default="maedet_s_gfl", choices=list_detectors(), help="detector to train")
    model.add_argument("--structure", help="a searched structure (JSON) for --model gfl")
    model.add_argument("--backbone", help="a timm backbone name for --model gfl")
    model.add_argument("--backbone-checkpoint", metavar="REF", help="pretrained backbone weights (file, folder, "
                       "local-dir:, hf-hub:, timm name.tag); default: from scratch")  # fmt: skip
    model.add_argument("--init-from", metavar="DETECTOR_REF", help="start from a trained detector (file or folder)")
    model.add_argument("--num-classes", type=int, help="must equal the data file's category count if given")


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("recipe (every value defaults to the chosen preset's)")
    g.add_argument("--recipe", default="maedet-6x", choices=list(RECIPES), help="preset")
    g.add_argument("--lr", type=float, help="learning rate for 16 images per step (scaled with the global batch)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-iterations", dest="warmup_iters", type=int, help="iterations of linear warm-up")
    deprecated_alias(g, "--warmup-iters", "--warmup-iterations")
    g.add_argument("--warmup-ratio", type=float)
    g.add_argument("--steps", type=int, nargs="+", metavar="EPOCH", help="epochs after which lr × gamma")
    g.add_argument("--gamma", type=float)
    g.add_argument("--epochs", type=int)
    g.add_argument("--short-range", type=int, nargs=2, metavar=("MIN", "MAX"), help="train short side range")
    g.add_argument("--long-max", type=int, help="train long side limit")
    g.add_argument("--flip", type=float, help="horizontal flip probability")
    g.add_argument("--batch-size", dest="batch_per_process", type=int, help="images per process and step")
    deprecated_alias(g, "--batch", "--batch-size")
    g.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument(
        "--test-scale",
        dest="eval_scale",
        nargs="+",
        action=OneSizeAction,
        limits=(32, None),
        metavar="SIZE",
        help="evaluation letterbox, the limits of the long and short side: LONG SHORT, LONGxSHORT or one number for "
        "both (as maedet-detect/eval --test-scale)",
    )
    deprecated_alias(g, "--eval-scale", "--test-scale")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N epochs (and after the last)")
    g.add_argument("--fpn-channels", type=int, help="FPN and head width (multiple of 32)")
    g.add_argument("--stacked-convs", type=int, help="convs in each head tower")


def _add_run(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--nproc", type=int, help="start this many processes on this machine through torchrun")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision (CUDA only)")
    g.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradient norm")
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights (timm's ModelEmaV3)")
    g.add_argument("--ema-decay", type=float, default=0.9998)
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with NHWC activations (about 15%% faster steps on this CPU; the weights saved are the same)",
    )
    g.add_argument("--max-minutes", type=float, help="finish after the epoch that crosses this many minutes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=0, help="data loader workers per process")


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Train a GFocalV2 detector (MAE-DET or any timm backbone) on COCO-format data.")
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_data_model(parser)
    _add_recipe(parser)
    _add_run(parser)
    return parser


def _recipe(args: argparse.Namespace) -> Recipe:
    names = [f.name for f in fields(Recipe) if f.name != "name"]
    return recipe_with(args.recipe, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def _settings(args: argparse.Namespace) -> TrainSettings:
    missing = [flag for flag, value in (("--data", args.data), ("--images", args.images), ("--out", args.out))
               if value is None]  # fmt: skip
    if missing:
        raise MaeDetError(f"a new run needs {', '.join(missing)} (or --resume DIR to continue one).")
    spec = ModelSpec(args.model, args.structure, args.backbone, args.backbone_checkpoint, args.init_from)
    return TrainSettings(
        data=args.data, images=args.images, out=args.out, val_data=args.val_data, val_images=args.val_images,
        model=spec, recipe=_recipe(args), num_classes=args.num_classes, seed=args.seed, workers=args.workers,
        device=args.device, amp=args.amp, clip_grad=args.clip_grad, ema=args.ema, ema_decay=args.ema_decay,
        channels_last=args.channels_last,
        max_minutes=args.max_minutes, push_to_hub=args.push_to_hub,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    try:
        result = resume(args.resume, args.max_minutes) if args.resume else train(_settings(args))
    except TrainingInterrupted as exc:
        out = args.resume or args.out
        sys.stderr.write(f"{PROG}: interrupted ({exc}); a resumable checkpoint is in {out}: --resume {out}\n")
        return 128 + exc.signum
    if result.detector is not None:
        ap = ", ".join(f"{k} {v:.3f}" for k, v in result.final_ap.items()) or "no val set"
        print(f"{result.detector}  ({result.epochs} epochs; {ap})")
    return 0


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run_or_launch(args: argparse.Namespace) -> int:
        if args.nproc and "WORLD_SIZE" not in os.environ:
            return launch_torchrun(args.nproc, _without_nproc(argv))
        return _run(args)

    return run_cli(_parser(), run_or_launch, argv)
