"""Score masks: the straight-through gradient, n:m keep sets, trim to exact counts."""

from __future__ import annotations

import torch
from torch import nn

from edgeflow.models import create_model
from edgeflow.prune import StraightThrough, attach_scores, finalize, nm_keep, nm_pattern_ok


def test_straight_through_gradient_matches_hand_computation():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3, bias=True)
    ms = attach_scores(lin, granularity="weight")
    t = ms.masks[""].scores
    with torch.no_grad():
        t.copy_(torch.tensor([[0.3, -0.2, 0.1, -0.5, 0.4]] * 3))
    x = torch.randn(4, 5)
    c = torch.randn(4, 3)
    loss = (lin(x) * c).sum()
    loss.backward()
    w = lin.parametrizations.weight.original.detach()
    m = (t.detach() >= 0).float()
    # by hand: y = x @ (w*m).T + b, so dL/dW_eff = c.T @ x; dL/dm = w * dL/dW_eff; dL/dt = 0.25 dL/dm
    grad_weff = c.T @ x
    torch.testing.assert_close(t.grad, 0.25 * w * grad_weff)
    # the latent weight gets the masked gradient (pruned weights get no task gradient)
    torch.testing.assert_close(lin.parametrizations.weight.original.grad, m * grad_weff)
    # the forward is the hard-masked layer
    torch.testing.assert_close(lin(x), x @ (w * m).T + lin.bias)


def test_straight_through_function_slope():
    t = torch.tensor([0.5, -0.5], requires_grad=True)
    out = StraightThrough.apply(t, t.detach() >= 0, 0.25)
    assert out.tolist() == [1.0, 0.0]
    out.sum().backward()
    assert t.grad.tolist() == [0.25, 0.25]


def test_nm_keep_is_top_n_per_group_along_input_channels():
    torch.manual_seed(0)
    t = torch.randn(3, 8, 2, 2)
    keep = nm_keep(t, 2, 4)
    for o in range(3):
        for i in range(2):
            for j in range(2):
                for g in range(2):
                    vals = t[o, 4 * g:4 * g + 4, i, j]
                    ref = torch.zeros(4, dtype=torch.bool)
                    ref[vals.topk(2).indices] = True
                    assert torch.equal(keep[o, 4 * g:4 * g + 4, i, j], ref)
    assert nm_pattern_ok(torch.randn(3, 8, 2, 2) * keep, 2, 4)
    assert not nm_pattern_ok(torch.ones(3, 8, 2, 2), 2, 4)


def test_trim_hits_exact_count_and_keeps_highest_scores():
    net = create_model("resnet20")
    ms = attach_scores(net, granularity="weight")
    ms.trim(0.0731)
    rep = ms.layer_counts()
    kept = sum(k for k, _ in rep.values())
    total = sum(t for _, t in rep.values())
    assert kept == round(0.0731 * total)
    kept_min = min(float(mk.scores.detach()[mk.keep()].min()) for mk in ms.masks.values())
    pruned_max = max(float(mk.scores.detach()[~mk.keep()].max()) for mk in ms.masks.values())
    assert kept_min >= 0 > -pruned_max or kept_min > 0  # every kept score is >= 0


def test_nm_trim_respects_pattern_and_dense_stem():
    net = create_model("resnet20")
    ms = attach_scores(net, granularity="2:4")
    assert "conv1" not in ms.masks  # 3 input channels: not 2:4-eligible, stays dense
    ms.trim(0.3)  # sparser than the pattern: pressure's job, trimmed inside the pattern
    plain = finalize(net)
    for name, mod in plain.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.shape[1] % 4 == 0:
            assert nm_pattern_ok(mod.weight, 2, 4), name
    assert abs(ms.density() - 0.3) < 1e-5
