"""Split an exported backbone graph at theta: a prefix theta cannot change, a suffix that takes it.

``backbone.onnx`` computes ``features, theta_means = f(images, theta)``; theta enters only the last
layers. :func:`split_backbone` cuts the graph itself (not a second export): every node that depends
on theta, directly or through other nodes, goes to the suffix, everything else that feeds it to the
prefix, and the tensors crossing the cut (the "frontier": e.g. a block's input and its first
convolution's output) become the prefix's outputs and the suffix's inputs. Since both halves are
the whole graph's own nodes, prefix then suffix computes exactly what the whole graph computes.

On the device the prefix runs once over a support set; every further look at the support set at a
new theta (adapted prototypes, closed-loop drift, a guard's candidates, a task that grows) is a
suffix pass over the cached frontier, which is much cheaper. The cut works on any graph whose theta
is an input, the INT8 Q/DQ graphs included.
"""

from __future__ import annotations

from pathlib import Path

from edgeflow.errors import ConfigError

PREFIX_FILE = "backbone_prefix.onnx"
SUFFIX_FILE = "backbone_suffix.onnx"


def theta_frontier(model, *, theta: str = "theta") -> tuple[list[str], set[str]]:
    """(frontier tensor names in graph order, names of the nodes' outputs that depend on theta)."""
    g = model.graph
    constants = {i.name for i in g.initializer}
    dependent: set[str] = {theta}
    for node in g.node:  # ONNX nodes are topologically sorted
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        if any(i in dependent for i in node.input if i):
            dependent.update(o for o in node.output if o)
    frontier: list[str] = []
    for node in g.node:
        if not any(o in dependent for o in node.output):
            continue
        for name in node.input:
            if name and name not in dependent and name not in constants and name not in frontier:
                frontier.append(name)
    return frontier, dependent


def split_backbone(whole: str | Path, prefix: str | Path, suffix: str | Path, *,
                   theta: str = "theta") -> list[str]:
    """Write the prefix (images -> frontier) and suffix (frontier, theta -> outputs) of ``whole``.

    Frontier tensors without a batch dimension (shape arithmetic, e.g. a shortcut's pad amounts)
    are the same for every batch: they are evaluated once and baked into the suffix as constants
    instead of being cached per image. Returns the (per-image) frontier names. Raises ConfigError
    when theta does not reach every output, or a batch-free frontier tensor is not constant.
    """
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(whole))
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if theta not in [i.name for i in inputs]:
        raise ConfigError(f"{whole} has no {theta!r} input to split at; export it with theta")
    frontier, dependent = theta_frontier(model, theta=theta)
    outputs = [o.name for o in model.graph.output]
    if not frontier or not all(o in dependent for o in outputs):
        raise ConfigError(f"theta does not reach every output of {whole}; it cannot be split")
    image_inputs = [i.name for i in inputs if i.name != theta]
    if len(image_inputs) != 1:
        raise ConfigError(f"{whole} must have one image input beside {theta!r}, has {image_inputs}")
    image = next(i for i in inputs if i.name == image_inputs[0])
    ex = Extractor(onnx.shape_inference.infer_shapes(model))
    per_image, fixed = _classify(ex.extract_model(image_inputs, frontier), image, frontier)
    pre = ex.extract_model(image_inputs, per_image)
    suf = ex.extract_model([*frontier, theta], outputs)
    if fixed:
        _bake(suf, fixed)
    batch = image.type.tensor_type.shape.dim[0]
    _name_batch(pre, suf, per_image, batch)
    for m, path in ((pre, prefix), (suf, suffix)):
        m.ir_version = model.ir_version
        del m.opset_import[:]
        m.opset_import.extend(model.opset_import)
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(path))
    return per_image


def _classify(model, image, names: list[str]) -> tuple[list[str], dict]:
    """(per-image frontier names, {batch-free name: value}), by running the frontier at batch 1 and
    3: per-image tensors grow with the batch; the rest must not change at all."""
    import numpy as np
    import onnxruntime as ort

    dims = [d.dim_value or 1 for d in image.type.tensor_type.shape.dim]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    one = sess.run(names, {image.name: rng.normal(size=[1, *dims[1:]]).astype(np.float32)})
    three = sess.run(names, {image.name: rng.normal(size=[3, *dims[1:]]).astype(np.float32)})
    per_image, fixed = [], {}
    for name, a, b in zip(names, one, three, strict=True):
        if a.ndim and b.ndim == a.ndim and (len(a), len(b)) == (1, 3) and a.shape[1:] == b.shape[1:]:
            per_image.append(name)
        elif a.shape == b.shape and np.array_equal(a, b):
            fixed[name] = a
        else:
            raise ConfigError(f"the frontier tensor {name} neither follows the batch nor stays "
                              "constant; this graph cannot be split at theta")
    return per_image, fixed


def _bake(model, values: dict) -> None:
    """Turn suffix inputs into initializers with these values."""
    from onnx import numpy_helper

    keep = [i for i in model.graph.input if i.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())


def _name_batch(pre, suf, frontier: list[str], batch) -> None:
    """Give the frontier's leading dim the images' batch name on both sides (shape inference can
    leave it anonymous, which would make the suffix's batch look static)."""
    for graph in (pre.graph.output, suf.graph.input):
        for vi in graph:
            if vi.name in frontier:
                vi.type.tensor_type.shape.dim[0].CopyFrom(batch)


def split_parity(whole: str | Path, prefix: str | Path, suffix: str | Path, images, theta0, *,
                 tol: float = 1e-6) -> dict:
    """Max abs difference of prefix-then-suffix against the whole graph on real preprocessed
    ``images``, at theta0 and at a moved theta; raises when it is not (near) zero."""
    import numpy as np
    import onnxruntime as ort

    def session(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    w, pre, suf = session(whole), session(prefix), session(suffix)
    names = [o.name for o in pre.get_outputs()]
    x = np.ascontiguousarray(images[:16])
    cache = dict(zip(names, pre.run(None, {"images": x}), strict=True))
    theta0 = np.asarray(theta0, np.float32)
    moved = theta0 + np.random.default_rng(0).normal(scale=0.1, size=theta0.shape).astype(np.float32)
    out = {}
    for key, theta in (("theta0", theta0), ("moved", moved)):
        a = w.run(None, {"images": x, "theta": theta})
        b = suf.run(None, {**cache, "theta": theta})
        out[f"max_abs_diff_{key}"] = float(max(np.abs(u - v).max() for u, v in zip(a, b, strict=True)))
    worst = max(out.values())
    if not worst <= tol:
        raise ConfigError(f"the backbone split at theta differs from the whole graph by {worst:.3g}")
    out["frontier"] = names
    out["frontier_floats_per_image"] = int(sum(np.prod(v.shape[1:]) for v in cache.values()))
    return out
