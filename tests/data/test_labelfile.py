"""Label files for flat folders: file,label rows, resolved, checked, decoded."""

import numpy as np
import pytest
from PIL import Image

from edgeflow.data.labelfile import load_labelled_files, read_label_csv
from edgeflow.errors import DataError


def _flat(tmp_path, names=("a.png", "b.png", "c.png")):
    folder = tmp_path / "captures"
    folder.mkdir()
    for i, n in enumerate(names):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / n)
    return folder


def test_header_is_optional_and_paths_resolve_against_the_folder_then_the_csv(tmp_path):
    folder = _flat(tmp_path)
    with_header = tmp_path / "labels.csv"
    with_header.write_text("file,label\na.png,mug\n\nb.png, bottle\n")
    rows = read_label_csv(with_header, root=folder)
    assert [(r.path, r.label, r.row) for r in rows] == [(folder / "a.png", "mug", 2),
                                                        (folder / "b.png", "bottle", 4)]
    beside = folder / "labels.csv"  # no header, paths relative to the CSV's own folder
    beside.write_text("a.png,mug\nc.png,mug\n")
    assert [r.path for r in read_label_csv(beside)] == [folder / "a.png", folder / "c.png"]


@pytest.mark.parametrize("text, message", [
    ("a.png,mug\nmissing.png,mug\n", r"row 2: image missing.png does not exist"),
    ("a.png,mug\nb.png,\n", r"row 2: b.png has an empty label"),
    ("a.png,mug\nb.png,cup\n./a.png,cup\n", r"row 3 lists ./a.png again \(first on row 1\)"),
    ("a.png,mug,extra\n", r"row 1 has 3 columns"),
    ("file,label\n", r"lists no images"),
])
def test_bad_rows_are_named(tmp_path, text, message):
    folder = _flat(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=message):
        read_label_csv(csv, root=folder)


def test_a_missing_label_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"label file .*nope.csv does not exist"):
        read_label_csv(tmp_path / "nope.csv")


def test_decoded_like_class_folders_with_skip_corrupt(tmp_path):
    folder = _flat(tmp_path)
    (folder / "bad.png").write_bytes(b"not a png")
    csv = folder / "labels.csv"
    csv.write_text("b.png,mug\na.png,bottle\nbad.png,mug\nc.png,mug\n")
    rows = read_label_csv(csv)
    with pytest.raises(DataError, match=r"bad.png.*\(row 3\).*--skip-corrupt"):
        load_labelled_files(rows, source=str(csv))
    ds = load_labelled_files(rows, source=str(csv), skip_corrupt=True, size=4)
    assert ds.classes == ("bottle", "mug") and ds.labels.tolist() == [1, 0, 1]
    assert ds.images.shape == (3, 4, 4, 3) and ds.skipped == (str(folder / "bad.png"),)
    assert ds.images.dtype == np.uint8
