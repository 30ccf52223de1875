"""The ablation benchmark's quick path: a tiny compile, a copy resumed with the drift's task
encoder reading the individual shots (the whole pipeline with that encoder: meta-training, the
bundle's shot inputs, evaluation), then ``benchmarks/ablation.py`` pairing them on the same tasks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from tests.pipeline.test_byo_compile import TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ablation_pairs_a_shot_token_variant_with_its_run(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, ["compile", "--output", str(run), "--backbone-width", "8", *TINY,
                              "--json"])
    assert res.exit_code == 0, res.output
    variant = tmp_path / "run-shots"
    shutil.copytree(run, variant)
    res = runner.invoke(app, ["compile", "--output", str(variant), "--resume",
                              "--adapt-shot-tokens", "--json"])
    assert res.exit_code == 0, res.output
    man = json.loads((variant / "bundle" / "manifest.json").read_text())
    assert [i["name"] for i in man["graphs"]["task_encoder"]["inputs"]][2:] == ["shots",
                                                                               "shot_labels"]
    assert "shots" not in json.dumps(json.loads((run / "bundle" / "manifest.json").read_text())
                                     ["graphs"]["task_encoder"])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), str(run),
                           "--variant", "shots=shot tokens", "--versus", "outcome",
                           "--data", "digits:5-9", "--episodes", "3", "--val-count", "6",
                           "--out", str(tmp_path / "ab")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "ab.json").read_text())
    sets = out["runs"][str(run)]["sets"]
    assert set(sets) >= {"val", "digits:5-9 5-shot", "digits:5-9 1-shot"}
    assert sets["val"]["tasks"] == 6 and sets["digits:5-9 1-shot"]["tasks"] == 3
    for s in sets.values():
        rows, versus = s["rows"], s["versus"]
        assert set(rows) == {"none", "regression", "outcome", "shot tokens"}
        assert versus["outcome"]["gain"] == 0.0  # the reference row against itself
        # paired differences are differences of the same tasks' accuracies
        assert versus["shot tokens"]["gain"] == pytest.approx(
            rows["shot tokens"]["gain"] - rows["outcome"]["gain"], abs=1e-6)
    assert "paired difference against `outcome`" in (tmp_path / "ab.md").read_text()
