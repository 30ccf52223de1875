"""Does adaptation help on data nobody tuned for? Every method on the same episodes, per domain.

Methods, each on identical seeded 5-way episodes (EpisodeSampler, 15 queries per class):

- ``none``: prototypes at theta0;
- ``recenter``: re-centring alone, at the strength val chose for it (0 steps);
- ``teacher``: Adam on theta by backprop, the recipe chosen on val (the drift checkpoint's);
- ``trajectory``: the trajectory-regressed drift (the paper's HyperFlow) at its val-chosen settings;
- ``outcome``: the outcome-trained drift (``meta-train --objective outcome``), open or closed loop
  as it was trained;
- ``outcome+guard``: the same with the forward-only guard (theta0 unless the support set's
  leave-one-out score says a candidate is better); its candidates include re-centring alone at
  the drift's ``guard_recenter`` (a drift compiled before it existed gets the value its compile
  would store now: val's best strength for re-centring alone, the ``recenter`` row's);
- ``outcome+guard-recenter``: that guard without the re-centring candidate (the guard before it);
- ``teacher-40``: the teacher's val-chosen lr and loss, run for 40 steps (the cost reference);
- ``trajectory+guard``: the trajectory drift under the same guard.

Per row also: the per-domain oracle (``--oracle-episodes``, default 30: the teacher grid of lr x
steps on the row's first episodes, the best setting in hindsight, an upper bound nobody can pick on
a device) with every method's gain on those same episodes, and the outcome drift's accuracy against
Euler step count (its trained step size, 0 to ``--curve-steps`` steps, all episodes).

Cost, same run: the median wall time of each method's adaptation step (support set -> a ready
classifier: the adapted theta and the support prototypes at it, as the library's evaluation
measures it, so none pays the prototypes' pass too; PyTorch, CPU, one thread, forward-only methods
without autograd), and the peak of live PyTorch allocations during it (torch.profiler) on a few
episodes. The domains given to ``--data`` are evaluated as they are: none was used to choose
anything (selection happens on val tasks inside meta-training).

    OMP_NUM_THREADS=1 python benchmarks/outcome.py --backbone RUN/stages/recover/recovered.pt \\
        --drift RUN/stages/meta-train/drift.pt --data digits:5-9 --data ../shared/data/mnist/test.zip \\
        --episodes 600 --out benchmarks/results/outcome_digits
"""

from __future__ import annotations

import argparse
import dataclasses
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from _episodes import episode_tasks, teacher_grid  # noqa: E402  (benchmarks/ is on the path)
from _outcome_report import render  # noqa: E402

SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
METHODS = ("none", "recenter", "teacher", "teacher-40", "trajectory", "trajectory+guard", "outcome",
           "outcome+guard", "outcome+guard-recenter")
GUARDED = {"trajectory+guard": ("traj", "traj_settings"),
           "outcome+guard": ("outcome", "outcome_settings"),
           "outcome+guard-recenter": ("outcome", "outcome_settings_no_recenter")}


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
                    methods: tuple[str, ...], timing: int, memory: int, oracle: int = 0,
                    curve: int = 0, records: list | None = None) -> dict:
    import torch

    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.evaluate import peak_memory_bytes
    from edgeflow.adapt.guard import guard_theta
    from edgeflow.adapt.loop import drift_path, drift_theta
    from edgeflow.adapt.meta_train import task_accuracy
    from edgeflow.adapt.teacher import finetune
    from edgeflow.adapt.theta import prototypes

    split, theta0 = ctx["split"], ctx["theta0"]
    recenter = IntegratorSettings(steps=0, recenter=ctx["alpha"])
    teacher40 = dataclasses.replace(ctx["teacher"], steps=40)
    choices: list = []  # the guard's (mode, chosen, candidate thetas) per call

    def guarded(m: str, tc):
        drift, settings = (ctx[k] for k in GUARDED[m])
        theta, report = guard_theta(split, drift, tc.support_only, tc.support_y, tc.ways, theta0,
                                    settings=settings, views=tc.views, with_thetas=True)
        choices.append((report["mode"], report["chosen"], report.get("thetas", {}),
                        report["scores"]))
        return theta

    steps: dict = {
        "none": lambda tc: theta0,
        "recenter": lambda tc: drift_theta(split, None, tc.support_only, tc.support_y, tc.ways,
                                           theta0, settings=recenter),
        "teacher": lambda tc: finetune(split, tc.support, tc.support_y, tc.ways, theta0,
                                       config=ctx["teacher"]).path[-1],
        "teacher-40": lambda tc: finetune(split, tc.support, tc.support_y, tc.ways, theta0,
                                          config=teacher40).path[-1],
        "trajectory": lambda tc: drift_theta(split, ctx["traj"], tc.support_only, tc.support_y,
                                             tc.ways, theta0, settings=ctx["traj_settings"]),
        "outcome": lambda tc: drift_theta(split, ctx["outcome"], tc.support_only, tc.support_y,
                                          tc.ways, theta0, settings=ctx["outcome_settings"]),
        **{m: (lambda tc, m=m: guarded(m, tc)) for m in GUARDED},
    }

    def ready(m: str, tc) -> tuple:
        """(theta, prototypes): the support set -> a ready classifier, what the cost measures (as
        :meth:`edgeflow.adapt.evaluate.Adapter.adapt_step`): none pays the prototypes' support
        pass too, so a method's extra over none is what adapting adds. Forward-only methods run
        without autograd, as on the device (a graph recorded for weights nobody differentiates
        would count as their cost)."""
        with torch.no_grad() if not m.startswith("teacher") else torch.enable_grad():
            theta = steps[m](tc).detach()
        with torch.no_grad():
            return theta, prototypes(split.suffix(tc.support_only, theta), tc.support_y, tc.ways)

    # accuracy against step count: the outcome drift at its trained step size, run on past the end
    osettings = ctx["outcome_settings"]
    curve_settings = dataclasses.replace(
        osettings, steps=curve, dt=osettings.dt or 1.0 / max(1, osettings.steps)) if curve else None
    acc = {m: [] for m in methods}
    picks = {m: {} for m in methods if m in GUARDED}  # guard's candidate -> episodes
    modes = {m: {} for m in methods if m in GUARDED}
    hindsight = {m: [] for m in methods if m in GUARDED}  # (episode, chose a best, best acc)
    ms = {m: [] for m in methods}
    peak = {m: [] for m in methods}
    grid: dict[str, list[float]] = {}
    by_step: list[list[float]] = []
    for i, tc in enumerate(episode_tasks(split, ds, ctx["pre"], shots=shots, episodes=episodes,
                                         seed=seed)):
        for m in methods:
            t0 = time.perf_counter()
            theta = ready(m, tc)[0]
            if i < timing:
                ms[m].append(1000 * (time.perf_counter() - t0))
            if i < memory:
                peak[m].append(peak_memory_bytes(lambda m=m, tc=tc: ready(m, tc)))
            acc[m].append(task_accuracy(split, tc, theta.detach()))
            if m in GUARDED:
                del choices[1:]  # the memory measurement ran the guard again
                mode, chosen, thetas, scores = choices.pop()
                picks[m][str(chosen)] = picks[m].get(str(chosen), 0) + 1
                # every candidate on the queries: is the guard's the best (ties count), and
                # what would the best candidate in hindsight gain
                cand = {k: task_accuracy(split, tc, th) for k, th in thetas.items()}
                if cand:
                    top = max(cand.values())
                    hindsight[m].append((i, cand[chosen] == top, top))
                    if records is not None:  # for studying other choice rules offline
                        records.append({"method": m, "episode": i, "mode": mode, "chosen": chosen,
                                        "none": acc["none"][i] if len(acc.get("none", ())) > i else None,
                                        "support": scores, "query": cand})
                modes[m][str(mode)] = modes[m].get(str(mode), 0) + 1
        if i < oracle:  # the teacher grid, query accuracy after every step
            for k, a in teacher_grid(split, tc, theta0, base=ctx["teacher"])[0].items():
                grid.setdefault(k, []).append(a)
        if curve_settings is not None:
            with torch.no_grad():
                path = drift_path(split, ctx["outcome"], tc.support_only, tc.support_y, 5, theta0,
                                  settings=curve_settings)
                by_step.append([task_accuracy(split, tc, th) for th in path])
    out = {}
    base = np.asarray(acc["none"])
    for m in methods:
        a = np.asarray(acc[m])
        d = a - base
        out[m] = {"mean": float(100 * a.mean()), "ci95": float(196 * a.std(ddof=1) / np.sqrt(len(a))),
                  "gain": float(100 * d.mean()),
                  "gain_ci95": float(196 * d.std(ddof=1) / np.sqrt(len(d))) if m != "none" else 0.0,
                  "gain_first": float(100 * d[:oracle].mean()) if oracle else None,
                  "adapt_ms": statistics.median(ms[m]) if ms[m] else None,
                  "adapt_peak_mib": max(peak[m]) / 2**20 if peak[m] else None}
        if m in GUARDED:
            out[m].update(guard_chosen=picks[m], guard_mode=modes[m])
            if hindsight[m]:
                h = np.asarray(hindsight[m], float)
                out[m].update(guard_matches_best=float(h[:, 1].mean()), best_candidate_gain=float(
                    100 * (h[:, 2] - base[h[:, 0].astype(int)]).mean()))
    if grid:
        means = {k: 100 * statistics.fmean(v) for k, v in grid.items()}
        best = max(means, key=means.get)
        out["oracle"] = {"episodes": oracle, "best": best, "settings": means,
                         "gain": means[best] - float(100 * base[:oracle].mean())}
    if by_step:
        curve_acc = 100 * np.asarray(by_step).mean(0)
        out["steps_curve"] = {"dt": curve_settings.dt, "trained_steps": osettings.steps,
                              "gain": [float(c - 100 * base.mean()) for c in curve_acc]}
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
    ap.add_argument("--oracle-episodes", type=int, default=30, help="0: no oracle")
    ap.add_argument("--curve-steps", type=int, default=8, help="0: no step-count curve")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--candidates", type=Path, default=None, help="also write every guard "
                    "candidate's support scores and query accuracy, per episode (JSON lines)")
    ap.add_argument("--merge", default=None, help="comma-separated OUT.json files of runs over "
                    "different --data (same checkpoints and settings): write one report of them")
    args = ap.parse_args(argv)
    if args.merge:
        return merge([Path(p) for p in args.merge.split(",")], args.out)

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
    from edgeflow.adapt.recenter import best_alone

    # the re-centring strength val scored best alone (0 drift steps), as the compile stores it
    alpha = best_alone(ometa.get("report", {}).get("val_acc_by_recenter") or {})
    if not osettings.guard_alpha:  # compiled before the guard had its re-centring candidate
        osettings = dataclasses.replace(osettings, guard_recenter=alpha)
    ctx = {"split": SplitFeatures(net, spec), "theta0": theta0, "pre": pre, "outcome": outcome,
           "outcome_settings": osettings,
           "outcome_settings_no_recenter": dataclasses.replace(osettings, guard_recenter=0.0),
           "traj": traj, "traj_settings": tsettings,
           "alpha": alpha, "teacher": TeacherConfig(**ometa["teacher"])}
    methods = tuple(args.methods.split(","))
    t0 = time.perf_counter()
    results: dict = {}
    for spec_ in args.data:
        ds = load_domain(spec_, pre.size)
        for shots in (int(s) for s in args.shots.split(",")):
            records: list | None = [] if args.candidates else None
            results.setdefault(spec_, {})[str(shots)] = evaluate_domain(
                ctx, ds, shots=shots, episodes=args.episodes, seed=args.seed, methods=methods,
                timing=args.timing_episodes, memory=args.memory_episodes,
                oracle=args.oracle_episodes, curve=args.curve_steps, records=records)
            if records:
                with args.candidates.open("a") as f:
                    f.writelines(json.dumps({"data": spec_, "shots": shots, **r}) + "\n"
                                 for r in records)
            print(spec_, shots, {m: round(r["mean"], 2) for m, r in
                                 results[spec_][str(shots)].items() if m in methods},
                  flush=True)
    out = {"command": "python benchmarks/outcome.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seconds":
           time.perf_counter() - t0, "episodes": args.episodes, "seed": args.seed,
           "recenter_alpha": ctx["alpha"], "outcome_settings": osettings.to_dict(),
           "trajectory_settings": tsettings.to_dict(), "teacher": ometa["teacher"],
           "selection": ometa.get("report", {}).get("outcome", {}).get("selection"),
           "offline_seconds": ometa.get("report", {}).get("seconds"), "methods": list(methods),
           "results": results}
    return write(out, args.out)


def write(out: dict, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    # OUT.json and OUT.md (appended, not with_suffix: "damped_0.5" has no suffix to replace)
    (path.parent / f"{path.name}.json").write_text(json.dumps(out, indent=1))
    (path.parent / f"{path.name}.md").write_text(render(out))
    return out


def merge(parts: list[Path], path: Path) -> dict:
    """One report of runs that split the domains between processes (e.g. one per core)."""
    runs = [json.loads(p.read_text()) for p in parts]
    same = ("episodes", "seed", "recenter_alpha", "outcome_settings", "trajectory_settings",
            "teacher", "methods")
    for r in runs[1:]:
        diff = [k for k in same if r.get(k) != runs[0].get(k)]
        if diff:
            raise SystemExit(f"cannot merge runs that differ in {diff}")
    out = {**runs[0], "command": " ; ".join(r["command"] for r in runs) + " (run side by side, "
           "one thread each, then --merge)", "seconds": max(r["seconds"] for r in runs),
           "results": {}}
    for r in runs:  # runs may split domains or shot counts
        for d, by_shots in r["results"].items():
            out["results"].setdefault(d, {}).update(by_shots)
    return write(out, path)


if __name__ == "__main__":
    main()
