"""benchmarks/channel_speed.py runs in --quick mode and writes its JSON and table (timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_odd_width_is_skipped_and_inner_shapes_build():
    from benchmarks.channel_speed import _inner, _multiple, _uniform

    assert _uniform(15) is None  # option-A padding (planes // 4) cannot reach 30 channels from 15
    dense = _uniform(16)
    assert dense is not None and _multiple(dense) == 16
    small = _inner(dense, (8, 16, 32))
    assert small.layer1[0].conv1.out_channels == 8 and small.layer3[2].conv2.in_channels == 32
    assert small.layer3[2].conv2.out_channels == 64 and _multiple(small) == 8
    per_block = _inner(dense, (8, 8, 8, 16, 16, 16, 32, 32, 24))
    assert per_block.layer3[2].conv1.out_channels == 24


@pytest.mark.slow
def test_channel_speed_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "cs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "channel_speed.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "cs.json").read_text())
    meta = res["meta"]
    assert meta["mode"] == "quick" and meta["threads"] == 1 and meta["repeats"] == 5
    assert {"date", "cpu", "avx512f", "onnxruntime"} <= set(meta) and isinstance(meta["avx512f"], bool)
    rows = {r["config"]: r for r in res["rows"]}
    assert set(rows) == {"width 16 -> 16", "width 16 -> 8", "50% every block 8/16/32",
                         "multiples of 16 (smallest) 16/16/16"}
    for r in rows.values():
        assert r["macs_ratio"] == pytest.approx(r["macs_dense"] / r["macs"])
        for b in ("batch1", "batch32"):
            assert r[b]["dense_ms"] > 0 and r[b]["pruned_ms"] > 0 and len(r[b]["speedups"]) == 1
    # count_macs: halving every width quarters the body's MACs (stem and head only halve)
    assert rows["width 16 -> 16"]["macs_ratio"] == 1.0
    assert rows["width 16 -> 8"]["macs_ratio"] == pytest.approx(3.96, abs=0.01)
    assert rows["50% every block 8/16/32"]["macs_ratio"] == pytest.approx(1.98, abs=0.01)
    assert rows["multiples of 16 (smallest) 16/16/16"]["macs_ratio"] == pytest.approx(1.67, abs=0.01)
    assert rows["width 16 -> 8"]["multiple"] == 8
    assert rows["multiples of 16 (smallest) 16/16/16"]["multiple"] == 16
    assert rows["width 16 -> 16"]["macs"] == 40_551_040  # ResNet-20 / CIFAR: ~40.6M MACs
    assert len(res["conclusions"]) >= 3
    md = (tmp_path / "cs.md").read_text()
    assert "| uniform | width 16 -> 8 | 10.2 | 3.96 | 8 |" in md and "## Conclusions" in md
