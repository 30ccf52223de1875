"""The compile pipeline end to end on the built-in digits (real training, real ONNX Runtime)."""

import json
import re

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.pipeline.compile import run_compile
from edgeflow.pipeline.config import build_config
from edgeflow.runtime import Session, load_bundle

runner = CliRunner()

# Small enough for a unit test (about a minute on 2 cores), every stage still runs for real.
TINY = {"data.size": 8, "backbone.width": 8, "backbone.epochs": 2, "prune.epochs": 1,
        "prune.regrowth_epochs": 0, "prune.recovery_epochs": 1, "adapt.tasks": 10,
        "adapt.val_tasks": 6, "adapt.meta_steps": 20, "adapt.outcome_steps": 4,
        "adapt.selection_tasks": 6, "eval.episodes": 4, "eval.shots": "5",
        "export.calibration_samples": 32, "device": "cpu"}


def _cfg(tmp_path, **extra):
    return build_config(overrides={**TINY, "output": str(tmp_path / "out"), **extra})


@pytest.mark.slow
def test_resume_after_interruption_reuses_finished_stages(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    from edgeflow.pipeline import deploy_stages

    original = deploy_stages.export_stage

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy_stages, "export_stage", crash)
    with pytest.raises(KeyboardInterrupt):
        run_compile(cfg, log=lambda m: None)
    assert not (tmp_path / "out" / "bundle").exists(), "a half bundle was left behind"
    monkeypatch.setattr(deploy_stages, "export_stage", original)
    messages: list[str] = []
    result = run_compile(cfg, resume=True, log=messages.append)
    reused = {n for n, s in result.metrics["seconds"].items() if s["reused"]}
    assert {"backbone", "prune", "recover", "meta-train"} <= reused
    assert "export" not in reused
    load_bundle(result.bundle)  # complete and every hash checks out
    # a changed library default (not a config option) still redoes meta-training and what follows
    import dataclasses

    from edgeflow.pipeline import adapt_stages

    resolved = adapt_stages.adapt_configs

    def new_default(c):
        traj, train = resolved(c)
        return dataclasses.replace(traj, instance_fraction=0.0), train

    monkeypatch.setattr(adapt_stages, "adapt_configs", new_default)
    changed = run_compile(cfg, resume=True, log=messages.append)
    reused = {n for n, s in changed.metrics["seconds"].items() if s["reused"]}
    assert reused == {"backbone", "prune", "recover"}
    monkeypatch.setattr(adapt_stages, "adapt_configs", resolved)
    from edgeflow.pipeline import model_stages

    pruning = model_stages.prune_config
    monkeypatch.setattr(model_stages, "prune_config",
                        lambda c: dataclasses.replace(pruning(c), ft_lr=2 * pruning(c).ft_lr))
    changed = run_compile(cfg, resume=True, log=messages.append)
    assert {n for n, s in changed.metrics["seconds"].items() if s["reused"]} == {"backbone"}
    monkeypatch.setattr(model_stages, "prune_config", pruning)
    # a changed option upstream redoes that stage and everything after it, nothing before
    again = run_compile(_cfg(tmp_path, **{"prune.sparsity": 0.6}), resume=True, log=messages.append)
    reused = {n for n, s in again.metrics["seconds"].items() if s["reused"]}
    assert reused == {"backbone"}


@pytest.mark.slow
def test_default_compile_end_to_end(tmp_path):
    """`edgeflow compile` with no options but the output folder: the embedded default."""
    res = runner.invoke(app, ["compile", "--output", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    head = json.loads(res.stdout)
    out = tmp_path / "out"
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    report = (out / "report" / "report.md").read_text()
    for png in ("density.png", "fewshot.png", "steps.png"):
        assert (out / "report" / png).stat().st_size > 1000 and png in report
    # headline numbers = metrics.json = report.md
    for shots, row in metrics["fewshot"].items():
        for method in ("none", "finetune", "hyperflow"):
            assert head[f"{shots}shot_{method}"] == row[method]["acc"]
            line = next(ln for ln in report.splitlines() if ln.startswith(f"| {shots} |"))
            assert f"{100 * row[method]['acc']:.2f}" in line
    # channel pruning removes whole channels, so it lands at or just above the request (the exact
    # count within 0.1 point is a property of weight granularity, tested in tests/prune)
    assert metrics["prune"]["granularity"] == "channel"
    assert 0 <= metrics["prune"]["sparsity"] - metrics["prune"]["requested"] <= 0.05
    assert metrics["int8"] and "int8" in load_bundle(out / "bundle").manifest["precisions"]
    # the bundle adapts and predicts in the torch-free runtime
    from edgeflow.data import load_dataset

    ds = load_dataset("digits", limit=200).select_classes([5, 6, 7, 8, 9])
    with Session(out / "bundle", backend="onnxruntime") as s:
        task = s.adapt(ds.images[:25], ds.labels[:25])
        labels, _ = s.predict(ds.images[25:], task)
    assert (labels == ds.labels[25:]).mean() > 0.5
    # inspect tells what channel pruning did against the unpruned backbone, counted the same way
    res = runner.invoke(app, ["inspect", str(out / "bundle"), "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["structure"]
    assert st["unpruned"]["params"] > st["params"] and st["unpruned"]["macs"] > st["macs_per_image"]
    narrower = [x for x in st["layers"] if x["width"] < st["unpruned"]["widths"][x["layer"]]]
    assert narrower, st["layers"]
    text = " ".join(runner.invoke(app, ["inspect", str(out / "bundle")]).output.split())
    assert "unpruned (" in text and "now/unpruned" in text


def test_print_config_precedence_through_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[prune]\nsparsity = 0.7\ngranularity = \"n:m\"\n")
    res = runner.invoke(app, ["compile", "--config", str(f), "--prune-sparsity", "0.8",
                              "--print-config"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^sparsity = 0\.8$", res.stdout, re.M)  # flag wins over file
    assert 'granularity = "n:m"' in res.stdout  # file wins over default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-base", "/no/such/data.zip"], "does not exist"),
        (["--backbone-model", "resnet99"], "valid models"),
        (["--export-target", "jetson-nano-2gb"], "jetson-orin-nano-8gb"),
        (["--prune-sparsity", "1.5"], "must be in \\(0, 1\\)"),
        (["--prune-sparsity", "0"], "must be in \\(0, 1\\)"),
        (["--eval-ways", "6"], "only 5 classes"),
        (["--prune-granularity", "3:3"], "granularity"),
        (["--backbone-weights", "imagenet"], "no published ImageNet weights.*efficientnet_lite0"),
        (["--eval-cross-domain", "/no/such/other.zip"], "does not exist"),
        (["--eval-cross-domain", "a/mnist/test.zip,b/mnist/test.zip"], "lists 'mnist/test' twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    res = runner.invoke(app, ["compile", "--output", str(tmp_path / "o"), *args])
    assert res.exit_code == 1, res.output
    assert re.search(message, res.stderr), res.stderr
    assert "Traceback" not in res.output


def test_resume_reads_the_saved_config_of_its_output_folder(tmp_path):
    """--resume --output DIR: DIR/config.toml is the base, flags win; no saved file: a note."""
    out = tmp_path / "run"
    out.mkdir()
    saved = build_config(overrides={"output": str(out), "prune.granularity": "n:m",
                                    "export.target": "jetson-orin-nano-8gb"})
    (out / "config.toml").write_text(saved.to_toml())
    res = runner.invoke(app, ["compile", "--output", str(out), "--resume", "--eval-episodes", "7",
                              "--print-config"])
    assert res.exit_code == 0, res.output
    assert 'granularity = "n:m"' in res.stdout and 'target = "jetson-orin-nano-8gb"' in res.stdout
    assert re.search(r"^episodes = 7$", res.stdout, re.M)  # the flag over the saved run
    res = runner.invoke(app, ["compile", "--output", str(out), "--print-config"])
    assert 'granularity = "channel"' in res.stdout  # without --resume the folder is not read
    res = runner.invoke(app, ["compile", "--output", str(tmp_path / "new"), "--resume",
                              "--print-config"])
    assert res.exit_code == 0 and "config.toml does not exist" in " ".join(res.stderr.split())


@pytest.mark.slow
def test_cross_domain_sets_are_evaluated_and_reported(tmp_path):
    """[eval] cross_domain: each set gets none/HyperFlow on its own seeded episodes (no fine-tuning),
    equal to `edgeflow evaluate` on the same checkpoints, and a table in the report."""
    from tests.conftest import shared_file

    mnist = shared_file("data/mnist/test.zip")
    cfg = _cfg(tmp_path, **{"eval.cross_domain": str(mnist), "eval.cross_episodes": 3})
    result = run_compile(cfg, log=lambda m: None)
    cross = result.metrics["cross_domain"]["mnist/test"]["5"]
    assert "finetune" not in cross and {"none", "hyperflow"} <= set(cross)
    assert cross["hyperflow"]["gain"] == pytest.approx(cross["hyperflow"]["acc"] - cross["none"]["acc"])
    # the reference: the evaluate command on the checkpoints the compile evaluated
    stages = result.output / "stages"
    res = runner.invoke(app, ["evaluate", "--model", "conv4", "--weights",
                              str(next((stages / "recover").glob("*.pt"))), "--drift",
                              str(stages / "meta-train" / "drift.pt"), "--data", str(mnist),
                              "--shots", "5", "--episodes", "3", "--methods", "none,hyperflow-euler",
                              "--json"])
    assert res.exit_code == 0, res.output
    ref = json.loads(res.stdout)["by_shots"]["5"]["methods"]
    assert cross["none"]["acc"] == pytest.approx(ref["none"]["accuracy"])
    assert cross["hyperflow"]["acc"] == pytest.approx(ref["hyperflow-euler"]["accuracy"])
    report = (result.output / "report" / "report.md").read_text()
    assert "## Few-shot accuracy on other domains" in report
    line = next(ln for ln in report.splitlines() if ln.startswith("| mnist/test | 5 |"))
    assert f"{100 * cross['hyperflow']['acc']:.2f}" in line
    assert f"({100 * cross['hyperflow']['gain']:+.2f})" in line
