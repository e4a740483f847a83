"""PyTorch → ONNX graphs: the one trace every kind of model goes through, the clean-ups, and the join of a network
with its post-processing graph (NMS for detectors).

Traced with the TorchScript exporter (needs no onnxscript), in memory; :mod:`maedet.export.pipeline` writes files.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Mapping, Sequence

import onnx
import torch
import torch.nn as nn

from .errors import ExportError, MissingDependencyError

__all__ = ["INPUT_NAME", "PROTOBUF_LIMIT", "join_graphs", "simplify_onnx", "torch_to_onnx"]

INPUT_NAME = "input"
# ONNX files above 2 GiB need external data; our models are far below (MAE-DET-L fp32 is ~175 MB).
PROTOBUF_LIMIT = 2**31 - 1
_DEFAULT_DOMAINS = ("", "ai.onnx")  # two spellings of ONNX's own operator set


def _spatial_axes(names: Sequence[str]) -> dict[str, dict[int, str]]:
    return {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names}


def torch_to_onnx(
    module: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    output_names: Sequence[str],
    *,
    dynamic: bool,
    opset: int,
    spatial_outputs: bool = True,
    input_names: Sequence[str] = (INPUT_NAME,),
    axes: Mapping[str, dict[int, str]] | None = None,
) -> onnx.ModelProto:
    """Trace ``module`` to an in-memory ONNX model.

    With ``dynamic``, ``axes`` names the free axes of each input and output; by default the input's batch, height
    and width, and each output's batch (and height and width with ``spatial_outputs``).
    """
    dynamic_axes = None
    if dynamic:
        default = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        default |= _spatial_axes(output_names) if spatial_outputs else {n: {0: "batch"} for n in output_names}
        dynamic_axes = dict(axes) if axes is not None else default
    args = example if isinstance(example, tuple) else (example,)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return _inline_identity_initializers(onnx.load_from_string(buffer.getvalue()))


def _inline_identity_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo the exporter's sharing of equal weights through Identity nodes (e.g. zero biases after BN folding).

    Quantizers and TensorRT expect every conv's weight and bias to be an initializer of its own.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name not in used]
        for t in unused:
            graph.initializer.remove(t)
    return model


def simplify_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and graph cleanup with onnxslim (optional extra ``maedet[simplify]``)."""
    try:
        import onnxslim
    except ImportError:
        raise MissingDependencyError(
            "--simplify needs onnxslim, which is not installed: pip install 'maedet[simplify]'."
        ) from None
    slimmed = onnxslim.slim(model)
    if slimmed is None:
        raise ExportError("onnxslim could not simplify this model.")
    return slimmed


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Domain → version, ONNX's own set under one key whichever way it is spelled."""
    return {("" if o.domain in _DEFAULT_DOMAINS else o.domain): o.version for o in model.opset_import}


def _set_opsets(model: onnx.ModelProto, opsets: Mapping[str, int]) -> None:
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())


def join_graphs(network: onnx.ModelProto, post: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """network ∘ post, linked by name, keeping ``outputs``; every operator set listed once, at one version."""
    from onnx import compose
    from onnxruntime.transformers.onnx_model import OnnxModel

    network = copy.deepcopy(network)
    OnnxModel(network).topological_sort()  # the fp16 converter appends its casts last; onnx.compose checks order
    # internal names of both traces collide (/Constant_output_0 ...): prefix the post graph's, not its I/O
    post = compose.add_prefix(post, "postprocess/", rename_inputs=False, rename_outputs=False)
    net_opsets, post_opsets = _opsets(network), _opsets(post)
    for domain in set(net_opsets) & set(post_opsets):
        if net_opsets[domain] != post_opsets[domain]:
            raise ExportError(f"cannot join graphs with opsets {net_opsets[domain]} and {post_opsets[domain]}.")
    joined_opsets = net_opsets | post_opsets
    _set_opsets(network, joined_opsets)
    _set_opsets(post, joined_opsets)
    post.ir_version = network.ir_version
    links = [(o.name, o.name) for o in network.graph.output]
    joined = compose.merge_models(network, post, io_map=links, outputs=list(outputs))
    _set_opsets(joined, _opsets(joined))
    return joined
