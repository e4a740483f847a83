"""What a model reference names, resolved once for every tool: timm's own forms (``resnet50``, ``resnet50.a1_in1k``,
``local-dir:FOLDER``, ``hf-hub:ORG/REPO``) plus a plain path to a converted folder (config.json + model.safetensors).

timm builds all of these, but a folder or a hub repo also brings weights, which timm loads only with
``pretrained=True`` and, for feature extractors, without checking that the keys fit. Here a reference says which
architecture to build (with the folder's model arguments and preprocessing) and which folder holds its weights;
the caller loads those strictly, exactly as it loads a ``--checkpoint`` file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from timm.models import parse_model_name, split_model_name_tag

from maedet.errors import MaeDetError
from maedet.zoo import Structure, load_structure
from maedet.zoo.checkpoint import FOLDER_WEIGHT_FILES
from maedet.zoo.model_args import check_model_args
from maedet.zoo.structure import BUILTIN_NAMES
from maedet.zoo.timm_private import load_model_config_from_path

from .errors import ExportError, first_line

__all__ = ["ModelReference", "parse_model_reference", "reference_structure"]

# Where a folder's config says the weights come from: cleared, because the reference's loader reads them itself.
_WEIGHT_SOURCE_KEYS = ("source", "file", "hf_hub_id", "url")
_FOLDER_HINT = "a converted folder (maedet-convert) holds config.json + model.safetensors"


@dataclass(frozen=True)
class ModelReference:
    """A model as the user named it: the timm architecture to build, and the folder of its own weights if any."""

    text: str  # as given, e.g. 'local-dir:weights/x'
    architecture: str  # the registered timm name, without a tag
    create_name: str  # what timm.create_model builds: the name as given (tag kept), or a folder's architecture
    folder: Path | None = None  # config.json + weights (a local folder, or the hub repo's downloaded snapshot)
    pretrained_cfg: Mapping[str, Any] | None = None  # a folder's preprocessing (mean, std, input size)
    model_args: Mapping[str, Any] = field(default_factory=dict)  # a folder's model arguments (e.g. a structure)

    def create_kwargs(self) -> dict[str, Any]:
        """What ``timm.create_model(self.create_name, ...)`` needs besides the caller's own arguments."""
        kwargs = dict(self.model_args)
        if self.pretrained_cfg is not None:
            kwargs["pretrained_cfg"] = dict(self.pretrained_cfg)
        return kwargs


def parse_model_reference(text: str) -> ModelReference:
    """Resolve a model reference, or say in one sentence why it names no model (nothing is built yet)."""
    if not isinstance(text, str) or not text.strip():
        raise ExportError("an empty model name was given.")
    if _looks_like_folder(text):
        return _folder_reference(text, Path(text))
    try:
        source, ident = parse_model_name(text)
    except ValueError:  # a path-like name that is no folder here
        raise ExportError(
            f"unknown model {text!r}: no such folder, and not a timm model name ({_FOLDER_HINT}; a Hugging Face "
            "repo is written hf-hub:ORG/REPO)."
        ) from None
    if source == "local-dir":
        return _folder_reference(text, Path(ident))
    if source == "hf-hub":
        return _folder_reference(text, _hub_snapshot(ident))
    architecture, tag = split_model_name_tag(ident)
    if not timm.is_model(architecture):
        raise ExportError(f"unknown model {text!r}: not a maedet model nor a registered timm model.")
    if tag and not timm.list_pretrained(text):
        tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{architecture}.*")]
        raise ExportError(f"unknown model {text!r}: {architecture} has no tag {tag!r} (it has: {', '.join(tags)}).")
    return ModelReference(text=text, architecture=architecture, create_name=text)


def reference_structure(ref: ModelReference) -> Structure | None:
    """The MAE-DET structure a reference builds (a built-in one, or the one written in a folder's config)."""
    if ref.architecture == "maedet" and "structure" in ref.model_args:
        return load_structure(ref.model_args["structure"])
    if ref.architecture in BUILTIN_NAMES:
        return load_structure(ref.architecture)
    return None


def _looks_like_folder(text: str) -> bool:
    """A plain path to a folder; a registered name wins over a same-named folder in the working directory."""
    if not os.path.isdir(text):
        return False
    return any(sep in text for sep in ("/", os.sep)) or not timm.is_model(split_model_name_tag(text)[0])


def _folder_reference(text: str, folder: Path) -> ModelReference:
    """A converted folder: its config names the architecture, its model arguments and its preprocessing."""
    if not folder.is_dir():
        raise ExportError(f"model folder {str(folder)!r} does not exist ({_FOLDER_HINT}).")
    if not (folder / "config.json").is_file():
        raise ExportError(f"model folder {str(folder)!r} has no config.json ({_FOLDER_HINT}).")
    if not any((folder / name).is_file() for name in FOLDER_WEIGHT_FILES):
        raise ExportError(f"model folder {str(folder)!r} holds no weights ({', '.join(FOLDER_WEIGHT_FILES)}).")
    try:
        cfg, architecture, model_args = load_model_config_from_path(folder)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ExportError(f"cannot read {str(folder / 'config.json')!r}: {first_line(exc)}") from None
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise ExportError(
            f"{str(folder / 'config.json')!r} names architecture {architecture!r}, which is not a registered timm "
            "model."
        )
    try:
        model_args = check_model_args(model_args, repr(str(folder / "config.json")))
    except MaeDetError as exc:
        raise ExportError(str(exc)) from None
    _check_folder_structure(folder, architecture, model_args)
    cfg = {key: value for key, value in cfg.items() if key not in _WEIGHT_SOURCE_KEYS}
    return ModelReference(text, architecture, architecture, folder, cfg, dict(model_args))


def _check_folder_structure(folder: Path, architecture: str, model_args: Mapping[str, Any]) -> None:
    """A folder's structure must be written out in its config (data), never a path to read or a name to look up."""
    if architecture != "maedet":
        return
    structure = model_args.get("structure")
    if not isinstance(structure, Mapping):
        raise ExportError(
            f"{str(folder / 'config.json')!r} must hold the structure of its 'maedet' model as a JSON object "
            "under model_args.structure (maedet-convert writes it so)."
        )
    try:
        load_structure(structure)
    except ValueError as exc:
        raise ExportError(f"the structure in {str(folder / 'config.json')!r} is not valid: {exc}") from None


@functools.lru_cache(maxsize=16)
def _hub_snapshot(repo_id: str) -> Path:
    """The repo's config.json and weights, downloaded (or found in the local cache) into one snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from maedet.hub import offline_sentence, offline_when_unreachable

    repo, _, revision = repo_id.partition("@")
    with offline_when_unreachable() as offline:
        try:
            config = Path(hf_hub_download(repo, "config.json", revision=revision or None))
            for name in FOLDER_WEIGHT_FILES:
                try:
                    hf_hub_download(repo, name, revision=revision or None)
                    break
                except EntryNotFoundError:  # not in this repo (or not cached, offline): try the next name
                    continue
        except (OSError, ValueError, RuntimeError) as exc:  # the hub client's errors derive from these
            if offline is not None:
                raise ExportError(
                    f"{offline_sentence(f'hf-hub:{repo_id}', offline)}; download the repo where there is network and "
                    "give its folder."
                ) from None
            raise ExportError(
                f"cannot fetch hf-hub:{repo_id} from the Hugging Face hub ({type(exc).__name__}: "
                f"{first_line(exc, 160)}); check the repo name and the network, or download the repo and give its "
                "folder."
            ) from None
    return config.parent
