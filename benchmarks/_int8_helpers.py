"""Helpers of benchmarks/int8.py: ORT sessions, fused-op counts, the bundle-style theta backbone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fused_ops(path: Path, out: Path) -> dict[str, int]:
    """Op counts of the graph ORT actually runs (after its optimiser): shows whether Q/DQ fused."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    return {k: ops.count(k) for k in ("QLinearConv", "Conv", "QuantizeLinear", "DequantizeLinear")}


def theta_backbone(net):
    """A bundle-style backbone: BatchNorm folded into the convs, its biases (theta) a graph input
    added after each conv, as the bundle's backbone.onnx has them. Returns (module, theta0)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    blks = [blk for layer in (net.layer1, net.layer2, net.layer3) for blk in layer]
    pairs = [(net.conv1, net.bn1)] + [p for blk in blks for p in ((blk.conv1, blk.bn1), (blk.conv2, blk.bn2))]
    with torch.no_grad():
        scales = [bn.weight / torch.sqrt(bn.running_var + bn.eps) for _, bn in pairs]
        weights = [conv.weight * s[:, None, None, None] for (conv, _), s in zip(pairs, scales, strict=True)]
        consts = [-bn.running_mean * s for (_, bn), s in zip(pairs, scales, strict=True)]
        theta0 = torch.cat([bn.bias for _, bn in pairs]).clone()
    sizes = [len(c) for c in consts]
    blocks = [(blk.conv1.stride[0], blk.shortcut) for layer in (net.layer1, net.layer2, net.layer3)
              for blk in layer]

    class ThetaResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])
            self.c = nn.ParameterList([nn.Parameter(c, requires_grad=False) for c in consts])
            self.shortcuts = nn.ModuleList([sc for _, sc in blocks])

        def forward(self, x, theta):
            parts = torch.split(theta, sizes)

            def conv(i, h, stride):
                bias = (self.c[i] + parts[i]).view(1, -1, 1, 1)
                return F.conv2d(h, self.w[i], stride=stride, padding=1) + bias

            h = F.relu(conv(0, x, 1))
            for k, ((stride, _), sc) in enumerate(zip(blocks, self.shortcuts, strict=True)):
                out = conv(2 * k + 2, F.relu(conv(2 * k + 1, h, stride)), 1)
                h = F.relu(out + sc(h))
            return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    return ThetaResNet().eval(), theta0


def theta_section(model, tmp: Path, sample: np.ndarray, xt: np.ndarray, cfg: dict,
                  threads: list[int]) -> dict:
    """The bundle-style graph: FP32 vs INT8 with theta in the conv biases (the default) vs INT8 with
    the theta Adds in FP32 (theta_mode='float'); latency, and feature error at theta0 and moved."""
    import torch

    from edgeflow.export.int8 import quantize_onnx_int8

    graph, theta0 = theta_backbone(model)
    with torch.no_grad():
        ref = model.features(torch.from_numpy(xt[:64])).numpy()
        got = graph(torch.from_numpy(xt[:64]), theta0).numpy()
    assert np.allclose(ref, got, atol=1e-4), "theta graph differs from the model"
    with torch.no_grad():
        torch.onnx.export(graph, (torch.zeros(2, 3, 32, 32), theta0), str(tmp / "theta.onnx"),
                          input_names=["images", "theta"], output_names=["features"], opset_version=17,
                          dynamo=False, dynamic_axes={"images": {0: "N"}, "features": {0: "N"}})
    th0 = theta0.numpy().astype(np.float32)
    files = {"fp32": "theta.onnx", "int8": "theta.int8.onnx", "int8_float_adds": "theta.float.onnx"}
    for key, mode in (("int8", "bias"), ("int8_float_adds", "float")):
        quantize_onnx_int8(tmp / "theta.onnx", tmp / files[key], sample=sample, method=cfg["method"],
                           extra_inputs={"theta": th0}, theta_mode=mode)
    out: dict = {"latency": {}, "relative_feature_error": {}}
    x = xt[:256]
    rng = np.random.default_rng(0)
    moves = {m: th0 + rng.normal(size=th0.shape).astype(np.float32) * m * th0.std() for m in (0.0, 0.1, 0.3)}
    sess = {k: session(tmp / f, max(threads)) for k, f in files.items()}
    for m, th in moves.items():
        a = sess["fp32"].run(None, {"images": x, "theta": th})[0]
        out["relative_feature_error"][f"move{m}"] = {
            k: float(np.linalg.norm(sess[k].run(None, {"images": x, "theta": th})[0] - a) / np.linalg.norm(a))
            for k in ("int8", "int8_float_adds")}
    for n in threads:
        sess = {k: session(tmp / f, n) for k, f in files.items()}
        for b in (1, 32):
            feed = {"images": np.ascontiguousarray(xt[:b]), "theta": th0}
            times: dict[str, list[float]] = {k: [] for k in sess}
            for _ in range(cfg["warmup"]):
                for s in sess.values():
                    s.run(None, feed)
            for _ in range(cfg["runs"]):
                for k, s in sess.items():
                    t = time.perf_counter()
                    s.run(None, feed)
                    times[k].append((time.perf_counter() - t) * 1e3)
            med = {k: float(np.median(v)) for k, v in times.items()}
            out["latency"][f"threads{n}_batch{b}"] = {
                "threads": n, "batch": b, **{f"{k}_median_ms": v for k, v in med.items()},
                "speedup_int8": med["fp32"] / med["int8"],
                "speedup_int8_float_adds": med["fp32"] / med["int8_float_adds"]}
    out["ort_graph_ops"] = {k: fused_ops(tmp / f, tmp / f"opt-{f}") for k, f in files.items()}
    return out


def sgd_theta(graph, theta0, xs, ys, *, steps: int, lr: float, ways: int = 5):
    """Adapt theta on a support set by SGD (cross-entropy of cosine-to-prototype logits, scale 10):
    the fine-tuning HyperFlow's drift network emulates. FP32 PyTorch; returns the adapted theta."""
    import torch
    import torch.nn.functional as F

    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=lr)
    ys = torch.as_tensor(ys)
    for _ in range(steps):
        f = F.normalize(graph(xs, theta), dim=1)
        protos = F.normalize(torch.stack([f[ys == c].mean(0) for c in range(ways)]), dim=1)
        loss = F.cross_entropy(10 * f @ protos.T, ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def adapted_accuracy(graph, theta0, x: np.ndarray, labels: np.ndarray, sessions: dict, *, episodes: int,
                     seed: int, steps: int, lr: float) -> dict:
    """Per-episode 5-way 5-shot accuracy of each ORT session (theta input) at theta0 and at the
    theta adapted on the support set; identical episodes to the no-adaptation benchmark."""
    import torch

    from edgeflow.data import EpisodeSampler

    sampler = EpisodeSampler(labels, ways=5, shots=5, queries=15, seed=seed)
    out: dict[str, list[float]] = {f"{k}_{a}": [] for k in sessions for a in ("theta0", "adapted")}
    th0 = theta0.numpy().astype(np.float32)
    for ep in sampler(episodes):
        adapted = sgd_theta(graph, theta0, torch.from_numpy(x[ep.support]), ep.support_labels, steps=steps,
                            lr=lr).numpy().astype(np.float32)
        both = np.concatenate([ep.support, ep.query])
        for k, s in sessions.items():
            for tag, th in (("theta0", th0), ("adapted", adapted)):
                f = s.run(None, {"images": x[both], "theta": th})[0]
                f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
                fs, fq = f[: len(ep.support)], f[len(ep.support):]
                protos = np.stack([fs[ep.support_labels == c].mean(0) for c in range(5)])
                protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
                out[f"{k}_{tag}"].append(float(np.mean((fq @ protos.T).argmax(1) == ep.query_labels)))
    return {k: np.asarray(v) for k, v in out.items()}
