import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeflow.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(map(str, args)))


@pytest.mark.slow
def test_meta_train_then_evaluate_cli(tmp_path, digits_backbone):
    weights, _ = digits_backbone
    drift = tmp_path / "drift.pt"
    res = run("meta-train", "--model", "conv4", "--weights", weights, "--data", "digits",
              "--val-data", "digits", "--output", drift, "--tasks", "3", "--teacher-steps", "4",
              "--steps", "20", "--hidden", "32", "--theta-size", "32", "--val-tasks", "2",
              "--outcome-steps", "3", "--selection-tasks", "4", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert Path(out["output"]).exists() and out["theta_size"] == 32
    # the default objective: the outcome drift, with the regressed one it started from beside it
    assert out["objective"] == "outcome" and drift.with_name("drift.trajectory.pt").exists()
    sel = out["outcome"]["selection"]
    assert {"none", "trajectory", "outcome", "outcome - none"} <= set(sel)
    assert out["outcome"]["val_tasks"] == 4 and out["integrator"]["steps"] == 4
    assert isinstance(out["outcome"]["val_no_harm_in_domain"], bool)  # the selection rule ran
    # the guard's re-centring-alone candidate: val's best strength alone, stored with the drift
    from edgeflow.adapt.io import load_drift
    from edgeflow.adapt.recenter import best_alone

    alone = best_alone(out["val_acc_by_recenter"])
    assert out["integrator"]["guard_recenter"] == alone == load_drift(drift)[3].guard_recenter
    assert out["integrator"]["recenter"] == 0.0  # the outcome drift re-centres inside itself
    assert out["integrator"]["method"] == "euler" and out["trajectory_rows"] == 6
    gain = out["trajectory_gain"]
    assert gain["all"]["rows"] == 6 == sum(gain[k]["rows"] for k in ("class", "instance") if k in gain)
    # a drift whose chosen integrator re-centres: `evaluate --steps` must keep that (it rebuilt
    # the settings from method and steps alone, silently turning re-centring off)
    from edgeflow.checkpoint import load_checkpoint, save_checkpoint

    sd, meta = load_checkpoint(drift)
    meta["integrator"] = {**meta["integrator"], "recenter": 0.5}
    save_checkpoint(drift, state_dict=sd, meta=meta)
    res = run("evaluate", "--model", "conv4", "--weights", weights, "--drift", drift, "--data",
              "digits", "--shots", "1,2", "--episodes", "2", "--queries", "3",
              "--timing-episodes", "1", "--steps", "3", "--json")
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["integrator"]["steps"] == 3 and ev["integrator"]["recenter"] == 0.5
    for shots in ("1", "2"):
        for method in ("none", "teacher", "hyperflow-euler", "hyperflow-heun"):
            r = ev["by_shots"][shots]["methods"][method]
            assert {"accuracy", "ci95", "adapt_ms", "adapt_peak_mib", "median_ms"} <= set(r)
    # the drift-vs-teacher analysis on this drift and its trajectories
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drift_direction.py"),
                           "--model", "conv4", "--backbone", str(weights),
                           "--drift", str(drift.with_name(drift.stem + ".trajectory.pt")),
                           "--trajectories", str(drift.with_suffix(".trajectories")),
                           "--base-data", "digits", "--val-data", "digits", "--seeds", "0,1",
                           "--val-tasks", "2", "--meta-steps", "10", "--out", str(tmp_path / "dd")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dd = json.loads((tmp_path / "dd.json").read_text())
    # the rebuilt tasks and recomputed gradients are the teacher's own: its first Adam step is
    # -lr * sign(g0)
    assert dd["direction"]["check_first_step_vs_minus_sign_grad"]["mean"] > 0.99
    assert dd["direction"]["all"]["tasks"] == 3 and [r["seed"] for r in dd["seeds"]] == [0, 1]
    assert all(0 <= r["val_acc"] <= 1 for r in dd["seeds"])
    assert (tmp_path / "dd.md").read_text().startswith("# Drift vs teacher")
    # meta-training's choices scored on held-out val tasks (same trajectories)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selection_noise.py"),
                           "--model", "conv4", "--backbone", str(weights), "--trajectories",
                           str(drift.with_suffix(".trajectories")), "--val-data", "digits",
                           "--seeds", "0", "--sizes", "2", "--heldout", "3", "--meta-steps", "10",
                           "--out", str(tmp_path / "sn")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sn = json.loads((tmp_path / "sn.json").read_text())
    assert [(r["kind"], r["selection_tasks"]) for r in sn["runs"]] == [("drift alone", 2),
                                                                       ("joint", 2)]
    assert sn["runs"][0]["chosen"]["recenter"] == 0.0  # the drift-alone selection never re-centres
    assert all(0 <= r["heldout_chosen"] <= 1 for r in sn["runs"])
    assert set(sn["recenter_heldout"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    # re-centring width on val: theta over all four conv4 BatchNorm layers, the last 1 or 4 moved
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recenter_width.py"),
                           "--model", "conv4", "--backbone", str(weights), "--val-data", "digits",
                           "--theta-size", "64", "--layers", "1,4", "--count", "4",
                           "--out", str(tmp_path / "rw")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rw = json.loads((tmp_path / "rw.json").read_text())
    assert rw["theta_size_for"] == {"1": 16, "4": 64} and set(rw["seeds"]) == {"1", "2"}
    for summ in rw["seeds"].values():
        assert summ["all"]["tasks"] == 4 and summ["1-shot"]["tasks"] == 2
        assert all(0 <= v <= 1 for k, v in summ["all"].items() if k != "tasks")
    # more layers than theta has: a clear error, not a silently shorter table
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recenter_width.py"),
                           "--model", "conv4", "--backbone", str(weights), "--val-data", "digits",
                           "--theta-size", "64", "--layers", "5", "--out", str(tmp_path / "rw2")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "has 4 layers" in proc.stderr
    bad = run("evaluate", "--model", "conv4", "--weights", weights, "--drift", weights, "--data",
              "digits", "--episodes", "1")
    assert bad.exit_code == 1 and "not a drift checkpoint" in bad.output
    bad = run("evaluate", "--model", "conv4", "--weights", weights, "--drift", drift, "--data",
              "digits", "--shots", "one")
    assert bad.exit_code == 1 and "comma-separated integers" in bad.output
    # every method on the same episodes, the per-domain oracle and the step-count curve
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "outcome.py"), "--backbone",
                           str(weights), "--drift", str(drift), "--data", "digits:5-9", "--shots",
                           "2", "--episodes", "3", "--oracle-episodes", "2", "--curve-steps", "5",
                           "--timing-episodes", "1", "--memory-episodes", "1", "--out",
                           str(tmp_path / "oc"), "--candidates", str(tmp_path / "cands.jsonl")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "oc.json").read_text())["results"]["digits:5-9"]["2"]
    assert {"teacher-40", "trajectory+guard", "outcome+guard", "outcome+guard-recenter"} <= set(row)
    assert sum(row["outcome+guard"]["guard_chosen"].values()) == 3
    # every candidate scored on the queries: the best in hindsight is at least the guard's choice
    g = row["outcome+guard"]
    assert 0.0 <= g["guard_matches_best"] <= 1.0 and g["best_candidate_gain"] >= g["gain"] - 1e-9
    # the recorded candidates replayed: the guard's own rule gives the guard's own gain, and no
    # rule beats the best candidate per episode
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import guard_rules

    rules = guard_rules.main([str(tmp_path / "cands.jsonl"), "--choose-on", "digits",
                              "--out", str(tmp_path / "rules")])
    replayed = rules["rows"]["digits:5-9 2-shot outcome+guard"]
    assert replayed["episodes"] == 3 and abs(replayed["acc>logp"]["gain"] - g["gain"]) < 1e-9
    assert all(replayed["hindsight"]["gain"] >= replayed[k]["gain"] - 1e-9
               for k in (*guard_rules.RULES, "fixed"))
    assert rules["chosen"]["rule"] in guard_rules.RULES
    # cost = support set -> a ready classifier: none pays the prototypes' support pass too, and
    # the forward-only drift adds less peak memory to it than back-propagating teacher-40 does
    peak = {m: row[m]["adapt_peak_mib"] for m in ("none", "outcome", "teacher-40")}
    assert peak["none"] > 0 and peak["outcome"] - peak["none"] < peak["teacher-40"] - peak["none"]
    # the oracle's grid holds teacher-40's recipe (lr 0.01, 40 steps): it can only do better
    assert "0.01@40" in row["oracle"]["settings"]
    assert row["oracle"]["gain"] >= row["teacher-40"]["gain_first"] - 1e-9
    curve = row["steps_curve"]
    # the curve at the drift's own step count is the outcome method itself
    assert len(curve["gain"]) == 6 and curve["trained_steps"] == 4
    assert abs(curve["gain"][4] - row["outcome"]["gain"]) < 1e-6
    assert "Per-domain oracle" in (tmp_path / "oc.md").read_text()


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "adapt.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "adapt-quick.json").read_text())
    methods = res["domains"]["digits"]["by_shots"]["5"]["methods"]
    assert set(methods) >= {"none", "teacher", "hyperflow-euler", "hyperflow-heun", "full-finetune"}
    assert set(res["domains"]["digits"]["by_shots"]["5"]["euler_steps"]) == {"1", "2", "5", "10",
                                                                            "20", "50"}
    assert "break_even_episodes" in res["offline"]
    assert (tmp_path / "adapt-quick.md").read_text().startswith("# B2")
    # --merge --oracle-from: a run without the oracle takes an earlier run's (same backbone/theta)
    bare = {**res, "oracle": {}}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    merged_dir = tmp_path / "merged"
    merge = [sys.executable, str(ROOT / "benchmarks" / "adapt.py"), "--merge",
             str(tmp_path / "bare.json"), "--oracle-from", str(tmp_path / "adapt-quick.json"),
             "--out", str(merged_dir)]
    proc = subprocess.run(merge, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads((merged_dir / "adapt.json").read_text())
    assert merged["oracle"]["digits"]["best_gain"] == res["oracle"]["digits"]["best_gain"]
    assert "carried over" in (merged_dir / "adapt.md").read_text()
    other = {**res, "backbone": "another.pt"}  # another backbone's oracle does not apply
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = subprocess.run([*merge[:5], str(tmp_path / "other.json"), *merge[6:]],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and "oracle does not apply" in proc.stderr


def test_meta_train_cli_defaults_are_the_trajectory_config_defaults():
    import inspect

    from edgeflow.adapt.trajectories import TrajectoryConfig
    from edgeflow.cli.adapt_cmd import meta_train

    params = inspect.signature(meta_train).parameters
    cfg = TrajectoryConfig()
    assert params["teacher_lr"].default.default == cfg.teacher.lr
    assert params["teacher_steps"].default.default == cfg.teacher.steps
    assert params["instance_fraction"].default.default == cfg.instance_fraction
    assert params["teacher_recenter"].default.default == cfg.recenter
    from edgeflow.adapt.outcome import OutcomeConfig

    assert params["aux_weight"].default.default == OutcomeConfig().aux_weight


def test_meta_train_aux_weight_flag_reaches_the_outcome_config(monkeypatch):
    import edgeflow.adapt.workflow as workflow

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(workflow, "run_meta_train", fake)
    assert "--aux-weight" in run("meta-train", "--help").output
    res = run("meta-train", "--model", "conv4", "--weights", "w.pt", "--data", "digits",
              "--val-data", "digits", "--output", "d.pt", "--aux-weight", "0.3")
    assert isinstance(res.exception, RuntimeError), res.output
    assert seen["outcome_config"].aux_weight == 0.3
    assert seen["outcome_config"].shot_tokens is False
    res = run("meta-train", "--model", "conv4", "--weights", "w.pt", "--data", "digits",
              "--val-data", "digits", "--output", "d.pt", "--shot-tokens")
    assert isinstance(res.exception, RuntimeError), res.output
    assert seen["outcome_config"].shot_tokens is True
    assert run("meta-train", "--model", "conv4", "--weights", "w.pt", "--data", "digits",
               "--val-data", "digits", "--output", "d.pt", "--aux-weight", "-1").exit_code == 2
