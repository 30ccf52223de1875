"""A tiny trained-enough backbone checkpoint on the built-in digits (seconds to make)."""

from __future__ import annotations

import pytest
import torch

from edgeflow.checkpoint import save_checkpoint
from edgeflow.data import Preprocess, load_dataset
from edgeflow.models import create_model
from edgeflow.train import TrainConfig, fit, to_tensor
from edgeflow.workflows import checkpoint_meta


@pytest.fixture(scope="session")
def digits_backbone(tmp_path_factory):
    """(checkpoint path, model) of a conv4 (width 16) trained 2 epochs on digits at 16 px."""
    torch.manual_seed(0)
    ds = load_dataset("digits")
    spec = Preprocess(size=16, channels=3)
    net = create_model("conv4", num_classes=10, width=16)
    fit(net, to_tensor(ds, spec), config=TrainConfig(epochs=2, lr=0.05, batch_size=64,
                                                     device="cpu"))
    path = tmp_path_factory.mktemp("backbone") / "digits-r20.pt"
    save_checkpoint(path, state_dict=net.state_dict(),
                    meta=checkpoint_meta("conv4", net, ds.classes, spec, {"width": 16}))
    return path, net.eval()
