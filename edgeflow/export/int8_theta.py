"""INT8 for backbones whose conv biases come from a ``theta`` input (the bundle's backbone.onnx).

The bundle's backbone computes ``Conv(x, W, b) + reshape(slice(theta))``: theta (the BatchNorm
biases HyperFlow adapts) is a graph input added after each folded convolution. Quantised as it is,
those Adds stay between the INT8 convolutions and cost about as much as the convolutions save
(benchmarks/results/int8.md: 1.3x instead of 2x). Here theta goes into the quantised convolution's
int32 bias instead, computed inside the graph, so ONNX Runtime still fuses every convolution into
QLinearConv with a bias that follows theta:

1. find every ``Add(Conv(...), T)`` whose ``T`` depends on theta only, and check that ``T`` selects
   theta elements plus a constant (``T = o + theta[idx]``, found by evaluating ``T`` at theta = 0,
   1..P and a random theta);
2. bake theta0 into those conv biases, drop the Adds, and quantise the plain graph (QDQ, calibrated
   at theta0);
3. replace each conv's constant int32 bias by ``Cast(Round((b + o + theta[idx]) / s))`` (s = the
   bias scale the quantiser chose), all convs at once: Gather, Add, Mul, Round, Cast, Split.

At theta0 the result is bit-identical to the baked INT8 graph (checked before writing).

This graph is for ONNX Runtime. TensorRT's ONNX parser wants convolution biases as build-time
constants, so a TensorRT INT8 build takes ``theta_mode="float"`` with ``activation="int8"``
(symmetric, TensorRT's QDQ form; it fuses the theta Adds into the convolutions itself) or the FP32
graph with the entropy calibrator of :mod:`edgeflow.export.trt_calibrator`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeflow.errors import BackendError, ConfigError


@dataclass(frozen=True)
class BiasAdd:
    """One ``Add(conv_out, T)`` with ``T = offset + theta[index]`` (flattened, one per channel)."""

    conv: int  # index of the Conv node in graph.node (node names may be empty)
    add: int  # index of the Add node
    operand: str  # T
    offset: np.ndarray
    index: np.ndarray


def _derived(graph, source: str) -> set[str]:
    """Tensors computed from ``source`` and constants only (no image-dependent input)."""
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = {source}
    for n in graph.node:  # ONNX nodes are topologically sorted
        ins = [i for i in n.input if i]
        if any(i in out for i in ins) and all(i in out or i in consts for i in ins):
            out.update(n.output)
    return out


def _eval_tensors(model, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Values of intermediate tensors ``names`` (exposed as extra graph outputs) under ``feed``."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names if n not in have])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


def find_bias_adds(model, *, theta: str, image_feed: dict[str, np.ndarray],
                   size: int) -> list[BiasAdd] | None:
    """Every ``Add(Conv, T(theta))`` of the graph, or None when theta is used any other way."""
    g = model.graph
    derived = _derived(g, theta)
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    users: dict[str, list[int]] = {}
    for k, n in enumerate(g.node):
        for i in n.input:
            users.setdefault(i, []).append(k)
    found = []
    for k, n in enumerate(g.node):
        if n.op_type != "Add" or n.output[0] in derived:
            continue
        sides = [i for i in n.input if i in derived]
        if not sides:
            continue
        other = n.input[1] if n.input[0] == sides[0] else n.input[0]
        conv = producer.get(other)
        if (len(sides) != 1 or conv is None or g.node[conv].op_type != "Conv"
                or len(users.get(other, [])) != 1):
            return None  # theta reaches the features some other way
        found.append((conv, k, sides[0]))
    # every use of a theta-derived tensor outside the theta path must be one of those Adds
    adds = {k for _, k, _ in found}
    for name in derived:
        for u in users.get(name, []):
            if g.node[u].output[0] not in derived and u not in adds:
                return None
    if not found:
        return None
    inits = {i.name: i for i in g.initializer}
    operands = [t for _, _, t in found]
    zero = _eval_tensors(model, operands, {**image_feed, theta: np.zeros(size, np.float32)})
    ramp = _eval_tensors(model, operands, {**image_feed, theta: np.arange(1, size + 1, dtype=np.float32)})
    rnd = np.random.default_rng(0).normal(size=size).astype(np.float32)
    check = _eval_tensors(model, operands, {**image_feed, theta: rnd})
    out = []
    for (conv, add, t), o, r, c in zip(found, zero, ramp, check, strict=True):
        w = inits.get(g.node[conv].input[1])
        channels = int(w.dims[0]) if w is not None else -1
        if o.shape not in ((1, channels, 1, 1), (channels, 1, 1)):
            return None  # not one value per output channel
        o, r, c = o.reshape(-1), r.reshape(-1), c.reshape(-1)
        idx = np.rint(r - o - 1).astype(np.int64)
        if idx.min() < 0 or idx.max() >= size or not np.allclose(c, o + rnd[idx], atol=1e-5):
            return None  # not a selection of theta elements: keep the generic path
        out.append(BiasAdd(conv=conv, add=add, operand=t, offset=o.astype(np.float32), index=idx))
    return out


def _baked(model, adds: list[BiasAdd], theta: str, theta0: np.ndarray):
    """theta0 folded into the conv biases (named ``edgeflow_theta_bias_<k>``), Adds removed.

    Returns (model, constant part of each folded bias: the conv's own bias + the offset)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = list(g.node)
    inits = {i.name: i for i in g.initializer}
    rename: dict[str, str] = {}
    drop, consts = set(), []
    for k, a in enumerate(adds):
        conv = nodes[a.conv]
        w = numpy_helper.to_array(inits[conv.input[1]])
        base = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(w.shape[0], np.float32))
        consts.append((base + a.offset).astype(np.float32))
        bias = numpy_helper.from_array((consts[-1] + theta0[a.index]).astype(np.float32),
                                       f"edgeflow_theta_bias_{k}")
        g.initializer.append(bias)
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias.name
        rename[nodes[a.add].output[0]] = conv.output[0]
        drop.add(a.add)
    kept = [n for k, n in enumerate(nodes) if k not in drop]
    for n in kept:
        for j, i in enumerate(n.input):
            n.input[j] = rename.get(i, i)
    for o in g.output:
        if o.name in rename:
            raise ConfigError("a graph output is a theta bias Add; cannot fold it")
    del g.node[:]
    g.node.extend(kept)
    # drop the theta input and the now dead theta path
    live = {o.name for o in g.output}
    alive = []
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            alive.append(n)
            live.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(alive))
    keep_inputs = [i for i in g.input if i.name != theta]
    del g.input[:]
    g.input.extend(keep_inputs)
    used = {i for n in g.node for i in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    return m, consts


def _wire_theta(qmodel, adds: list[BiasAdd], consts: list[np.ndarray], theta: str, size: int):
    """Replace the int32 bias initializers of the baked INT8 graph by a computation from theta."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = qmodel.graph
    inits = {i.name: i for i in g.initializer}
    dq_by_bias = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("edgeflow_theta_bias_"):
            k = int(n.input[0].removeprefix("edgeflow_theta_bias_").split("_")[0])
            dq_by_bias[k] = n
    if sorted(dq_by_bias) != list(range(len(adds))):
        raise BackendError(f"the quantiser kept {len(dq_by_bias)} of {len(adds)} theta conv biases as "
                           "int32; use quantize_onnx_int8(..., theta_mode='float')")
    scales, idx, sizes = [], [], []
    for k, a in enumerate(adds):
        dq = dq_by_bias[k]
        q = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        scales.append(np.broadcast_to(scale, q.shape))
        idx.append(a.index)
        sizes.append(len(q))
    bound = np.float32(2.0**31 - 256)  # stay inside int32 when theta runs far away
    extra = [
        numpy_helper.from_array(np.concatenate(idx).astype(np.int64), "edgeflow_theta_index"),
        numpy_helper.from_array(np.concatenate(consts).astype(np.float32), "edgeflow_theta_offset"),
        numpy_helper.from_array((1.0 / np.concatenate(scales)).astype(np.float32),
                                "edgeflow_theta_inv_scale"),
        numpy_helper.from_array(np.asarray(sizes, np.int64), "edgeflow_theta_split"),
        numpy_helper.from_array(np.asarray(-bound, np.float32), "edgeflow_theta_lo"),
        numpy_helper.from_array(np.asarray(bound, np.float32), "edgeflow_theta_hi"),
    ]
    outs = [f"edgeflow_theta_bias_q{k}" for k in range(len(adds))]
    nodes = [
        helper.make_node("Gather", [theta, "edgeflow_theta_index"], ["edgeflow_theta_g"], axis=0),
        helper.make_node("Add", ["edgeflow_theta_g", "edgeflow_theta_offset"], ["edgeflow_theta_b"]),
        helper.make_node("Mul", ["edgeflow_theta_b", "edgeflow_theta_inv_scale"], ["edgeflow_theta_s"]),
        helper.make_node("Round", ["edgeflow_theta_s"], ["edgeflow_theta_r"]),
        helper.make_node("Clip", ["edgeflow_theta_r", "edgeflow_theta_lo", "edgeflow_theta_hi"],
                         ["edgeflow_theta_c"]),
        helper.make_node("Cast", ["edgeflow_theta_c"], ["edgeflow_theta_i"], to=TensorProto.INT32),
        helper.make_node("Split", ["edgeflow_theta_i", "edgeflow_theta_split"], outs, axis=0),
    ]
    old = set()
    for k, dq in dq_by_bias.items():
        old.add(dq.input[0])
        dq.input[0] = outs[k]
    all_nodes = nodes + list(g.node)
    del g.node[:]
    g.node.extend(all_nodes)
    keep = [i for i in g.initializer if i.name not in old]
    del g.initializer[:]
    g.initializer.extend([*keep, *extra])
    g.input.append(helper.make_tensor_value_info(theta, TensorProto.FLOAT, [size]))
    onnx.checker.check_model(qmodel)
    return qmodel


def quantize_theta_int8(fp32_onnx: Path, out_onnx: Path, *, theta: str, theta0: np.ndarray,
                        image_input: str, sample: np.ndarray, quantize) -> bool:
    """Write the theta-in-bias INT8 graph; False (nothing written) when the graph does not fit.

    ``quantize(src, dst)`` quantises a plain graph (``quantize_onnx_int8`` with the caller's options).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_onnx))
    theta0 = np.asarray(theta0, np.float32).reshape(-1)
    feed = {image_input: np.ascontiguousarray(sample[:1])}
    adds = find_bias_adds(model, theta=theta, image_feed=feed, size=len(theta0))
    if adds is None:
        return False
    baked, consts = _baked(model, adds, theta, theta0)
    with tempfile.TemporaryDirectory(dir=out_onnx.parent, prefix=".theta-") as tmp:
        plain, plain_q = Path(tmp) / "baked.onnx", Path(tmp) / "baked.int8.onnx"
        onnx.save(baked, str(plain))
        quantize(plain, plain_q)
        qmodel = onnx.load(str(plain_q))
        wired = _wire_theta(qmodel, adds, consts, theta, len(theta0))
        # at theta0 the wired graph must equal the baked INT8 graph exactly
        x = np.ascontiguousarray(sample[:4])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        a = ort.InferenceSession(str(plain_q), opts, providers=["CPUExecutionProvider"]).run(
            None, {image_input: x})[0]
        b = ort.InferenceSession(wired.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
            None, {image_input: x, theta: theta0})[0]
        if not np.allclose(a, b, atol=1e-6):
            raise BackendError(f"theta-in-bias INT8 graph differs from the baked one at theta0 (max "
                               f"{np.abs(a - b).max():.3g}); use theta_mode='float'")
        out = Path(tmp) / "wired.onnx"
        onnx.save(wired, str(out))
        out.replace(out_onnx)
    return True
