"""Peak resident memory of `edgeflow predict` (and `adapt`) on a real bundle, over the runtime's
baseline (`python -c "import edgeflow.runtime"`). Target: predict <= 300 MB over the baseline.

Two bundles: the pretrained CIFAR ResNet-20 exported with `edgeflow export` (no drift: prototypes
at theta0) and bundle_probe's conv4 with a drift (HyperFlow integration on the device); images are
CIFAR-10 test images written as PNG files. Each command runs in its own
process under GNU ``/usr/bin/time -f %M`` (its peak resident set size).

    OMP_NUM_THREADS=1 python benchmarks/predict_rss.py      # ~1 min

Writes benchmarks/results/predict_rss.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
TARGET_MB = 300


def peak_mb(cmd: list[str]) -> float:
    """Peak RSS in MB of ``cmd`` run to the end, as GNU time reports it (%M, KB).

    Not ``os.wait4`` from this process: a child's ru_maxrss starts from the forking parent's RSS
    (here ~76 MB of numpy/PIL), which hid the runtime's own footprint in a first version.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode:
            raise RuntimeError(f"{cmd} failed: {p.stderr[-2000:]}")
        return int(f.read().split()[-1]) / 1024


def write_images(work: Path, *, queries: int) -> dict[str, Path]:
    """5 classes x 5 shots of support, ``queries`` query images, one single image (PNG)."""
    from PIL import Image

    from edgeflow.data import load_dataset

    ds = load_dataset(str(SHARED / "data" / "cifar10" / "test.zip"), limit=25 + queries + 400)
    support, query = work / "support", work / "queries"
    counts: dict[int, int] = {}
    n = 0
    for i, (img, label) in enumerate(zip(ds.images, ds.labels, strict=True)):
        label = int(label)
        if label < 5 and counts.get(label, 0) < 5:
            (support / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(support / f"c{label}" / f"{i}.png")
            counts[label] = counts.get(label, 0) + 1
        elif n < queries:
            query.mkdir(exist_ok=True)
            Image.fromarray(img).save(query / f"{i}.png")
            n += 1
    return {"support": support, "queries": query, "single": sorted(query.iterdir())[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_rss"))
    args = ap.parse_args(argv)
    ef = [sys.executable, "-m", "edgeflow"]
    with tempfile.TemporaryDirectory(prefix="predict_rss-") as tmp:
        work = Path(tmp)
        bundle = work / "r20.bundle"
        subprocess.run([*ef, "export", "--model", "resnet20", "--weights",
                        str(SHARED / "weights" / "cifar10-resnet20-12fca82f.th"), "--parity-data",
                        str(SHARED / "data" / "cifar10" / "test.zip"), "--output", str(bundle)],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                       stdout=subprocess.DEVNULL)
        from benchmarks.bundle_probe import build_bundle

        bundles = {"ResNet-20": bundle, "conv4+drift": build_bundle(work / "drift.bundle")}
        files = write_images(work, queries=args.queries)
        rows = {"python -c pass": peak_mb([sys.executable, "-c", "pass"]),
                "baseline (import edgeflow.runtime)": peak_mb([sys.executable, "-c",
                                                              "import edgeflow.runtime"])}
        for name, b in bundles.items():
            task = work / f"{name}.task.npz"
            rows[f"{name}: adapt (5-way 5-shot)"] = peak_mb(
                [*ef, "adapt", str(b), "--support", str(files["support"]), "--output", str(task)])
            rows[f"{name}: predict 1 image"] = peak_mb(
                [*ef, "predict", str(b), "--task", str(task), str(files["single"])])
            rows[f"{name}: predict {args.queries} images"] = peak_mb(
                [*ef, "predict", str(b), "--task", str(task), str(files["queries"])])
    base = rows["baseline (import edgeflow.runtime)"]
    res = {"meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "command": "OMP_NUM_THREADS=1 python benchmarks/predict_rss.py",
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "bundles": {"ResNet-20": "pretrained CIFAR ResNet-20 (272k params), no drift: "
                                "prototypes at theta0", "conv4+drift": "benchmarks/bundle_probe.py's "
                                "conv4 (width 16) + random drift, 3 Euler steps, re-centring"},
                    "target_mb_over_baseline": TARGET_MB},
           "peak_rss_mb": {k: round(v, 1) for k, v in rows.items()},
           "over_baseline_mb": {k: round(v - base, 1) for k, v in rows.items()
                                if ": " in k}}
    worst = max(v for k, v in res["over_baseline_mb"].items() if ": predict" in k)
    res["predict_within_target"] = worst <= TARGET_MB
    lines = ["# Peak RSS of `edgeflow predict`", "", f"Command: `{res['meta']['command']}`  ",
             f"{res['meta']['date']}, {res['meta']['machine']}; peak RSS per process from "
             "`/usr/bin/time -f %M`; 32x32 CIFAR-10 test images as PNG files. Bundles: "
             + "; ".join(f"{k}: {v}" for k, v in res["meta"]["bundles"].items()) + ".", "",
             "| process | peak RSS, MB | over baseline, MB |", "|---|---|---|"]
    for k, v in res["peak_rss_mb"].items():
        over = res["over_baseline_mb"].get(k)
        lines.append(f"| {k} | {v:.1f} | {'' if over is None else f'{over:+.1f}'} |")
    lines += ["", f"Target: predict <= {TARGET_MB} MB over the baseline: "
              f"**{'met' if res['predict_within_target'] else 'NOT met'}** (worst {worst:.1f} MB).",
              ""]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
