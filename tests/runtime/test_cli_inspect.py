"""`edgeflow inspect` on a channel-pruned bundle: what pruning did, not "0.00% of weights zero"."""

import json

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from tests.export.helpers import CIFAR_PRE, cifar_test, resnet20

runner = CliRunner()


@pytest.fixture(scope="module")
def channel_bundle(tmp_path_factory):
    """ResNet-20 with the first conv of every layer1 block cut to 8 of 16 channels, exported."""
    import torch

    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle
    from edgeflow.prune.channel import count_macs, shrink_channels

    dense = resnet20()
    keep = {f"layer1.{i}.conv1": torch.arange(8) for i in range(3)}
    pruned = shrink_channels(dense, keep).eval()
    out = tmp_path_factory.mktemp("channel") / "r20-channel.bundle"
    export_bundle(pruned, output=out, preprocess_spec=Preprocess(**CIFAR_PRE),
                  parity_images=cifar_test().images[:16], max_theta=256, target="cpu",
                  sparsity={"method": "hyperflows", "granularity": "channel", "requested": 0.5},
                  metrics={"sparsity": 0.0915})
    head = 64 * 10  # the classifier is not part of the exported backbone
    return out, count_macs(pruned, input_size=32) - head, count_macs(dense, input_size=32) - head


def test_inspect_reports_widths_and_macs_of_a_channel_pruned_bundle(channel_bundle):
    bundle, macs, dense_macs = channel_bundle
    res = runner.invoke(app, ["inspect", str(bundle), "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["structure"]
    assert st["granularity"] == "channel" and st["removed_fraction"] == pytest.approx(0.0915)
    assert st["macs_per_image"] == macs < dense_macs
    widths = {x["layer"]: x["width"] for x in st["layers"]}
    assert widths["layer1.0.conv1"] == 8 and widths["layer1.0.conv2"] == 16
    assert widths["layer3.2.conv1"] == 64

    res = runner.invoke(app, ["inspect", str(bundle)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps lines at the console's width
    assert "0.00%" not in text  # channel pruning leaves no zeros: that number said nothing
    assert "channel granularity" in text and "9.2% of the unpruned backbone" in text
    assert f"MACs per image {macs:,}" in text and "layer1.0.conv1 8," in text


def test_inspect_sets_the_backbone_against_the_unpruned_one_when_recorded():
    from edgeflow.cli.inspect_report import structure_lines

    st = {"method": "hyperflows", "granularity": "channel", "requested": 0.5,
          "zero_weight_fraction": 0.0, "removed_fraction": 0.5, "params": 1000,
          "macs_per_image": 4000, "layers": [{"layer": "a", "width": 8}],
          "unpruned": {"params": 2000, "macs": 10000, "widths": {"a": 16}}}
    lines = "\n".join(structure_lines(st))
    assert "parameters 1,000 of 2,000 unpruned (50.0%)" in lines
    assert "MACs per image 4,000 of 10,000 unpruned (40.0%)" in lines and "a 8/16" in lines


def test_inspect_keeps_the_zero_fraction_for_unstructured_pruning():
    from edgeflow.cli.inspect_report import structure_lines

    lines = structure_lines({"method": "hyperflows", "granularity": "n:m", "requested": 0.5,
                             "zero_weight_fraction": 0.5, "two_four": True, "params": 10,
                             "macs_per_image": 20, "layers": []})
    assert "zero weights: 50.00% of conv weights (2:4 pattern)" in lines


def test_bench_help_says_what_it_measures():
    res = runner.invoke(app, ["bench", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "B3" not in res.output
    assert "milliseconds" in res.output and "backbone_b1" in res.output
