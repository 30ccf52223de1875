"""A real backbone as ONNX: the pretrained CIFAR ResNet-20, exported once per session."""

from __future__ import annotations

import pytest

from tests.conftest import shared_file


def export_onnx(module, path, *, size: int = 32, output: str = "logits") -> None:
    """Export ``module`` (eval mode, BatchNorm folded by the exporter) with a dynamic batch."""
    import torch

    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, torch.zeros(1, 3, size, size), str(path), input_names=["images"],
                          output_names=[output], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}})


@pytest.fixture(scope="session")
def resnet20_onnx(tmp_path_factory):
    """(path of the logits ONNX, the torch model) for the pretrained ResNet-20."""
    from edgeflow.models import create_model

    weights = shared_file("weights/cifar10-resnet20-12fca82f.th")
    model = create_model("resnet20", weights=weights).eval()
    path = tmp_path_factory.mktemp("onnx") / "resnet20.onnx"
    export_onnx(model, path)
    return path, model


@pytest.fixture(scope="session")
def cifar_small():
    """Disjoint CIFAR-10 test halves (calibration pool, evaluation pool) and the model's preprocessing."""
    import numpy as np

    from edgeflow.data import Preprocess, load_dataset

    ds = load_dataset(shared_file("data/cifar10/test.zip"))
    idx = np.arange(len(ds))
    return ds.subset(idx[idx % 2 == 0]), ds.subset(idx[idx % 2 == 1]), Preprocess(size=32)
