"""benchmarks/bundle_probe.py --quick: no damaged bundle changes predictions, no input crashes."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bundle_probe_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.bundle_probe import main

    main(["--quick", "--out", str(tmp_path / "probe")])
    res = json.loads((tmp_path / "probe.json").read_text())
    s = res["summary"]
    assert res["meta"]["mode"] == "quick" and s["flips"] == 60
    assert s["flips_changed"] == 0 and s["numeric_edits_changed"] == 0
    assert s["flips_rejected"] + s["flips_identical"] == s["flips"]
    assert s["flips_rejected_with_expect"] == s["flips"]
    assert s["numeric_edits_rejected"] == s["numeric_fields"] > 20
    assert s["tracebacks"] == 0, [m["tracebacks"] for m in res["malformed"].values()]
    assert s["malformed_cases"] > 200
    k = res["kill_trials"]
    assert k["trials"] == 3 and k["broken"] == [] and k["user_files_kept"]
    assert k["left_after_cleanup"] == []
    assert (tmp_path / "probe.md").read_text().startswith("# Bundle probe (quick")
