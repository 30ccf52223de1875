"""Where the drift falls short of the teacher it imitates: direction, distance, seed (issue 4).

B2 shows HyperFlow recovering only part of the teacher's cross-domain gain. This measures why, on the
trajectory tasks the drift was trained on (each rebuilt exactly by
:func:`edgeflow.adapt.trajectories.trajectory_task`), for every task whose teacher moved (k* > 0):

- **drift**: theta after integrating the drift (its own integrator) from theta0, conditioned on the
  task's prototypes at theta0; its displacement against the teacher's (theta_k* - theta0): length
  ratio and cosine. For tasks where the teacher stayed put (k* = 0), how far the drift moves anyway.
- **gradient references**: cosine of -g0 and of -sign(g0) with the teacher's displacement, g0 the
  gradient of the teacher's own support loss at theta0. Adam's first steps follow sign(g0), so this
  is how much of the direction a drift that saw the gradient could get. A device running HyperFlow
  has no gradient (that is the point of it): these are references, not a method.
- **seed spread**: the drift meta-trained again on the same trajectories and val tasks with other
  seeds: the val accuracy each reaches, i.e. how much of one drift's val number is its seed.

    OMP_NUM_THREADS=1 python benchmarks/drift_direction.py --model resnet20 \\
        --backbone runs/tiny-imagenet/stages/recover/recovered.pt --drift runs/hf3/drift.pt \\
        --trajectories runs/hf3/drift.trajectories --base-data ../shared/data/tiny-imagenet/base.zip \\
        --val-data ../shared/data/tiny-imagenet/val.zip
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
sys.path.insert(0, str(ROOT))


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values)}


def direction(net, spec, drift, settings, data, base, pre, *, limit: int | None) -> dict:
    """Per task kind: drift vs teacher displacement, and the gradient references."""
    import torch
    import torch.nn.functional as F

    from edgeflow.adapt.meta_train import adapt_batch
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.teacher import flip_cache, resolve_loss, support_loss
    from edgeflow.adapt.trajectories import episode_samplers, trajectory_task

    split, theta0, cfg = SplitFeatures(net, spec), spec.get(net), data.config
    first_row = {}  # each task's clean start (the first of its starts)
    for r, t in enumerate(data.task_row.tolist()):
        first_row.setdefault(t, r)
    tasks = sorted(first_row)[:limit]
    rows = torch.tensor([first_row[t] for t in tasks])
    stop = data.stop[rows]
    teacher = data.paths[rows, stop] - data.paths[rows, 0]
    # the drift's own move: without the re-centring move a drift's settings may add
    drift_only = replace(settings, recenter=0.0)
    moved = adapt_batch(drift, data.protos[tasks], theta0, settings=drift_only) - theta0
    samplers = episode_samplers(base, cfg)
    grads = []
    for t in tasks:
        task, _, _ = trajectory_task(base, pre, samplers, int(data.task_index[t]), cfg)
        shots = len(task.support_y) // task.ways
        sup = flip_cache(split, task.support_x) if shots == 1 else split.prefix(task.support_x)
        th = theta0.clone().requires_grad_(True)
        loss = support_loss(split.suffix(sup, th), task.support_y, task.ways,
                            loss=resolve_loss(cfg.teacher.loss, shots), metric=cfg.teacher.metric,
                            scale=cfg.teacher.scale)
        grads.append(torch.autograd.grad(loss, th)[0])
    g = torch.stack(grads)
    cos = {"drift": F.cosine_similarity(moved, teacher, dim=1),
           "minus_grad": F.cosine_similarity(-g, teacher, dim=1),
           "minus_sign_grad": F.cosine_similarity(-torch.sign(g), teacher, dim=1)}
    ratio = moved.norm(dim=1) / teacher.norm(dim=1).clamp_min(1e-12)
    # self-check: Adam's first step from theta0 is -lr * sign(g0), so this is ~1 when g0 is the
    # gradient the teacher followed (same task, same loss)
    first = data.paths[rows, 1] - data.paths[rows, 0]
    check = F.cosine_similarity(first, -torch.sign(g), dim=1)
    kinds = [data.kind[t] for t in tasks]
    out = {"check_first_step_vs_minus_sign_grad": _summary(check.tolist())}
    for name in ("all", "class", "instance"):
        sel = [i for i, k in enumerate(kinds) if name in ("all", k)]
        go = [i for i in sel if stop[i] > 0]
        still = [i for i in sel if stop[i] == 0]
        if not sel:
            continue
        teacher_len = statistics.fmean(float(teacher[i].norm()) for i in go) if go else float("nan")
        out[name] = {"tasks": len(sel), "moved_tasks": len(go),
                     "length_ratio": _summary([float(ratio[i]) for i in go]),
                     **{f"cosine_{k}": _summary([float(v[i]) for i in go]) for k, v in cos.items()},
                     # where the teacher stayed put the drift should too: its move there, in units
                     # of the teacher's mean move on the tasks where it did move
                     "drift_move_when_teacher_stayed": _summary(
                         [float(moved[i].norm()) / teacher_len for i in still])}
    return out


def seed_spread(net, spec, data, val, pre, *, seeds: list[int], val_count: int,
                steps: int) -> list[dict]:
    """Meta-train the drift once per seed on the same trajectories and val tasks."""

    from edgeflow.adapt.meta_train import MetaTrainConfig, meta_train
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.workflow import val_tasks

    split, theta0 = SplitFeatures(net, spec), spec.get(net)
    vtasks = val_tasks(split, val, pre, count=val_count, seed=1)  # meta-train's own val tasks
    # the drift alone: no re-centring in the selection (steps 0 = no drift beat no adaptation)
    base_cfg = MetaTrainConfig(recenter_choices=(0.0,))
    base_cfg = base_cfg if steps is None else replace(base_cfg, steps=steps)
    out = []
    for s in seeds:
        _, rep = meta_train(data, vtasks, split, theta0, config=replace(base_cfg, seed=s))
        chosen = rep["integrator"]["steps"]
        out.append({"seed": s, "val_acc_no_adaptation": rep["val_acc_no_adaptation"],
                    "best_step": rep["best_step"], "euler_steps": chosen,
                    "val_acc": rep["val_acc_chosen"],
                    "val_acc_euler10": rep["val_acc_by_euler_steps"].get(10)})
    return out


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    d, m = res["direction"], res["meta"]
    lines = ["# Drift vs teacher: direction, distance, seed", "",
             f"Backbone `{m['backbone']}`, drift `{m['drift']}` ({m['integrator']}), trajectories "
             f"`{m['trajectories']}` ({m['tasks']} tasks analysed, clean starts). {m['date']}, "
             f"{m['seconds']:.0f} s.", "",
             "Means over tasks whose teacher moved (k* > 0); cosines are with the teacher's "
             "displacement theta_k* - theta0.", "",
             "| tasks | moved | drift / teacher length, median (mean) | cos(drift) | cos(-g0) "
             "| cos(-sign g0) "
             "| drift move where teacher stayed |", "|---|---|---|---|---|---|---|"]
    for name, r in d.items():
        if not isinstance(r, dict) or not r.get("moved_tasks"):
            continue
        still = r["drift_move_when_teacher_stayed"]
        stayed = f"{still['mean']:.2f} ({still['n']} tasks)" if still["n"] else "-"
        lines.append(f"| {name} ({r['tasks']}) | {r['moved_tasks']} | "
                     f"{r['length_ratio']['median']:.2f} ({r['length_ratio']['mean']:.2f}) | "
                     f"{r['cosine_drift']['mean']:.2f} | "
                     f"{r['cosine_minus_grad']['mean']:.2f} | "
                     f"{r['cosine_minus_sign_grad']['mean']:.2f} | {stayed} |")
    check = d["check_first_step_vs_minus_sign_grad"]["mean"]
    lines += ["", "The last column: how far the drift moves on tasks where the teacher's best step "
              "was 0, in units of the teacher's mean move on the tasks where it moved.", "",
              "g0: the gradient of the teacher's support loss at theta0. The device never has "
              "it; the two gradient columns say how much direction a gradient would carry, "
              "against what the drift gets from prototypes alone. Check: the teacher's first "
              f"(Adam) step has cosine {check:.3f} with -sign(g0) (1 = g0 is the gradient it "
              "followed).", ""]
    if res["seeds"]:
        accs = [r["val_acc"] for r in res["seeds"]]
        lines += ["## Seed spread (same trajectories, same val tasks)", "",
                  "| seed | best step | Euler steps | val acc | at 10 steps |", "|---|---|---|---|---|"]
        lines += [f"| {r['seed']} | {r['best_step']} | {r['euler_steps']} | {100 * r['val_acc']:.2f} "
                  f"| {100 * r['val_acc_euler10']:.2f} |" for r in res["seeds"]]
        none = res["seeds"][0]["val_acc_no_adaptation"]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mean = statistics.fmean(accs)
        lines += ["", f"No adaptation: {100 * none:.2f}. Over seeds: mean {100 * mean:.2f}, "
                  f"range {100 * min(accs):.2f}-{100 * max(accs):.2f}, sd {100 * sd:.2f} points.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--drift", type=Path, required=True)
    ap.add_argument("--trajectories", type=Path, required=True)
    ap.add_argument("--base-data", required=True, help="the split the trajectories were drawn from")
    ap.add_argument("--val-data", required=True, help="meta-train's val split (seed spread)")
    ap.add_argument("--limit", type=int, default=None, help="analyse the first N tasks only")
    ap.add_argument("--seeds", default="0,1,2,3", help="meta-training seeds ('' to skip)")
    ap.add_argument("--val-tasks", type=int, default=60)
    ap.add_argument("--meta-steps", type=int, default=None, help="meta-training steps (default: "
                    "MetaTrainConfig's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift_direction")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from edgeflow.adapt.io import load_drift
    from edgeflow.adapt.trajectories import load_trajectories
    from edgeflow.adapt.workflow import load_backbone
    from edgeflow.data import load_dataset

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    net, _, pre = load_backbone(args.model, args.backbone)
    drift, spec, theta0, settings, _ = load_drift(args.drift)
    if drift.uses_stats:
        raise SystemExit(f"{args.drift} is an outcome-trained drift; this analysis compares a "
                         "trajectory-regressed drift with its teacher: pass "
                         f"{args.drift.with_name(args.drift.stem + '.trajectory.pt')}")
    if not torch.allclose(spec.get(net), theta0):
        sys.exit(f"{args.drift} was not meta-trained on {args.backbone}; pass its own backbone")
    data = load_trajectories(args.trajectories)
    base = load_dataset(args.base_data, size=pre.size)
    res = {"direction": direction(net, spec, drift, settings, data, base, pre, limit=args.limit)}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    val = load_dataset(args.val_data, size=pre.size) if seeds else None
    res["seeds"] = seed_spread(net, spec, data, val, pre, seeds=seeds, val_count=args.val_tasks,
                               steps=args.meta_steps) if seeds else []
    n = res["direction"]["all"]["tasks"]
    res["meta"] = {"backbone": str(args.backbone), "drift": str(args.drift),
                   "trajectories": str(args.trajectories), "tasks": n,
                   "integrator": f"{settings.method} x {settings.steps}", "threads": args.threads,
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                   "seconds": time.perf_counter() - t0}
    write(res, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
