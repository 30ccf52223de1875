from pathlib import Path

import pytest

from edgeflow.errors import ConfigError
from edgeflow.pipeline.config import CompileConfig, build_config, flag_fields, parse_int_list


def test_precedence_defaults_file_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('seed = 3\n[prune]\nsparsity = 0.7\ngranularity = "n:m"\n[eval]\nways = 3\n')
    cfg = build_config(file=f, overrides={"prune.sparsity": 0.9, "eval.episodes": 7})
    assert cfg.seed == 3  # file over default
    assert cfg.prune.granularity == "n:m"  # file over default
    assert cfg.prune.sparsity == 0.9  # flag over file
    assert cfg.eval.episodes == 7 and cfg.eval.ways == 3
    assert cfg.backbone == CompileConfig().backbone  # untouched section stays default


def test_print_config_round_trips(tmp_path):
    cfg = build_config(overrides={"prune.sparsity": 0.8, "data.size": 24, "adapt.enabled": False})
    f = tmp_path / "c.toml"
    f.write_text(cfg.to_toml())
    assert build_config(file=f) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prune.sparsity": 1.0}, "must be in \\(0, 1\\)"),
        ({"prune.sparsity": 0.0}, "must be in \\(0, 1\\)"),
        ({"prune.nope": 1}, "unknown \\[prune\\] keys \\['nope'\\]; valid: enabled"),
        ({"nosection.x": 1}, "unknown config keys \\['nosection'\\]"),
        ({"eval.ways": "five"}, "eval.ways must be int"),
        ({"eval.shots": "1,x"}, "eval.shots"),
    ],
)
def test_bad_values_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(file=bad)


def test_every_field_has_a_flag():
    keys = {k for k, *_ in flag_fields()}
    d = CompileConfig().to_dict()
    expected = {k for k, v in d.items() if not isinstance(v, dict)}
    expected |= {f"{s}.{k}" for s, v in d.items() if isinstance(v, dict) for k in v}
    assert keys == expected


def test_int_lists():
    assert parse_int_list("0-2,5", name="x") == [0, 1, 2, 5]
    assert parse_int_list("", name="x") == []


def test_shipped_recipes_load():
    from pathlib import Path

    for recipe in sorted((Path(__file__).parents[2] / "examples").glob("*.toml")):
        cfg = build_config(file=recipe)
        assert cfg.prune.granularity in ("weight", "n:m", "channel"), recipe


def test_saved_config_is_the_base_of_a_resumed_run(tmp_path):
    """--resume: defaults < OUTPUT/config.toml < --config file < flags, section by section."""
    from edgeflow.pipeline.config import saved_config

    run = tmp_path / "run"
    run.mkdir()
    saved = build_config(overrides={"output": str(run), "prune.granularity": "n:m",
                                    "prune.sparsity": 0.6, "export.target": "jetson-orin-nano-8gb"})
    (run / "config.toml").write_text(saved.to_toml())
    assert saved_config(overrides={"output": str(run)}) == run / "config.toml"
    f = tmp_path / "c.toml"
    f.write_text(f'output = "{run}"\n[prune]\nsparsity = 0.7\n')
    assert saved_config(file=f) == run / "config.toml"  # the file names the folder
    assert saved_config() == Path("edgeflow-out") / "config.toml"
    cfg = build_config(base=run / "config.toml", file=f, overrides={"eval.episodes": 7})
    assert cfg.prune.granularity == "n:m"  # from the saved run, the file's [prune] not replacing it
    assert cfg.prune.sparsity == 0.7  # the file over the saved run
    assert cfg.export.target == "jetson-orin-nano-8gb" and cfg.eval.episodes == 7
    assert build_config(base=run / "config.toml") == saved


def test_prune_lr_zero_keeps_the_library_default_and_a_value_overrides_it():
    from edgeflow.pipeline.model_stages import prune_config
    from edgeflow.prune.config import PruneConfig

    assert prune_config(build_config(overrides={})).lr == PruneConfig().lr
    assert prune_config(build_config(overrides={"prune.lr": 0.01})).lr == 0.01
    with pytest.raises(ConfigError, match=r"prune\.lr"):
        build_config(overrides={"prune.lr": -0.1})


def test_aux_weight_round_trips_and_old_configs_load(tmp_path):
    """[adapt] aux_weight: a flag, saved in config.toml, read back, passed to the outcome
    training; a config.toml saved before the key existed loads with the default."""
    from edgeflow.adapt.outcome import OutcomeConfig
    from edgeflow.pipeline.adapt_stages import outcome_config
    from edgeflow.pipeline.config import AdaptSection

    assert AdaptSection().aux_weight == OutcomeConfig().aux_weight
    assert ("adapt.aux_weight", "adapt-aux-weight") in {(k, f) for k, f, *_ in flag_fields()}
    cfg = build_config(overrides={"adapt.aux_weight": 0.5})
    text = cfg.to_toml()
    assert "aux_weight = 0.5" in text
    f = tmp_path / "config.toml"
    f.write_text(text)
    assert build_config(file=f) == cfg and outcome_config(cfg).aux_weight == 0.5
    f.write_text("\n".join(line for line in text.splitlines() if "aux_weight" not in line))
    assert build_config(file=f).adapt.aux_weight == AdaptSection().aux_weight
    with pytest.raises(ConfigError, match="aux_weight"):
        build_config(overrides={"adapt.aux_weight": -0.5})


@pytest.mark.parametrize(("key", "field", "default"), [("stats", "use_stats", True),
                                                      ("shot_tokens", "shot_tokens", False)])
def test_adapt_switches_round_trip_and_reach_the_outcome_training(tmp_path, key, field, default):
    """[adapt] stats (off: the prototypes-only ablation) and shot_tokens (on: the encoder reads
    each support image): a --adapt-KEY flag, saved, read back, passed on to OutcomeConfig.FIELD;
    configs written before the key keep the default."""
    from edgeflow.adapt.outcome import OutcomeConfig
    from edgeflow.pipeline.adapt_stages import outcome_config

    assert getattr(outcome_config(build_config()), field) is getattr(OutcomeConfig(), field)
    assert getattr(OutcomeConfig(), field) is default
    flag = "adapt-" + key.replace("_", "-")
    assert (f"adapt.{key}", flag) in {(k, f) for k, f, *_ in flag_fields()}
    cfg = build_config(overrides={f"adapt.{key}": not default})
    text = cfg.to_toml()
    assert f"{key} = {str(not default).lower()}" in text
    f = tmp_path / "config.toml"
    f.write_text(text)
    assert build_config(file=f) == cfg and getattr(outcome_config(cfg), field) is (not default)
    f.write_text("\n".join(line for line in text.splitlines() if not line.startswith(f"{key} ")))
    assert getattr(build_config(file=f).adapt, key) is default
