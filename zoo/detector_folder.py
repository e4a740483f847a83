"""A whole detector as a folder: config.json + model.safetensors + a model card, local or on the Hugging Face hub.

``maedet-convert latest.pth --model maedet_m_gfl --out FOLDER`` writes it; ``create_detector('local-dir:FOLDER')``,
``create_detector('maedet_m_gfl', checkpoint=FOLDER)`` or, once pushed, ``create_detector('hf-hub:USER/REPO')``
rebuild exactly the same detector. The config is data (JSON), never code: the architecture name, the class count,
the head's shape, the backbone (a timm name or a MAE-DET structure) and the test-time postprocess settings. The
weights are our own state dict in safetensors, read back through the same exact key check as any checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError, shorten
from maedet.jsonio import JsonError, read_json

from .gfl import GFocalV2
from .gfl_postprocess import PostprocessConfig
from .structure import load_structure

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "detector_config",
    "hub_detector_folder",
    "is_detector_folder",
    "local_detector_folder",
    "push_detector_folder",
    "read_detector_config",
    "save_detector_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "maedet-detector/1"  # what config.json declares, so a backbone folder is told apart in one sentence
LOCAL_PREFIX, HUB_PREFIX = "local-dir:", "hf-hub:"
_BUILD_KEYS = ("cls_channels", "fpn_channels", "stacked_convs", "reg_max", "reg_topk", "reg_channels", "add_mean")


# ------------------------------------------------------------------------------------------- writing
def detector_config(model: GFocalV2) -> dict[str, Any]:
    """What rebuilds ``model``: its registered name, the head's shape, its backbone and postprocess settings."""
    config: dict[str, Any] = {"format": FORMAT, "architecture": model.name, **model.build_args}
    if model.name == "gfl":  # named detectors have a fixed backbone; the generic one says which
        structure = model.backbone_kwargs.get("structure")
        if structure is not None:
            config["structure"] = load_structure(structure).to_dict()
        elif model.backbone_name is not None:
            config["backbone"] = model.backbone_name
        else:
            raise MaeDetError("a detector built on a backbone module cannot be saved as a folder; build it by name.")
    config["postprocess"] = asdict(model.postprocess_cfg)
    config["mean"], config["std"] = list(model.mean), list(model.std)
    return config


def save_detector_folder(
    model: GFocalV2,
    folder: str | os.PathLike[str],
    source: str | None = None,
    training: dict[str, Any] | None = None,
) -> None:
    """Write config.json, model.safetensors and README.md into ``folder`` (an empty staging folder).

    ``training`` (from ``maedet-train``: data, recipe, epochs, final AP) makes the card say how it was trained.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    config = detector_config(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_NAME).write_text(model_card(config, source, training))


def _training_section(training: dict[str, Any]) -> str:
    """The card's account of a ``maedet-train`` run: the data, the recipe, the epochs and the final val AP."""
    final = training.get("final_ap") or {}
    ap = ", ".join(f"{k} {v:.3f}" for k, v in final.items()) if final else "not evaluated"
    return f"""
## Training

Trained with `maedet-train` on `{training.get("data", "?")}` ({training.get("train_images", "?")} images,
{training.get("num_classes", "?")} classes), recipe `{training.get("recipe", "?")}`, {training.get("epochs", "?")}
epochs, global batch {training.get("global_batch", "?")}, from {training.get("init", "scratch")}.
Validation (`{training.get("val_data", "none")}`): {ap}.
"""


def model_card(config: dict[str, Any], source: str | None = None, training: dict[str, Any] | None = None) -> str:
    """A short hub model card: what the detector is, how it was made, how to load, export and run it."""
    name = config["architecture"]
    backbone = config.get("backbone") or ("a searched MAE-DET structure" if "structure" in config else name[:-4])
    post = config["postprocess"]
    tags = "\n".join(f"- {t}" for t in ("object-detection", "maedet", "gfocalv2", "pytorch", "onnx"))
    made = "trained by `maedet-train`" if training else "converted by `maedet-convert`"
    if source and not training:
        made += f" from `{source}`"
    return f"""---
library_name: maedet
pipeline_tag: object-detection
tags:
{tags}
---

# {name}: GFocalV2 on {backbone}

A GFocalV2 detector (GFL with the DGQP quality branch) for {config["num_classes"]} classes
({config["cls_channels"]} class channels), FPN and head width {config["fpn_channels"]}, {made}.
Plain PyTorch + torchvision, no mmcv.
{_training_section(training) if training else ""}
```python
import maedet

det = maedet.create_detector("hf-hub:USER/REPO")  # or "local-dir:FOLDER"
dets = det.predict(images)  # images: RGB, normalised with timm's ImageNet mean/std, H and W multiples of 32
```

```
maedet-export {name} --checkpoint FOLDER --onnx det.onnx --dynamic   # NMS inside the graph
maedet-detect photo.jpg --checkpoint FOLDER --out results/
```

Test settings: letterbox to (1333, 800) keeping the aspect ratio, pad to a multiple of 32; the {post["nms_pre"]}
best points per level, score > {post["score_thr"]}, class-aware NMS at IoU {post["iou_thr"]}, at most
{post["max_per_img"]} detections per image.
"""


# ------------------------------------------------------------------------------------------- reading
def is_detector_folder(path: object) -> bool:
    """True for a folder whose config.json declares a converted detector (a backbone folder's does not).

    Only the marker is read here (a regular file of at most 1 MB); the rest is checked on reading.
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    config = Path(path) / CONFIG_NAME
    try:
        if not config.is_file() or config.stat().st_size > 2**20:
            return False
        data = read_json(config, "config", max_bytes=2**20)
    except (OSError, JsonError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def local_detector_folder(name: str) -> Path | None:
    """The folder a ``local-dir:FOLDER`` reference or a plain path names, when it holds a detector; else None."""
    path = name[len(LOCAL_PREFIX) :] if name.startswith(LOCAL_PREFIX) else name
    return Path(path) if is_detector_folder(path) else None


def read_detector_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's config.json as data, checked: a detector's, with every field a rebuild needs."""
    path = Path(folder) / CONFIG_NAME
    shown = str(folder)
    config = read_json(path, "detector config", max_bytes=2**20)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise MaeDetError(
            f"folder {shown!r} is not a converted detector (its config.json does not say format {FORMAT!r}); "
            "a backbone folder loads with timm.create_model('local-dir:...')."
        )
    missing = [k for k in ("architecture", "num_classes", *_BUILD_KEYS, "strides", "postprocess") if k not in config]
    if missing:
        raise MaeDetError(f"the config.json of {shown!r} lacks {', '.join(missing)}.")
    if not (Path(folder) / WEIGHTS_NAME).is_file():
        raise MaeDetError(f"folder {shown!r} has a config.json but no {WEIGHTS_NAME}.")
    return config


def build_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """``create_detector`` keyword arguments from a checked config (everything but the weights)."""
    kwargs: dict[str, Any] = {k: config[k] for k in _BUILD_KEYS}
    kwargs["strides"] = tuple(config["strides"])
    try:
        kwargs["postprocess_cfg"] = PostprocessConfig(**config["postprocess"])
    except TypeError as exc:
        raise MaeDetError(f"the config's postprocess settings are not understood ({exc}).") from None
    if "structure" in config:
        kwargs["structure"] = load_structure(config["structure"])
    if "backbone" in config:
        kwargs["backbone"] = config["backbone"]
    return kwargs


def hub_detector_folder(repo_id: str) -> Path:
    """The local snapshot of a hub repo holding a converted detector (downloaded once into the hub cache)."""
    from huggingface_hub import snapshot_download

    from maedet.hub import offline_sentence, offline_when_unreachable

    with offline_when_unreachable() as offline:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
        except Exception as exc:  # the hub client raises many kinds (HTTP, auth, connection, offline)
            if offline is not None:
                raise MaeDetError(
                    f"{offline_sentence(f'hf-hub:{repo_id}', offline)}; download it where there is network and give "
                    "its folder (local-dir:FOLDER)."
                ) from None
            reason = f"{type(exc).__name__}: {shorten(_one_line(exc), 300)}"
            raise MaeDetError(f"could not fetch {repo_id!r} from the hub ({reason}).") from None


def push_detector_folder(
    folder: str | os.PathLike[str], repo_id: str, private: bool = False, token: str | None = None
) -> str:
    """Create the hub repo (if needed) and upload the folder as one commit; returns the repo's URL."""
    from huggingface_hub import HfApi

    read_detector_config(folder)  # only a whole, valid folder goes up
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        commit_message="Add a GFocalV2 detector converted by maedet-convert",
    )
    return str(url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
