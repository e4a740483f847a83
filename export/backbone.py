"""The backbone kind: any timm model (MAE-DET or not) exporting its feature maps or its logits."""

from __future__ import annotations

from typing import Any

import torch

from .check import CheckReport, check_against_torch, synthetic_images
from .errors import ExportError, first_line
from .kinds import ModelKind, Prepared
from .model_source import resolve_model, validate_input_size
from .request import BACKBONE, ExportRequest
from .validate import check_activation_memory, check_out_indices

__all__ = ["BackboneKind"]


class BackboneKind(ModelKind):
    name = BACKBONE
    default_size = (640, 640)

    def check_model(self, model: Any, request: ExportRequest) -> None:
        check_out_indices(model, request.structure, request.out_indices)

    def prepare(self, model: Any, request: ExportRequest, size: tuple[int, int]) -> Prepared:
        source = resolve_model(model, **request.model_request())
        h, w = validate_input_size(size, source.size_multiple)
        batch = request.batch
        check_activation_memory(source.module, (batch, source.in_chans, h, w), f"exporting at {batch}×{h}×{w}")
        example = torch.from_numpy(synthetic_images(batch, h, w, source.mean, source.std, seed=1234))
        try:
            with torch.no_grad():
                outs = tuple(source.module(example))
        except RuntimeError as exc:  # PyTorch's shape errors: the network cannot run at this size
            raise ExportError(
                f"model {source.model_name!r} cannot run at input size {(h, w)}: {first_line(exc, 200)}"
            ) from None
        names = list(source.output_names) or [f"out{i}" for i in range(len(outs))]
        if len(names) != len(outs):
            raise ExportError(f"the model returns {len(outs)} outputs, but {len(names)} names were found.")
        spatial = all(o.dim() == 4 for o in outs)
        return Prepared(source.model_name, source.module, example, outs, names, source.mean, source.std, source,
                        spatial_outputs=spatial)  # fmt: skip

    def metadata(self, prepared: Prepared, request: ExportRequest) -> dict[str, Any]:
        source = prepared.handle
        strides = list(source.strides)
        if len(strides) != len(prepared.output_names):
            strides = [0] * len(prepared.output_names)
        return {
            "structure": source.structure.to_dict() if source.structure is not None else None,
            "outputs": request.outputs,
            "output_strides": strides
            if len(strides) == len(prepared.output_names)
            else [0] * len(prepared.output_names),
            "input_size": [source.in_chans, *prepared.input_hw],
        }

    def check(
        self,
        prepared: Prepared,
        request: ExportRequest,
        file_bytes: bytes,
        network_bytes: bytes,
        runtime: str = "onnxruntime",
    ) -> CheckReport:
        reference = {n: o.float().numpy() for n, o in zip(prepared.output_names, prepared.reference, strict=True)}
        return check_against_torch(
            file_bytes,
            prepared.module,
            prepared.example,
            prepared.output_names,
            request.precision,
            request.tolerance,
            reference=reference,
            runtime=runtime,
        )

    def weights_tag(self, prepared: Prepared, request: ExportRequest) -> str | None:
        """timm's pretrained tag (``resnet50.a1_in1k``) when the weights are timm's; None otherwise."""
        if not request.pretrained or request.checkpoint is not None:
            return None
        cfg = getattr(getattr(prepared.module, "inner", None), "pretrained_cfg", None) or {}
        return ".".join(p for p in (cfg.get("architecture") or prepared.name, cfg.get("tag")) if p)
