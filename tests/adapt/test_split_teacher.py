import pytest
import torch
import torch.nn.functional as F

from edgeflow.adapt import ThetaSpec, features_with_theta
from edgeflow.adapt.apply import prototype_logits
from edgeflow.adapt.split import SplitFeatures
from edgeflow.adapt.teacher import TeacherConfig, finetune, flip_cache, loo_logits, stopping_step
from edgeflow.errors import ConfigError
from edgeflow.models import create_model


@pytest.mark.parametrize(("name", "kw", "max_size"), [("resnet20", {}, 64), ("resnet20", {}, 128),
                                                      ("conv4", {"width": 16}, 32)])
def test_split_features_equal_full_forward_values_and_gradients(name, kw, max_size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kw).eval()
    spec = ThetaSpec.from_model(model, max_size=max_size)
    split = SplitFeatures(model, spec)
    assert split.traced
    x = torch.randn(4, 3, 16, 16)
    theta = (spec.get(model) + 0.1 * torch.randn(spec.size)).requires_grad_(True)
    ref = features_with_theta(model, x, theta, spec)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), theta)
    got = split.suffix(split.prefix(x), theta)
    (g_got,) = torch.autograd.grad(got.square().sum(), theta)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)
    # the prefix really is smaller than the input when theta is only in the last layers
    assert split.prefix(x)[0].shape[1:] != x.shape[1:]


def test_loo_logits_match_a_loop_reference():
    torch.manual_seed(0)
    feats, labels = torch.randn(12, 8), torch.arange(3).repeat(4)
    got = loo_logits(feats, labels, 3, metric="cosine", scale=10.0)
    for i in range(12):
        keep = torch.arange(12) != i
        protos = torch.stack([feats[(labels == c) & keep].mean(0) for c in range(3)])
        torch.testing.assert_close(got[i], prototype_logits(feats[i:i + 1], protos)[0])


def test_teacher_path_starts_at_theta0_and_lowers_its_loss():
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=5, width=16).eval()
    spec = ThetaSpec.from_model(model, max_size=32)
    split = SplitFeatures(model, spec)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    q, qy = torch.randn(15, 3, 32, 32), torch.arange(5).repeat(3)
    theta0 = spec.get(model)
    res = finetune(split, split.prefix(x), y, 5, theta0, config=TeacherConfig(lr=0.05, steps=8),
                   query=split.prefix(q), query_y=qy)
    assert res.path.shape == (9, spec.size) and torch.equal(res.path[0], theta0)
    assert res.query_acc.shape == (9,)

    def loss(theta):
        return F.cross_entropy(loo_logits(split.suffix(split.prefix(x), theta), y, 5,
                                          metric="cosine", scale=10.0), y)
    assert loss(res.path[-1]) < loss(theta0)
    # 1 shot: the flip loss needs the flipped views in the cache
    one = finetune(split, flip_cache(split, x[:5]), y[:5], 5, theta0,
                   config=TeacherConfig(lr=0.05, steps=3))
    assert one.path.shape == (4, spec.size)
    with pytest.raises(ConfigError, match="flip"):
        finetune(split, split.prefix(x[:5]), y[:5], 5, theta0, config=TeacherConfig(steps=1))


def test_stopping_step_takes_the_fewest_steps_near_the_best():
    assert stopping_step(torch.tensor([0.5, 0.4, 0.3])) == 0
    assert stopping_step(torch.tensor([0.5, 0.6, 0.7, 0.7, 0.65])) == 2
    assert stopping_step(torch.tensor([0.5, 0.6, 0.695, 0.7]), tolerance=0.01) == 2
    # smoothing ignores a single lucky spike
    curve = torch.tensor([0.5, 0.7, 0.5, 0.6, 0.65, 0.65, 0.65])
    assert stopping_step(curve) == 1 and stopping_step(curve, smooth=3) == 5
