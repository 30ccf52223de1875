"""Bring your own model through the command line: compile, resume, re-export, train, inspect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]
R18 = "tests.models.byo_models:build_resnet18"
ODD = "tests.models.byo_models:build_odd_head"
runner = CliRunner()
# the fastest settings that still run every stage (tests/pipeline/test_compile.py's TINY)
TINY = ["--data-size", "8", "--backbone-epochs", "1", "--prune-epochs", "1",
        "--prune-regrowth-epochs", "0", "--prune-recovery-epochs", "1", "--adapt-tasks", "10",
        "--adapt-val-tasks", "6", "--adapt-meta-steps", "20", "--adapt-outcome-steps", "4",
        "--adapt-selection-tasks", "6", "--eval-episodes", "4",
        "--eval-shots", "5", "--export-calibration-samples", "32", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _forget_user_packages():
    """Each test's ``my_models`` is its own: none stays imported for the next test."""
    yield
    for name in [m for m in sys.modules if m == "my_models" or m.startswith("my_models.")]:
        del sys.modules[name]


def _user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test models as the user's own package ``my_models.nets``, importable from tmp_path."""
    pkg = tmp_path / "src" / "my_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "models" / "byo_models.py", pkg / "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return pkg / "nets.py"


@pytest.mark.slow
def test_compile_a_torchvision_style_resnet18_end_to_end(tmp_path, monkeypatch):
    source = _user_package(tmp_path, monkeypatch)
    out = tmp_path / "run"
    # channel granularity (the default): dependency-graph groups work for any traceable model
    args = ["compile", "--model", "my_models.nets:build_resnet18", "--output", str(out), *TINY]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())  # what it chose, before any stage runs
    for fact in ("head: fc (Linear 64 -> 10)", "features: 64-d", "BatchNorm: 20 layers",
                 "input: 3x8x8", "ONNX export: ok"):
        assert fact in said, said
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("target checks:"))
    # a 4-episode evaluation may see the drift lose: only the adaptation checks may fail here
    assert line == "target checks: all passed" or all(
        name.startswith("adaptation helps") for name in line.split("FAILED")[1].strip(" []")
        .replace("'", "").split(", ")), line
    assert load_bundle(out / "bundle").manifest["sparsity"]["granularity"] == "channel"
    man = load_bundle(out / "bundle").manifest
    assert man["source"]["model"] == "my_models.nets:build_resnet18"
    assert 8 <= man["theta"]["feature_dim"] <= 64  # the last stream may be pruned too
    assert [d["name"] for d in man["theta"]["layout"]] == ["body.layer4.1.bn2.bias"]
    # the device side: adapt and predict in a fresh interpreter that cannot import the user's
    # package, and loads neither torch nor it
    code = textwrap.dedent(f"""
        import json, sys
        from edgeflow.data import EpisodeSampler, load_dataset
        from edgeflow.runtime import Session
        ds = load_dataset("digits")
        ep = EpisodeSampler(ds.labels, ways=5, shots=5, queries=5, seed=0).episode(0)
        with Session({str(out / "bundle")!r}) as s:
            task = s.adapt(ds.images[ep.support], ep.support_labels)
            labels, _ = s.predict(ds.images[ep.query], task)
        print(json.dumps({{"torch": "torch" in sys.modules, "user": "my_models" in sys.modules,
                          "right": int((labels == ep.query_labels).sum()), "n": len(labels)}}))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["user"] is False and got["n"] == 25
    # re-export from the checkpoint: the recorded spec is imported again
    stages = out / "stages"
    res = runner.invoke(app, ["export", "--weights", str(stages / "recover" / "recovered.pt"),
                              "--drift", str(stages / "meta-train" / "drift.pt"),
                              "--output", str(tmp_path / "again.bundle"), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["model"] == "my_models.nets:build_resnet18"
    assert again["theta_size"] == man["theta"]["size"]  # the pruned last BatchNorm
    # resume: everything reused; after the model's source changed, everything redone
    res = runner.invoke(app, ["compile", "--output", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["bundle"] == str(out / "bundle")
    record = json.loads((out / "report" / "metrics.json").read_text())["seconds"]
    assert all(v["reused"] for v in record.values()), record
    source.write_text(source.read_text() + "\n# edited\n")
    res = runner.invoke(app, ["compile", "--output", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "report" / "metrics.json").read_text())["seconds"]
    assert not record["backbone"]["reused"], record


@pytest.mark.slow
def test_python_api_compiles_an_nn_module_instance(tmp_path):
    import edgeflow
    from tests.models.byo_models import build_odd_head

    result = edgeflow.compile(model=build_odd_head(), head="head.fc_out", output=str(tmp_path / "o"),
                              prune__enabled=False, adapt__meta_steps=20, adapt__tasks=10,
                              adapt__val_tasks=6, adapt__outcome_steps=4,
                              adapt__selection_tasks=6, data__size=8, backbone__epochs=1,
                              eval__episodes=4, eval__shots="5", device="cpu")
    man = load_bundle(result.bundle).manifest
    assert man["theta"]["feature_dim"] == 12
    assert man["source"]["model"].startswith("python-object:OddHead-")
    assert "python-object:OddHead-" in (tmp_path / "o" / "config.toml").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--head", "fc"], r"backbone.head is for your own model .*leave --head empty"),
    (["--model", "tests.models.byo_models:build_no_batchnorm", "--prune-granularity", "weight"],
     r"no BatchNorm2d after the last conv"),
    (["--model", "tests.models.nope:build", "--prune-granularity", "weight"],
     r"no module named 'tests.models.nope'"),
    (["--model", ODD, "--prune-granularity", "weight"], r"candidates: head.embed .*--head"),
])
def test_compile_refuses_a_model_it_cannot_use_in_one_line(tmp_path, args, message):
    res = runner.invoke(app, ["compile", "--output", str(tmp_path / "o"), *args])
    assert res.exit_code == 1, res.output
    assert re.search(message, " ".join(res.stderr.split())), res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "o" / "stages").exists()


def test_model_options_are_config_fields():
    res = runner.invoke(app, ["compile", "--model", ODD, "--head", "head.fc_out", "--weights",
                              "w.pt", "--print-config"])
    assert res.exit_code == 0, res.output
    assert f'model = "{ODD}"' in res.stdout and 'head = "head.fc_out"' in res.stdout
    assert 'weights = "w.pt"' in res.stdout


def test_model_inspect_says_what_it_chose_or_why_not():
    res = runner.invoke(app, ["model", "inspect", ODD, "--head", "head.fc_out", "--size", "16"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "head: head.fc_out (Linear 12 -> 7)" in text and "features: 12-d" in text
    assert "BatchNorm: 2 layers, 24 biases" in text and "ONNX export: ok" in text
    res = runner.invoke(app, ["model", "inspect", R18, "--size", "16", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["head"], d["feature_dim"], d["batchnorm_layers"]) == ("fc", 64, 20)
    res = runner.invoke(app, ["model", "inspect", "tests.models.byo_models:build_not_a_module"])
    assert res.exit_code == 1 and "not a torch.nn.Module" in res.stderr


@pytest.mark.slow
def test_train_validate_and_prune_take_your_own_model(tmp_path):
    """The head given to `train` is recorded in the checkpoint; later commands need no --head."""
    ckpt, pruned = tmp_path / "odd.pt", tmp_path / "odd-pruned.pt"
    res = runner.invoke(app, ["train", "--model", ODD, "--head", "head.fc_out", "--data", "digits",
                              "--epochs", "1", "--limit", "200", "--device", "cpu", "--output",
                              str(ckpt), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", "--model", ODD, "--weights", str(ckpt), "--data",
                              "digits", "--limit", "100", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == ODD
    res = runner.invoke(app, ["prune", "--model", ODD, "--weights", str(ckpt), "--data", "digits",
                              "--limit", "200", "--sparsity", "0.5", "--epochs", "1", "--device",
                              "cpu", "--output", str(pruned), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sparsity"] > 0.3


def _readme_section() -> list[tuple[str, str]]:
    """(language, body) of the fenced blocks of the README's "Bring your own model" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Bring your own model"):text.index("## Deploying to a Jetson")]
    return re.findall(r"```(\w*)\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_readme_byo_commands_run_as_written(tmp_path, monkeypatch):
    """The section's shell block in a fresh folder: the package it writes, `model inspect` printing
    exactly the output the README shows, and the compile (TINY flags added, for time)."""
    (_, shell), (_, shown), *_ = _readme_section()
    setup, _, commands = shell.partition("edgeflow ")
    subprocess.run(["bash", "-e", "-c", setup], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    inspect_line, compile_line = ("edgeflow " + commands).strip().splitlines()
    res = runner.invoke(app, inspect_line.split()[1:])
    assert res.exit_code == 0, res.output
    assert res.stdout == shown, res.stdout
    res = runner.invoke(app, [*compile_line.split()[1:], *TINY])
    assert res.exit_code == 0, res.output
    assert load_bundle(tmp_path / "runs" / "mine" / "bundle").manifest["source"]["model"] == \
        "my_models.nets:build"
