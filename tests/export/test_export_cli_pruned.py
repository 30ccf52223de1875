"""`edgeflow export --weights` takes the channel-pruned checkpoint compile writes (narrower layers
than the model's defaults, widths recorded in its metadata)."""

import json

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.pipeline.compile import run_compile
from edgeflow.pipeline.config import build_config
from edgeflow.runtime import Session, load_bundle

# a tiny compile (tests/pipeline/test_compile.py), channel pruning, no meta-training or INT8
TINY = {"data.size": 8, "backbone.width": 8, "backbone.epochs": 2, "prune.epochs": 1,
        "prune.regrowth_epochs": 0, "prune.recovery_epochs": 1, "prune.granularity": "channel",
        "adapt.enabled": False, "export.int8": "no", "eval.episodes": 2, "eval.shots": "5",
        "device": "cpu"}


@pytest.mark.slow
def test_export_cli_takes_compiles_channel_pruned_checkpoint(tmp_path):
    out = tmp_path / "out"
    run_compile(build_config(overrides={**TINY, "output": str(out)}), log=lambda m: None)
    weights = out / "stages" / "recover" / "recovered.pt"
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--output",
                                   str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == "conv4"
    bundle = load_bundle(tmp_path / "b")
    # the same pruned backbone compile exported: same widths, same features
    assert bundle.manifest["sparsity"]["granularity"] == "channel"
    assert (bundle.manifest["graphs"]["backbone"]["inputs"]
            == load_bundle(out / "bundle").manifest["graphs"]["backbone"]["inputs"])
    from edgeflow.data import load_dataset

    x = load_dataset("digits", limit=16, size=8).images
    with Session(tmp_path / "b", backend="onnxruntime") as a, \
            Session(out / "bundle", backend="onnxruntime") as b:
        fa, fb = a.features(a.prepare(x), a.theta0), b.features(b.prepare(x), b.theta0)
    assert fa.shape == fb.shape and abs(fa - fb).max() < 1e-4
