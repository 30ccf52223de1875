"""adapt/predict as a new user meets them: held-out accuracy, label files, one class, empty and
corrupt files, and JSON keys that say what they hold (real ResNet-20 bundle, real CIFAR-10 images)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeflow.cli.app import app
from tests.export.helpers import cifar_test

runner = CliRunner()
CLASSES = ["airplane", "cat", "ship"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _text(res) -> str:
    return " ".join(res.output.split())  # rich wraps at the console's width


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """support/<class>/ (5 each), held_out/<class>/ (8 each, plus 4 'horse' the task never saw)."""
    root = tmp_path_factory.mktemp("cli-predict")
    ds = cifar_test()
    for name in [*CLASSES, "horse"]:
        idx = np.nonzero(ds.labels == ds.classes.index(name))[0]
        if name != "horse":
            for i in range(5):
                _save(root / "support" / name / f"s{i}.png", ds.images[idx[i]])
        for i in range(8 if name != "horse" else 4):
            _save(root / "held_out" / name / f"q{i}.png", ds.images[idx[10 + i]])
    return root


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def task(folders, plain_bundle):
    out = folders / "task.npz"
    res = run("adapt", plain_bundle[0], "--support", folders / "support", "--output", out, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped"] == []
    return out


def test_predict_on_class_folders_reports_accuracy_recall_and_confusion(folders, task, plain_bundle):
    res = run("predict", plain_bundle[0], "--task", task, folders / "held_out", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    ev, rows = out["evaluation"], out["predictions"]
    assert len(rows) == 28 and out["skipped"] == []
    # named keys: class_name is the folder name given to adapt, class_index its label id
    assert set(rows[0]) == {"image", "class_name", "class_index", "score", "top",
                            "true_class_name"}
    assert all(CLASSES[r["class_index"]] == r["class_name"] for r in rows)
    known = [r for r in rows if r["true_class_name"] in CLASSES]
    correct = sum(r["class_name"] == r["true_class_name"] for r in known)
    assert ev["images"] == 24 and ev["correct"] == correct
    assert ev["accuracy"] == pytest.approx(correct / 24) and ev["accuracy"] > 0.5  # chance 1/3
    matrix = np.asarray(ev["confusion"]["matrix"])
    assert ev["confusion"]["classes"] == CLASSES and matrix.sum(1).tolist() == [8, 8, 8]
    assert [c["recall"] for c in ev["per_class"]] == pytest.approx(np.diag(matrix) / 8)
    # a class the task does not know is counted apart, never an error nor a miss
    assert ev["unknown_classes"] == {"horse": 4} and ev["unknown_class_images"] == 4

    # the same images as plain files give the same predictions (plain predict is unchanged)
    plain = run("predict", plain_bundle[0], "--task", task,
                *sorted((folders / "held_out").rglob("*.png")), "--json")
    assert plain.exit_code == 0, plain.output
    assert "evaluation" not in json.loads(plain.stdout)
    by_file = {r["image"]: r["class_name"] for r in json.loads(plain.stdout)["predictions"]}
    assert {r["image"]: r["class_name"] for r in rows} == by_file

    human = run("predict", plain_bundle[0], "--task", task, folders / "held_out")
    assert human.exit_code == 0, human.output
    text = _text(human)
    assert f"accuracy {ev['accuracy']:.2%} ({correct}/24" in text
    assert "not counted: 4 images of classes the task does not know (horse 4)" in text


def test_a_held_out_class_with_no_images_shows_in_the_report(folders, task, plain_bundle, tmp_path):
    import shutil

    held = tmp_path / "held_out"
    shutil.copytree(folders / "held_out" / "cat", held / "cat")
    shutil.copytree(folders / "held_out" / "ship", held / "ship")
    (held / "airplane").mkdir()
    res = run("predict", plain_bundle[0], "--task", task, held, "--json")
    assert res.exit_code == 0, res.output
    per_class = {c["class_name"]: c for c in json.loads(res.stdout)["evaluation"]["per_class"]}
    assert per_class["airplane"]["images"] == 0 and per_class["airplane"]["recall"] is None
    assert per_class["cat"]["images"] == 8


def test_predict_help_says_what_the_json_keys_are():
    res = runner.invoke(app, ["predict", "--help"])
    text = " ".join(res.output.replace("│", " ").split())  # the help's box and wrapping
    assert "class_name (the class's name as given to adapt" in text
    assert "class_index (its label id in the task)" in text


def test_label_files_for_flat_folders(folders, task, plain_bundle, tmp_path):
    flat = tmp_path / "captures"
    flat.mkdir()
    rows = ["file,label"]
    for f in sorted((folders / "support").rglob("*.png")):
        name = f"{f.parent.name}_{f.name}"
        (flat / name).write_bytes(f.read_bytes())
        rows.append(f"{name},{f.parent.name}")
    (flat / "labels.csv").write_text("\n".join(rows) + "\n")
    csv_task = tmp_path / "csv_task.npz"
    res = run("adapt", plain_bundle[0], "--labels", flat / "labels.csv", "-o", csv_task, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["classes"] == CLASSES
    from edgeflow.runtime import Task

    np.testing.assert_array_equal(Task.load(csv_task).prototypes, Task.load(task).prototypes)

    # predict with a label file (paths relative to the folder given) = predict on class folders
    lines = [f"{f.parent.name}/{f.name},{f.parent.name}"
             for f in sorted((folders / "held_out").rglob("*.png"))]
    (tmp_path / "truth.csv").write_text("\n".join(lines))
    res = run("predict", plain_bundle[0], "--task", task, folders / "held_out", "--labels",
              tmp_path / "truth.csv", "--json")
    assert res.exit_code == 0, res.output
    folder_res = run("predict", plain_bundle[0], "--task", task, folders / "held_out", "--json")
    assert json.loads(res.stdout)["evaluation"] == json.loads(folder_res.stdout)["evaluation"]

    (flat / "labels.csv").write_text("\n".join([*rows, rows[1]]))
    res = run("adapt", plain_bundle[0], "--labels", flat / "labels.csv", "-o", csv_task)
    assert res.exit_code == 1 and f"row {len(rows) + 1} lists" in _text(res)
    res = run("adapt", plain_bundle[0], "-o", csv_task)
    assert res.exit_code == 1 and "--support FOLDER" in _text(res)


def test_one_class_and_empty_class_folders_are_errors(folders, plain_bundle, tmp_path):
    one = tmp_path / "one"
    for f in (folders / "support" / "cat").glob("*.png"):
        _save(one / "cat" / f.name, np.asarray(Image.open(f)))
    res = run("adapt", plain_bundle[0], "--support", one, "-o", tmp_path / "t.npz")
    assert res.exit_code == 1
    assert "only one class ('cat')" in _text(res) and "add images of at least one more" in _text(res)
    (one / "dog").mkdir()
    res = run("adapt", plain_bundle[0], "--support", one, "-o", tmp_path / "t.npz")
    assert res.exit_code == 1 and "folder(s) with no images: dog" in _text(res)
    assert not (tmp_path / "t.npz").exists()


def test_skip_corrupt_on_adapt_and_predict(folders, task, plain_bundle, tmp_path):
    import shutil

    support = tmp_path / "support"
    shutil.copytree(folders / "support", support)
    (support / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    res = run("adapt", plain_bundle[0], "--support", support, "-o", tmp_path / "t.npz")
    assert res.exit_code == 1 and "--skip-corrupt" in _text(res)
    res = run("adapt", plain_bundle[0], "--support", support, "-o", tmp_path / "t.npz",
              "--skip-corrupt", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] == ["cat/broken.png"] and out["shots"] == [5, 5, 5]
    res = run("adapt", plain_bundle[0], "--support", support, "-o", tmp_path / "t.npz",
              "--skip-corrupt")
    assert res.exit_code == 0 and "skipped 1 unreadable file(s): cat/broken.png" in _text(res)

    res = run("predict", plain_bundle[0], "--task", task, support / "cat")
    assert res.exit_code == 1 and "--skip-corrupt" in _text(res)
    res = run("predict", plain_bundle[0], "--task", task, support / "cat", "--skip-corrupt",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] == [str(support / "cat" / "broken.png")] and len(out["predictions"]) == 5


def test_adapt_grows_and_shrinks_a_task_without_its_old_images(folders, task, plain_bundle,
                                                                tmp_path):
    """`adapt --task --add` equals adapting on the union; `--remove` drops classes by name."""
    from edgeflow.runtime import Task

    extra = tmp_path / "extra"
    ds = cifar_test()
    idx = np.nonzero(ds.labels == ds.classes.index("horse"))[0]
    for i in range(5):
        _save(extra / "horse" / f"h{i}.png", ds.images[idx[i]])
    for i in range(2):  # two more shots of a known class
        _save(extra / "cat" / f"c{i}.png", ds.images[np.nonzero(ds.labels == 3)[0][40 + i]])
    grown_path = tmp_path / "grown.npz"
    res = run("adapt", plain_bundle[0], "--task", task, "--add", extra, "-o", grown_path, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["classes"] == [*CLASSES, "horse"] and out["shots"] == [5, 7, 5, 5]
    assert out["support_bytes_per_image"] > 0
    # the same images adapted from scratch (union in the task's order: old rows, then new)
    union = tmp_path / "union"
    for d in (folders / "support", extra):
        for f in sorted(d.glob("*/*.png")):
            (union / f.parent.name).mkdir(parents=True, exist_ok=True)
            (union / f.parent.name / f"{d.name}-{f.name}").write_bytes(f.read_bytes())
    res = run("adapt", plain_bundle[0], "--support", union, "-o", tmp_path / "u.npz")
    assert res.exit_code == 0, res.output
    grown, scratch = Task.load(grown_path), Task.load(tmp_path / "u.npz")
    by_name = dict(zip(scratch.class_names, scratch.prototypes, strict=True))
    for name, proto in zip(grown.class_names, grown.prototypes, strict=True):
        np.testing.assert_allclose(proto, by_name[name], atol=1e-5)
    res = run("adapt", plain_bundle[0], "--task", grown_path, "--remove", "cat,horse", "-o",
              tmp_path / "small.npz", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["classes"] == ["airplane", "ship"]
    bad = run("adapt", plain_bundle[0], "--task", grown_path, "--remove", "dog", "-o", tmp_path / "x")
    assert bad.exit_code == 1 and "does not have: ['dog']" in _text(bad)
    bad = run("adapt", plain_bundle[0], "--add", extra, "-o", tmp_path / "x")
    assert bad.exit_code == 1 and "give it with --task" in _text(bad)


def test_one_class_task_and_rejection_from_the_cli(folders, task, plain_bundle, tmp_path):
    one = tmp_path / "one"
    for f in (folders / "support" / "cat").glob("*.png"):
        (one / "cat").mkdir(parents=True, exist_ok=True)
        (one / "cat" / f.name).write_bytes(f.read_bytes())
    bad = run("adapt", plain_bundle[0], "--support", one, "-o", tmp_path / "t.npz")
    assert bad.exit_code == 1 and "only one class" in _text(bad)
    res = run("adapt", plain_bundle[0], "--support", one, "--one-class", "-o", tmp_path / "t.npz")
    assert res.exit_code == 0, res.output
    bad = run("predict", plain_bundle[0], "--task", tmp_path / "t.npz", folders / "held_out")
    assert bad.exit_code == 1 and "reject=" in _text(bad)
    res = run("predict", plain_bundle[0], "--task", task, folders / "held_out", "--reject", "0.95",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    ev = out["evaluation"]
    assert ev["confusion"]["predicted_classes"] == [*CLASSES, "unknown"]
    assert ev["unknown_class_images"] == 4 and 0 <= ev["unknown_class_images_rejected"] <= 4
    rejected = [p for p in out["predictions"] if p["rejected"]]
    assert all(p["class_name"] == "unknown" and p["class_index"] == -1 for p in rejected)
    assert sum(row[-1] for row in ev["confusion"]["matrix"]) == sum(
        p["true_class_name"] in CLASSES for p in rejected)
    res = run("predict", plain_bundle[0], "--task", task, folders / "held_out" / "horse",
              "--reject", "0.95")
    assert res.exit_code == 0 and "unknown; nearest:" in _text(res)
