import json

import pytest

from edgeflow.pipeline.stages import StageRunner


def test_resume_skips_finished_stages_and_redoes_changed_ones(tmp_path):
    calls = []

    def stage(name, value):
        def fn(d):
            calls.append(name)
            (d / "out.txt").write_text(str(value))
            return {"value": value}
        return fn

    r = StageRunner(tmp_path, resume=False, log=lambda m: None)
    r.run("a", stage("a", 1), parts={"x": 1})
    r.run("b", stage("b", 2), parts={"y": 2}, after=["a"])
    assert calls == ["a", "b"]

    r2 = StageRunner(tmp_path, resume=True, log=lambda m: None)
    assert r2.run("a", stage("a", 1), parts={"x": 1}).skipped
    assert r2.run("b", stage("b", 2), parts={"y": 2}, after=["a"]).skipped
    assert calls == ["a", "b"]

    # a changed input upstream invalidates the downstream stage too
    r3 = StageRunner(tmp_path, resume=True, log=lambda m: None)
    assert not r3.run("a", stage("a", 5), parts={"x": 5}).skipped
    assert not r3.run("b", stage("b", 2), parts={"y": 2}, after=["a"]).skipped
    assert calls == ["a", "b", "a", "b"]
    assert (tmp_path / "stages" / "a" / "out.txt").read_text() == "5"


def test_interrupted_stage_leaves_previous_result_intact(tmp_path):
    r = StageRunner(tmp_path, resume=False, log=lambda m: None)
    r.run("a", lambda d: (d / "f").write_text("good") and {"ok": 1}, parts={"v": 1})

    def crash(d):
        (d / "f").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, resume=True, log=lambda m: None).run("a", crash, parts={"v": 2})
    assert (tmp_path / "stages" / "a" / "f").read_text() == "good"
    assert json.loads((tmp_path / "stages" / "a" / "done.json").read_text())["outputs"] == {"ok": 1}
