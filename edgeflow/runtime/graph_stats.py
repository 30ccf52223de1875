"""Parameters, MACs and layer widths of an ONNX backbone, read from the graph (onnx only, no torch).

What a channel-pruned backbone has instead of zero weights: fewer parameters, fewer
multiply-accumulates and narrower layers. ``edgeflow inspect`` reports them for the bundle's graph,
and compile records the same counts of the unpruned backbone's graph in the manifest so the two
are measured the same way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


def _layer_name(weight: str, node: str) -> str:
    """The PyTorch module name of a layer: its weight's name (``net.layer1.0.conv1.weight`` ->
    ``layer1.0.conv1``, as the manifest's per-layer entries name it), else the node's name."""
    if weight.endswith(".weight"):
        return weight.removesuffix(".weight").removeprefix("net.")
    return node


def graph_structure(path: Path) -> dict[str, Any]:
    """Parameters, MACs per image and per-layer widths of an ONNX backbone.

    Layers are the Conv / Gemm / MatMul nodes with a weight initializer, named as in PyTorch.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    # shapes of every tensor, for the MACs; a graph it cannot infer still gives the widths
    with contextlib.suppress(Exception):
        model = shape_inference.infer_shapes(model)
    init = {i.name: i for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)}
    params = sum(int(np.prod(i.dims)) for i in init.values()
                 if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    layers, macs = [], 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = next((init[x] for x in node.input[1:2] if x in init), None)
        if w is None:
            continue
        dims = list(w.dims)
        name = _layer_name(w.name, node.name)
        if node.op_type == "Conv":
            out_ch, per_out = dims[0], int(np.prod(dims[1:]))
        else:  # Gemm with transB=1 stores (out, in); MatMul's weight is (in, out)
            trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            out_ch, per_out = (dims[0], dims[1]) if trans else (dims[-1], dims[0])
        out = shapes.get(node.output[0])
        spatial = out[2:] if out and node.op_type == "Conv" else []
        if macs is not None and all(isinstance(d, int) and d > 0 for d in spatial):
            macs += int(out_ch) * per_out * int(np.prod(spatial)) if spatial else int(out_ch) * per_out
        else:
            macs = None
        layers.append({"layer": name, "op": node.op_type, "width": int(out_ch),
                       "weights": int(np.prod(dims)),
                       "zeros": int((numpy_helper.to_array(w) == 0).sum())})
    return {"params": params, "macs_per_image": macs, "layers": layers}
