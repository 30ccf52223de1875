"""The compile's overall stage line (stage k/N, elapsed, the last run's time for the rest)."""

import json

from edgeflow.pipeline.clock import StageClock, previous_times


def test_stage_line_counts_stages_and_uses_only_measured_times(tmp_path):
    planned = ["backbone", "prune", "export"]
    first = StageClock(planned, previous_times(tmp_path, planned))
    assert first.line("prune").startswith("stage 2/3 prune, 0:0")
    assert "last run" not in first.line("prune")  # a first run: nothing measured, no estimate
    for name, seconds in (("backbone", 30.0), ("prune", 95.0), ("export", 5.0)):
        (tmp_path / "stages" / name).mkdir(parents=True)
        (tmp_path / "stages" / name / "done.json").write_text(json.dumps({"seconds": seconds}))
    again = StageClock(planned, previous_times(tmp_path, planned))
    assert again.line("prune").endswith("; last run here: 1:40 from here on")
    assert again.line("backbone").endswith("last run here: 2:10 from here on")
    (tmp_path / "stages" / "export" / "done.json").unlink()  # an unmeasured stage still to come
    partial = StageClock(planned, previous_times(tmp_path, planned))
    assert "last run" not in partial.line("prune")
