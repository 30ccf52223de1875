"""Session against the PyTorch reference (edgeflow.adapt) on real CIFAR-10 episodes."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeflow.adapt import classify, hyperflow_adapt
from edgeflow.errors import DataError
from edgeflow.runtime import Session, Task
from tests.export.helpers import as_float, episode


def _torch_episode(model, spec, drift, settings, sx, sy, qx, ways=5):
    sx_t, qx_t = torch.from_numpy(as_float(sx)), torch.from_numpy(as_float(qx))
    sy_t = torch.from_numpy(sy)
    theta = hyperflow_adapt(model, spec, drift, sx_t, sy_t, ways, settings=settings)
    logits = classify(model, spec, theta, sx_t, sy_t, qx_t, ways)
    return theta.numpy(), logits.argmax(1).numpy()


def test_session_equals_pytorch_evaluation(drift_bundle):
    path, model, spec, drift, settings = drift_bundle
    agree = total = 0
    moved = []
    with Session(path, backend="onnxruntime") as s:
        for i in range(8):  # 600 queries: >= 99.5% allows at most 3 differing labels
            sx, sy, qx, _ = episode(i)
            theta_ref, pred_ref = _torch_episode(model, spec, drift, settings, sx, sy, qx)
            task = s.adapt(sx, sy)
            labels, scores = s.predict(qx, task)
            np.testing.assert_allclose(task.theta, theta_ref, atol=1e-4, rtol=0)
            moved.append(np.abs(task.theta - s.theta0).max())
            agree += int((labels == pred_ref).sum())
            total += len(labels)
            assert scores.shape == (75, 5) and np.allclose(scores.sum(1), 1, atol=1e-5)
    assert min(moved) > 1e-2  # the drift really adapts theta
    # the bundle re-centres too (its manifest's alpha), and that move is part of what matched
    assert settings.recenter == 0.5 and task.info["recenter"] == 0.5
    drift_only, _ = _torch_episode(model, spec, drift, replace(settings, recenter=0.0), sx, sy, qx)
    assert np.abs(task.theta - drift_only).max() > 1e-2
    assert agree / total >= 0.995, f"{agree}/{total} identical labels"


def test_zero_steps_re_centres_only(drift_bundle):
    """Steps 0 with re-centring (what val chooses when the drift adds nothing): the runtime moves
    theta by the re-centring alone, as the PyTorch reference does."""
    path, model, spec, drift, settings = drift_bundle
    sx, sy, qx, _ = episode(2)
    with Session(path, backend="onnxruntime") as s:
        task = s.adapt(sx, sy, steps=0)
    theta_ref, _ = _torch_episode(model, spec, drift, replace(settings, steps=0), sx, sy, qx)
    assert task.info["mode"] == "recenter"
    np.testing.assert_allclose(task.theta, theta_ref, atol=1e-4, rtol=0)
    assert np.abs(task.theta - spec.get(model).numpy()).max() > 1e-2


def test_no_drift_bundle_adapts_by_prototypes_at_theta0(plain_bundle):
    path, model, spec, _, _ = plain_bundle
    sx, sy, qx, qy = episode(3)
    with Session(path) as s:
        task = s.adapt(sx, sy)
        labels, _ = s.predict(qx, task)
    assert task.info["mode"] == "prototypes-at-theta0"
    np.testing.assert_array_equal(task.theta, spec.get(model).numpy())
    with torch.no_grad():
        ref = classify(model, spec, spec.get(model), torch.from_numpy(as_float(sx)),
                       torch.from_numpy(sy), torch.from_numpy(as_float(qx)), 5).argmax(1).numpy()
    assert (labels == ref).mean() >= 0.995
    assert (labels == qy).mean() > 0.4  # a real classifier on real images (chance is 0.2)


def test_arbitrary_label_ids_class_names_and_task_round_trip(drift_bundle, tmp_path):
    sx, sy, qx, _ = episode(1)
    ids = np.array([3, 17, 42, 5, 9])
    with Session(drift_bundle[0]) as s:
        task = s.adapt(sx, ids[sy], class_names=None)
        labels, _ = s.predict(qx, task)
        base = s.adapt(sx, sy)
        base_labels, _ = s.predict(qx, base)
        np.testing.assert_array_equal(labels, ids[base_labels])
        named = s.adapt(sx, sy, class_names=["a", "b", "c", "d", "e"])
        assert named.class_names == ("a", "b", "c", "d", "e")
        path = named.save(tmp_path / "task.npz")
        loaded = Task.load(path)
        np.testing.assert_array_equal(loaded.theta, named.theta)
        np.testing.assert_array_equal(loaded.prototypes, named.prototypes)
        assert loaded.class_names == named.class_names and loaded.bundle == named.bundle
        np.testing.assert_array_equal(s.predict(qx, loaded)[0], s.predict(qx, named)[0])


def test_several_tasks_and_threads_give_serial_results(drift_bundle):
    eps = [episode(i) for i in range(6)]
    with Session(drift_bundle[0]) as s:
        serial = []
        for sx, sy, qx, _ in eps:
            task = s.adapt(sx, sy)
            serial.append((task, s.predict(qx, task)[0]))

        def job(i):
            sx, sy, qx, _ = eps[i % len(eps)]
            task = s.adapt(sx, sy)
            return i, task, s.predict(qx, task)[0], s.predict(eps[0][2], serial[0][0])[0]

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(job, range(12)))
    for i, task, labels, labels0 in results:
        ref_task, ref_labels = serial[i % len(eps)]
        np.testing.assert_allclose(task.theta, ref_task.theta, atol=1e-6)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(labels0, serial[0][1])  # an older task is still valid


def test_input_checks(drift_bundle, plain_bundle):
    sx, sy, qx, _ = episode(0)
    with Session(drift_bundle[0]) as s:
        with pytest.raises(DataError, match="empty"):
            s.adapt(sx[:0], sy[:0])
        with pytest.raises(DataError, match=r"class\(es\) \[4\] have no support image"):
            s.adapt(sx[sy < 4], sy[sy < 4], ways=5)
        with pytest.raises(DataError, match="labels must be integers"):
            s.adapt(sx, sy.astype(np.float32))
        with pytest.raises(DataError, match="labels must be integers"):
            s.adapt(sx, [str(v) for v in sy])
        with pytest.raises(DataError, match="25 support images but 24 labels"):
            s.adapt(sx, sy[:-1])
        x = as_float(sx)
        x[3, 0, 1, 2] = np.nan
        with pytest.raises(DataError, match=r"NaN or inf in image\(s\) \[3\]"):
            s.adapt(x, sy)
        x[3, 0, 1, 2] = np.inf
        with pytest.raises(DataError, match="NaN or inf"):
            s.predict(x, s.adapt(sx, sy))
        with pytest.raises(DataError, match="must be \\(N, 3, 32, 32\\)"):
            s.adapt(x[:, :, :16, :16], sy)
        with pytest.raises(DataError, match="5 channels"):
            s.adapt(np.zeros((25, 32, 32, 5), np.uint8), sy)
        with pytest.raises(DataError, match="expected uint8"):
            s.adapt(sx.astype(np.int32), sy)
        # other sizes are resized (the manifest allows it), greyscale becomes RGB
        big = np.repeat(np.repeat(sx, 2, axis=1), 2, axis=2)
        task = s.adapt(big, sy)
        assert task.ways == 5
        grey = sx.mean(axis=3).astype(np.uint8)
        assert s.predict(grey[:3], task)[0].shape == (3,)
        mixed = [sx[0], big[1], grey[2]]  # a list of differently sized images
        assert s.predict(mixed, task)[0].shape == (3,)
        with Session(plain_bundle[0]) as other, pytest.raises(DataError, match="another bundle"):
            other.predict(qx, task)


def test_resize_refused_when_manifest_forbids(drift_bundle, tmp_path):
    import json
    import shutil

    from edgeflow.runtime import load_bundle
    from edgeflow.runtime.bundle import Bundle

    b = load_bundle(drift_bundle[0])
    man = json.loads(json.dumps(b.manifest))
    man["input"]["allow_resize"] = False
    strict = Bundle(b.path, man, b.fingerprint)
    sx, sy, _, _ = episode(0)
    with Session(strict) as s, pytest.raises(DataError, match="does not allow resizing"):
        s.adapt(np.repeat(np.repeat(sx, 2, axis=1), 2, axis=2), sy)
    del shutil
