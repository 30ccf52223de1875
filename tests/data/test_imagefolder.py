import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from edgeflow.data import load_dataset, load_image_folder, stratified_limit
from edgeflow.errors import DataError
from tests.conftest import shared_file

ARCHIVES = {
    # file: (classes, images)
    "tiny-imagenet/base.zip": (120, 24000),
    "tiny-imagenet/val.zip": (30, 3000),
    "tiny-imagenet/novel.zip": (50, 5000),
    "cifar10/train.zip": (10, 25000),
    "cifar10/test.zip": (10, 10000),
    "gtsrb/test.zip": (43, 3990),
    "mnist/test.zip": (10, 10000),
    "omniglot/images_background_small1.zip": (136, 2720),
}


@pytest.mark.parametrize("rel", sorted(ARCHIVES))
def test_every_shared_archive_loads(rel):
    classes, images = ARCHIVES[rel]
    ds = load_dataset(shared_file(f"data/{rel}"), size=32)
    assert ds.num_classes == classes
    assert len(ds) == images
    assert ds.images.shape[1:] == (32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.counts().min() > 0
    assert list(ds.classes) == sorted(ds.classes)


def test_omniglot_classes_are_alphabet_slash_character():
    ds = load_dataset(shared_file("data/omniglot/images_background_small1.zip"), mode="L", size=28)
    assert ds.classes[0] == "Balinese/character01"
    assert ds.image_shape == (28, 28, 1)
    assert set(ds.counts()) == {20}


def test_cache_returns_identical_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFLOW_CACHE", str(tmp_path))
    path = shared_file("data/gtsrb/test.zip")
    first = load_image_folder(path, size=32)
    assert list(tmp_path.glob("*.npz")), "no cache file written"
    second = load_image_folder(path, size=32)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.classes == second.classes


def _png(color=(10, 20, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_directory_and_zip_give_the_same_dataset(tmp_path):
    files = {f"{c}/{i}.png": _png((i * 40, 0, 0)) for c in ("cat", "dog") for i in range(3)}
    d = _tree(tmp_path / "dir", files)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for rel, data in files.items():
            zf.writestr(f"train/{rel}", data)
    a, b = load_image_folder(d, cache=False), load_image_folder(z, cache=False)
    assert a.classes == b.classes == ("cat", "dog")
    np.testing.assert_array_equal(a.images, b.images)


def test_split_selection(tmp_path):
    files = {f"{s}/{c}/0.png": _png() for s in ("train", "test") for c in ("a", "b", "c")}
    files["train/d/0.png"] = _png()
    root = _tree(tmp_path, files)
    with pytest.raises(DataError, match="several splits"):
        load_image_folder(root, cache=False)
    assert load_image_folder(root, split="train", cache=False).num_classes == 4
    with pytest.raises(DataError, match="no split 'val'"):
        load_image_folder(root, split="val", cache=False)


def test_corrupt_image_named_and_skippable(tmp_path):
    files = {f"a/{i}.png": _png() for i in range(3)} | {f"b/{i}.png": _png() for i in range(3)}
    files["b/bad.png"] = _png()[:40]  # truncated
    root = _tree(tmp_path, files)
    with pytest.raises(DataError, match=r"bad\.png.*--skip-corrupt"):
        load_image_folder(root, cache=False)
    ds = load_image_folder(root, skip_corrupt=True, cache=False)
    assert len(ds) == 6 and ds.skipped == ("b/bad.png",)


def test_non_image_file_is_an_error(tmp_path):
    root = _tree(tmp_path, {"a/0.png": _png(), "a/notes.txt": b"hello", "b/0.png": _png()})
    with pytest.raises(DataError, match=r"notes\.txt is not an image"):
        load_image_folder(root, cache=False)


def test_hidden_files_are_ignored(tmp_path):
    root = _tree(tmp_path, {"a/0.png": _png(), "a/.DS_Store": b"x", "b/0.png": _png()})
    assert len(load_image_folder(root, cache=False)) == 2


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no files"),
        ({"0.png": _png(), "1.png": _png()}, "no class folders"),
        ({"a/0.png": _png(), "b/c/0.png": _png()}, "mixes folder depths"),
        ({"a/0.png": _png(), "b/0.png": _png(size=(9, 9))}, "pass size="),
    ],
)
def test_bad_layouts_are_explained(tmp_path, files, message):
    root = _tree(tmp_path / "d", files)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        load_image_folder(root, cache=False)


def test_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.tar").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a \.zip"):
        load_dataset(tmp_path / "x.tar")


def test_stratified_limit_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 100)
    idx = stratified_limit(labels, 1000 // 4)
    assert len(idx) == 250
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(idx, stratified_limit(labels, 250))


def test_digits_builtin():
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert ds.images.max() == 255
