"""Open-set rejection ("none of these"): known-vs-unknown AUROC and accuracy at a target recall.

Episodes of 5 known classes (5 shots, 15 queries each) plus 15 queries from each of 5 unknown
classes of the same domain, the same seeded episodes for every score and both adaptation settings:

- scores: ``ours`` (:mod:`edgeflow.runtime.openset`: the best-class prototype similarity, chosen
  on Tiny-ImageNet val over the same similarity in units of each class's leave-one-out spread,
  ``normalised`` here), ``max-softmax`` (the baseline);
- ``none``: prototypes at theta0; ``adapted``: the bundle's own adaptation (its drift and/or
  re-centring, through ``Session.adapt_support``);
- at ``--recall`` (0.95) the threshold comes from the support set alone (our rule): the known
  recall and unknown rejection it achieves, and the open-set accuracy (a known query right and
  kept, an unknown one rejected).

The backbone: the pretrained CIFAR-10 ResNet-20 of ``../shared/weights``, exported with theta = its
last block's BatchNorm shifts and re-centring 0.5 (no drift), or any bundle via ``--bundle``.
CIFAR-10 is its training domain (classes seen in training: "in-domain", not novel); Tiny-ImageNet
novel, GTSRB, MNIST and Omniglot are other domains. Each domain's images go through the backbone
prefix once; episodes then cost suffix passes only.

    OMP_NUM_THREADS=1 python benchmarks/openset.py --episodes 300     # about 15 minutes
    OMP_NUM_THREADS=1 python benchmarks/openset.py --quick --out /tmp/os
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
DOMAINS = {"cifar10 (training domain)": "data/cifar10/test.zip",
           "tiny-imagenet novel": "data/tiny-imagenet/novel.zip", "gtsrb": "data/gtsrb/test.zip",
           "mnist": "data/mnist/test.zip", "omniglot": "data/omniglot/images_background_small1.zip"}
SCORES = ("ours", "max-softmax", "normalised")
WAYS, SHOTS, QUERIES = 5, 5, 15


def make_bundle(out: Path) -> Path:
    """The pretrained CIFAR-10 ResNet-20 as a bundle: theta = last block's BN shifts, alpha 0.5."""
    import torch

    from edgeflow.adapt import IntegratorSettings, ThetaSpec
    from edgeflow.data import Preprocess, load_dataset
    from edgeflow.export import export_bundle
    from edgeflow.models import create_model

    torch.set_num_threads(1)
    model = create_model("resnet20", weights=SHARED / "weights/cifar10-resnet20-12fca82f.th").eval()
    spec = ThetaSpec.from_model(model, max_size=128)
    images = load_dataset(SHARED / "data/cifar10/test.zip", limit=32).images
    export_bundle(model, output=out, preprocess_spec=Preprocess(size=32), parity_images=images,
                  spec=spec, settings=IntegratorSettings(steps=0, recenter=0.5))
    return out


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def domain_pool(session, path: Path, per_class: int):
    """(prefix cache of every image, labels) of a domain, ``per_class`` images of each class."""
    from edgeflow.data import load_dataset

    ds = load_dataset(path, mode="RGB", size=session.preprocess.size)
    keep = np.concatenate([np.flatnonzero(ds.labels == c)[:per_class] for c in np.unique(ds.labels)])
    x = session.prepare(ds.images[keep])
    return session.support_cache(x), ds.labels[keep]


def run_domain(session, cache: dict, labels: np.ndarray, *, episodes: int, recall: float,
               seed: int) -> dict:
    from edgeflow.runtime.openset import fit
    from edgeflow.runtime.protos import prototype_logits, prototypes, softmax
    from edgeflow.runtime.support import Support

    def sim(q, p):
        return prototype_logits(q, p, metric=session.metric, scale=session.scale)

    from edgeflow.data import EpisodeSampler

    feats0 = session.cached_features(cache, session.theta0)
    rows: dict[str, dict[str, list]] = {m: {} for m in ("none", "adapted")}
    # 2W-way episodes; a seeded half of each episode's classes is known, the other half unknown
    sampler = EpisodeSampler(labels, ways=2 * WAYS, shots=SHOTS, queries=QUERIES, seed=seed)
    for i, episode in enumerate(sampler(episodes)):
        known = np.random.default_rng([seed, i]).permutation(2 * WAYS)[:WAYS]
        order = {int(c): k for k, c in enumerate(known)}  # known class -> label 0..W-1
        s_known = np.isin(episode.support_labels, known)
        q_known = np.isin(episode.query_labels, known)
        sup, qk, qu = episode.support[s_known], episode.query[q_known], episode.query[~q_known]
        ep = np.array([order[int(c)] for c in episode.support_labels[s_known]])
        q_true = np.array([order[int(c)] for c in episode.query_labels[q_known]])
        for mode in ("none", "adapted"):
            if mode == "none":
                sf, kf, uf = feats0[sup], feats0[qk], feats0[qu]
                protos = prototypes(sf, ep, WAYS).astype(np.float32)
                stats = fit(sf, ep, WAYS, sim)
            else:
                task = session.adapt_support(Support(cache={k: v[sup] for k, v in cache.items()},
                                                     labels=ep.astype(np.int64)))
                protos, stats = task.prototypes, task.openset
                kf = session.cached_features({k: v[qk] for k, v in cache.items()}, task.theta)
                uf = session.cached_features({k: v[qu] for k, v in cache.items()}, task.theta)
            lk, lu = sim(kf, protos), sim(uf, protos)
            norm = (stats.mean[None], stats.std[None])
            score = {"ours": (stats.score(lk), stats.score(lu)),
                     "max-softmax": (softmax(lk).max(1), softmax(lu).max(1)),
                     "normalised": (((lk - norm[0]) / norm[1]).max(1), ((lu - norm[0]) / norm[1]).max(1))}
            r = rows[mode]
            for name, (a, b) in score.items():
                r.setdefault(f"auroc_{name}", []).append(auroc(a, b))
            t = stats.threshold(recall)
            kept_k, kept_u = score["ours"][0] >= t, score["ours"][1] >= t
            right = lk.argmax(1) == q_true
            r.setdefault("known_recall", []).append(float(kept_k.mean()))
            r.setdefault("unknown_rejected", []).append(float(1 - kept_u.mean()))
            r.setdefault("openset_accuracy", []).append(
                float((np.sum(right & kept_k) + np.sum(~kept_u)) / (len(kf) + len(uf))))
            r.setdefault("closed_set_accuracy", []).append(float(right.mean()))
    return {mode: {k: {"mean": float(np.mean(v)),
                       "ci95": float(1.96 * np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0}
                   for k, v in r.items()} for mode, r in rows.items()}


def report(res: dict) -> str:
    lines = ["# Open-set rejection (none of these)", "",
             f"{res['episodes']} episodes per domain: {WAYS} known classes x {SHOTS} shots, "
             f"{QUERIES} queries of each known and of {WAYS} unknown classes; threshold for "
             f"{res['recall']:.0%} known recall from the support set alone. Bundle: {res['bundle']}. "
             f"Command: `{res['command']}`. {res['seconds']:.0f} s on {res['machine']}.", "",
             "| domain | adaptation | AUROC ours | AUROC max-softmax | AUROC normalised | known recall "
             "| unknown rejected | open-set acc | closed-set acc |", "|---|---|---|---|---|---|---|---|---|"]
    for dom, modes in res["domains"].items():
        for mode, r in modes.items():
            cells = [f"{100 * r[k]['mean']:.1f} ± {100 * r[k]['ci95']:.1f}" for k in (
                "auroc_ours", "auroc_max-softmax", "auroc_normalised", "known_recall",
                "unknown_rejected", "openset_accuracy", "closed_set_accuracy")]
            lines.append(f"| {dom} | {mode} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over domains (AUROC, points):", ""]
    for mode, gap in res["mean_gap"].items():
        lines.append(f"- {mode}: ours {gap['ours']:.1f}, max-softmax {gap['max-softmax']:.1f}, "
                     f"difference {gap['difference']:+.1f} (target: >= +5)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle to evaluate (default: ResNet-20, made here)")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--per-class", type=int, default=40, help="images per class in each pool")
    ap.add_argument("--recall", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 episodes, 2 domains: proves it runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/openset")
    args = ap.parse_args(argv)
    from edgeflow.runtime import Session

    t0 = time.time()
    domains = dict(list(DOMAINS.items())[:2]) if args.quick else DOMAINS
    episodes = 4 if args.quick else args.episodes
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or make_bundle(Path(tmp) / "r20.bundle")
        res = {"bundle": str(args.bundle or "ResNet-20 CIFAR-10 (pretrained), theta 128, alpha 0.5"),
               "episodes": episodes, "recall": args.recall, "domains": {},
               "command": "python benchmarks/openset.py " + " ".join(argv or sys.argv[1:]),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
        with Session(bundle, backend="onnxruntime", threads=1) as s:
            for i, (name, rel) in enumerate(domains.items()):
                cache, labels = domain_pool(s, SHARED / rel, 20 if "omniglot" in name
                                            else args.per_class)
                res["domains"][name] = run_domain(s, cache, labels, episodes=episodes,
                                                  recall=args.recall, seed=args.seed + i)
                print(f"{name}: done ({time.time() - t0:.0f} s)", file=sys.stderr)
    res["seconds"] = time.time() - t0
    res["mean_gap"] = {}
    for mode in ("none", "adapted"):
        ours = 100 * np.mean([d[mode]["auroc_ours"]["mean"] for d in res["domains"].values()])
        msp = 100 * np.mean([d[mode]["auroc_max-softmax"]["mean"] for d in res["domains"].values()])
        res["mean_gap"][mode] = {"ours": float(ours), "max-softmax": float(msp),
                                 "difference": float(ours - msp)}
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(res))
    print(report(res))
    return res


if __name__ == "__main__":
    main()
