"""`edgeflow prune` end to end through typer's CliRunner, and the B1 script's quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.prune import load_pruned
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_prune_cli_end_to_end(tmp_path):
    out = tmp_path / "r20.pt"
    res = CliRunner().invoke(app, [
        "prune", "--model", "resnet20",
        "--weights", str(shared_file("weights/cifar10-resnet20-12fca82f.th")),
        "--data", str(shared_file("data/cifar10/train.zip")),
        "--val-data", str(shared_file("data/cifar10/test.zip")), "--val-limit", "500",
        "--sparsity", "0.9", "--granularity", "weight", "--limit", "2000", "--epochs", "1",
        "--lr", "0.02", "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert abs(result["sparsity"] - 0.9) < 1e-3
    assert 0.0 <= result["top1"] <= 1.0
    assert set(result["layers"]) >= {"conv1", "linear", "layer3.2.conv2"}
    assert torch.load(out, weights_only=True)["meta"]
    model = load_pruned(out)
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert zeros == result["total_weights"] - result["nonzero_weights"]


def test_prune_cli_rejects_bad_granularity(tmp_path):
    res = CliRunner().invoke(app, ["prune", "--model", "conv4", "--data", "digits", "--sparsity",
                                   "0.5", "--granularity", "3:2", "--output", str(tmp_path / "x.pt")])
    assert res.exit_code == 1
    assert "granularity" in res.output and "2:4" in res.output


def test_prune_cli_rejects_structured_baseline(tmp_path):
    res = CliRunner().invoke(app, ["prune", "--model", "conv4", "--data", "digits", "--sparsity",
                                   "0.5", "--granularity", "channel", "--method", "gmp",
                                   "--output", str(tmp_path / "x.pt")])
    assert res.exit_code == 1
    assert "hyperflows" in res.output


@pytest.mark.slow
def test_benchmark_quick_mode_runs(tmp_path):
    shared_file("weights/cifar10-resnet20-12fca82f.th")
    out = tmp_path / "b1"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prune.py"), "--quick",
                           "--runs", "dense,hfr:0.9,nm,channel:0.5", "--jobs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    runs = {r["run"]: r for r in data["results"]}
    assert set(runs) == {"dense", "hfr:0.9", "nm", "channel:0.5"}
    assert abs(runs["hfr:0.9"]["sparsity"] - 0.9) < 1e-3
    assert runs["nm"]["nm_all_valid"]
    assert runs["channel:0.5"]["macs"]["reduction"] >= 2.0
    assert "| run |" in out.with_suffix(".md").read_text()
