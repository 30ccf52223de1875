"""Are the EfficientNet-Lite0 ImageNet weights right? 5-way 5-shot prototype accuracy, no training.

The pretrained network's pooled features against a randomly initialised copy's, on Tiny-ImageNet
val (30 classes; "novel" is not novel for an ImageNet network, which is why this checks the
weights and says nothing about adaptation), the same seeded episodes for both, at the input sizes
a Jetson user would pick from the 64x64 images.

    OMP_NUM_THREADS=1 python benchmarks/pretrained_features.py           # 600 episodes, ~3 minutes
    OMP_NUM_THREADS=1 python benchmarks/pretrained_features.py --quick --out /tmp/pf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))


def episodes_accuracy(feats: np.ndarray, labels: np.ndarray, *, episodes: int, seed: int,
                      queries: int = 15) -> tuple[float, float]:
    """(mean, 95% CI) of 5-way 5-shot nearest-cosine-prototype accuracy on seeded episodes."""
    from edgeflow.data import EpisodeSampler

    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sampler = EpisodeSampler(labels, ways=5, shots=5, queries=queries, seed=seed)
    acc = []
    for ep in sampler(episodes):
        protos = np.stack([feats[ep.support[ep.support_labels == c]].mean(0) for c in range(5)])
        pred = (feats[ep.query] @ protos.T).argmax(1)
        acc.append(np.mean(pred == ep.query_labels))
    return float(np.mean(acc)), float(1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--sizes", default="96,128")
    ap.add_argument("--quick", action="store_true", help="96 px, 600 images, 20 episodes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pretrained_features")
    args = ap.parse_args(argv)
    import torch

    from edgeflow.data import load_dataset, preprocess
    from edgeflow.models import create_model
    from edgeflow.workflows import preprocess_for

    torch.set_num_threads(1)
    t0 = time.time()
    ds = load_dataset(SHARED / "data/tiny-imagenet/val.zip", limit=600 if args.quick else None)
    sizes = [96] if args.quick else [int(s) for s in args.sizes.split(",")]
    episodes = 20 if args.quick else args.episodes
    rows = []
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = create_model("efficientnet_lite0", pretrained=pretrained).eval()
        for size in sizes:
            x = preprocess(ds.images, preprocess_for(model, None, size))
            with torch.no_grad():
                feats = torch.cat([model.features(torch.from_numpy(x[i:i + 100]))
                                   for i in range(0, len(x), 100)]).numpy()
            mean, ci = episodes_accuracy(feats, ds.labels, episodes=episodes, seed=0)
            rows.append({"weights": "ImageNet" if pretrained else "random init", "size": size,
                         "accuracy": mean, "ci95": ci})
    res = {"rows": rows, "episodes": episodes, "images": len(ds), "seconds": time.time() - t0,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": "python benchmarks/pretrained_features.py " + " ".join(argv or sys.argv[1:])}
    lines = ["# EfficientNet-Lite0 weights: few-shot features without training", "",
             f"Tiny-ImageNet val ({len(ds)} images, 30 classes), {episodes} seeded 5-way 5-shot "
             f"episodes (15 queries per class), nearest cosine prototype, the same episodes for "
             f"every row. `{res['command']}`, {res['seconds']:.0f} s on {res['machine']}.", "",
             "| weights | input size | accuracy |", "|---|---|---|"]
    lines += [f"| {r['weights']} | {r['size']} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} |"
              for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
