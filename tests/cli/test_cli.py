import json

import pytest
from typer.testing import CliRunner

from edgeflow import __version__
from edgeflow.cli.app import app
from tests.conftest import shared_file

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(map(str, args)))


def test_version_json():
    res = run("version", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"edgeflow": __version__}


def test_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("train", "validate", "data", "version"):
        assert cmd in res.stdout


def test_data_info_novel():
    res = run("data", "info", shared_file("data/tiny-imagenet/novel.zip"), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["classes"] == 50 and out["images"] == 5000 and out["unreadable"] == 0


def test_train_then_validate_digits(tmp_path):
    ckpt = tmp_path / "d.pt"
    res = run("train", "--model", "conv4", "--data", "digits", "--epochs", "3", "--size", "16",
              "--output", ckpt, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output"] == str(ckpt)
    res = run("validate", "--model", "conv4", "--weights", ckpt, "--data", "digits", "--json")
    assert res.exit_code == 0, res.output
    assert 0.5 < json.loads(res.stdout)["top1"] <= 1.0


@pytest.mark.slow
def test_validate_pretrained_resnet20():
    res = run("validate", "--model", "resnet20", "--weights",
              shared_file("weights/cifar10-resnet20-12fca82f.th"), "--data",
              shared_file("data/cifar10/test.zip"), "--limit", "1000", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1"] >= 0.78


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "--model", "nope", "--weights", "x.pt", "--data", "digits"], "valid models"),
        (["data", "info", "/no/such/dir"], "does not exist"),
        (["validate", "--model", "conv4", "--weights", "/no/x.pt", "--data", "digits"],
         "does not exist"),
    ],
)
def test_errors_are_one_line_exit_1(args, message):
    res = run(*args)
    assert res.exit_code == 1
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_data_sample_writes_an_image_folder_that_loads_back(tmp_path):
    from edgeflow.data import load_dataset

    res = run("data", "sample", "digits", "--classes", "5-7", "--per-class", "4", "--offset", "2",
              "--output", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    back = load_dataset(tmp_path / "s", cache=False, mode="L")
    digits = load_dataset("digits")
    assert back.classes == ("5", "6", "7") and len(back) == 12
    # the very images: the 3rd to 6th of digit 6, pixel for pixel
    idx = [i for i, label in enumerate(digits.labels) if label == 6][2:6]
    assert (back.images[back.labels == 1] == digits.images[idx]).all()
    res = run("data", "sample", "digits", "--classes", "12", "--output", tmp_path / "x")
    assert res.exit_code == 1 and "do not exist" in res.stderr
