"""Does adaptation help on data nobody tuned for? Every method on the same episodes, per domain.

Methods, each on identical seeded 5-way episodes (EpisodeSampler, 15 queries per class):

- ``none``: prototypes at theta0;
- ``recenter``: re-centring alone, at the strength val chose for it (0 steps);
- ``teacher``: Adam on theta by backprop, the recipe chosen on val (the drift checkpoint's);
- ``trajectory``: the trajectory-regressed drift (the paper's HyperFlow) at its val-chosen settings;
- ``outcome``: the outcome-trained drift (``meta-train --objective outcome``), open or closed loop
  as it was trained;
- ``outcome+guard``: the same with the forward-only guard (theta0 unless the support set's
  leave-one-out score says a candidate is better).

Cost, same run: the median wall time of each method's adaptation step (support set -> theta;
PyTorch, CPU, one thread), and the peak of live PyTorch allocations during it (torch.profiler) on
a few episodes. The domains given to ``--data`` are evaluated as they are: none was used to choose
anything (selection happens on val tasks inside meta-training).

    OMP_NUM_THREADS=1 python benchmarks/outcome.py --backbone RUN/stages/recover/recovered.pt \\
        --drift RUN/stages/meta-train/drift.pt --data digits:5-9 --data ../shared/data/mnist/test.zip \\
        --episodes 600 --out benchmarks/results/outcome_digits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
METHODS = ("none", "recenter", "teacher", "trajectory", "outcome", "outcome+guard")


def best_recenter(meta: dict) -> float:
    """The re-centring strength val scored best at 0 drift steps (the trajectory drift's table)."""
    table = meta.get("report", {}).get("val_acc_by_recenter") or {}
    scores = {float(a): row.get("0") for a, row in table.items() if row.get("0") is not None}
    return max(scores, key=lambda a: (scores[a], -a)) if scores else 0.0


def load_domain(spec: str, size: int):
    from edgeflow.data import load_dataset
    from edgeflow.pipeline.config import parse_int_list

    path, _, classes = spec.partition(":")
    ds = load_dataset(path if path == "digits" else Path(path), size=size, mode="RGB")
    if classes:
        from edgeflow.adapt.evaluate import select_classes

        names = parse_int_list(classes, name="classes")
        ds = select_classes(ds, [ds.classes.index(str(c)) for c in names], what="classes")
    return ds


def evaluate_domain(ctx: dict, ds, *, shots: int, episodes: int, seed: int,
                    methods: tuple[str, ...], timing: int, memory: int) -> dict:
    import torch

    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.evaluate import peak_memory_bytes
    from edgeflow.adapt.guard import guard_theta
    from edgeflow.adapt.loop import drift_theta
    from edgeflow.adapt.meta_train import task_accuracy
    from edgeflow.adapt.split import TaskCache
    from edgeflow.adapt.tasks import make_task
    from edgeflow.adapt.teacher import finetune
    from edgeflow.data import EpisodeSampler

    split, theta0 = ctx["split"], ctx["theta0"]
    recenter = IntegratorSettings(steps=0, recenter=ctx["alpha"])
    steps: dict = {
        "none": lambda tc: theta0,
        "recenter": lambda tc: drift_theta(split, None, tc.support_only, tc.support_y, tc.ways,
                                           theta0, settings=recenter),
        "teacher": lambda tc: finetune(split, tc.support, tc.support_y, tc.ways, theta0,
                                       config=ctx["teacher"]).path[-1],
        "trajectory": lambda tc: drift_theta(split, ctx["traj"], tc.support_only, tc.support_y,
                                             tc.ways, theta0, settings=ctx["traj_settings"]),
        "outcome": lambda tc: drift_theta(split, ctx["outcome"], tc.support_only, tc.support_y,
                                          tc.ways, theta0, settings=ctx["outcome_settings"]),
        "outcome+guard": lambda tc: guarded(guard_theta(
            split, ctx["outcome"], tc.support_only, tc.support_y, tc.ways, theta0,
            settings=ctx["outcome_settings"], views=tc.views)),
    }
    choices: list = []  # the guard's choice per call (a report's mode and chosen candidate)

    def guarded(result):
        choices.append((result[1]["mode"], result[1]["chosen"]))
        return result[0]

    sampler = EpisodeSampler(ds.labels, ways=5, shots=shots, queries=15, seed=seed)
    acc = {m: [] for m in methods}
    picks: dict[str, int] = {}  # how often the guard chose each candidate (episodes)
    modes: dict[str, int] = {}
    ms = {m: [] for m in methods}
    peak = {m: [] for m in methods}
    for i in range(episodes):
        t = make_task(ds, sampler.episode(i), ctx["pre"])
        tc = TaskCache(split, t.support_x, t.support_y, t.query_x, t.query_y, 5)
        for m in methods:
            t0 = time.perf_counter()
            with torch.no_grad() if m != "teacher" else torch.enable_grad():
                theta = steps[m](tc)
            if i < timing:
                ms[m].append(1000 * (time.perf_counter() - t0))
            if i < memory:
                peak[m].append(peak_memory_bytes(lambda m=m, tc=tc: steps[m](tc)))
            acc[m].append(task_accuracy(split, tc, theta.detach()))
            if m == "outcome+guard":
                del choices[1:]  # the memory measurement ran the guard again
                mode, chosen = choices.pop()
                picks[str(chosen)] = picks.get(str(chosen), 0) + 1
                modes[str(mode)] = modes.get(str(mode), 0) + 1
    out = {}
    base = np.asarray(acc["none"])
    for m in methods:
        a = np.asarray(acc[m])
        d = a - base
        out[m] = {"mean": float(100 * a.mean()), "ci95": float(196 * a.std(ddof=1) / np.sqrt(len(a))),
                  "gain": float(100 * d.mean()),
                  "gain_ci95": float(196 * d.std(ddof=1) / np.sqrt(len(d))) if m != "none" else 0.0,
                  "adapt_ms": statistics.median(ms[m]) if ms[m] else None,
                  "adapt_peak_mib": max(peak[m]) / 2**20 if peak[m] else None}
    if "outcome+guard" in out:
        out["outcome+guard"].update(guard_chosen=picks, guard_mode=modes)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--drift", type=Path, required=True, help="the outcome drift; its "
                    "DRIFT.trajectory.pt beside it is the regressed one")
    ap.add_argument("--data", action="append", required=True, help="PATH or PATH:CLASSES")
    ap.add_argument("--shots", default="5,1")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--timing-episodes", type=int, default=30)
    ap.add_argument("--memory-episodes", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from edgeflow.adapt.io import load_drift
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.teacher import TeacherConfig
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.prune.finalize import load_pruned
    from edgeflow.workflows import preprocess_for

    torch.set_num_threads(1)
    net = load_pruned(args.backbone).eval()
    pre = preprocess_for(net, load_checkpoint(args.backbone)[1], None)
    outcome, spec, theta0, osettings, ometa = load_drift(args.drift)
    traj, _, _, tsettings, _ = load_drift(args.drift.with_name(args.drift.stem +
                                                                   ".trajectory.pt"))
    ctx = {"split": SplitFeatures(net, spec), "theta0": theta0, "pre": pre, "outcome": outcome,
           "outcome_settings": osettings, "traj": traj, "traj_settings": tsettings,
           "alpha": best_recenter(ometa), "teacher": TeacherConfig(**ometa["teacher"])}
    methods = tuple(args.methods.split(","))
    t0 = time.perf_counter()
    results: dict = {}
    for spec_ in args.data:
        ds = load_domain(spec_, pre.size)
        for shots in (int(s) for s in args.shots.split(",")):
            results.setdefault(spec_, {})[str(shots)] = evaluate_domain(
                ctx, ds, shots=shots, episodes=args.episodes, seed=args.seed, methods=methods,
                timing=args.timing_episodes, memory=args.memory_episodes)
            print(spec_, shots, {m: round(r["mean"], 2) for m, r in
                                 results[spec_][str(shots)].items()}, flush=True)
    out = {"command": "python benchmarks/outcome.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seconds":
           time.perf_counter() - t0, "episodes": args.episodes, "seed": args.seed,
           "recenter_alpha": ctx["alpha"], "outcome_settings": osettings.to_dict(),
           "trajectory_settings": tsettings.to_dict(), "teacher": ometa["teacher"],
           "selection": ometa.get("report", {}).get("outcome", {}).get("selection"),
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # OUT.json and OUT.md (appended, not with_suffix: "damped_0.5" has no suffix to replace)
    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(out, indent=1))
    (args.out.parent / f"{args.out.name}.md").write_text(render(out))
    return out


def render(out: dict) -> str:
    methods = next(iter(next(iter(out["results"].values())).values())).keys()
    lines = ["# Adaptation on data nobody tuned for: every method on the same episodes", "",
             f"`{out['command']}` ({out['machine']}, {out['seconds'] / 60:.1f} min); 5-way, 15 "
             f"queries per class, {out['episodes']} episodes per row (EpisodeSampler seed "
             f"{out['seed']}). Accuracy in % with its 95% interval; gain over none with the "
             "paired 95% interval in brackets.", "",
             f"Outcome drift: {out['outcome_settings']}; trajectory drift: "
             f"{out['trajectory_settings']}; re-centring alone at alpha {out['recenter_alpha']}; "
             f"teacher {out['teacher']}.", "",
             "| data | shots | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for data, by_shots in out["results"].items():
        for shots, row in by_shots.items():
            cells = [f"{r['mean']:.2f} ± {r['ci95']:.2f}" + (
                "" if m == "none" else f" ({r['gain']:+.2f} [{r['gain_ci95']:.2f}])")
                for m, r in row.items()]
            lines.append(f"| {data} | {shots} | " + " | ".join(cells) + " |")
    lines += ["", "Cost of the adaptation step (median ms / peak MiB of live PyTorch allocations), "
              "last row:", ""]
    last = next(iter(out["results"].values()))
    row = last[next(iter(last))]
    lines += ["| " + " | ".join(methods) + " |", "|" + "---|" * len(methods),
              "| " + " | ".join(f"{r['adapt_ms']:.1f} / {r['adapt_peak_mib']:.2f}"
                                if r["adapt_ms"] is not None and r["adapt_peak_mib"] is not None
                                else "-" for r in row.values()) + " |", ""]
    picks = [f"{data} {shots}-shot: {row['outcome+guard']['guard_chosen']} "
             f"(mode {row['outcome+guard'].get('guard_mode')})"
             for data, by_shots in out["results"].items() for shots, row in by_shots.items()
             if "guard_chosen" in row.get("outcome+guard", {})]
    if picks:
        lines += ["The guard's choices (episodes per candidate): " + "; ".join(picks), ""]
    if out.get("selection"):
        lines += ["Selection (fresh val tasks inside meta-training, mean accuracy): " +
                  ", ".join(f"{k} {100 * v['mean']:+.2f}" if " - " in k else
                            f"{k} {100 * v['mean']:.2f}" for k, v in out["selection"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
