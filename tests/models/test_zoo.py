import pytest
import torch

from edgeflow.data import Preprocess, load_dataset, preprocess
from edgeflow.errors import CheckpointError, ConfigError
from edgeflow.models import MODELS, create_model
from tests.conftest import shared_file

SMALL = {"resnet12": {"widths": (8, 16, 16, 32)}, "resnet18": {"small_input": True, "width": 8},
         "vgg11": {"width_mult": 0.125}, "vgg19": {"width_mult": 0.125}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_exposes_features_and_biases(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **SMALL.get(name, {})).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    torch.testing.assert_close(model(x), model.classifier(feats))
    biases = model.adaptable_biases()
    assert biases, "no adaptable biases"
    params = dict(model.named_parameters())
    for pname, p in biases:
        assert params[pname] is p and p.ndim == 1
    # input-side first: the order of named_parameters()
    order = list(params)
    assert [order.index(n) for n, _ in biases] == sorted(order.index(n) for n, _ in biases)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="valid models: conv4, efficientnet_lite0, resnet12"):
        create_model("resnet99")


def test_bad_model_option_is_a_config_error():
    with pytest.raises(ConfigError, match="does not take"):
        create_model("conv4", no_such_option=3)


@pytest.mark.slow
def test_pretrained_resnet20_reaches_78_percent_on_1000_test_images():
    weights = shared_file("weights/cifar10-resnet20-12fca82f.th")
    ds = load_dataset(shared_file("data/cifar10/test.zip"), limit=1000)
    model = create_model("resnet20", weights=weights).eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(preprocess(ds.images, Preprocess(size=32)))).argmax(1)
    top1 = (pred.numpy() == ds.labels).mean()
    assert top1 >= 0.78, top1


def test_resnet56_weights_load_and_wrong_model_is_explained():
    weights = shared_file("weights/cifar10-resnet56-4bfd9763.th")
    create_model("resnet56", weights=weights)
    with pytest.raises(CheckpointError, match="is --model right"):
        create_model("resnet20", weights=weights)
