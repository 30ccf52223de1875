"""How many BatchNorm layers should theta (and so re-centring) cover? Scored on val only.

Re-centring (edgeflow.adapt.recenter) moves every BatchNorm shift in theta; theta is the last
layers' shifts up to ``--theta-size``. This builds theta at the largest size asked for and scores
re-centring alone (no drift, no training) when only the last k of its layers move, for each k and
alpha, on val tasks of two seeds: seed 1 is meta-training's own selection set, seed 2 other episodes
of the same val classes (held out). The test domains are never read. The k with the best val gain
gives ``--theta-size`` for meta-training (the sum of those layers' sizes).

    python benchmarks/recenter_width.py --backbone runs/tiny-imagenet/stages/recover/recovered.pt \\
        --val-data ../shared/data/tiny-imagenet/val.zip --theta-size 600 --layers 2,4,6

Writes benchmarks/results/recenter_width.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

ALPHAS = (0.25, 0.5, 0.75, 1.0)


def score_tasks(split, tasks, theta0, *, layers: list[int], alphas: tuple[float, ...]) -> list[dict]:
    """Per task: shots, shifted or not, and query accuracy with no adaptation and with the last k
    theta layers re-centred at each alpha (one support pass at theta0 per task)."""
    import torch

    from edgeflow.adapt.meta_train import task_accuracy
    from edgeflow.adapt.recenter import recenter_move, support_pass

    starts = [d["offset"] for d in split.spec.layout()]  # where each theta layer begins
    masks = {k: torch.zeros_like(theta0) for k in layers}
    for k, mask in masks.items():
        mask[starts[-k]:] = 1.0  # only the last k layers move
    rows = []
    for t in tasks:
        _, means = support_pass(split, t.support_only, theta0)
        move = recenter_move(theta0, means.mean(0), alpha=1.0)
        row = {"shots": t.shots, "shifted": bool(t.shift), "none": task_accuracy(split, t, theta0)}
        for k, mask in masks.items():
            for a in alphas:
                row[f"{k}@{a}"] = task_accuracy(split, t, theta0 + a * mask * move)
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean accuracy per setting over all tasks and over the 1-shot, 5-shot, shifted, plain ones."""
    keys = [k for k in rows[0] if k not in ("shots", "shifted")]
    groups = {"all": rows, "shifted": [r for r in rows if r["shifted"]],
              "plain": [r for r in rows if not r["shifted"]]}
    for s in sorted({r["shots"] for r in rows}):
        groups[f"{s}-shot"] = [r for r in rows if r["shots"] == s]
    return {g: {"tasks": len(sel), **{k: statistics.fmean(r[k] for r in sel) for k in keys}}
            for g, sel in groups.items() if sel}


def run(args) -> dict:
    import torch

    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.theta import ThetaSpec
    from edgeflow.adapt.workflow import load_backbone, val_tasks
    from edgeflow.data import load_dataset

    torch.set_num_threads(args.threads)
    net, _, pre = load_backbone(args.model, args.backbone)
    spec = ThetaSpec.from_model(net, max_size=args.theta_size)
    layers = args.layers
    if max(layers) > len(spec.names) or min(layers) < 1:
        raise SystemExit(f"--layers {','.join(map(str, layers))}: theta at --theta-size "
                         f"{args.theta_size} has {len(spec.names)} layers; ask for 1 to "
                         f"{len(spec.names)} or raise --theta-size")
    split, theta0 = SplitFeatures(net, spec), spec.get(net)
    val = load_dataset(args.val_data, size=pre.size)
    out = {"theta": {"names": list(spec.names), "sizes": list(spec.sizes)},
           "theta_size_for": {str(k): spec.size - spec.layout()[-k]["offset"] for k in layers},
           "alphas": list(args.alphas), "seeds": {}}
    for seed in args.seeds:
        tasks = val_tasks(split, val, pre, count=args.count, seed=seed)
        out["seeds"][str(seed)] = summarise(score_tasks(split, tasks, theta0, layers=layers,
                                                        alphas=args.alphas))
        print(f"seed {seed}: {json.dumps(out['seeds'][str(seed)]['all'])}", flush=True)
    return out


def best_alpha(summary: dict, k: int, alphas) -> float:
    """The alpha with the best accuracy over all tasks when the last k layers move."""
    return max(alphas, key=lambda a: summary["all"][f"{k}@{a}"])


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    m, alphas = res["meta"], res["alphas"]
    lines = ["# Re-centring width: how many theta layers to re-centre (val only)", "",
             f"Backbone `{m['backbone']}`; theta (largest) = {sum(res['theta']['sizes'])} "
             f"BatchNorm shifts over {len(res['theta']['names'])} layers, first "
             f"`{res['theta']['names'][0]}`. {m['count']} val tasks per seed (seed 1: "
             f"meta-training's selection set; seed 2: held out); domain-shifted: "
             f"{', '.join(str(s['shifted']['tasks']) for s in res['seeds'].values() if 'shifted' in s)}. "
             f"{m['date']}, {m['threads']} thread(s), {m['seconds']:.0f} s.", "",
             "Gain of re-centring alone over no adaptation, in points:", ""]
    groups = [g for g in res["seeds"][next(iter(res["seeds"]))] if g != "all"]
    lines += ["| seed | last k layers (theta size) | " + " | ".join(f"alpha {a}" for a in alphas)
              + " | best alpha: " + ", ".join(groups) + " |",
              "|---|---|" + "---|" * len(alphas) + "---|"]
    for seed, summ in res["seeds"].items():
        for k, size in res["theta_size_for"].items():
            a = best_alpha(summ, int(k), alphas)
            cells = [f"{100 * (summ['all'][f'{k}@{x}'] - summ['all']['none']):+.2f}"
                     for x in alphas]
            per = [f"{100 * (summ[g][f'{k}@{a}'] - summ[g]['none']):+.2f}" for g in groups]
            lines.append(f"| {seed} | {k} ({size}) | " + " | ".join(cells) + f" | {a}: "
                         + ", ".join(per) + " |")
    lines += ["", "Best alpha per k, mean gain over the seeds:", ""]
    for k, size in res["theta_size_for"].items():
        gains = {a: statistics.fmean(100 * (s["all"][f"{k}@{a}"] - s["all"]["none"])
                                     for s in res["seeds"].values()) for a in alphas}
        a = max(gains, key=gains.get)
        lines.append(f"- last {k} layers (theta size {size}): alpha {a}, {gains[a]:+.2f}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--val-data", required=True)
    ap.add_argument("--theta-size", type=int, default=600, help="theta's size limit (largest k)")
    ap.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4, 6],
                    help="comma-separated k: re-centre only theta's last k layers")
    ap.add_argument("--alphas", type=lambda s: tuple(float(v) for v in s.split(",")),
                    default=ALPHAS)
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    ap.add_argument("--count", type=int, default=300, help="val tasks per seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recenter_width")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    res = run(args)
    res["meta"] = {"backbone": str(args.backbone), "count": args.count, "threads": args.threads,
                   "seconds": time.perf_counter() - t0,
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    write(res, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
