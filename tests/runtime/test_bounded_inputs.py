"""Untrusted inputs: images, task files and arrays each end in one clear error, never a traceback."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from edgeflow.data.imagefolder import decode_image, read_image_file
from edgeflow.errors import DataError
from edgeflow.runtime import Session, Task
from tests.export.helpers import as_float, episode


@pytest.fixture(scope="module")
def adapted(drift_bundle, tmp_path_factory):
    sx, sy, _, _ = episode(0)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        task = s.adapt(sx, sy)
    path = task.save(tmp_path_factory.mktemp("task") / "task.npz")
    return task, path


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_size_refused_before_decoding(tmp_path):
    big = _png(8000, 6000)  # 48 MP, compresses to a few KB: a decompression bomb in miniature
    with pytest.raises(DataError, match="8000x6000 pixels"):
        decode_image(big, name="bomb.png")
    # a header claiming 4 G pixels: PIL's own bomb error becomes the same clear error
    header = bytearray(_png(1, 1))
    header[16:24] = (65535).to_bytes(4, "big") * 2
    with pytest.raises(DataError, match=r"bomb\.png"):
        decode_image(bytes(header), name="bomb.png")
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, _png(4, 4)[:30], b"GIF89a" + b"\xff" * 20):
        with pytest.raises(DataError, match="cannot decode image"):
            decode_image(junk, name="junk")
    assert decode_image(_png(4, 3), name="ok", mode="L").shape == (3, 4, 1)
    (tmp_path / "ok.png").write_bytes(_png(5, 5))
    assert read_image_file(tmp_path / "ok.png").shape == (5, 5, 3)
    with pytest.raises(DataError, match="cannot read image"):
        read_image_file(tmp_path / "absent.png")


def test_task_files_are_checked(adapted, tmp_path):
    task, _ = adapted
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        Task.load(empty)
    with pytest.raises(DataError, match="not an EdgeFlow task file"):
        Task.load(_write(tmp_path / "text.npz", b"hello"))
    # a zip bomb: one member that inflates to 160 MB, refused from the zip directory, unread
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in ("theta.npy", "prototypes.npy", "classes.npy"):
            z.writestr(name, b"")
        with z.open("meta.npy", "w", force_zip64=True) as f:
            for _ in range(160):  # 160 MB > the 128 MB member limit
                f.write(b"\0" * (1 << 20))
    with pytest.raises(DataError, match="inflates to"):
        Task.load(bomb)
    arrays = {"theta": task.theta, "prototypes": task.prototypes, "classes": task.classes,
              "meta": np.asarray(json.dumps({"format": "edgeflow-task/1", "bundle": task.bundle}))}
    for change, msg in [({"theta": np.full(4, np.nan, np.float32)}, "theta holds NaN"),
                        ({"prototypes": task.prototypes[:, 0]}, "prototypes must be a 2-d"),
                        ({"classes": task.classes[:3]}, "5 prototypes but 3 class ids"),
                        ({"classes": task.classes.astype(np.float64)}, "classes must be"),
                        ({"classes": np.zeros(5, np.int64)}, "class ids repeat"),
                        ({"meta": np.asarray("{")}, "metadata is not valid JSON"),
                        ({"meta": np.asarray(json.dumps({"format": "edgeflow-task/1"}))},
                         "names no bundle"),
                        ({"meta": np.asarray(json.dumps({"format": "edgeflow-task/1", "bundle": "x",
                                                         "class_names": ["a"]}))}, "class_names"),
                        ({"meta": np.arange(3)}, "metadata is not a JSON string")]:
        path = tmp_path / "t.npz"
        np.savez(path, **{**arrays, **change})
        with pytest.raises(DataError, match=msg):
            Task.load(path)
    # a member whose .npy header declares 10**12 floats: refused from the header, not allocated
    header_bomb = tmp_path / "header.npz"
    np.savez(header_bomb, **arrays)
    raw = header_bomb.read_bytes()
    shape = repr(task.theta.shape).encode()
    declared = f"({10**12},)".encode().ljust(len(shape))
    with zipfile.ZipFile(header_bomb) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["theta.npy"] = members["theta.npy"].replace(shape, declared, 1)
    with zipfile.ZipFile(header_bomb, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert raw != header_bomb.read_bytes()
    with pytest.raises(DataError, match="header declares"):
        Task.load(header_bomb)
    np.savez(tmp_path / "t.npz", **arrays, extra=np.zeros(1))
    with pytest.raises(DataError, match="expected"):
        Task.load(tmp_path / "t.npz")
    obj = tmp_path / "pickle.npz"
    np.savez(obj, **{**arrays, "theta": np.array([object()], dtype=object)})
    with pytest.raises(DataError, match="not an EdgeFlow task file"):
        Task.load(obj)  # never unpickled


def _write(path, data):
    path.write_bytes(data)
    return path


def test_task_must_fit_the_bundle(adapted, drift_bundle, plain_bundle):
    task, _ = adapted
    qx = episode(0)[2]
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        for bad, msg in [(replace(task, theta=task.theta[:10]), "10 values"),
                         (replace(task, prototypes=task.prototypes[:, :8]), "8-d"),
                         (replace(task, theta=np.full_like(task.theta, np.nan)), "theta holds NaN"),
                         (replace(task, prototypes=task.prototypes * np.inf), "prototypes holds NaN"),
                         ("task.npz", "must be a Task")]:
            with pytest.raises(DataError, match=msg):
                s.predict(qx, bad)
        # a legacy task remembers the bare hex fingerprint; it still matches
        s.predict(qx[:2], replace(task, bundle=task.bundle.removeprefix("sha256:")))
    with Session(plain_bundle[0], backend="onnxruntime") as other, \
            pytest.raises(DataError, match="another bundle"):
        other.predict(qx, task)


def test_arrays_passed_to_the_api(drift_bundle):
    sx, sy, _, _ = episode(0)
    with Session(drift_bundle[0], backend="onnxruntime") as s:
        x = as_float(sx).astype(np.float64)
        x[2, 0, 0, 0] = 1e300  # finite in float64, inf in float32
        with pytest.raises(DataError, match=r"NaN or inf in image\(s\) \[2\]"):
            s.adapt(x, sy)
        with pytest.raises(DataError, match="below 2\\*\\*63"):
            s.adapt(sx, np.asarray(sy, np.uint64) + np.uint64(2**63))
        with pytest.raises(DataError, match="below 2\\*\\*63"):
            s.adapt(sx, [int(v) + 2**64 for v in sy])
        for steps, msg in [(-5, "-5"), (10**9, "0..1000"), (2.5, "integer"), (True, "integer")]:
            with pytest.raises(DataError, match=f"steps must be .*{msg}"):
                s.adapt(sx, sy, steps=steps)
        with pytest.raises(DataError, match="ways must be an integer"):
            s.adapt(sx, sy, ways=5.5)


@pytest.mark.parametrize("name", ["task.npz", "run[1].npz"])
def test_killed_save_leftovers_are_cleaned_but_not_user_files(adapted, tmp_path, name):
    task, _ = adapted
    target = tmp_path / name
    old = time.time() - 7200
    ours = tmp_path / f".{name}.edgeflow-tmp-abc123.npz"
    ours.write_bytes(b"PK\x03\x04 half written")
    legacy = tmp_path / f".{name}.k2j4h5g6.npz"  # what an older Task.save's mkstemp made
    legacy.write_bytes(b"PK\x03\x04" + b"\0" * 26 + b"theta.npy" + b"...")
    user = tmp_path / f".{name}.backup.npz"
    user.write_bytes(b"mine")
    fresh = tmp_path / f".{name}.edgeflow-tmp-now.npz"  # a save running right now
    fresh.write_bytes(b"")
    for p in (ours, legacy, user):
        os.utime(p, (old, old))
    task.save(target)
    assert not ours.exists() and not legacy.exists()
    assert user.exists() and fresh.exists() and Task.load(target).ways == 5


def test_support_archive_member_size_refused_before_inflating(tmp_path):
    from edgeflow.data import load_image_folder
    from edgeflow.data.imagefolder import MAX_IMAGE_FILE_BYTES

    archive = tmp_path / "support.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/ok.png", _png(4, 4))
        with z.open("b/huge.png", "w", force_zip64=True) as f:  # ~65 KB compressed
            for _ in range(MAX_IMAGE_FILE_BYTES // (1 << 20) + 1):
                f.write(b"\0" * (1 << 20))
    with pytest.raises(DataError, match=r"huge\.png is \d+ bytes"):
        load_image_folder(archive, cache=False)


def test_task_support_and_openset_members_are_checked(adapted, drift_bundle, tmp_path):
    """Found by benchmarks/bundle_probe.py: a task file with one open-set member missing ended in
    KeyError, a support cache of another width in a numpy ValueError at Session.update."""
    _, good = adapted
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert {"openset_mean", "openset_std", "support_0", "support_labels"} <= set(arrays)
    np.savez(tmp_path / "no_std.npz", **{k: v for k, v in arrays.items() if k != "openset_std"})
    with pytest.raises(DataError, match="open-set statistics are incomplete"):
        Task.load(tmp_path / "no_std.npz")
    narrow = arrays["support_0"].reshape(len(arrays["support_0"]), -1)[:, :1]
    np.savez(tmp_path / "narrow.npz", **{**arrays, "support_0": narrow})
    task = Task.load(tmp_path / "narrow.npz")
    sx, sy, _, _ = episode(1)
    with Session(drift_bundle[0], backend="onnxruntime") as s, \
            pytest.raises(DataError, match="other tensors than the task's"):
        s.update(task, sx[:2], sy[:2])
