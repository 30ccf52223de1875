"""Channel groups from Torch-Pruning's dependency graph: groups, exact surgery, ONNX parity, scores
decide, exact counts, pickle-free save/reload (issue 20, deliverable 3)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.adapt import ThetaSpec
from edgeflow.errors import ConfigError
from edgeflow.export import backbone_parity, export_backbone
from edgeflow.models import create_model
from edgeflow.models.base import Backbone
from edgeflow.prune import (
    PruneConfig,
    attach_scores,
    count_macs,
    finalize,
    load_pruned,
    prune,
    save_pruned,
)
from edgeflow.prune.depgraph import ShortcutScatter, depgraph_plan

MODELS = [("resnet20", {}, 32), ("resnet18", {"small_input": True, "width": 16}, 32),
          ("efficientnet_lite0", {}, 64)]


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def _random_keep(ms, gen: torch.Generator) -> dict[str, torch.Tensor]:
    keep = {}
    for n, mk in ms.masks.items():
        k = torch.rand(mk.scores.shape, generator=gen) < 0.5
        k[0] = True  # never an empty layer
        keep[n] = k
    ms.set_keep(keep)
    return keep


def _ort_run(model: nn.Module, x: torch.Tensor, path) -> np.ndarray:
    torch.onnx.export(model.eval(), x, str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})[0]


def test_resnet20_groups_are_streams_and_inner_channels():
    plan = depgraph_plan(create_model("resnet20", num_classes=10))
    names = [g.name for g in plan]
    # three residual streams (stem + every conv2 of a stage) and nine block-inner groups
    assert names[0] == "conv1" and len(plan) == 12
    streams = [g for g in plan if any(m.module.endswith("conv2") and m.dim == "out" for m in g.members)]
    assert [g.size for g in streams] == [16, 32, 64]
    s2 = {(m.module, m.dim) for m in streams[1].members}
    # the option-A shortcut is not element-wise: stage 1 reaches it as input, stage 2 as output
    assert ("layer2.0.shortcut", "out") in s2 and ("layer3.0.shortcut", "in") in s2
    assert ("layer2.0.shortcut", "in") in {(m.module, m.dim) for m in streams[0].members}
    assert ("linear", "in") in {(m.module, m.dim) for m in streams[2].members}
    assert plan.shortcuts == {"layer2.0.shortcut": (16, 32), "layer3.0.shortcut": (32, 64)}


@pytest.mark.parametrize(("name", "kwargs", "size"), MODELS)
def test_depgraph_surgery_matches_masked_model_and_onnx(name, kwargs, size, tmp_path):
    gen = torch.Generator().manual_seed(1)
    net = create_model(name, num_classes=10, **kwargs).eval()
    _randomise_bn(net, gen)
    dense_macs = count_macs(net, input_size=size)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    keep = _random_keep(ms, gen)
    x = torch.randn(3, 3, size, size, generator=gen)
    with torch.no_grad():
        masked = net(x)
    plain = finalize(net).eval()
    with torch.no_grad():
        small = plain(x)
    torch.testing.assert_close(small, masked, rtol=1e-4, atol=1e-4)
    assert count_macs(plain, input_size=size) < 0.6 * dense_macs
    assert not any("scores" in k or "parametrizations" in k for k in plain.state_dict())
    assert not any(m._forward_hooks for m in plain.modules())
    mods = dict(plain.named_modules())
    for g in ms.plan:  # every producer has exactly the kept width; its consumers match
        for mem in g.members:
            mod = mods[mem.module]
            if mem.dim == "out" and isinstance(mod, nn.Conv2d):
                assert mod.out_channels == int(keep[g.name].sum())
    assert plain.feature_dim == plain.classifier.in_features
    got = _ort_run(plain, x, tmp_path / "p.onnx")
    assert np.abs(got - small.numpy()).max() <= 1e-4 * max(1.0, float(small.abs().max()))


def test_option_a_shortcut_becomes_a_scatter_that_exports_with_theta(tmp_path):
    gen = torch.Generator().manual_seed(2)
    net = create_model("resnet20", num_classes=10).eval()
    _randomise_bn(net, gen)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    _random_keep(ms, gen)
    plain = finalize(net).eval()
    assert isinstance(plain.layer2[0].shortcut, ShortcutScatter)
    spec = ThetaSpec.from_model(plain, max_size=64)
    path = export_backbone(plain, spec, tmp_path / "b.onnx", size=32, channels=3)
    images = torch.rand(4, 3, 32, 32, generator=gen).numpy()
    parity = backbone_parity(plain, spec, path, images)
    assert parity["max_abs_diff_theta0"] <= 1e-4 and parity["max_abs_diff_theta_moved"] <= 1e-4


def test_scores_decide_which_channels_go():
    net = create_model("resnet20", num_classes=10)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    lowest = {"layer2.0.conv2": [3, 17, 30], "layer1.1.conv1": [0, 5]}
    with torch.no_grad():
        for mk in ms.masks.values():
            mk.scores.copy_(torch.linspace(1.0, 2.0, mk.scores.numel()))
        for name, idx in lowest.items():
            ms.masks[name].scores[idx] = torch.tensor([0.01 * (i + 1) for i in range(len(idx))])
    # a budget that removes exactly five channels' worth: the first trims find the lowest scores
    full = ms.density()
    removed: dict[str, list[int]] = {}
    target = full
    while sum(map(len, removed.values())) < 5:
        target -= 1e-4
        ms.trim(target)
        removed = {n: torch.nonzero(~mk.keep()).flatten().tolist() for n, mk in ms.masks.items()
                   if not mk.keep().all()}
    assert removed == lowest
    plain = finalize(net)
    assert plain.layer2[0].conv2.out_channels == 29 and plain.layer3[0].conv1.in_channels == 29
    assert plain.layer1[1].conv1.out_channels == 14


def test_trim_gives_exact_channel_counts_under_flops_budget():
    net = create_model("efficientnet_lite0", num_classes=10)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    ms.trim(0.5, budget="flops", min_channels=8, multiple=8)
    kept = {n: int(mk.keep().sum()) for n, mk in ms.masks.items()}
    assert all(k >= 8 and (k % 8 == 0 or k == ms.masks[n].scores.numel()) for n, k in kept.items())
    assert 0.45 < ms.density("flops") <= 0.5
    plain = finalize(net)
    mods = dict(plain.named_modules())
    for g in ms.plan:
        assert mods[g.name].out_channels == kept[g.name]
    assert plain.channel_widths == kept
    # MACs at the plan's resolution fall as the flops density says (counted independently)
    ratio = count_macs(plain) / count_macs(create_model("efficientnet_lite0", num_classes=10))
    assert abs(ratio - ms.density("flops")) < 0.01


@pytest.mark.parametrize(("name", "kwargs", "size"), [MODELS[0], MODELS[2]])
def test_save_reload_without_pickles(name, kwargs, size, tmp_path):
    gen = torch.Generator().manual_seed(3)
    net = create_model(name, num_classes=10, **kwargs).eval()
    _randomise_bn(net, gen)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    _random_keep(ms, gen)
    plain = finalize(net).eval()
    path = save_pruned(tmp_path / "c.pt", plain, meta={"model": name, "num_classes": 10,
                                                       "model_kwargs": kwargs})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "meta"} and isinstance(raw["meta"], str)
    again = load_pruned(path)
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(again(x), plain(x))


class ConcatNet(Backbone):
    """Two branches concatenated, then a conv: Torch-Pruning maps each branch to its input slice."""

    def __init__(self, *, num_classes: int = 10) -> None:
        super().__init__()
        self.in_channels, self.input_size, self.feature_dim = 3, 16, 12
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c, self.bn_c = nn.Conv2d(14, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.classifier = nn.Linear(12, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], 1)
        return F.adaptive_avg_pool2d(F.relu(self.bn_c(self.c(h))), 1).flatten(1)


def test_concatenation_groups_prune_the_right_input_slices(tmp_path):
    gen = torch.Generator().manual_seed(4)
    net = ConcatNet().eval()
    _randomise_bn(net, gen)
    ms = attach_scores(net, granularity="channel")  # auto: not a zoo plan model -> depgraph
    assert sorted(g.name for g in ms.plan) == ["a", "b", "c"]
    keep = {"a": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool),
            "b": torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.bool),
            "c": torch.ones(12, dtype=torch.bool)}
    ms.set_keep(keep)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        masked = net(x)
    plain = finalize(net).eval()
    assert plain.c.in_channels == 9
    keep_in = torch.cat([keep["a"], keep["b"]])
    torch.testing.assert_close(plain.c.weight, net.c.weight.detach()[:, keep_in])  # net still masked
    with torch.no_grad():
        torch.testing.assert_close(plain(x), masked, rtol=1e-4, atol=1e-5)
    got = _ort_run(plain, x, tmp_path / "c.onnx")
    assert np.abs(got - masked.numpy()).max() <= 1e-4


def test_channel_groups_option_is_checked_and_inner_stays_default_for_zoo_resnets():
    with pytest.raises(ConfigError, match="channel_groups"):
        PruneConfig(granularity="channel", channel_groups="graph")
    ms = attach_scores(create_model("resnet20", num_classes=10), granularity="channel")
    assert len(ms.plan) == 9 and not hasattr(ms.plan, "shortcuts")  # the block-inner plan


@pytest.mark.slow
def test_prune_loop_with_depgraph_groups_hits_the_flops_budget():
    torch.manual_seed(0)
    x, y = torch.randn(96, 3, 32, 32), torch.randint(0, 10, (96,))
    net = create_model("resnet20", num_classes=10)
    cfg = PruneConfig(sparsity=0.5, granularity="channel", channel_groups="depgraph", budget="flops",
                      epochs=2, regrowth_epochs=1, batch_size=32, device="cpu", channel_multiple=4)
    res = prune(net, (x, y), config=cfg)
    assert 0.45 <= res.masks.density("flops") <= 0.5
    plain = finalize(net).eval()
    ratio = count_macs(plain) / count_macs(create_model("resnet20", num_classes=10))
    assert abs(ratio - res.masks.density("flops")) < 0.01
    assert plain.conv1.out_channels < 16 or plain.layer3[2].conv2.out_channels < 64


def test_magnitude_score_init_is_torch_prunings_group_magnitude_order():
    import torch_pruning as tp

    from edgeflow.prune.depgraph import dependency_graph, to_group
    from edgeflow.prune.depgraph_shrink import group_magnitudes

    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10)
    _randomise_bn(net, torch.Generator().manual_seed(5))
    _, groups, shortcuts = dependency_graph(net)
    names = {m: n for n, m in net.named_modules()}
    theirs = {to_group(g, names, shortcuts).name: tp.importance.MagnitudeImportance()(g) for g in groups}
    ours = group_magnitudes(net, depgraph_plan(net))
    for name, imp in ours.items():
        torch.testing.assert_close(imp, theirs[name].float(), rtol=1e-4, atol=1e-6)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph", init_order="magnitude")
    flat_imp = torch.cat([ours[n] for n in ms.masks])
    flat_t = torch.cat([mk.scores.detach() for mk in ms.masks.values()])
    assert torch.equal(flat_imp.argsort(), flat_t.argsort())


@pytest.mark.slow
def test_prune_cli_with_depgraph_groups_writes_a_reloadable_checkpoint(tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.cli.app import app

    out = tmp_path / "c4.pt"
    res = CliRunner().invoke(app, [
        "prune", "--model", "conv4", "--data", "digits", "--limit", "200", "--sparsity", "0.5",
        "--granularity", "channel", "--channel-groups", "depgraph", "--budget", "flops",
        "--epochs", "1", "--regrowth-epochs", "0", "--batch-size", "50", "--output", str(out),
        "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["macs"] <= 0.5 * result["dense_macs"] + 1
    _, meta = load_checkpoint(out)
    assert meta["prune"]["channel_groups"] == "depgraph"
    model = load_pruned(out)
    assert {n: m.out_channels for n, m in model.named_modules()
            if n in meta["prune"]["channels"]} == meta["prune"]["channels"]
