import json
import re

from edgeflow.pipeline.report import render_report

METRICS = {
    "source": {"model": "conv4", "data": "digits", "target": "cpu"},
    "bundle": "out/bundle", "ways": 5, "episodes": 20,
    "prune": {"method": "hyperflows", "granularity": "channel", "requested": 0.5, "sparsity": 0.5,
              "layers": [{"name": "c1", "density": 0.4}, {"name": "c2", "density": 0.6}],
              "before": {"top1": 0.91, "params": 1000}, "after": {"top1": 0.9, "params": 500}},
    "fewshot": {"5": {"none": {"acc": 0.8123, "ci95": 0.0211},
                      "finetune": {"acc": 0.8311, "ci95": 0.0188},
                      "hyperflow": {"acc": 0.8254, "ci95": 0.0199}}},
    "steps_curve": {"5": [{"steps": 0, "acc": 0.8123, "ci95": 0.02},
                          {"steps": 10, "acc": 0.8254, "ci95": 0.02}]},
}


def test_report_files_and_numbers_match_metrics(tmp_path):
    path = render_report(METRICS, tmp_path)
    text = path.read_text()
    for png in ("density.png", "fewshot.png", "steps.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"({png})" in text
    assert json.loads((tmp_path / "metrics.json").read_text()) == METRICS
    row = next(line for line in text.splitlines() if line.startswith("| 5 |"))
    nums = [float(x) for x in re.findall(r"\d+\.\d+", row)]
    assert nums == [81.23, 2.11, 83.11, 1.88, 82.54, 1.99]


def test_one_name_per_method_and_re_centring_only_where_the_bundle_re_centres(tmp_path):
    from edgeflow.pipeline.compile import CompileResult

    for recenter, hyperflow in ((0.0, "HyperFlow (drift)"),
                                (0.5, "HyperFlow (drift + re-centring)")):
        metrics = {**METRICS, "integrator": {"method": "euler", "steps": 5, "recenter": recenter},
                   "total_seconds": 12.0}
        text = render_report(metrics, tmp_path / str(recenter)).read_text()
        header = next(line for line in text.splitlines() if line.startswith("| shots |"))
        assert header == f"| shots | no adaptation | fine-tuning | {hyperflow} |"
        summary = CompileResult(tmp_path, tmp_path / "bundle", tmp_path / "report.md",
                                metrics).human_summary()
        rows = [" ".join(line.split()) for line in summary.splitlines()]
        assert "5-shot" in rows[rows.index("few-shot accuracy on novel classes, % ± 95% CI, "
                                           "5-way") + 1]
        for row in ("no adaptation 81.2 ± 2.1", "fine-tuning 83.1 ± 1.9",
                    f"{hyperflow} 82.5 ± 2.0"):  # in the report's order
            assert row in rows, summary
        firsts = [r.split(" ")[0] for r in rows if re.search(r"\d ± \d", r)]
        assert firsts == ["no", "fine-tuning", "HyperFlow"], summary
        assert all(len(line) <= 80 for line in summary.splitlines() if "shot" in line or " ± " in line)
        assert "pruned to 50.0% sparsity, held-out top-1 90.0%" in summary
        assert "finetune" not in summary and "(teacher)" not in text
        assert "TensorRT" not in summary  # no engine information, no engine line


def test_engines_not_built_say_how_to_build_them(tmp_path):
    from edgeflow.pipeline.report import engines_note

    jetson = {**METRICS, "source": {**METRICS["source"], "target": "jetson-orin-nano-8gb"},
              "engines": {"built": False, "gpu": True, "reason": "tensorrt is not installed"}}
    text = render_report(jetson, tmp_path).read_text()
    assert "## TensorRT engines" in text
    assert ("TensorRT engines: NOT built here. Build them on the device with `edgeflow build "
            "out/bundle --target jetson-orin-nano-8gb` (the bundle's path there). Why not here: "
            "tensorrt is not installed") in text
    cpu = {**METRICS, "engines": {"built": False, "gpu": False, "reason": "target cpu has no GPU"}}
    assert engines_note(cpu) == ("TensorRT engines: none (target cpu has no GPU); the bundle "
                                 "runs on ONNX Runtime")
    assert engines_note({"engines": {"built": True, "precision": "fp16"}}) == \
        "TensorRT engines: built (fp16)"
    assert engines_note(METRICS) == ""


def test_adaptation_checks_fail_visibly_when_the_drift_loses():
    """Issue 17: a compile whose drift scores below no adaptation on its own episodes fails a
    check (per shot count), with the numbers and the fix in its message."""
    from edgeflow.pipeline.eval_stage import adaptation_checks

    table = {"5": {"none": {"acc": 0.549}, "hyperflow": {"acc": 0.539}},
             "1": {"none": {"acc": 0.393}, "hyperflow": {"acc": 0.443}},
             "10": {"none": {"acc": 0.6}}}  # no drift evaluated there: no check
    checks = adaptation_checks(table)
    assert [c["name"] for c in checks] == ["adaptation helps (1-shot)", "adaptation helps (5-shot)"]
    assert checks[0]["ok"] and "+5.00 points" in checks[0]["message"]
    assert not checks[1]["ok"] and "-1.00 points" in checks[1]["message"]
    assert "guard=True" in checks[1]["message"]


def test_the_outcome_section_reports_selection_and_in_domain_harm(tmp_path):
    sel = {"none": {"mean": 0.5568}, "trajectory": {"mean": 0.5583}, "outcome": {"mean": 0.5652},
           "outcome - none": {"mean": 0.0084, "ci95": 0.0027},
           "outcome - trajectory": {"mean": 0.0070, "ci95": 0.0025}}
    outcome = {"selection": sel, "config": {"euler_steps": 4, "loop_every": 2}, "best_step": 198,
               "val_tasks": 1000, "layer_gain": [-0.52, -0.51], "val_no_harm_in_domain": True}
    adapt = {**METRICS.get("adapt", {}), "outcome": outcome}
    text = render_report({**METRICS, "adapt": adapt}, tmp_path / "ok").read_text()
    assert "closed loop every 2 steps" in text and "+0.84 ± 0.27 points over no adaptation" in text
    assert "No weights did no harm" not in text
    adapt["outcome"] = {**outcome, "val_no_harm_in_domain": False}
    text = render_report({**METRICS, "adapt": adapt}, tmp_path / "harm").read_text()
    assert "No weights did no harm in-domain" in text and "guard=True" in text


def test_val_tasks_from_the_base_classes_are_called_out(tmp_path):
    adapt = {"val_acc_by_euler_steps": {"0": 0.6, "4": 0.62}, "val_acc_no_adaptation": 0.6,
             "integrator": {"method": "euler", "steps": 4}}
    note = "No `[data] val` was given"
    for val, shown in (("", True), ("../shared/data/tiny-imagenet/val.zip", False)):
        metrics = {**METRICS, "adapt": adapt, "config": {"data": {"val": val}}}
        text = render_report(metrics, tmp_path / str(shown)).read_text()
        assert (note in text) is shown
    # reports of metrics without a config (older ones) say nothing they cannot know
    assert note not in render_report({**METRICS, "adapt": adapt}, tmp_path / "old").read_text()
