"""ONNX Runtime latency of a dense and a pruned model, timed interleaved in one process (shared by
benchmarks/prune.py and benchmarks/depgraph_prune.py)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def onnx_latency(dense, pruned, *, repeats: int, batches=(1, 32), size: int = 32,
                 warmup: int = 5) -> dict:
    """Median ONNX Runtime CPU latency (ms, one thread) of both models at each batch size, timed
    interleaved; ``{"batchB": {"dense_ms", "pruned_ms", "speedup"}}``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(model.eval(), torch.zeros(1, 3, size, size), str(path), dynamo=False,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
            times: dict = {"dense": [], "pruned": []}
            for sess in sessions.values():
                for _ in range(warmup):
                    sess.run(None, {"x": x})
            for _ in range(repeats):
                for name, sess in sessions.items():
                    t0 = time.perf_counter()
                    sess.run(None, {"x": x})
                    times[name].append((time.perf_counter() - t0) * 1000)
            d, p = statistics.median(times["dense"]), statistics.median(times["pruned"])
            out[f"batch{b}"] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p}
    return out
