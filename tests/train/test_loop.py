import numpy as np
import torch

from edgeflow.data import Preprocess, load_dataset
from edgeflow.models import create_model
from edgeflow.train import TrainConfig, evaluate, fit, to_tensor
from edgeflow.train.augment import random_crop_flip
from edgeflow.train.loop import cosine_lr


def test_training_on_digits_learns():
    ds = load_dataset("digits")
    order = np.random.default_rng(0).permutation(len(ds))
    train, test = ds.subset(order[:1500]), ds.subset(order[1500:])
    spec = Preprocess(size=16, channels=1, mean=(0.5,), std=(0.5,))
    model = create_model("conv4", num_classes=10, in_channels=1, width=16)
    xt, yt = to_tensor(test, spec)
    before = evaluate(model, xt, yt)
    config = TrainConfig(epochs=5, lr=0.05, crop_padding=2, device="cpu")
    hist = fit(model, to_tensor(train, spec), config=config, val=(xt, yt))
    assert len(hist.epochs) == 5
    assert hist.last["val_acc"] > 0.8 > before + 0.3


def test_same_seed_same_weights():
    ds = load_dataset("digits", limit=200)
    spec = Preprocess(size=8, channels=1, mean=(0.5,), std=(0.5,))
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = create_model("conv4", num_classes=10, in_channels=1, width=8)
        fit(model, to_tensor(ds, spec), config=TrainConfig(epochs=1, seed=5, device="cpu"))
        outs.append(model.encoder[0].weight.detach().clone())
    torch.testing.assert_close(outs[0], outs[1])


def test_crop_flip_keeps_shape_and_content():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, padding=0, generator=g)
    for i in range(2):  # without padding each image is itself or its mirror
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(2))
    assert random_crop_flip(x, padding=2, generator=g).shape == x.shape


def test_cosine_schedule_endpoints():
    assert cosine_lr(0, 100, peak=0.1, final_frac=0.0) == 0.1
    assert abs(cosine_lr(100, 100, peak=0.1, final_frac=0.1) - 0.01) < 1e-12
