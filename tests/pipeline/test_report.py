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
