"""ONNX export of the three bundle graphs, each checked by ``onnx.checker`` and against PyTorch.

- ``backbone.onnx``: images float32 (N, C, H, W) [dynamic N], theta float32 (P,) -> features (N, D)
- ``task_encoder.onnx``: prototypes (1, W, D) [dynamic W], mask (1, W) [, shots (1, N, D),
  shot_labels (1, N, W) one-hot, for a drift with ``shot_tokens``; dynamic N] -> z (1, E)
- ``drift.onnx``: theta (1, P), t (1, 1), z (1, E) -> velocity (1, P)

The TorchScript-based exporter (``dynamo=False``, opset 17) is used: it gives compact graphs with
constant-folded weights that ONNX Runtime and TensorRT's parser both take.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgeflow.adapt import DriftNet, ThetaSpec
from edgeflow.adapt.recenter import support_pass
from edgeflow.adapt.split import SplitFeatures
from edgeflow.errors import ConfigError, EdgeflowError
from edgeflow.export.fold import ThetaFeatures

OPSET = 17
PARITY_TOL = 1e-4


class ExportError(EdgeflowError):
    """An export that failed its checks (onnx.checker or parity against PyTorch)."""


class _TaskEncoderGraph(nn.Module):
    def __init__(self, drift: DriftNet) -> None:
        super().__init__()
        self.enc = drift.task_encoder

    def forward(self, prototypes: torch.Tensor, mask: torch.Tensor,
                shots: torch.Tensor | None = None,
                shot_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.enc(prototypes, mask, shots, shot_labels)


class _VelocityGraph(nn.Module):
    def __init__(self, drift: DriftNet) -> None:
        super().__init__()
        self.vel = drift.velocity_net

    def forward(self, theta: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.vel(theta, t, z, stats)


def _export(module: nn.Module, args: tuple, path: Path, *, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> Path:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes are not actionable
        example = module(*args)
        examples = example if isinstance(example, tuple) else (example,)
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    # The exporter names every output dim after a dynamic input symbolically (e.g. the feature
    # dim after Flatten); pin the ones that are not dynamic to the traced size.
    for k, name in enumerate(outputs):
        out = model.graph.output[k].type.tensor_type.shape
        for axis, dim in enumerate(out.dim):
            dim.Clear()
            if axis in dynamic.get(name, {}):
                dim.dim_param = dynamic[name][axis]
            else:
                dim.dim_value = int(examples[k].shape[axis])
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported {path.name}: {exc}") from exc
    onnx.save(model, str(path))
    return path


def export_backbone(model: nn.Module, spec: ThetaSpec, path: str | Path, *, size: int,
                    channels: int) -> Path:
    """Write ``model.features`` with theta as an input (BN folded) to ``path``; checker-validated.

    Outputs: ``features`` (N, D) and ``theta_means`` (N, P), the theta layers' spatial output
    means that re-centring reads (:class:`ThetaFeatures` with ``means``).
    """
    model = model.eval()
    graph = ThetaFeatures(model, spec, means=True).eval()
    theta0 = spec.get(model)
    x = torch.zeros(2, channels, size, size)
    return _export(graph, (x, theta0), Path(path), inputs=["images", "theta"],
                   outputs=["features", "theta_means"],
                   dynamic={"images": {0: "N"}, "features": {0: "N"}, "theta_means": {0: "N"}})


def export_drift(drift: DriftNet, directory: str | Path) -> tuple[Path, Path]:
    """Write ``task_encoder.onnx`` and ``drift.onnx`` into ``directory``."""
    drift = drift.eval()
    cfg = drift.config
    directory = Path(directory)
    protos, mask = torch.randn(1, 5, cfg.feature_dim), torch.ones(1, 5)
    args, names = (protos, mask), ["prototypes", "mask"]
    dynamic = {"prototypes": {1: "W"}, "mask": {1: "W"}}
    if cfg.shot_tokens:  # the individual shots too, N of them (a batch-like count of images)
        labels = torch.eye(5).repeat(2, 1)[None]
        args = (*args, torch.randn(1, 10, cfg.feature_dim), labels)
        names += ["shots", "shot_labels"]
        dynamic |= {"shots": {1: "N"}, "shot_labels": {1: "N", 2: "W"}}
    enc = _export(_TaskEncoderGraph(drift), args, directory / "task_encoder.onnx",
                  inputs=names, outputs=["z"], dynamic=dynamic)
    theta, t, z = torch.zeros(1, cfg.theta_dim), torch.zeros(1, 1), torch.zeros(1, cfg.task_dim)
    args, names = (theta, t, z), ["theta", "t", "z"]
    if cfg.stats_dim:  # the outcome drift also reads the support statistics (adapt.signals)
        args, names = (*args, torch.zeros(1, cfg.stats_dim)), [*names, "stats"]
    vel = _export(_VelocityGraph(drift), args, directory / "drift.onnx",
                  inputs=names, outputs=["velocity"], dynamic={})
    return enc, vel


def graph_io(path: str | Path) -> dict[str, list[dict]]:
    """Names, shapes (str for symbolic dims) and dtypes of a graph's inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(v: onnx.ValueInfoProto) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                for d in t.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        return {"name": v.name, "shape": dims, "dtype": dtype}

    init = {i.name for i in model.graph.initializer}
    return {"inputs": [spec(v) for v in model.graph.input if v.name not in init],
            "outputs": [spec(v) for v in model.graph.output]}


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def backbone_parity(model: nn.Module, spec: ThetaSpec, path: str | Path, images: np.ndarray, *,
                    seed: int = 0, tol: float = PARITY_TOL) -> dict[str, float]:
    """Max |ORT - features_with_theta| on ``images`` (float32 NCHW) at theta0 and at a moved theta.

    The moved theta (theta0 + N(0, 0.1 * std(theta0))) checks that theta really is wired into the
    graph and not constant-folded away. Raises :class:`ExportError` above ``tol``.
    """
    model = model.eval()
    sess = _ort_session(Path(path))
    theta0 = spec.get(model)
    gen = torch.Generator().manual_seed(seed)
    moved = theta0 + torch.randn(theta0.shape, generator=gen) * (0.1 * float(theta0.std()) + 1e-3)
    out = {}
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    split = SplitFeatures(model, spec)
    names = [o.name for o in sess.get_outputs()]
    for key, theta in (("theta0", theta0), ("theta_moved", moved)):
        ref, ref_means = support_pass(split, split.prefix(x), theta)
        got = dict(zip(names, sess.run(names, {"images": x.numpy(), "theta": theta.numpy()}),
                       strict=True))
        out[f"max_abs_diff_{key}"] = float(np.max(np.abs(ref.numpy() - got["features"])))
        out[f"max_abs_{key}"] = float(np.max(np.abs(ref.numpy())))
        if "theta_means" in got:  # what re-centring reads on the device
            out[f"max_abs_diff_means_{key}"] = float(np.max(np.abs(ref_means.numpy()
                                                                   - got["theta_means"])))
    out["images"] = len(images)
    worst = max(v for k, v in out.items() if k.startswith("max_abs_diff"))
    if not worst <= tol:
        raise ExportError(f"backbone.onnx differs from PyTorch by {worst:.3g} (> {tol:g}) on "
                          f"{len(images)} real images; the model uses an op the export does not "
                          "fold correctly")
    return out


def drift_parity(drift: DriftNet, directory: str | Path, protos: np.ndarray, theta: np.ndarray, *,
                 shots: np.ndarray | None = None, shot_labels: np.ndarray | None = None,
                 tol: float = PARITY_TOL) -> dict[str, float]:
    """Max |ORT - PyTorch| of both drift graphs on real prototypes ``protos`` (W, D); a drift with
    ``shot_tokens`` also needs the real ``shots`` (N, D) they are the means of and their episode
    ``shot_labels`` (N,) in 0..W-1."""
    directory = Path(directory)
    enc, vel = _ort_session(directory / "task_encoder.onnx"), _ort_session(directory / "drift.onnx")
    p = protos[None].astype(np.float32)
    mask = np.ones(p.shape[:2], np.float32)
    shot_feed, shot_args = {}, {}
    if drift.config.shot_tokens:
        if shots is None or shot_labels is None:
            raise ConfigError("this drift reads the individual shots; pass shots= and "
                              "shot_labels= to drift_parity")
        onehot = np.eye(p.shape[1], dtype=np.float32)[np.asarray(shot_labels)][None]
        shot_feed = {"shots": shots[None].astype(np.float32), "shot_labels": onehot}
        shot_args = {k: torch.from_numpy(v) for k, v in shot_feed.items()}
    th = theta[None].astype(np.float32)
    t = np.full((1, 1), 0.3, np.float32)
    feed = {"theta": th, "t": t}
    stats = None
    if drift.uses_stats:  # statistics around their training centre, one scale out
        vn = drift.velocity_net
        stats = (vn.stats_center + vn.stats_scale * torch.linspace(-1, 1, vn.stats_dim))[None]
        feed["stats"] = stats.numpy().astype(np.float32)
    with torch.no_grad():
        z_ref = drift.embed_task(torch.from_numpy(p), torch.from_numpy(mask), **shot_args).numpy()
        v_ref = drift.velocity(torch.from_numpy(th), torch.from_numpy(t), torch.from_numpy(z_ref),
                               stats)
    z = enc.run(["z"], {"prototypes": p, "mask": mask, **shot_feed})[0]
    v = vel.run(["velocity"], {**feed, "z": z_ref})[0]
    out = {"max_abs_diff_z": float(np.max(np.abs(z - z_ref))),
           "max_abs_diff_velocity": float(np.max(np.abs(v - v_ref.numpy()))),
           "max_abs_velocity": float(np.max(np.abs(v_ref.numpy())))}
    worst = max(out["max_abs_diff_z"], out["max_abs_diff_velocity"])
    if not worst <= tol:
        raise ExportError(f"drift graphs differ from PyTorch by {worst:.3g} (> {tol:g})")
    return out


def check_theta_spec(model: nn.Module, spec: ThetaSpec) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in spec.names if n not in params]
    if missing:
        raise ConfigError(f"theta names {missing} are not parameters of {type(model).__name__}; "
                          "was the drift trained for another backbone?")
    wrong = [(n, params[n].numel(), s) for n, s in zip(spec.names, spec.sizes, strict=True)
             if params[n].numel() != s]
    if wrong:
        raise ConfigError(f"theta layout does not fit the model (name, model size, layout size): "
                          f"{wrong[:3]}; was the drift trained for another (pruned) backbone?")
