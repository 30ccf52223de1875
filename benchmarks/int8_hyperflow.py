"""INT8 vs FP32 few-shot accuracy WITH HyperFlow adaptation, through the torch-free runtime.

The bundle's backbone is quantised (QDQ, theta folded into the INT8 conv biases) and the same
seeded episodes are adapted and classified by two ``Session``s, one per precision: the drift is
integrated from INT8 features in the INT8 session, so any error INT8 adds to the prototypes that
condition the drift shows up in the result, not just in the final classification.

    python benchmarks/int8_hyperflow.py --bundle runs/tiny-imagenet/bundle \
        --data ../shared/data/tiny-imagenet/novel.zip ../shared/data/gtsrb/test.zip --episodes 300
    python benchmarks/int8_hyperflow.py --quick        # digits bundle built by a tiny compile

Writes benchmarks/results/int8_hyperflow.{json,md} (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ensure_int8(bundle: Path, calib_data: str | None, samples: int) -> None:
    """Add an INT8 backbone to ``bundle`` unless it carries one (calibrated on ``calib_data``)."""
    from edgeflow.runtime.bundle import load_bundle, update_bundle

    b = load_bundle(bundle)
    if "int8" in b.manifest["precisions"]:
        return
    if calib_data is None:
        raise SystemExit(f"{bundle} has no INT8 backbone; pass --calib-data (base-class images)")
    import tempfile

    from edgeflow.calibration import calibration_indices
    from edgeflow.data import load_dataset, preprocess
    from edgeflow.export.int8 import quantize_onnx_int8

    ds = load_dataset(calib_data, size=b.preprocess.size)
    sample = preprocess(ds.images[calibration_indices(ds.labels, samples=samples, seed=0)],
                        b.preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "backbone.int8.onnx"
        quantize_onnx_int8(bundle / "backbone.onnx", out, sample=sample,
                           extra_inputs={"theta": b.theta0()})
        update_bundle(bundle, add={"backbone.int8.onnx": out},
                      precisions={"int8": "backbone.int8.onnx"})


def evaluate(bundle: Path, data: str, *, episodes: int, shots: int, ways: int, queries: int,
             seed: int, novel_classes: list[int] | None = None) -> dict:
    from edgeflow.data import EpisodeSampler, load_dataset
    from edgeflow.runtime import Session

    sessions = {p: Session(bundle, backend="onnxruntime", precision=p) for p in ("fp32", "int8")}
    size = sessions["fp32"].preprocess.size
    ds = load_dataset(data, size=size)
    if novel_classes:
        ds = ds.select_classes(novel_classes)
    sampler = EpisodeSampler(ds.labels, ways=ways, shots=shots, queries=queries, seed=seed)
    acc = {f"{p}_{m}": [] for p in sessions for m in ("none", "hyperflow")}
    agree = []
    for i in range(episodes):
        ep = sampler.episode(i)
        preds = {}
        for p, s in sessions.items():
            for m, steps in (("none", 0), ("hyperflow", None)):
                task = s.adapt(ds.images[ep.support], ep.support_labels, steps=steps)
                labels, _ = s.predict(ds.images[ep.query], task)
                preds[f"{p}_{m}"] = labels
                acc[f"{p}_{m}"].append(float((labels == ep.query_labels).mean()))
        agree.append(float((preds["fp32_hyperflow"] == preds["int8_hyperflow"]).mean()))
    for s in sessions.values():
        s.close()

    from edgeflow.adapt.evaluate import mean_ci  # the one definition of the 95% interval

    out = {k: dict(zip(("acc", "ci95"), mean_ci(v), strict=True)) for k, v in acc.items()}
    delta = np.subtract(acc["int8_hyperflow"], acc["fp32_hyperflow"])
    out["delta_hyperflow"] = dict(zip(("acc", "ci95"), mean_ci(list(delta)), strict=True))
    out["label_agreement_hyperflow"] = float(np.mean(agree))
    out["episodes"] = episodes
    return out


def quick_bundle(tmp: Path) -> tuple[Path, list[int]]:
    """A digits bundle from a tiny compile (every stage real, about a minute on 2 cores)."""
    from edgeflow.pipeline.compile import run_compile
    from edgeflow.pipeline.config import build_config

    cfg = build_config(overrides={"output": str(tmp), "data.size": 8, "backbone.width": 8,
                                  "backbone.epochs": 3, "prune.epochs": 1, "prune.regrowth_epochs": 0,
                                  "prune.recovery_epochs": 1, "adapt.tasks": 20,
                                  "adapt.val_tasks": 8, "adapt.meta_steps": 60,
                                  "adapt.outcome_steps": 20, "adapt.selection_tasks": 50,
                                  "eval.episodes": 2, "eval.shots": "5", "export.int8": "yes",
                                  "export.calibration_samples": 64, "device": "cpu"})
    run_compile(cfg, log=lambda m: None)
    return tmp / "bundle", [5, 6, 7, 8, 9]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--data", nargs="+", default=[])
    ap.add_argument("--calib-data")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    t0 = time.perf_counter()
    novel = None
    if args.quick:
        tmp = Path("/tmp") / "edgeflow-int8-hyperflow-quick"
        shutil.rmtree(tmp, ignore_errors=True)
        bundle, novel = quick_bundle(tmp)
        data, episodes = ["digits"], 10
    else:
        if args.bundle is None or not args.data:
            ap.error("--bundle and --data are required without --quick")
        bundle, data, episodes = args.bundle, args.data, args.episodes
        ensure_int8(bundle, args.calib_data, args.samples)
    results = {d: evaluate(bundle, d, episodes=episodes, shots=args.shots, ways=5, queries=15,
                           seed=0, novel_classes=novel) for d in data}
    record = {"mode": "quick" if args.quick else "full", "bundle": str(bundle),
              "machine": f"{platform.processor() or platform.machine()}, 2 cores",
              "shots": args.shots, "results": results, "seconds": time.perf_counter() - t0,
              "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_hyperflow.json").write_text(json.dumps(record, indent=1))
    lines = [f"# INT8 vs FP32 with HyperFlow adaptation ({record['mode']})", "",
             f"Bundle `{bundle}`; 5-way {args.shots}-shot, 15 queries, same seeded episodes for "
             "both precisions; ONNX Runtime CPU through `edgeflow.runtime.Session`.", "",
             "| data | episodes | FP32 none | FP32 HyperFlow | INT8 none | INT8 HyperFlow | "
             "INT8 - FP32 (HyperFlow, paired) | label agreement |", "|---|---|---|---|---|---|---|---|"]
    for d, r in results.items():
        def f(k: str, r: dict = r) -> str:
            return f"{100 * r[k]['acc']:.2f} ± {100 * r[k]['ci95']:.2f}"

        lines.append(f"| {d} | {r['episodes']} | {f('fp32_none')} | {f('fp32_hyperflow')} | "
                     f"{f('int8_none')} | {f('int8_hyperflow')} | {f('delta_hyperflow')} | "
                     f"{100 * r['label_agreement_hyperflow']:.1f}% |")
    lines += ["", f"Command: `{record['command']}`; {record['seconds']:.0f} s."]
    (args.out / "int8_hyperflow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
