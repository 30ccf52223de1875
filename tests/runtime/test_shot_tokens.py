"""A drift whose task encoder reads the individual shots, on the device: the exported graph takes
them, and the runtime's adaptation equals PyTorch's, open and closed loop, with the guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeflow.adapt import IntegratorSettings, ThetaSpec
from edgeflow.adapt.apply import hyperflow_adapt
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.errors import BundleError
from edgeflow.runtime import Session
from edgeflow.runtime.drift_loop import first_inputs
from tests.export.helpers import as_float, episode
from tests.runtime.test_drift_loop import drift_bundle, stats_drift


def shots_drift(spec: ThetaSpec) -> DriftNet:
    """:func:`stats_drift` with a shot path whose (random, not zero) output matters."""
    base = stats_drift(spec)
    drift = DriftNet(DriftConfig(**{**base.config.to_dict(), "shot_tokens": True}))
    missing, _ = drift.load_state_dict(base.state_dict(), strict=False)
    assert all(k.startswith("task_encoder.shots.") for k in missing)
    torch.manual_seed(1)
    torch.nn.init.normal_(drift.task_encoder.shots.out.weight, std=0.3)
    return drift.eval()


@pytest.fixture(scope="module")
def shots_bundle(tmp_path_factory):
    out = drift_bundle(tmp_path_factory.mktemp("shots") / "b", shots_drift,
                       settings=IntegratorSettings(steps=4, loop_every=2))
    return (*out, stats_drift(out[2]))


def test_the_graph_takes_the_shots_and_parity_was_checked(shots_bundle):
    import json

    out = shots_bundle[0]
    man = json.loads((out / "manifest.json").read_text())
    names = [i["name"] for i in man["graphs"]["task_encoder"]["inputs"]]
    assert names == ["prototypes", "mask", "shots", "shot_labels"]
    assert man["metrics"]["parity"]["drift"]["max_abs_diff_z"] <= 1e-4


@pytest.mark.parametrize("loop_every", [0, 1])
def test_runtime_equals_pytorch(shots_bundle, loop_every):
    out, model, spec, drift, base = shots_bundle
    sx, sy, _, _ = episode(2)
    x, y = torch.from_numpy(as_float(sx)), torch.as_tensor(sy)
    settings = IntegratorSettings(steps=4, loop_every=loop_every)
    ref = hyperflow_adapt(model, spec, drift, x, y, 5, settings=settings).numpy()
    without = hyperflow_adapt(model, spec, base, x, y, 5, settings=settings).numpy()
    assert np.abs(ref - without).max() > 1e-3  # the shots changed where adaptation goes
    with Session(out, backend="onnxruntime") as s:
        assert s.drift_shots and s.drift_stats
        s.loop_every = loop_every
        task = s.adapt(sx, sy)
        guarded = s.adapt(sx, sy, guard=True)
    np.testing.assert_allclose(task.theta, ref, atol=2e-4)
    assert guarded.info["guard"]["chosen"] in guarded.info["guard"]["scores"]


def test_first_inputs_equal_pytorch_and_shots_are_required(shots_bundle):
    from edgeflow.adapt.split import SplitFeatures

    out, model, spec, drift, _ = shots_bundle
    sx, sy, _, _ = episode(3)
    split = SplitFeatures(model, spec)
    with torch.no_grad():
        feats = split.suffix(split.prefix(torch.from_numpy(as_float(sx))), spec.get(model))
        z_ref = drift.embed_support(feats, torch.as_tensor(sy), 5).numpy()
    with Session(out, backend="onnxruntime") as s:
        task = s.adapt(sx, sy, steps=0)
        z, stats = first_inputs(s, task)
        with pytest.raises(BundleError, match="reads the individual shots"):
            s.embed_task(task.prototypes)
    np.testing.assert_allclose(z, z_ref, atol=1e-4)
    assert stats is not None and stats.shape == (1, drift.config.stats_dim)
