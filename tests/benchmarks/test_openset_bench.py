"""benchmarks/openset.py --quick runs end to end and writes its report."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_openset_quick(tmp_path):
    from benchmarks.openset import main
    from tests.conftest import shared_file

    shared_file("weights/cifar10-resnet20-12fca82f.th")  # skips with a reason where absent
    main(["--quick", "--out", str(tmp_path / "os")])
    res = json.loads((tmp_path / "os.json").read_text())
    assert res["episodes"] == 4 and len(res["domains"]) == 2
    for modes in res["domains"].values():
        for r in modes.values():
            assert 0.0 <= r["auroc_ours"]["mean"] <= 1.0 and 0.0 <= r["known_recall"]["mean"] <= 1.0
    assert set(res["mean_gap"]) == {"none", "adapted"}
    assert (tmp_path / "os.md").read_text().startswith("# Open-set rejection")
