import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeflow.adapt import ThetaSpec, features_with_theta
from edgeflow.adapt.recenter import support_pass
from edgeflow.adapt.split import SplitFeatures
from edgeflow.errors import ConfigError, DataError
from edgeflow.export import export_backbone
from edgeflow.export.fold import ThetaFeatures
from edgeflow.models import create_model
from edgeflow.runtime import load_bundle
from tests.export.helpers import as_float, cifar_test


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_backbone_graph_has_theta_input_no_batchnorm_and_matches_pytorch(drift_bundle):
    path, model, spec, _, _ = drift_bundle
    graph = onnx.load(str(path / "backbone.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    ops = {n.op_type for n in graph.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    bundle = load_bundle(path)
    ins, outs = bundle.tensors("backbone")
    assert [(t.name, t.shape, t.dtype) for t in ins] == [("images", ("N", 3, 32, 32), "float32"),
                                                         ("theta", (spec.size,), "float32")]
    assert [(t.name, t.shape) for t in outs] == [("features", ("N", 64)),
                                                 ("theta_means", ("N", spec.size))]
    parity = bundle.manifest["metrics"]["parity"]["backbone"]
    assert parity["max_abs_diff_theta0"] <= 1e-4 and parity["max_abs_diff_theta_moved"] <= 1e-4
    # independent check on other real images, dynamic batch sizes, and a theta far from theta0
    sess = _ort(path / "backbone.onnx")
    images = as_float(cifar_test().images[500:533])
    theta = spec.get(model) + 0.5 * torch.randn(spec.size, generator=torch.Generator().manual_seed(1))
    for n in (1, 7, 33):
        got, got_means = sess.run(None, {"images": images[:n], "theta": theta.numpy()})
        with torch.no_grad():
            ref = features_with_theta(model, torch.from_numpy(images[:n]), theta, spec).numpy()
        assert got.shape == (n, 64)
        assert np.abs(got - ref).max() <= 1e-4
        # what re-centring reads: the theta layers' output means, as the PyTorch hooks see them
        split = SplitFeatures(model, spec)
        _, ref_means = support_pass(split, split.prefix(torch.from_numpy(images[:n])), theta)
        assert got_means.shape == (n, spec.size)
        assert np.abs(got_means - ref_means.numpy()).max() <= 1e-4
    # theta really is an input: moving it moves the features
    moved = sess.run(None, {"images": images[:4], "theta": theta.numpy()})[0]
    base = sess.run(None, {"images": images[:4], "theta": spec.get(model).numpy()})[0]
    assert np.abs(moved - base).max() > 1e-2


def test_drift_graphs_match_pytorch(drift_bundle):
    path, model, spec, drift, _ = drift_bundle
    enc, vel = _ort(path / "task_encoder.onnx"), _ort(path / "drift.onnx")
    rng = np.random.default_rng(0)
    for ways in (2, 5, 9):  # dynamic number of classes
        protos = rng.normal(size=(1, ways, 64)).astype(np.float32)
        mask = np.ones((1, ways), np.float32)
        z = enc.run(None, {"prototypes": protos, "mask": mask})[0]
        with torch.no_grad():
            z_ref = drift.embed_task(torch.from_numpy(protos)).numpy()
        assert np.abs(z - z_ref).max() <= 1e-4
    theta = spec.get(model).numpy()[None]
    t = np.array([[0.25]], np.float32)
    v = vel.run(None, {"theta": theta, "t": t, "z": z})[0]
    with torch.no_grad():
        v_ref = drift.velocity(torch.from_numpy(theta), torch.from_numpy(t), torch.from_numpy(z)).numpy()
    assert np.abs(v - v_ref).max() <= 1e-4 and np.abs(v_ref).max() > 1e-3


def test_manifest_contents(drift_bundle, plain_bundle):
    path, model, spec, _, settings = drift_bundle
    man = json.loads((path / "manifest.json").read_text())
    assert man["schema"] == "edgeflow-bundle" and man["schema_version"] == 2
    assert man["manifest_digest"].startswith("sha256:")
    assert set(man["files"]) == {"backbone.onnx", "task_encoder.onnx", "drift.onnx", "theta0.npy",
                                 "backbone_prefix.onnx", "backbone_suffix.onnx"}
    assert man["metrics"]["parity"]["split"]["max_abs_diff_moved"] == 0.0
    assert man["theta"]["layout"] == spec.layout() and man["theta"]["size"] == spec.size
    assert man["adaptation"]["integrator"] == settings.to_dict()
    assert man["adaptation"]["metric"] == "cosine" and man["adaptation"]["scale"] == 10.0
    assert man["precisions"] == {"fp32": "backbone.onnx"}
    assert man["preprocess"]["size"] == 32 and man["target"] == "cpu"
    assert 0.0 <= man["sparsity"]["fraction"] < 0.01 and man["sparsity"]["conv_weights"] > 200_000
    np.testing.assert_array_equal(np.load(path / "theta0.npy"), spec.get(model).numpy())
    plain = json.loads((plain_bundle[0] / "manifest.json").read_text())
    assert plain["adaptation"]["drift"] is False
    assert plain["adaptation"]["mode"] == "prototypes-at-theta0"
    assert set(plain["files"]) == {"backbone.onnx", "theta0.npy", "backbone_prefix.onnx",
                                   "backbone_suffix.onnx"}


@pytest.mark.parametrize(("name", "kw"), [("conv4", {"width": 16}),
                                          ("resnet18", {"small_input": True, "width": 8}),
                                          ("resnet12", {"widths": (8, 16, 16, 24)}),
                                          ("vgg11", {"width_mult": 0.125})])
def test_folding_matches_features_with_theta_on_every_zoo_family(name, kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kw)
    for m in model.modules():  # non-trivial BN statistics, so a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    model.eval()
    spec = ThetaSpec.from_model(model, max_size=128)
    x = torch.from_numpy(as_float(cifar_test().images[:6]))
    theta = spec.get(model) + 0.3 * torch.randn(spec.size)
    with torch.no_grad():
        ref = features_with_theta(model, x, theta, spec)
        got = ThetaFeatures(model, spec)(x, theta)
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_export_conv_bias_theta_and_physically_smaller_model(tmp_path):
    """A conv bias can be theta too; a narrower (channel-pruned) model gives a smaller graph."""
    from edgeflow.export import backbone_parity

    sizes = {}
    for width in (16, 8):
        torch.manual_seed(0)
        model = create_model("conv4", num_classes=5, width=width).eval()
        spec = ThetaSpec.from_model(model, max_size=4 * width)
        path = export_backbone(model, spec, tmp_path / f"w{width}.onnx", size=32, channels=3)
        parity = backbone_parity(model, spec, path, as_float(cifar_test().images[:8]))
        assert parity["max_abs_diff_theta_moved"] <= 1e-4
        sizes[width] = path.stat().st_size
    assert sizes[8] < sizes[16] / 2


def test_export_rejects_bad_inputs(tmp_path):
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle
    from tests.export.helpers import small_drift

    model = create_model("conv4", num_classes=5, width=8).eval()
    spec = ThetaSpec.from_model(model, max_size=32)
    with pytest.raises(DataError, match="real uint8"):
        export_bundle(model, output=tmp_path / "b", preprocess_spec=Preprocess(size=32),
                      parity_images=np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(ConfigError, match="ThetaSpec"):
        export_bundle(model, output=tmp_path / "b", preprocess_spec=Preprocess(size=32),
                      parity_images=cifar_test().images[:4], drift=small_drift(spec, feature_dim=8))
    other = ThetaSpec(("encoder.1.bias",), (9,))
    with pytest.raises(ConfigError, match="does not fit"):
        export_bundle(model, output=tmp_path / "b", preprocess_spec=Preprocess(size=32),
                      parity_images=cifar_test().images[:4], spec=other)
    assert not (tmp_path / "b").exists()


def test_masked_weights_export_with_their_zeros(tmp_path):
    """A model pruned with torch's masks (weight = weight_orig * mask) exports the masked weights;
    the manifest's sparsity reflects them."""
    from torch.nn.utils import prune

    from edgeflow.export import backbone_parity, weight_sparsity

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=5, width=16).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        prune.l1_unstructured(conv, "weight", amount=0.75)
    spec = ThetaSpec.from_model(model, max_size=32)
    path = export_backbone(model, spec, tmp_path / "masked.onnx", size=32, channels=3)
    parity = backbone_parity(model, spec, path, as_float(cifar_test().images[:8]))
    assert parity["max_abs_diff_theta_moved"] <= 1e-4
    sp = weight_sparsity(model)
    assert abs(sp["fraction"] - 0.75) < 0.01 and not sp["two_four"]
