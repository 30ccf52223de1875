"""benchmarks/kill_probe.py --quick: no kill -9 leaves a broken bundle; every resume ends valid."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_kill_probe_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.kill_probe import main

    main(["--quick", "--out", str(tmp_path / "probe")])
    res = json.loads((tmp_path / "probe.json").read_text())
    s = res["summary"]
    assert res["meta"]["mode"] == "quick"
    assert {k: sum(c.values()) for k, c in s["by_kind"].items()} == \
        {"export": 3, "calibrate": 3, "compile": 3}
    assert s["broken_accepted"] == 0 and s["refused"] == 0, s
    assert set(s["outcomes"]) <= {"absent", "previous", "new"}
    assert s["resumes_valid"] == s["compile_kills"] == 3
    assert (tmp_path / "probe.md").read_text().startswith("# kill -9 probe (quick")
