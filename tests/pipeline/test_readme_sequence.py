"""The README's config sequence run as written (print-config, a Jetson compile, --resume), through
the CLI on the built-in digits; one tiny compile shared by the tests of what it prints and writes."""

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.pipeline.config import build_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

# test_compile.TINY as flags: every stage runs for real, in about a minute on 2 cores
TINY = ["--data-size", "8", "--backbone-width", "8", "--backbone-epochs", "2", "--prune-epochs",
        "1", "--prune-regrowth-epochs", "0", "--prune-recovery-epochs", "1", "--adapt-tasks", "10",
        "--adapt-val-tasks", "6", "--adapt-meta-steps", "20", "--adapt-outcome-steps", "4",
        "--adapt-selection-tasks", "6", "--eval-episodes", "4",
        "--eval-shots", "5", "--export-calibration-samples", "32", "--device", "cpu"]


def readme_sequence() -> list[list[str]]:
    """The commands of the README's fenced block that starts with `--print-config > my.toml`."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S)
                 if "--print-config > my.toml" in b)
    block = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """Run the README's three commands in a fresh folder (TINY flags added to the first, so
    my.toml holds a small compile); return (folder, [(args, result)])."""
    cwd = tmp_path_factory.mktemp("readme")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    mp.setenv("COLUMNS", "80")  # the progress bars drawn as on an 80-column terminal
    runs = []
    try:
        for args in readme_sequence():
            assert args[:2] == ["edgeflow", "compile"], args
            args = args[2:]
            if ">" in args:  # the shell redirect of --print-config
                i = args.index(">")
                res = runner.invoke(app, ["compile", *args[:i], *TINY])
                assert res.exit_code == 0, res.output
                (cwd / args[i + 1]).write_text(res.stdout)
            else:
                res = runner.invoke(app, ["compile", *args])
                assert res.exit_code == 0, res.output
            runs.append((args, res))
    finally:
        mp.undo()
    return cwd, runs


def _output(args: list[str]) -> str:
    return args[args.index("--output") + 1]


@pytest.mark.slow
def test_readme_sequence_writes_its_own_folder_and_resumes_it(sequence):
    cwd, runs = sequence
    assert len(runs) == 3
    (_, _), (jetson_args, _), (resume_args, resumed) = runs
    out = cwd / _output(jetson_args)
    # the Jetson compile does not overwrite the bundle my.toml names (the default edgeflow-out)
    assert build_config(file=cwd / "my.toml").output == "edgeflow-out"
    assert out != cwd / "edgeflow-out" and not (cwd / "edgeflow-out").exists()
    saved = build_config(file=out / "config.toml")
    assert saved.prune.granularity == "n:m" and saved.export.target == "jetson-orin-nano-8gb"
    assert saved.backbone.width == 8  # my.toml's options are in it too
    # --resume with only --output: the saved configuration, every stage reused
    assert _output(resume_args) == _output(jetson_args) and "--config" not in resume_args
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["config"] == saved.to_dict()
    assert metrics["seconds"] and all(s["reused"] for s in metrics["seconds"].values()), \
        metrics["seconds"]
    assert "up to date, reused" in resumed.stderr


@pytest.mark.slow
def test_summary_and_report_say_no_engine_was_built_and_how_to_build_it(sequence):
    cwd, runs = sequence
    _, (jetson_args, res), _ = runs
    out = cwd / _output(jetson_args)
    engines = json.loads((out / "stages" / "engines" / "done.json").read_text())["outputs"]
    assert engines["built"] is False  # no TensorRT on this machine
    build = f"edgeflow build {out.relative_to(cwd) / 'bundle'} --target jetson-orin-nano-8gb"
    summary = " ".join(res.stdout.split())  # rich wraps long lines
    assert "NOT built here" in summary and f"on the device with `{build}`" in summary, res.stdout
    report = (out / "report" / "report.md").read_text()
    assert "## TensorRT engines" in report and build in report
    sparsity = next(ln for ln in report.splitlines() if ln.startswith("| sparsity |"))
    assert "the engine is built" not in sparsity and "no engine was built here" in sparsity


@pytest.mark.slow
def test_summary_units_and_method_names_match_the_report(sequence):
    cwd, runs = sequence
    _, (jetson_args, res), _ = runs
    out = cwd / _output(jetson_args)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    report = (out / "report" / "report.md").read_text()
    summary = " ".join(res.stdout.split())
    assert re.search(r"pruned to \d+\.\d% sparsity, held-out top-1 \d+\.\d%", summary), summary
    header = next(ln for ln in report.splitlines() if ln.startswith("| shots |"))
    names = [c.strip() for c in header.strip("|").split("|")][1:]
    for name in names:  # the summary uses the report's column names, and only those
        assert name in summary
    assert "finetune" not in summary and "fine-tuning (teacher)" not in report
    recentres = metrics["integrator"]["recenter"] > 0
    assert ("HyperFlow (drift + re-centring)" in header) == recentres
    assert ("HyperFlow (drift)" in header) == (not recentres)


@pytest.mark.slow
def test_stage_lines_and_progress_bars_fit_80_columns(sequence):
    _, runs = sequence
    _, (_, res), (_, resumed) = runs
    err = res.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("stage ") and " elapsed" in ln]
    assert [ln.split(",")[0] for ln in lines] == [
        "stage 1/8 backbone", "stage 2/8 prune", "stage 3/8 recover", "stage 4/8 meta-train",
        "stage 5/8 export", "stage 6/8 calibrate", "stage 7/8 engines", "stage 8/8 evaluate"]
    # the resumed run knows how long the stages took the first time
    assert "last run here: " in resumed.stderr
    assert all(len(ln) <= 80 for ln in resumed.stderr.splitlines() if ln.startswith("stage "))
    bars = [ln.rstrip() for ln in err.splitlines()
            if ln.startswith(("hyperflows", "train", "trajectories", "meta-train", "evaluate"))]
    assert bars and all(len(ln) <= 80 for ln in bars), bars
    prune = next(ln for ln in bars if ln.startswith("hyperflows"))
    assert "…" not in prune and re.search(r"\d+/\d+ .*sparsity 0\.\d{3} acc 0\.\d{3}$", prune), prune
