"""Backbone latency, ONNX Runtime vs PyTorch eager, both on ONE thread, interleaved.

A complement to B3 (benchmarks/runtime.py): on a shared 2-core machine a 2-thread PyTorch pool
spins against other processes and inflates the speed-up; one thread each compares the kernels.
The bundle-style backbone (BatchNorm folded, theta as an input) of the pretrained ResNet-20.

    python benchmarks/runtime_one_thread.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    from edgeflow.adapt import ThetaSpec
    from edgeflow.export import export_backbone
    from edgeflow.models import create_model

    torch.set_num_threads(1)
    weights = ROOT.parent / "shared" / "weights" / "cifar10-resnet20-12fca82f.th"
    m = create_model("resnet20", weights=weights).eval()
    spec = ThetaSpec.from_model(m, max_size=10**6)
    theta = spec.get(m).numpy()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        export_backbone(m, spec, path, size=32, channels=3)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for b in (1, 32):
            x = np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32)
            xt, feed = torch.from_numpy(x), {"images": x, "theta": theta}
            t_ort, t_pt = [], []
            for _ in range(args.runs + 10):  # interleaved, first 10 dropped as warm-up
                t = time.perf_counter()
                sess.run(None, feed)
                t_ort.append(time.perf_counter() - t)
                t = time.perf_counter()
                with torch.no_grad():
                    m.features(xt)
                t_pt.append(time.perf_counter() - t)
            o, p = np.median(t_ort[10:]) * 1e3, np.median(t_pt[10:]) * 1e3
            rows[f"batch{b}"] = {"ort_ms": float(o), "pytorch_ms": float(p), "speedup": float(p / o)}
    load = os.getloadavg()
    record = {"runs": args.runs, "rows": rows, "loadavg": list(load), "threads": 1,
              "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_one_thread.json").write_text(json.dumps(record, indent=1))
    lines = ["# Backbone latency, one thread each (ResNet-20 bundle backbone, theta as input)", "",
             f"Medians of {args.runs} interleaved runs; 2-core x86-64; load average at the end "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.", "",
             "| batch | ONNX Runtime ms | PyTorch eager ms | speed-up |", "|---|---|---|---|"]
    for b, r in rows.items():
        lines.append(f"| {b[5:]} | {r['ort_ms']:.3f} | {r['pytorch_ms']:.3f} | {r['speedup']:.2f}x |")
    lines += ["", f"Command: `{record['command']}`"]
    (args.out / "runtime_one_thread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
