"""Does meta-training's choice on val tasks hold on fresh val tasks? (drift seeds x val sizes)

For each meta-training seed and each selection size (the number of val tasks meta-training early-
stops and chooses its integrator on), train the drift on the same trajectories and score what it
chose on held-out val tasks: other episodes of the same val classes (seed 2; selection uses seed
1), never the test domains. Two selections per run: the drift alone (steps only, as before
re-centring existed) and the joint one (Euler steps x re-centring strength, the default). The
re-centring move alone is scored on the held-out tasks at every alpha too (it has no training).

    python benchmarks/selection_noise.py --backbone runs/tiny-imagenet/stages/recover/recovered.pt \\
        --trajectories runs/hf3/drift.trajectories --val-data ../shared/data/tiny-imagenet/val.zip \\
        --seeds 0,1,2,3 --sizes 60,300 --heldout 300

Writes benchmarks/results/selection_noise.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout


def heldout_score(drift, split, tasks, theta0, protos, means, settings) -> float:
    """Mean query accuracy of ``settings`` on ``tasks`` (no drift: the re-centring move alone)."""
    from edgeflow.adapt.meta_train import task_accuracy, val_accuracy
    from edgeflow.adapt.recenter import recenter_move

    if drift is not None:
        return val_accuracy(drift, split, tasks, theta0, protos, settings=settings, means=means)
    assert settings.steps == 0, "no drift to integrate"
    return statistics.fmean(task_accuracy(split, t, theta0 + recenter_move(theta0, m,
                                                                           alpha=settings.recenter))
                            for t, m in zip(tasks, means, strict=True))


def run(args) -> dict:
    import torch

    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.meta_train import MetaTrainConfig, meta_train, task_means, task_prototypes
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.theta import ThetaSpec
    from edgeflow.adapt.trajectories import load_trajectories
    from edgeflow.adapt.workflow import load_backbone, val_tasks
    from edgeflow.data import load_dataset

    torch.set_num_threads(args.threads)
    net, _, pre = load_backbone(args.model, args.backbone)
    data = load_trajectories(args.trajectories)
    spec = ThetaSpec.from_layout(json.loads((args.trajectories / "manifest.json").read_text())
                                 ["theta_layout"])
    split, theta0 = SplitFeatures(net, spec), spec.get(net)
    val = load_dataset(args.val_data, size=pre.size)
    held = val_tasks(split, val, pre, count=args.heldout, seed=2)
    hprotos, hmeans = task_prototypes(split, held, theta0), task_means(split, held, theta0)
    out: dict = {"heldout": {"count": len(held), "seed": 2}, "runs": []}
    out["recenter_heldout"] = {
        str(a): heldout_score(None, split, held, theta0, hprotos, hmeans,
                              IntegratorSettings(steps=0, recenter=a))
        for a in MetaTrainConfig().recenter_choices}
    for size in args.sizes:
        sel = val_tasks(split, val, pre, count=size, seed=1)  # meta-train's own val tasks
        for seed in args.seeds:
            for kind, choices in (("drift alone", (0.0,)),
                                  ("joint", MetaTrainConfig().recenter_choices)):
                t0 = time.perf_counter()
                cfg = MetaTrainConfig(seed=seed, recenter_choices=choices)
                if args.meta_steps:
                    cfg = replace(cfg, steps=args.meta_steps, eval_every=args.meta_steps)
                drift, rep = meta_train(data, sel, split, theta0, config=cfg)
                chosen = IntegratorSettings(**rep["integrator"])
                out["runs"].append({
                    "selection_tasks": size, "seed": seed, "kind": kind,
                    "chosen": {"steps": chosen.steps, "recenter": chosen.recenter},
                    "selection_none": rep["val_acc_no_adaptation"],
                    "selection_chosen": rep["val_acc_chosen"],
                    "heldout_chosen": heldout_score(drift, split, held, theta0, hprotos, hmeans,
                                                    chosen),
                    "seconds": time.perf_counter() - t0})
                print(json.dumps(out["runs"][-1]), flush=True)
    return out


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    none = res["recenter_heldout"]["0.0"]
    m = res["meta"]
    lines = ["# Selection noise: meta-training's choice on val, scored on fresh val tasks", "",
             f"Backbone `{m['backbone']}`, trajectories `{m['trajectories']}`. Held-out: "
             f"{res['heldout']['count']} other episodes of the val classes (seed 2; selection "
             f"uses seed 1), no adaptation {100 * none:.2f}%. {m['date']}, {m['threads']} "
             f"thread(s), {m['seconds']:.0f} s.", "",
             "| selection tasks | seed | selection | chosen (steps, alpha) | gain on selection "
             "tasks | gain held out |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['selection_tasks']} | {r['seed']} | {r['kind']} | "
                     f"{r['chosen']['steps']}, {r['chosen']['recenter']} | "
                     f"{100 * (r['selection_chosen'] - r['selection_none']):+.2f} | "
                     f"{100 * (r['heldout_chosen'] - none):+.2f} |")
    lines += ["", "Means of the held-out gain over seeds:", ""]
    for size in sorted({r["selection_tasks"] for r in res["runs"]}):
        for kind in ("drift alone", "joint"):
            g = [100 * (r["heldout_chosen"] - none) for r in res["runs"]
                 if r["selection_tasks"] == size and r["kind"] == kind]
            sd = statistics.stdev(g) if len(g) > 1 else 0.0
            lines.append(f"- {size} selection tasks, {kind}: {statistics.fmean(g):+.2f} "
                         f"(sd {sd:.2f}, {len(g)} seeds)")
    lines += ["", "Re-centring alone on the held-out tasks (no training, no selection): "
              + ", ".join(f"alpha {a}: {100 * (v - none):+.2f}"
                          for a, v in res["recenter_heldout"].items()), ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--trajectories", type=Path, required=True)
    ap.add_argument("--val-data", required=True)
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[60])
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--meta-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "selection_noise")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    res = run(args)
    res["meta"] = {"backbone": str(args.backbone), "trajectories": str(args.trajectories),
                   "threads": args.threads, "seconds": time.perf_counter() - t0,
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    write(res, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
