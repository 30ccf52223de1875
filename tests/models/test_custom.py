"""Bring your own model: a user nn.Module wrapped as a Backbone, against the model itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeflow.adapt import ThetaSpec, features_with_theta
from edgeflow.errors import ConfigError
from edgeflow.export.fold import ThetaFeatures
from edgeflow.export.model_check import check_model
from edgeflow.models import CustomBackbone, check_model_name, create_model, register_object
from edgeflow.models.custom import is_custom, source_digest
from tests.models import byo_models

R18 = "tests.models.byo_models:build_resnet18"
ODD = "tests.models.byo_models:build_odd_head"


def _x(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def _trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a wrong fold would show."""
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def test_resnet18_features_are_the_penultimate_output_computed_by_hand():
    torch.manual_seed(0)
    user = _trained_bn(byo_models.build_resnet18()).eval()
    net = CustomBackbone(copy.deepcopy(user), name=R18, input_size=16).eval()
    x = _x()
    with torch.no_grad():
        h = user.maxpool(user.relu(user.bn1(user.conv1(x))))
        h = user.layer4(user.layer3(user.layer2(user.layer1(h))))
        by_hand = torch.flatten(user.avgpool(h), 1)
        torch.testing.assert_close(net.features(x), by_hand, rtol=0, atol=0)
        torch.testing.assert_close(net(x), user(x), rtol=0, atol=0)
    s = net.summary()
    assert (s["head"], s["head_shape"], s["feature_dim"]) == ("fc", [64, 10], 64)
    assert s["batchnorm_layers"] == 20 and s["input"] == [3, 16, 16]
    assert net.classifier is not None and isinstance(net.body.fc, nn.Identity)
    biases = [n for n, _ in net.adaptable_biases()]
    assert len(biases) == 20 and biases[-1] == "body.layer4.1.bn2.bias"
    spec = ThetaSpec.from_model(net, max_size=64)
    assert spec.names == ("body.layer4.1.bn2.bias",)
    # the export's BN-folded graph computes the same features, at theta0 and a moved theta
    theta = spec.get(net) + 0.05
    folded = ThetaFeatures(net, spec).eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x, theta), features_with_theta(net, x, theta, spec),
                                   rtol=1e-4, atol=1e-5)


def test_create_model_from_spec_resets_the_head_and_loads_the_users_own_state_dict(tmp_path):
    torch.manual_seed(1)
    user = _trained_bn(byo_models.build_resnet18()).eval()
    path = tmp_path / "user.pt"
    torch.save(user.state_dict(), path)  # the user's own names: conv1.weight, ..., fc.weight
    net = create_model(R18, num_classes=10, weights=path, input_size=16).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(net(x), user(x), rtol=0, atol=0)
    five = create_model(R18, num_classes=5, weights=path, input_size=16).eval()
    assert five.classifier.out_features == 5  # a fresh 5-class head, the body loaded
    with torch.no_grad():
        torch.testing.assert_close(five.features(x), net.features(x), rtol=0, atol=0)
    # an EdgeFlow checkpoint of the wrapper (its own names) loads the same way
    from edgeflow.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ef.pt", state_dict=five.state_dict(), meta={})
    again = create_model(R18, num_classes=5, weights=tmp_path / "ef.pt", input_size=16).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), five(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="zoo models only"):
        create_model(R18, num_classes=5, width=16)
    from edgeflow.errors import CheckpointError

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"missing \['bn1.weight'.*is --model right"):
        create_model(R18, weights=tmp_path / "other.pt")  # named in the user's own terms


def test_unusual_head_needs_head_and_then_splits_at_it():
    with pytest.raises(ConfigError) as err:
        create_model(ODD, num_classes=7)
    msg = str(err.value)
    assert "several Linear layers" in msg and "head.embed (16->12)" in msg
    assert "head.fc_out (12->7)" in msg and "--head" in msg
    torch.manual_seed(2)
    user = _trained_bn(byo_models.build_odd_head()).eval()
    net = CustomBackbone(copy.deepcopy(user), head="head.fc_out", input_size=16).eval()
    x = _x()
    with torch.no_grad():
        by_hand = user.head.act(user.head.embed(user.stem(x)))
        torch.testing.assert_close(net.features(x), by_hand, rtol=0, atol=0)
        torch.testing.assert_close(net(x), user(x), rtol=0, atol=0)
    assert net.feature_dim == 12 and net.summary()["batchnorm_layers"] == 2
    with pytest.raises(ConfigError, match=r"not an nn.Linear; name the final Linear inside it: "
                                          r"--head head\.fc_out"):
        create_model(ODD, head="head")
    with pytest.raises(ConfigError, match="not the last step of forward"):
        create_model(ODD, head="head.embed")
    with pytest.raises(ConfigError, match=r"not a layer of the model; Linear layers: head\.embed"):
        create_model(ODD, head="fc")


@pytest.mark.parametrize(("name", "message"), [
    ("tests.models.byo_models:build_no_batchnorm",
     r"no BatchNorm2d after the last conv '3' \(8->8\).*add nn.BatchNorm2d\(8\) after it"),
    ("tests.models.byo_models:build_not_a_module", r"returned a dict, not a torch.nn.Module"),
    ("tests.models.byo_models:build_needs_args",
     r"calling it with no arguments raised TypeError.*def build\(\): return MyNet"),
    ("tests.models.byo_models:build_misordered",
     r"BatchNorm 'bn_a' is defined right after conv 'conv_b' but normalises the output of "
     r"'conv_a'"),
    ("tests.models.no_such_module:build",
     r"no module named 'tests.models.no_such_module'.*PYTHONPATH"),
    ("tests.models.byo_models:build_resnet_18",
     r"byo_models has no 'build_resnet_18'; it defines .*build_resnet18"),
    ("tests.models.byo_models:ResNet.nope", r"has no 'ResNet.nope'"),
    ("tests.models.byo_models:build resnet", r"not an import path; write 'package.module:function'"),
])
def test_models_edgeflow_cannot_use_are_refused_with_the_fix(name, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, num_classes=5)


def test_untraceable_forward_fails_the_export_check_not_the_build():
    name = "tests.models.byo_models:build_untraceable"
    create_model(name, num_classes=4)  # runs eagerly
    with pytest.raises(ConfigError, match=r"does not compute what PyTorch does on another batch"
                                          r".*Python branches"):
        check_model(name, input_size=8)


def test_check_model_reports_what_it_chose():
    checked = check_model(R18, input_size=16, theta_max=200)
    d = checked.to_dict()
    assert d["head"] == "fc" and d["feature_dim"] == 64 and d["onnx_export"] == "ok"
    assert (d["theta_layers"], d["theta_size"]) == (3, 192)  # layer4.1.bn2, bn1 and 0.bn2: 64 each
    text = "\n".join(checked.lines())
    assert "head: fc (Linear 64 -> 10)" in text and "BatchNorm: 20 layers" in text
    assert "theta: the 3 BatchNorm layers nearest the features, 192 values" in text
    with pytest.raises(ConfigError, match="zoo model"):
        check_model("conv4")


def test_a_python_object_builds_as_a_copy_and_is_refused_elsewhere():
    user = byo_models.build_odd_head()
    key = register_object(user)
    assert is_custom(key) and source_digest(key) == key
    net = create_model(key, num_classes=3, head="head.fc_out")
    assert net.classifier.out_features == 3
    assert isinstance(user.head.fc_out, nn.Linear), "the user's object was changed"
    with pytest.raises(ConfigError, match="another Python process"):
        create_model(key.replace(key[-4:], "zzzz"), num_classes=3)
    with pytest.raises(ConfigError, match=r"must be a torch\.nn\.Module"):
        register_object("not a module")


def test_names_are_checked_without_importing():
    check_model_name("resnet20")
    check_model_name("anything.at_all:build")  # only importing it says whether it exists
    with pytest.raises(ConfigError, match=r"valid models: .*or your own model as package\.module"):
        check_model_name("resnet99")
    assert len(source_digest(R18)) == 64
