"""Does the forward-only guard do no harm? No adaptation vs the bundle's adaptation vs the guard.

The same seeded 5-way episodes for every method: support and 15 queries per class. For each
episode every guard candidate (theta0, re-centring alone, the drift after 1, n/2, n steps) is also
scored on the *queries*, to report how often the guard's choice (made on the support set alone:
leave-one-out, or at 1 shot with the support images' flipped views as queries) is the query-best
one, the accuracy an oracle choice would reach, the accuracy of the choice by the score's accuracy
alone (no log-probability tie-break), and how often it chose each candidate. Cost: the median
adapt time with and without the guard, same run. Paired differences are on the same episodes.

    OMP_NUM_THREADS=1 python benchmarks/guard.py --bundle runs/digits/bundle \\
        --data digits:5-9 --data ../shared/data/mnist/test.zip --out benchmarks/results/guard
    OMP_NUM_THREADS=1 python benchmarks/guard.py --quick --out /tmp/guard   # test bundle, CIFAR-10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))


def quick_bundle(out: Path) -> Path:
    """The CIFAR-10 ResNet-20 with a small random drift and re-centring (as the tests build it)."""
    import torch

    from edgeflow.adapt import IntegratorSettings, ThetaSpec
    from edgeflow.data import Preprocess, load_dataset
    from edgeflow.export import export_bundle
    from edgeflow.models import create_model
    from tests.export.helpers import small_drift

    torch.set_num_threads(1)
    model = create_model("resnet20", weights=SHARED / "weights/cifar10-resnet20-12fca82f.th").eval()
    spec = ThetaSpec.from_model(model, max_size=512)
    export_bundle(model, output=out, preprocess_spec=Preprocess(size=32),
                  parity_images=load_dataset(SHARED / "data/cifar10/test.zip", limit=16).images,
                  spec=spec, drift=small_drift(spec),
                  settings=IntegratorSettings(steps=5, recenter=0.5))
    return out


def load(spec: str, session):
    """``PATH`` or ``PATH:5-9`` (those classes only) -> (images, labels)."""
    from edgeflow.data import load_dataset
    from edgeflow.pipeline.config import parse_int_list

    path, _, classes = spec.partition(":")
    mode = "L" if session.preprocess.channels == 1 else "RGB"
    ds = load_dataset(path if path == "digits" else Path(path), mode=mode,
                      size=None if path == "digits" else session.preprocess.size)
    if classes:
        keep = np.isin(ds.labels, parse_int_list(classes, name="classes"))
        return ds.images[keep], ds.labels[keep]
    return ds.images, ds.labels


def run(session, images, labels, *, episodes: int, shots: int, seed: int) -> dict:
    from edgeflow.data import EpisodeSampler
    from edgeflow.runtime.guard import flip_width
    from edgeflow.runtime.protos import prototype_logits, prototypes

    x = session.prepare(images)
    cache = session.support_cache(x)
    # at 1 shot the guard scores with the flipped views: their prefix cache, once per image
    flipped = session.support_cache(flip_width(x)) if shots < 2 else None
    from edgeflow.runtime.guard import choose

    # "accuracy only": the same candidates and scores, the log-probability tie-break dropped
    acc: dict[str, list[float]] = {"none": [], "bundle": [], "guard": [], "accuracy only": [],
                                   "oracle": []}
    match, times, chosen = [], {"bundle": [], "guard": []}, {}
    for episode in EpisodeSampler(labels, ways=5, shots=shots, queries=15, seed=seed)(episodes):
        sup, qry = episode.support, episode.query
        ep, qy = episode.support_labels, episode.query_labels
        s_cache = {k: v[sup] for k, v in cache.items()}
        q_cache = {k: v[qry] for k, v in cache.items()}

        def accuracy(theta, s_cache=s_cache, q_cache=q_cache, ep=ep, qy=qy):
            fs = session.cached_features(s_cache, theta)
            fq = session.cached_features(q_cache, theta)
            p = prototypes(fs, ep, 5)
            logits = prototype_logits(fq, p, metric=session.metric, scale=session.scale)
            return float(np.mean(logits.argmax(1) == qy))

        from edgeflow.runtime.support import Support

        support = Support(cache=s_cache, labels=ep.astype(np.int64))
        t0 = time.perf_counter()
        plain = session.adapt_support(support)
        times["bundle"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        views = None if flipped is None else {k: v[sup] for k, v in flipped.items()}
        guarded = session.adapt_support(support, guard=True, views=views)
        times["guard"].append(time.perf_counter() - t0)
        acc["none"].append(accuracy(session.theta0))
        acc["bundle"].append(accuracy(plain.theta))
        acc["guard"].append(accuracy(guarded.theta))
        report = guarded.info["guard"]
        chosen[str(report["chosen"])] = chosen.get(str(report["chosen"]), 0) + 1
        if report["chosen"] is not None:  # every candidate on the queries: the oracle's pick
            cand = candidate_thetas(session, support, report)
            q = {name: accuracy(th) for name, th in cand.items()}
            acc["oracle"].append(max(q.values()))
            mode = report["mode"]
            scores = [(k, (v[f"{mode}_accuracy"], v[f"{mode}_logp"]))
                      for k, v in report["scores"].items()]
            acc["accuracy only"].append(q[choose(scores, tie_break=False)])
            match.append(q[report["chosen"]] == max(q.values()))
    out = {k: {"mean": float(np.mean(v)), "ci95": float(1.96 * np.std(v, ddof=1) / np.sqrt(len(v)))}
           for k, v in acc.items() if v}
    # paired on the same episodes: what the guard changes against no adaptation and the bundle's
    out["paired"] = {f"guard - {k}": {"mean": float(np.mean(d)), "ci95": float(
        1.96 * np.std(d, ddof=1) / np.sqrt(len(d)))} for k in ("none", "bundle")
        for d in [np.subtract(acc["guard"], acc[k])]}
    if acc["accuracy only"] and len(acc["accuracy only"]) == len(acc["none"]):
        d = np.subtract(acc["accuracy only"], acc["none"])
        out["paired"]["accuracy only - none"] = {"mean": float(np.mean(d)), "ci95": float(
            1.96 * np.std(d, ddof=1) / np.sqrt(len(d)))}
    out["guard_matches_query_best"] = float(np.mean(match)) if match else None
    out["guard_chosen"] = chosen  # episodes per chosen candidate ("None": the guard could not score)
    out["guard_mode"] = report.get("mode")
    out["adapt_ms_median"] = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return out


def candidate_thetas(session, support, report) -> dict[str, np.ndarray]:
    """The guard's candidates as thetas (the same construction the guard uses)."""
    from edgeflow.runtime.guard import candidates

    _, ep = np.unique(support.labels, return_inverse=True)
    if session.recenter or session.drift_stats:
        feats, means = session._suffix(support.cache, session.theta0, "features", "theta_means")
    else:
        feats, means = session.cached_features(support.cache, session.theta0), None
    steps = [int(n.split("-")[1]) for n in report["scores"] if n.startswith("drift-")]
    return {c.name: c.theta for c in candidates(session, support.cache, ep, int(ep.max()) + 1,
                                                feats, means, None, steps or [0])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--data", action="append", default=[], help="PATH or PATH:CLASSES, repeatable")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/guard")
    args = ap.parse_args(argv)
    from edgeflow.runtime import Session

    t0 = time.time()
    res = {"command": "python benchmarks/guard.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "domains": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = quick_bundle(Path(tmp) / "b") if args.quick else args.bundle
        data = [str(SHARED / "data/cifar10/test.zip")] if args.quick else args.data
        with Session(bundle, backend="onnxruntime", threads=1) as s:
            for i, spec in enumerate(data):
                images, labels = load(spec, s)
                res["domains"][spec] = run(s, images, labels, episodes=4 if args.quick else
                                           args.episodes, shots=args.shots, seed=i)
    res["seconds"] = time.time() - t0
    lines = ["# The forward-only guard: no adaptation, the bundle's, the guard's", "",
             f"`{res['command']}`, {res['seconds']:.0f} s on {res['machine']}; 5-way "
             f"{args.shots}-shot, 15 queries per class, the same episodes for every column.", "",
             "| data | none | bundle's adaptation | guard | guard, accuracy only | oracle choice | "
             "guard = query-best | adapt ms (bundle / guard) | paired: guard - none, guard - "
             "bundle, accuracy only - none | guard's choices |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for spec, r in res["domains"].items():
        cells = [f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['ci95']:.2f}" if k in r else "-"
                 for k in ("none", "bundle", "guard", "accuracy only", "oracle")]
        m = r["guard_matches_query_best"]
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {'-' if m is None else f'{m:.0%}'} | "
                     f"{r['adapt_ms_median']['bundle']:.1f} / {r['adapt_ms_median']['guard']:.1f} | "
                     + ", ".join(f"{100 * d['mean']:+.2f} ± {100 * d['ci95']:.2f}"
                                 for d in r["paired"].values())
                     + f" | {r['guard_mode']}: {r['guard_chosen']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
