"""`edgeflow evaluate --classes`: episodes from the selected classes only, compile's syntax and
checks (one parser, one validation)."""

import json
import re

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app

runner = CliRunner()


@pytest.mark.slow
def test_evaluate_on_selected_classes(tmp_path, digits_backbone):
    weights, _ = digits_backbone
    drift = tmp_path / "drift.pt"
    res = runner.invoke(app, list(map(str, [
        "meta-train", "--model", "conv4", "--weights", weights, "--data", "digits", "--val-data",
        "digits", "--output", drift, "--tasks", "2", "--teacher-steps", "2", "--steps", "5",
        "--hidden", "16", "--theta-size", "16", "--val-tasks", "2", "--objective", "trajectory",
        "--json"])))
    assert res.exit_code == 0, res.output
    common = ["evaluate", "--model", "conv4", "--weights", str(weights), "--drift", str(drift),
              "--data", "digits", "--shots", "5", "--episodes", "2", "--queries", "3",
              "--timing-episodes", "1", "--methods", "none,hyperflow-euler"]
    res = runner.invoke(app, [*common, "--classes", "5-9", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["classes"] == ["5", "6", "7", "8", "9"]
    assert set(ev["by_shots"]["5"]["methods"]) == {"none", "hyperflow-euler"}
    # 5-way on exactly five classes: every episode holds all of them; a different selection
    # gives different episodes, hence (here) different accuracies
    other = json.loads(runner.invoke(app, [*common, "--classes", "0-4", "--json"]).stdout)
    assert other["classes"] == ["0", "1", "2", "3", "4"]
    assert other["by_shots"]["5"]["methods"]["none"]["accuracy"] != \
        ev["by_shots"]["5"]["methods"]["none"]["accuracy"]
    for classes, message in (("5-12", r"--classes: class indices \[10, 11, 12\] do not exist; "
                                      r"digits has classes 0-9"),
                             ("5-x", "--classes: cannot read '5-x'"),
                             ("5-7", "--ways is 5 but --classes selects only 3 classes")):
        bad = runner.invoke(app, [*common, "--classes", classes])
        assert bad.exit_code == 1 and re.search(message, bad.stderr), bad.output
