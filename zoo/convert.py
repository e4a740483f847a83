"""Turn an authors' checkpoint into a timm-ready folder (config.json + model.safetensors), optionally on the hub.

The folder loads with ``timm.create_model('local-dir:FOLDER', pretrained=True)``; pushed to a Hugging Face repo
it loads with ``timm.create_model('hf-hub:USER/REPO', pretrained=True)``. Checkpoints are untrusted input: they
are read with ``torch.load(weights_only=True)`` (or safetensors) and refused, in one sentence, otherwise.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from .maedet import MaeDet, checkpoint_filter_fn
from .structure import Structure, load_structure

__all__ = ["build_model", "convert_checkpoint", "load_checkpoint", "main", "push_to_hub"]

MODEL_NAMES = ("maedet_s", "maedet_m", "maedet_l", "maedet")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or a pickle restricted to tensors and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"checkpoint {path.name} is not a readable safetensors file ({exc}).") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing them
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint {path.name} was refused: it does not load as plain weights with weights_only=True "
            f"({_reason(exc)}); only tensors and plain containers are accepted from untrusted files."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"checkpoint {path.name} is not a readable PyTorch checkpoint ({_reason(exc)}).") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path.name} holds a {type(checkpoint).__name__}, not a state dict.")
    return checkpoint


def _reason(exc: BaseException) -> str:
    """One short line out of torch's multi-paragraph load errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for i, line in enumerate(lines):
        if marker in line:
            tail = line.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return tail[:200].rstrip(".")
    return (lines[0] if lines else type(exc).__name__)[:200].rstrip(".")


def build_model(model_name: str, structure: Structure | str | os.PathLike[str] | None = None) -> MaeDet:
    """An untrained backbone (no classifier) of a registered MAE-DET name or of any structure."""
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if structure is not None:
        kwargs["structure"] = load_structure(structure)
    elif model_name == "maedet":
        raise ValueError("model 'maedet' needs a structure file (--structure).")
    return timm.create_model(model_name, **kwargs)


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_name: str = "maedet_m",
    structure: Structure | str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir`` (config.json + model.safetensors) from an authors', TinyNAS or maedet checkpoint.

    The folder appears whole or not at all: it is written beside ``out_dir`` under a temporary name first.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"output folder {str(out_dir)!r} exists and is not empty.")
    model = build_model(model_name, structure)
    state_dict = checkpoint_filter_fn(load_checkpoint(checkpoint), model)
    model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("head.")}, strict=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_folder(model, staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="maedet-convert",
        description="Convert the authors' MAE-DET checkpoint (mmdetection latest.pth) into a timm folder.",
    )
    parser.add_argument("checkpoint", help="authors' latest.pth, a bare TinyNAS state dict, or ours")
    parser.add_argument("--model", default="maedet_m", choices=MODEL_NAMES, help="architecture (default maedet_m)")
    parser.add_argument("--structure", help="structure file (JSON or the authors' txt) for --model maedet")
    parser.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the folder to this Hugging Face repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    args = parser.parse_args(argv)
    try:
        folder = convert_checkpoint(args.checkpoint, args.out, args.model, args.structure)
        print(f"wrote {folder}/config.json and {folder}/model.safetensors")
        print(f"load it with: timm.create_model('local-dir:{folder}', pretrained=True)")
        if args.push_to_hub:
            try:
                url = push_to_hub(folder, args.push_to_hub, private=args.private)
            except Exception as exc:  # the hub client raises many kinds (HTTP, auth, connection)
                raise ValueError(f"could not push to {args.push_to_hub} ({type(exc).__name__}: {exc})") from None
            print(f"pushed to {url}; load it with: timm.create_model('hf-hub:{args.push_to_hub}', pretrained=True)")
    except ValueError as exc:
        print(f"maedet-convert: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"maedet-convert: {exc.strerror or exc} ({exc.filename or ''}).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
