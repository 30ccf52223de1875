"""The INT8 benchmark runs end to end in --quick mode and writes its JSON and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED, shared_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_int8_benchmark_quick(tmp_path):
    for rel in ("weights/cifar10-resnet20-12fca82f.th", "data/cifar10/train.zip", "data/cifar10/test.zip",
                "data/tiny-imagenet/novel.zip", "data/gtsrb/test.zip"):
        shared_file(rel)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "int8.py"), "--quick", "--threads", "1",
                           "--out", str(tmp_path), "--shared", str(SHARED)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "int8-quick.json").read_text())
    assert set(res["latency"]) == {"threads1_batch1", "threads1_batch32"}
    for stats in res["latency"].values():
        assert stats["fp32"]["median_ms"] > 0 and stats["int8"]["median_ms"] > 0
    ops = res["ort_graph_ops"]
    assert ops["int8"]["QLinearConv"] > 0 and ops["fp32"]["QLinearConv"] == 0
    assert 0.5 < res["cifar10_top1"]["fp32"] <= 1 and res["cifar10_top1"]["agreement"] > 0.9
    assert set(res["fewshot_5w5s"]) == {"tiny-imagenet/novel", "gtsrb/test"}
    assert all(v["with_adaptation"] is None for v in res["fewshot_5w5s"].values())  # no HyperFlow yet
    proxy = res["fewshot_5w5s"]["gtsrb/test"]["sgd_adaptation_proxy"]
    assert proxy["episodes"] == 4 and 0 <= proxy["int8_adapted"] <= 100
    theta = res["theta_graph"]
    assert theta["ort_graph_ops"]["int8"]["QLinearConv"] > 0
    assert theta["relative_feature_error"]["move0.3"]["int8"] < 0.2
    assert "| 1 | 32 |" in (tmp_path / "int8-quick.md").read_text()
