"""Config validation at the door: malformed configs through ``edgeflow compile``, each refused in
one line that names the option, with exit 1 and no traceback, before anything trains.

``--print-config`` is enough to trigger every check made when the configuration is built, so
these run in milliseconds; the names that need torch's registries are checked by ``run_compile``
before its first stage (``NAME_CASES``, run without ``--print-config``).
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app
from edgeflow.errors import ConfigError
from edgeflow.pipeline.config import CompileConfig, build_config, parse_int_list
from edgeflow.pipeline.validate import MIN_SIZE

runner = CliRunner()

# (case id, CLI flags, TOML text or bytes or None, text the one-line error must contain)
# "{tmp}" in a flag is replaced by the test's temporary folder.
FLAG_CASES: list[tuple[str, list[str], str]] = [
    ("size-negative", ["--data-size", "-3"], "data.size"),
    ("size-zero", ["--data-size", "0"], "data.size"),
    ("size-huge", ["--data-size", "100000"], "data.size"),
    ("size-below-model-minimum", ["--backbone-model", "vgg11", "--data-size", "8"], "data.size"),
    ("limit-negative", ["--data-limit", "-1"], "data.limit"),
    ("base-empty", ["--data-base", ""], "data.base"),
    ("novel-blank", ["--data-novel", "  "], "data.novel"),
    ("base-classes-reversed", ["--data-base-classes", "4-0"], "data.base_classes"),
    ("novel-classes-reversed", ["--data-novel-classes", "9-5"], "data.novel_classes"),
    ("base-classes-comma-only", ["--data-base-classes", ","], "data.base_classes"),
    ("base-classes-twice", ["--data-base-classes", "0-4,2"], "data.base_classes"),
    ("base-classes-letters", ["--data-base-classes", "a-b"], "data.base_classes"),
    ("base-classes-three-part-range", ["--data-base-classes", "1-2-3"], "data.base_classes"),
    ("base-classes-huge-range", ["--data-base-classes", "0-1000000000"], "data.base_classes"),
    ("classes-overlap", ["--data-base-classes", "0-5"], "data.base_classes"),
    ("base-classes-empty-same-data", ["--data-base-classes", ""], "data.base_classes"),
    ("novel-classes-empty-same-data", ["--data-novel-classes", ""], "data.novel_classes"),
    ("overlap-same-path-two-ways", ["--data-base", "{tmp}/d", "--data-novel", "{tmp}/./d",
                                    "--data-base-classes", "", "--data-novel-classes", "3"],
     "data.base_classes"),
    ("val-is-novel", ["--data-val", "digits"], "data.val"),
    ("width-negative", ["--backbone-width", "-8"], "backbone.width"),
    ("width-huge", ["--backbone-width", "100000"], "backbone.width"),
    ("epochs-negative", ["--backbone-epochs", "-1"], "backbone.epochs"),
    ("epochs-zero-without-weights", ["--backbone-epochs", "0"], "backbone.epochs"),
    ("lr-inf", ["--backbone-lr", "inf"], "backbone.lr"),
    ("lr-nan", ["--backbone-lr", "nan"], "backbone.lr"),
    ("lr-zero", ["--backbone-lr", "0"], "backbone.lr"),
    ("lr-negative", ["--backbone-lr", "-0.1"], "backbone.lr"),
    ("batch-size-zero", ["--backbone-batch-size", "0"], "backbone.batch_size"),
    ("model-empty", ["--backbone-model", ""], "backbone.model"),
    ("sparsity-one", ["--prune-sparsity", "1"], "prune.sparsity"),
    ("sparsity-nan", ["--prune-sparsity", "nan"], "prune.sparsity"),
    ("sparsity-negative", ["--prune-sparsity", "-0.5"], "prune.sparsity"),
    ("prune-epochs-zero", ["--prune-epochs", "0"], "prune.epochs"),
    ("regrowth-negative", ["--prune-regrowth-epochs", "-1"], "prune.regrowth_epochs"),
    ("recovery-negative", ["--prune-recovery-epochs", "-2"], "prune.recovery_epochs"),
    ("theta-max-zero", ["--adapt-theta-max", "0"], "adapt.theta_max"),
    ("tasks-zero", ["--adapt-tasks", "0"], "adapt.tasks"),
    ("starts-zero", ["--adapt-starts", "0"], "adapt.starts"),
    ("val-tasks-negative", ["--adapt-val-tasks", "-3"], "adapt.val_tasks"),
    ("meta-steps-zero", ["--adapt-meta-steps", "0"], "adapt.meta_steps"),
    ("euler-steps-negative", ["--adapt-steps", "-1"], "adapt.steps"),
    ("euler-steps-huge", ["--adapt-steps", "20000"], "adapt.steps"),
    ("int8-maybe", ["--export-int8", "maybe"], "export.int8"),
    ("calibration-zero", ["--export-calibration-samples", "0"], "export.calibration_samples"),
    ("target-empty", ["--export-target", ""], "export.target"),
    ("ways-one", ["--eval-ways", "1"], "eval.ways"),
    ("ways-above-novel-classes", ["--eval-ways", "6"], "eval.ways"),
    ("shots-zero", ["--eval-shots", "0"], "eval.shots"),
    ("shots-twice", ["--eval-shots", "1,1"], "eval.shots"),
    ("shots-empty", ["--eval-shots", ""], "eval.shots"),
    ("shots-text", ["--eval-shots", "five"], "eval.shots"),
    ("shots-reversed", ["--eval-shots", "5-1"], "eval.shots"),
    ("shots-huge", ["--eval-shots", "1,100001"], "eval.shots"),
    ("queries-zero", ["--eval-queries", "0"], "eval.queries"),
    ("episodes-zero", ["--eval-episodes", "0"], "eval.episodes"),
    ("eval-seed-negative", ["--eval-seed", "-5"], "eval.seed"),
    ("seed-negative", ["--seed", "-1"], "seed"),
    ("seed-huge", ["--seed", "4294967296"], "seed"),
    ("device-gpu", ["--device", "gpu"], "device"),
    ("device-empty", ["--device", ""], "device"),
    ("output-dev-null", ["--output", "/dev/null"], "output"),
    ("output-a-file", ["--output", "{tmp}/a-file"], "output"),
    ("output-under-a-file", ["--output", "{tmp}/a-file/run"], "output"),
    ("output-empty", ["--output", ""], "output"),
    ("output-name-too-long", ["--output", "{tmp}/" + "x" * 5000], "output"),
    ("output-nul", ["--output", "a\x00b"], "output"),
    ("config-is-a-folder", ["--config", "{tmp}"], "is not a file"),
    ("config-missing", ["--config", "{tmp}/nope.toml"], "nope.toml"),
]

TOML_CASES: list[tuple[str, str | bytes, str]] = [
    ("not-utf8", b"seed = 0\n[data]\nbase = \"caf\xe9\"\n", "c.toml"),
    ("utf16-bom", "seed = 0\n".encode("utf-16"), "c.toml"),
    ("syntax-error", "[prune\nsparsity = 0.5\n", "c.toml"),
    ("epochs-string", '[backbone]\nepochs = "3"\n', "backbone.epochs"),
    ("epochs-float", "[backbone]\nepochs = 2.5\n", "backbone.epochs"),
    ("epochs-bool", "[backbone]\nepochs = true\n", "backbone.epochs"),
    ("size-huge", "[data]\nsize = 100000\n", "data.size"),
    ("width-negative", "[backbone]\nwidth = -8\n", "backbone.width"),
    ("lr-string", '[backbone]\nlr = "0.1"\n', "backbone.lr"),
    ("lr-overflow", "[backbone]\nlr = 1e400\n", "backbone.lr"),
    ("lr-bool", "[backbone]\nlr = true\n", "backbone.lr"),
    ("sparsity-string", '[prune]\nsparsity = "0.5"\n', "prune.sparsity"),
    ("sparsity-inf", "[prune]\nsparsity = inf\n", "prune.sparsity"),
    ("enabled-string", '[prune]\nenabled = "yes"\n', "prune.enabled"),
    ("enabled-int", "[adapt]\nenabled = 1\n", "adapt.enabled"),
    ("batch-size-float", "[backbone]\nbatch_size = 1e6\n", "backbone.batch_size"),
    ("calibration-float", "[export]\ncalibration_samples = 2.0\n", "export.calibration_samples"),
    ("episodes-zero", "[eval]\nepisodes = 0\n", "eval.episodes"),
    ("episodes-negative", "[eval]\nepisodes = -1\n", "eval.episodes"),
    ("ways-string", '[eval]\nways = "5"\n', "eval.ways"),
    ("shots-int", "[eval]\nshots = 5\n", "eval.shots"),
    ("shots-array", "[eval]\nshots = [1, 5]\n", "eval.shots"),
    ("base-classes-reversed", '[data]\nbase_classes = "4-0"\n', "data.base_classes"),
    ("base-classes-array", "[data]\nbase_classes = [0, 1]\n", "data.base_classes"),
    ("classes-overlap", '[data]\nbase_classes = "0-4"\nnovel_classes = "4-8"\n', "data.base_classes"),
    ("both-classes-empty", '[data]\nbase_classes = ""\nnovel_classes = ""\n', "data.base_classes"),
    ("seed-string", 'seed = "0"\n', "seed"),
    ("seed-array", "seed = [1]\n", "seed"),
    ("seed-date", "seed = 1979-05-27\n", "seed"),
    ("seed-table", "[seed]\nvalue = 1\n", "seed"),
    ("seed-above-int64", "seed = 9223372036854775807\n", "seed"),
    ("output-int", "output = 3\n", "output"),
    ("output-bool", "output = true\n", "output"),
    ("output-dev-null", 'output = "/dev/null"\n', "output"),
    ("output-nul", 'output = "a\\u0000b"\n', "output"),
    ("device-int", "device = 0\n", "device"),
    ("section-not-table", "prune = 3\n", "[prune]"),
    ("unknown-key", "[prune]\nspasity = 0.5\n", "spasity"),
    ("unknown-section", "[pruning]\nsparsity = 0.5\n", "pruning"),
    ("model-int", "[backbone]\nmodel = 4\n", "backbone.model"),
    ("int8-bool", "[export]\nint8 = true\n", "export.int8"),
    ("inline-table-bad-type", 'eval = { ways = "5" }\n', "eval.ways"),
]

# names checked against registries that need torch: by run_compile, before any stage or folder
NAME_CASES: list[tuple[str, list[str], str]] = [
    ("model-unknown", ["--backbone-model", "resnet99"], "resnet99"),
    ("prune-method-unknown", ["--prune-method", "prunezilla"], "prunezilla"),
    ("granularity-unknown", ["--prune-granularity", "3:3"], "3:3"),
    ("integrator-unknown", ["--adapt-method", "euler2"], "euler2"),
    ("target-unknown", ["--export-target", "jetson-nano-2gb"], "jetson-nano-2gb"),
]

VALID_FLAGS: list[tuple[str, list[str]]] = [
    ("defaults", []),
    ("tiny", ["--data-size", "8", "--backbone-width", "8", "--backbone-epochs", "2",
              "--prune-regrowth-epochs", "0", "--eval-episodes", "4", "--eval-shots", "5"]),
    ("width-default", ["--backbone-width", "0"]),
    ("weights-no-epochs", ["--backbone-epochs", "0", "--backbone-weights", "w.pt"]),
    ("vgg-at-its-minimum", ["--backbone-model", "vgg11", "--data-size", "16"]),
    ("other-data-all-classes", ["--data-base", "a.zip", "--data-novel", "b.zip",
                                "--data-base-classes", "", "--data-novel-classes", ""]),
    ("listed-classes", ["--data-base-classes", "0,2,4,6,8", "--data-novel-classes", "1,3,5,7,9"]),
    ("cuda-index", ["--device", "cuda:1"]),
    ("no-prune-no-adapt", ["--no-prune-enabled", "--no-adapt-enabled"]),
    ("int8-upper-case", ["--export-int8", "YES"]),
]


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    assert needle in lines[0], (needle, res.stderr)


@pytest.mark.parametrize(("flags", "needle"), [c[1:] for c in FLAG_CASES],
                         ids=[c[0] for c in FLAG_CASES])
def test_malformed_flags_are_one_line(tmp_path, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in flags]
    _one_line_error(runner.invoke(app, ["compile", *args, "--print-config"]), needle)


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in TOML_CASES],
                         ids=[c[0] for c in TOML_CASES])
def test_malformed_toml_is_one_line(tmp_path, monkeypatch, text, needle):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    _one_line_error(runner.invoke(app, ["compile", "--config", str(f), "--print-config"]), needle)
    # --resume reads the same file as the saved configuration of its output folder
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes(f.read_bytes())
    if needle != "output" and b"output" not in f.read_bytes():
        res = runner.invoke(app, ["compile", "--output", str(run), "--resume", "--print-config"])
        _one_line_error(res, "config.toml" if needle == "c.toml" else needle)


@pytest.mark.parametrize(("flags", "needle"), [c[1:] for c in NAME_CASES],
                         ids=[c[0] for c in NAME_CASES])
def test_unknown_names_stop_before_any_stage(tmp_path, flags, needle):
    out = tmp_path / "o"
    _one_line_error(runner.invoke(app, ["compile", "--output", str(out), *flags]), needle)
    assert not out.exists(), "a refused configuration left a folder behind"


def test_probe_size():
    """The issue asked for at least 60 malformed configurations."""
    assert len(FLAG_CASES) + len(TOML_CASES) + len(NAME_CASES) >= 60


@pytest.mark.parametrize(("flags",), [c[1:] for c in VALID_FLAGS], ids=[c[0] for c in VALID_FLAGS])
def test_valid_configs_still_pass_and_round_trip(tmp_path, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["compile", *flags, "--print-config"])
    assert res.exit_code == 0, res.output
    (tmp_path / "c.toml").write_text(res.stdout)
    assert build_config(file=tmp_path / "c.toml").to_toml() == res.stdout


def test_an_int_is_a_float_and_stays_one(tmp_path):
    """``lr = 1`` is accepted for a float option and stored as 1.0 (one cache key for both)."""
    f = tmp_path / "c.toml"
    f.write_text("[backbone]\nlr = 1\n[prune]\nsparsity = 0.25\n")
    cfg = build_config(file=f)
    assert isinstance(cfg.backbone.lr, float) and cfg.backbone.lr == 1.0
    assert cfg.digest("backbone") == build_config(overrides={"backbone.lr": 1.0}).digest("backbone")


def test_direct_construction_is_checked_too():
    from dataclasses import replace

    with pytest.raises(ConfigError, match=r"eval\.episodes"):
        replace(CompileConfig(), eval=replace(CompileConfig().eval, episodes=0))


def test_reversed_and_empty_lists():
    assert parse_int_list(" 0-2 , 5 ", name="x") == [0, 1, 2, 5]
    assert parse_int_list("3-3", name="x") == [3]
    with pytest.raises(ConfigError, match=r"reversed.*'0-4'"):
        parse_int_list("4-0", name="x")
    with pytest.raises(ConfigError, match="lists no numbers"):
        parse_int_list(" , ", name="x")
    with pytest.raises(ConfigError, match="above 10"):
        parse_int_list("0-11", name="x", maximum=10)


@pytest.mark.parametrize("model", sorted(MIN_SIZE))
def test_min_size_table_matches_the_models(model):
    """MIN_SIZE is measured, not derived: one pixel less fails in torch, the minimum runs."""
    import torch

    from edgeflow.models import create_model

    net = create_model(model, num_classes=5, **({"width_mult": 0.125} if "vgg" in model else {}))
    net.eval()
    need = MIN_SIZE[model]
    with torch.no_grad():
        net(torch.zeros(1, 3, need, need))
        with pytest.raises(RuntimeError, match=re.escape("too small")):
            net(torch.zeros(1, 3, need - 1, need - 1))
