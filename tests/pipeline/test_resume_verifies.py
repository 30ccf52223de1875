"""`compile --resume` reuses a stage only when the files it produced are still the recorded bytes."""

import json

import pytest

from edgeflow.pipeline.compile import run_compile
from edgeflow.pipeline.config import build_config
from edgeflow.pipeline.stages import StageRunner
from edgeflow.runtime import load_bundle

# the same tiny compile as tests/pipeline/test_compile.py: seconds, every stage real
TINY = {"data.size": 8, "backbone.width": 8, "backbone.epochs": 2, "prune.epochs": 1,
        "prune.regrowth_epochs": 0, "prune.recovery_epochs": 1, "adapt.tasks": 10,
        "adapt.val_tasks": 6, "adapt.meta_steps": 20, "adapt.outcome_steps": 4,
        "adapt.selection_tasks": 6, "eval.episodes": 4, "eval.shots": "5",
        "export.calibration_samples": 32, "device": "cpu"}


def _flip(path, at=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _writer(calls, name, text):
    def fn(d):
        calls.append(name)
        (d / "out.txt").write_text(text)
        return {"n": len(calls)}
    return fn


def test_damaged_or_missing_stage_file_reruns_that_stage_and_what_consumed_it(tmp_path):
    calls, logs = [], []
    r = StageRunner(tmp_path, log=logs.append)
    r.run("a", _writer(calls, "a", "one"), parts={})
    r.run("b", _writer(calls, "b", "two"), parts={}, after=["a"])
    record = json.loads((tmp_path / "stages" / "a" / "done.json").read_text())
    assert record["files"]["out.txt"]["bytes"] == 3 and len(record["files"]["out.txt"]["sha256"]) == 64

    (tmp_path / "stages" / "b" / "out.txt").write_text("twO")  # same size, other bytes
    r = StageRunner(tmp_path, resume=True, log=logs.append)
    assert r.run("a", _writer(calls, "a", "one"), parts={}).skipped
    assert not r.run("b", _writer(calls, "b", "two"), parts={}, after=["a"]).skipped
    assert "stage b: outputs damaged (out.txt sha256 mismatch), running again" in logs

    (tmp_path / "stages" / "a" / "out.txt").unlink()
    r = StageRunner(tmp_path, resume=True, log=logs.append)
    assert not r.run("a", _writer(calls, "a", "ONE"), parts={}).skipped  # other bytes this time
    assert not r.run("b", _writer(calls, "b", "two"), parts={}, after=["a"]).skipped
    assert "stage a: outputs damaged (out.txt missing), running again" in logs
    assert "stage b: a produced other outputs, running again" in logs
    assert calls == ["a", "b", "b", "a", "b"]


def test_products_outside_the_stage_folder_and_done_json_are_verified(tmp_path):
    logs = []
    made = tmp_path / "bundle" / "graph.bin"

    def fn(d):
        made.parent.mkdir(exist_ok=True)
        made.write_bytes(b"\x00" * 64)
        return {"ok": 1}

    StageRunner(tmp_path).run("x", fn, parts={}, products=lambda out: [made])
    done = tmp_path / "stages" / "x" / "done.json"
    assert json.loads(done.read_text())["products"]["bundle/graph.bin"]["bytes"] == 64
    made.write_bytes(b"\x00" * 63)
    assert not StageRunner(tmp_path, resume=True, log=logs.append).run(
        "x", fn, parts={}, products=lambda out: [made]).skipped
    assert logs == ["stage x: outputs damaged (graph.bin is 63 bytes, recorded 64), running again"]
    done.write_text(done.read_text().replace('"ok": 1', '"ok": 2'))  # an edited record
    assert not StageRunner(tmp_path, resume=True, log=logs.append).run(
        "x", fn, parts={}, products=lambda out: [made]).skipped
    assert logs[-1] == "stage x: done.json unreadable or damaged, running again"
    res = StageRunner(tmp_path, resume=True, log=logs.append).run(
        "x", fn, parts={}, products=lambda out: [made], check=lambda rec: "the bundle moved")
    assert not res.skipped and logs[-1] == "stage x: outputs damaged (the bundle moved), running again"


def _resume(cfg):
    logs: list[str] = []
    res = run_compile(cfg, resume=True, log=logs.append)
    load_bundle(res.bundle)  # every listed file hashed
    reused = {n for n, s in res.metrics["seconds"].items() if s["reused"]}
    return reused, [m for m in logs if m.startswith("stage ") and ":" in m]


@pytest.mark.slow
def test_compile_resume_redoes_damaged_stages_and_ends_with_a_bundle_that_loads(tmp_path):
    cfg = build_config(overrides={**TINY, "output": str(tmp_path / "out")})
    out = tmp_path / "out"
    run_compile(cfg, log=lambda m: None)
    stages = ["backbone", "prune", "recover", "meta-train", "export", "calibrate", "engines",
              "evaluate"]
    reused, _ = _resume(cfg)
    assert reused == set(stages)

    # a stage checkpoint: that stage and everything that consumed it
    _flip(out / "stages" / "recover" / "recovered.pt", at=-64)
    reused, logs = _resume(cfg)
    assert "stage recover: outputs damaged (recovered.pt sha256 mismatch), running again" in logs
    assert {"backbone", "prune"} <= reused and "recover" not in reused

    # a bundle graph: export again, training reused
    _flip(out / "bundle" / "backbone.onnx")
    reused, logs = _resume(cfg)
    assert "stage export: outputs damaged (backbone.onnx sha256 mismatch), running again" in logs
    assert {"backbone", "prune", "recover", "meta-train"} <= reused
    assert "export" not in reused and "calibrate" not in reused

    # the INT8 graph deleted: calibrate alone (export's part of the bundle is intact)
    (out / "bundle" / "backbone.int8.onnx").unlink()
    reused, logs = _resume(cfg)
    assert "stage calibrate: outputs damaged (backbone.int8.onnx missing), running again" in logs
    assert {"backbone", "prune", "recover", "meta-train", "export"} <= reused
    assert "calibrate" not in reused
    assert "int8" in load_bundle(out / "bundle").manifest["precisions"]

    # the manifest damaged, every graph intact: export again
    _flip(out / "bundle" / "manifest.json")
    reused, logs = _resume(cfg)
    assert any(m.startswith("stage export: outputs damaged (bundle manifest.json") for m in logs)
    assert "export" not in reused and "meta-train" in reused
