"""The device side never loads torch: checked in fresh interpreters."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_runtime_leaves_torch_unloaded():
    res = _run("""
        import json, sys
        import edgeflow.runtime
        print(json.dumps({"torch": "torch" in sys.modules, "tensorrt": "tensorrt" in sys.modules,
                          "sklearn": "sklearn" in sys.modules}))
    """)
    assert res == {"torch": False, "tensorrt": False, "sklearn": False}


def test_full_adapt_and_predict_leave_torch_unloaded(drift_bundle):
    from tests.conftest import shared_file

    data = shared_file("data/cifar10/test.zip")
    res = _run(f"""
        import json, sys
        import numpy as np
        from edgeflow.data import EpisodeSampler, load_dataset
        from edgeflow.runtime import Session
        ds = load_dataset({str(data)!r}, limit=200)
        ep = EpisodeSampler(ds.labels, ways=5, shots=5, queries=15, seed=0).episode(0)
        with Session({str(drift_bundle[0])!r}) as s:
            task = s.adapt(ds.images[ep.support], ep.support_labels)
            labels, scores = s.predict(ds.images[ep.query], task)
        print(json.dumps({{"torch": "torch" in sys.modules, "n": len(labels),
                          "moved": float(np.abs(task.theta - s.theta0).max())}}))
    """)
    assert res["torch"] is False and res["n"] == 75 and res["moved"] > 0
