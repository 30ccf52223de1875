import torch

from edgeflow.adapt import DriftConfig, DriftNet, ThetaSpec, features_with_theta, prototypes
from edgeflow.models import create_model


def test_features_with_theta0_equal_plain_features_and_theta_matters():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).eval()
    spec = ThetaSpec.from_model(model, max_size=200)
    assert spec.size <= 200 and spec.names[-1] == "layer3.2.bn2.bias"
    x = torch.randn(4, 3, 32, 32)
    theta0 = spec.get(model)
    with torch.no_grad():
        torch.testing.assert_close(features_with_theta(model, x, theta0, spec), model.features(x))
        moved = features_with_theta(model, x, theta0 + 0.5, spec)
    assert not torch.allclose(moved, model.features(x))
    # the module itself is untouched, gradients reach theta
    torch.testing.assert_close(spec.get(model), theta0)
    theta = theta0.clone().requires_grad_(True)
    features_with_theta(model, x, theta, spec).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_layout_round_trip():
    spec = ThetaSpec.from_model(create_model("conv4", num_classes=5), max_size=128)
    assert ThetaSpec.from_layout(spec.layout()) == spec


def test_drift_starts_at_zero_and_respects_padding():
    torch.manual_seed(0)
    cfg = DriftConfig(theta_dim=32, feature_dim=16, hidden=64, task_dim=32)
    drift = DriftNet(cfg)
    protos = torch.randn(2, 5, 16)
    theta = torch.randn(2, 32)
    assert torch.equal(drift(theta, 0.3, protos), torch.zeros(2, 32))
    torch.nn.init.normal_(drift.velocity_net.out.weight)
    mask = torch.ones(2, 5)
    mask[:, 3:] = 0
    garbage = protos.clone()
    garbage[:, 3:] = 1e3
    torch.testing.assert_close(drift.embed_task(protos, mask), drift.embed_task(garbage, mask))
    torch.testing.assert_close(drift.embed_task(protos[:, :3]), drift.embed_task(protos, mask))


def test_prototypes_are_class_means():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(prototypes(f, torch.tensor([0, 0, 1]), 2),
                               torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_drift_checkpoint_round_trip_and_zero_drift_adapts_nothing(tmp_path):
    from edgeflow.adapt import IntegratorSettings, hyperflow_adapt, load_drift, save_drift

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=5, width=16).eval()
    spec = ThetaSpec.from_model(model, max_size=64)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=16, hidden=32, task_dim=16))
    settings = IntegratorSettings(method="heun", steps=4)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    theta0 = spec.get(model)
    torch.testing.assert_close(hyperflow_adapt(model, spec, drift, x, y, 5, settings=settings), theta0)
    torch.nn.init.normal_(drift.velocity_net.out.weight, std=0.01)
    path = save_drift(tmp_path / "d.pt", drift=drift, spec=spec, theta0=theta0, settings=settings)
    drift2, spec2, theta0b, settings2, meta = load_drift(path)
    torch.testing.assert_close(theta0b, theta0)
    assert spec2 == spec and settings2 == settings and meta["metric"] == "cosine"
    torch.testing.assert_close(hyperflow_adapt(model, spec, drift2, x, y, 5, settings=settings),
                               hyperflow_adapt(model, spec, drift, x, y, 5, settings=settings))
