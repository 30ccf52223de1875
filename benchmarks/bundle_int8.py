"""Does a bundle's INT8 backbone keep its few-shot accuracy? FP32 vs INT8 on the same episodes.

The torch-free runtime (``edgeflow.runtime.Session``, ONNX Runtime CPU) opens the bundle once per
precision; every episode (5-way, seeded, 15 queries per class) is adapted and predicted by both,
with no adaptation (``steps=0``) and with the bundle's own adaptation. Reported per data set and
shot count: accuracy ± 95% CI per precision and the paired INT8 - FP32 difference.

    OMP_NUM_THREADS=2 python benchmarks/bundle_int8.py --bundle runs/efficientnet-lite0/bundle \\
        --data ../shared/data/tiny-imagenet/novel.zip --data ../shared/data/gtsrb/test.zip \\
        --out benchmarks/results/efficientnet-lite0/int8_fewshot
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ci(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, np.float64)
    return float(a.mean()), float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def run(sessions: dict, images: np.ndarray, labels: np.ndarray, *, episodes: int, shots: int,
        seed: int) -> dict:
    """Accuracy per (precision, adaptation) on the same episodes, and INT8 - FP32 paired."""
    from edgeflow.data import EpisodeSampler

    sampler = EpisodeSampler(labels, ways=5, shots=shots, queries=15, seed=seed)
    acc: dict[str, list[float]] = {}
    for i in range(episodes):
        ep = sampler.episode(i)
        sup, qry = ep.support, ep.query
        for prec, s in sessions.items():
            for name, steps in (("none", 0), ("adapted", None)):
                task = s.adapt(images[sup], labels[sup], steps=steps)
                pred, _ = s.predict(images[qry], task)
                acc.setdefault(f"{prec} {name}", []).append(float(np.mean(pred == labels[qry])))
    out = {k: dict(zip(("mean", "ci95"), _ci(v), strict=True)) for k, v in acc.items()}
    for name in ("none", "adapted"):
        d = np.subtract(acc[f"int8 {name}"], acc[f"fp32 {name}"])
        out[f"int8 - fp32 {name}"] = dict(zip(("mean", "ci95"), _ci(list(d)), strict=True))
    return out


def main(argv: list[str] | None = None) -> dict:
    from edgeflow.data import load_dataset
    from edgeflow.runtime import Session

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", action="append", required=True, help="dataset path, repeatable")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--shots", default="5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    sessions = {p: Session(a.bundle, backend="onnxruntime", precision=p) for p in ("fp32", "int8")}
    size = sessions["fp32"].preprocess.size
    results: dict = {}
    for path in a.data:
        ds = load_dataset(Path(path), mode="RGB", size=size)
        name = f"{Path(path).parent.name}/{Path(path).stem}"
        for k in (int(s) for s in a.shots.split(",")):
            results[f"{name} {k}-shot"] = run(sessions, ds.images, ds.labels, episodes=a.episodes,
                                              shots=k, seed=a.seed)
    cmd = "python benchmarks/bundle_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": cmd, "seconds": time.perf_counter() - t0, "episodes": a.episodes,
            "machine": f"{platform.machine()}, 2 cores"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["# INT8 vs FP32 few-shot accuracy of a bundle (ONNX Runtime CPU, torch-free runtime)", "",
             f"`{cmd}`, {meta['seconds']:.0f} s on {meta['machine']}; 5-way, 15 queries per class, "
             f"{a.episodes} seeded episodes per row, the same for both precisions.", "",
             "| set | FP32 none | INT8 none | INT8 - FP32 | FP32 adapted | INT8 adapted | "
             "INT8 - FP32 |", "|---|---|---|---|---|---|---|"]
    for row, r in results.items():
        def f(k: str, r: dict = r) -> str:
            return f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['ci95']:.2f}"
        lines.append(f"| {row} | {f('fp32 none')} | {f('int8 none')} | {f('int8 - fp32 none')} | "
                     f"{f('fp32 adapted')} | {f('int8 adapted')} | {f('int8 - fp32 adapted')} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
