"""The B3 benchmark script runs end to end in quick mode (numbers are not asserted: they are
measured in benchmarks/, not in unit tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_runtime_benchmark_quick(tmp_path):
    shared_file("weights/cifar10-resnet20-12fca82f.th")
    out = subprocess.run([sys.executable, "benchmarks/runtime.py", "--quick", "--out", tmp_path / "res",
                          "--work", tmp_path / "work"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "res/runtime.json").read_text())
    assert res["mode"] == "quick"
    assert {"backbone_b1", "backbone_b32", "drift_step", "adapt_5w5s", "predict_75q",
            "adapt_vs_no_adaptation"} <= set(res["latency"])
    assert res["rss"]["runtime_torch_loaded"] is False and res["rss"]["runtime_only_mb"] > 0
    assert res["soak"]["errors"] == 0 and res["soak"]["torch_loaded"] is False
    assert "B3 runtime benchmark" in (tmp_path / "res/runtime.md").read_text()
