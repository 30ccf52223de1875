"""The split backbone in the Session, and tasks that grow or shrink without their old images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeflow.errors import DataError
from edgeflow.runtime import Session, Task
from tests.export.helpers import episode


def _same_task(a: Task, b: Task, *, names: bool = True) -> None:
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.theta, b.theta, atol=1e-6, rtol=0)
    np.testing.assert_allclose(a.prototypes, b.prototypes, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.openset.mean, b.openset.mean, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.openset.loo_scores, b.openset.loo_scores, atol=1e-3, rtol=0)
    assert a.class_names == b.class_names or not names


def _unsplit_v1(src, dst):
    """The same bundle as the previous schema wrote it: no split graphs, version 1, no digest."""
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    for g, f in (("backbone_prefix", "backbone_prefix.onnx"), ("backbone_suffix", "backbone_suffix.onnx")):
        del man["graphs"][g], man["files"][f]
        (dst / f).unlink()
    man["schema_version"] = 1
    del man["manifest_digest"]
    man["metrics"]["parity"].pop("split")
    (dst / "manifest.json").write_text(json.dumps(man, indent=2))
    return dst


def test_the_session_adapts_through_the_split_and_an_unsplit_bundle_gives_the_same(drift_bundle,
                                                                                     tmp_path):
    sx, sy, qx, _ = episode(3)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        assert s.split and {"backbone_prefix", "backbone_suffix"} <= set(s.runners)
        task = s.adapt(sx, sy)
        labels, scores = s.predict(qx, task)
        cache = task.support.cache
        assert set(cache) == {o.name for o in s.runners["backbone_prefix"].outputs}
        assert task.info["support_bytes_per_image"] == sum(v[0].nbytes for v in cache.values())
    old = _unsplit_v1(drift_bundle[0], tmp_path / "v1")
    with Session(old, backend="onnxruntime") as s1:  # the previous schema still loads and runs
        assert not s1.split and s1.bundle.manifest["schema_version"] == 1
        t1 = s1.adapt(sx, sy)
        l1, sc1 = s1.predict(qx, t1)
        assert set(t1.support.cache) == {"images"}  # it caches the preprocessed images instead
    _same_task(task, t1)
    np.testing.assert_array_equal(labels, l1)
    np.testing.assert_allclose(scores, sc1, atol=1e-6)


def test_update_and_remove_equal_adapting_from_scratch(drift_bundle, tmp_path):
    sx, sy, qx, _ = episode(5)
    first = np.isin(sy, [0, 1, 2]) & (np.arange(len(sy)) % 5 < 3)  # 3 classes, 3 shots each
    rest = ~first
    names = ["plane", "car", "bird", "cat", "deer"]
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        grown = s.update(s.adapt(sx[first], sy[first], class_names=names[:3]), sx[rest], sy[rest],
                         class_names=names)
        # the union in the same order as the task holds it: old rows, then the new ones
        order = np.concatenate([np.flatnonzero(first), np.flatnonzero(rest)])
        scratch = s.adapt(sx[order], sy[order], class_names=names)
        _same_task(grown, scratch)
        assert grown.ways == 5 and grown.info["shots"] == [5] * 5
        np.testing.assert_array_equal(s.predict(qx, grown)[0], s.predict(qx, scratch)[0])
        # saved and loaded, the task still grows; then shrinks
        path = grown.save(tmp_path / "task.npz")
        loaded = Task.load(path)
        assert loaded.support is not None and loaded.openset is not None
        smaller = s.remove(loaded, [1, 3])
        keep = ~np.isin(sy[order], [1, 3])
        # (class names address labels 0..W-1, so the reference adapts the ids [0, 2, 4] unnamed)
        _same_task(smaller, s.adapt(sx[order][keep], sy[order][keep]), names=False)
        assert smaller.class_names == ("plane", "bird", "deer")
        with pytest.raises(DataError, match="not in the task"):
            s.remove(loaded, [7])
        with pytest.raises(DataError, match="empty task"):
            s.remove(loaded, range(5))
        renamed = [n if i != 1 else "auto" for i, n in enumerate(names)]
        car = np.flatnonzero(sy == 1)[:1]
        with pytest.raises(DataError, match=r"'car' in the task but 'auto' here"):
            s.update(loaded, sx[car], sy[car], class_names=renamed)
        with pytest.raises(DataError, match="need class_names"):
            s.update(s.adapt(sx[first], sy[first], class_names=names[:3]), sx[rest], sy[rest])


def test_one_shot_tasks_grow_and_rejection_waits_for_a_second_shot(drift_bundle):
    sx, sy, qx, _ = episode(6, shots=1)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        task = s.adapt(sx, sy)
        with pytest.raises(DataError, match="at least 2 support images per class"):
            s.predict(qx, task, reject=0.95)
        sx2, sy2, _, _ = episode(6, shots=2)
        more = s.update(task, sx2[sy2 >= 0][1::2], sy2[1::2])  # a second shot of every class
        assert more.info["shots"] == [2] * 5 and more.openset.loo_scores.shape == (10,)
        assert s.predict(qx, more, reject=0.95)[0].shape == (len(qx),)


def test_a_first_format_task_loads_but_cannot_grow(drift_bundle, tmp_path):
    import zipfile

    sx, sy, qx, _ = episode(1)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        path = s.adapt(sx, sy).save(tmp_path / "t.npz")
        old = tmp_path / "old.npz"
        with zipfile.ZipFile(path) as z, zipfile.ZipFile(old, "w") as out:
            for name in ("theta.npy", "prototypes.npy", "classes.npy"):
                out.writestr(name, z.read(name))
            meta = json.loads(str(np.load(path)["meta"]))
            keep = {k: meta[k] for k in ("bundle", "info", "class_names")}
            buf = __import__("io").BytesIO()
            np.save(buf, np.asarray(json.dumps({"format": "edgeflow-task/1", **keep})))
            out.writestr("meta.npy", buf.getvalue())
        task = Task.load(old)
        assert task.support is None and task.openset is None
        assert s.predict(qx, task)[0].shape == (len(qx),)
        with pytest.raises(DataError, match="keeps no support cache"):
            s.update(task, sx[:1], sy[:1])
        with pytest.raises(DataError, match="no open-set statistics"):
            s.predict(qx, task, reject=0.95)
