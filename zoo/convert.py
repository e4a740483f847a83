"""Turn an authors' checkpoint into a timm-ready folder (config.json + model.safetensors), optionally on the hub.

The folder loads with ``timm.create_model('local-dir:FOLDER', pretrained=True)``; pushed to a Hugging Face repo
it loads with ``timm.create_model('hf-hub:USER/REPO', pretrained=True)``. Checkpoints are untrusted input: they
are read with ``torch.load(weights_only=True)`` (or safetensors) and refused, in one sentence, otherwise.

With a detector name (``--model maedet_m_gfl``) the whole GFocalV2 detector is converted instead — backbone, neck
and head — into a folder that ``maedet.create_detector('local-dir:FOLDER')`` (or ``'hf-hub:USER/REPO'``) rebuilds
exactly (see :mod:`maedet.zoo.detector_folder`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm

from maedet.cli import make_parser, run_cli
from maedet.errors import MaeDetError
from maedet.fileio import atomic_output_dir, refuse_overwriting_inputs

from .checkpoint import check_state_dict_matches, classifier_classes, load_checkpoint
from .detector_folder import push_detector_folder, save_detector_folder
from .detectors import create_detector, list_detectors
from .maedet import MaeDet, checkpoint_filter_fn
from .structure import Structure, load_structure

# load_checkpoint is re-exported here for callers that imported it from this module before zoo/checkpoint.py existed.
__all__ = ["build_model", "convert_checkpoint", "convert_detector", "load_checkpoint", "main", "push_to_hub"]

LOGGER = logging.getLogger(__name__)
MODEL_NAMES = ("maedet_s", "maedet_m", "maedet_l", "maedet")


def build_model(
    model_name: str | None, structure: Structure | str | os.PathLike[str] | None = None, num_classes: int = 0
) -> MaeDet:
    """An untrained backbone (with a ``num_classes`` classifier, none by default) of a MAE-DET name or structure.

    ``model_name`` None means 'maedet' when a structure is given and 'maedet_m' otherwise; a named model
    (maedet_s/m/l) has its own structure, so giving one as well is refused rather than silently ignored.
    """
    model_name = model_name or ("maedet" if structure is not None else "maedet_m")
    if model_name not in MODEL_NAMES:
        raise MaeDetError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if structure is not None and model_name != "maedet":
        raise MaeDetError(
            f"--model {model_name} has its own structure, so --structure conflicts with it; use --model maedet "
            "with a structure file, or leave out --structure."
        )
    if structure is not None:
        kwargs["structure"] = load_structure(structure)
    elif model_name == "maedet":
        raise MaeDetError("model 'maedet' needs a structure file (--structure).")
    return timm.create_model(model_name, **kwargs)


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_name: str | None = None,
    structure: Structure | str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir`` (config.json + model.safetensors) from an authors', TinyNAS or maedet checkpoint.

    The folder appears whole or not at all (:func:`maedet.fileio.atomic_output_dir`), with the permissions any
    file written by this user gets (the umask), not the private mode of a temporary folder. Every tensor must
    match the model's shape and kind of number (the stem included), or the conversion stops in one sentence.
    A detector name (``maedet_m_gfl``, ``gfl`` with a structure, ...) converts the whole detector
    (:func:`convert_detector`).
    """
    if model_name in list_detectors():
        return convert_detector(checkpoint, out_dir, model_name, structure)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = build_model(model_name, structure)  # the names and the structure are refused before the file is read
    checkpoint_state = load_checkpoint(checkpoint)
    if classes := classifier_classes(checkpoint_state):
        model = build_model(model_name, structure, classes)
    state_dict = checkpoint_filter_fn(checkpoint_state, model)
    check_state_dict_matches(state_dict, model)
    model.load_state_dict(state_dict, strict=True)  # a classifier in the checkpoint is kept, with its class count
    if model.num_classes:
        LOGGER.info("kept the checkpoint's %d-class classifier", model.num_classes)
    model.pretrained_cfg = user_weights_cfg(model.pretrained_cfg, Path(checkpoint).name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out_dir, "output folder") as staging:
        save_folder(model, staging)
    return out_dir


# What the registered config says about the authors' published weights; a folder of the user's weights drops it.
_AUTHORS_PROVENANCE = ("url", "hf_hub_id", "tag", "origin_url", "paper_name", "paper_ids", "notes")


def user_weights_cfg(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """The pretrained config of a folder made from the user's checkpoint: preprocessing and layout as registered,
    but no claim to be the authors' weights (their tag, url, paper), and the source file in the notes."""
    kept = {key: value for key, value in cfg.items() if key not in _AUTHORS_PROVENANCE}
    return {**kept, "notes": (f"Converted by maedet-convert from {source}.",)}


def convert_detector(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_name: str = "maedet_m_gfl",
    structure: Structure | str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
) -> Path:
    """Write ``out_dir`` (config.json + model.safetensors + README.md) from a whole-detector checkpoint.

    Every key of the checkpoint is mapped exactly as :func:`~maedet.zoo.create_detector` does; the folder appears
    whole or not at all, like a backbone's.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = create_detector(model_name, checkpoint=checkpoint, num_classes=num_classes, structure=structure)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out_dir, "output folder") as staging:
        save_detector_folder(model, staging, source=Path(checkpoint).name)
    return out_dir


def _check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, an output folder that exists with content, is a file, or cannot be created."""
    shown = str(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise MaeDetError(f"the output folder {shown!r} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise MaeDetError(f"output folder {shown!r} exists and is not empty.")
    base = out_dir.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise MaeDetError(f"cannot create the output folder {shown!r}: {str(base)!r} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise MaeDetError(f"cannot create the output folder {shown!r}: {str(base)!r} is not writable.")


def _model_args(model: MaeDet) -> dict[str, Any]:
    # The generic 'maedet' entry needs its structure to be rebuilt; the named ones are self-describing.
    if model.pretrained_cfg.get("architecture") == "maedet":
        return {"structure": model.structure.to_dict()}
    return {}


def save_folder(model: MaeDet, folder: str | os.PathLike[str]) -> None:
    """timm's hub layout: config.json (architecture, pretrained cfg, model args) + model.safetensors."""
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), model_args=_model_args(model), safe_serialization=True)


def push_to_hub(folder: str | os.PathLike[str], repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Push a converted folder with timm's ``push_to_hf_hub`` (it writes a model card when the repo has none)."""
    from timm.models import push_to_hf_hub

    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    result = push_to_hf_hub(
        model, repo_id, private=private, token=token, model_args=_model_args(model), safe_serialization=True
    )
    return str(result)


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "maedet-convert", "Convert the authors' MAE-DET checkpoint (mmdetection latest.pth) into a timm folder."
    )
    parser.add_argument("checkpoint", help="authors' latest.pth, a bare TinyNAS state dict, or ours")
    parser.add_argument(
        "--model",
        choices=(*MODEL_NAMES, *list_detectors()),
        help="a backbone (default: maedet_m, or maedet when --structure is given), or a whole detector: "
        "maedet_s_gfl, maedet_m_gfl, maedet_l_gfl, resnet50_gfl, resnet101_gfl, gfl (with --structure)",
    )
    parser.add_argument("--structure", help="structure file (JSON or the authors' txt); implies --model maedet")
    parser.add_argument("--num-classes", type=int, help="classes of a detector (default 80)")
    parser.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the folder to this Hugging Face repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    return parser


def _convert(args: argparse.Namespace) -> int:
    detector = args.model in list_detectors()
    inputs = {"checkpoint": args.checkpoint, "--structure": args.structure}
    refuse_overwriting_inputs(inputs, output_folders={"output folder": args.out})
    if args.num_classes is not None and not detector:
        raise MaeDetError("--num-classes applies to detectors (--model maedet_m_gfl, ...), not to backbones.")
    if detector:
        folder = convert_detector(args.checkpoint, args.out, args.model, args.structure, args.num_classes)
        print(f"wrote {folder}/config.json, {folder}/model.safetensors and {folder}/README.md")
        load = f"maedet.create_detector('local-dir:{folder}')"
    else:
        folder = convert_checkpoint(args.checkpoint, args.out, args.model, args.structure)
        print(f"wrote {folder}/config.json and {folder}/model.safetensors")
        load = f"timm.create_model('local-dir:{folder}', pretrained=True)"
    print(f"load it with: {load}")
    if args.push_to_hub:
        repo = args.push_to_hub
        LOGGER.info("pushing %s to %s", folder, repo)
        push = push_detector_folder if detector else push_to_hub
        try:
            url = push(folder, repo, private=args.private)
        except Exception as exc:  # the hub client raises many kinds (HTTP, auth, connection, offline)
            reason = " ".join(str(exc).split())
            raise MaeDetError(
                f"could not push to {repo} ({type(exc).__name__}: {reason}); the converted folder "
                f"{str(folder)!r} is kept: it loads locally, and can be uploaded once the hub is reachable."
            ) from None
        hub = load.replace(f"local-dir:{folder}", f"hf-hub:{repo}")
        print(f"pushed to {url}; load it with: {hub}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``maedet-convert``: a thin layer over :func:`convert_checkpoint` and :func:`push_to_hub`."""
    return run_cli(_parser(), _convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
