"""B2: gradient-free adaptation (HyperFlow) against no adaptation, the teacher and full fine-tuning.

Full mode (needs the backbone from benchmarks/adapt_backbone.py, trained on tiny-imagenet/base):
meta-train the drift (teacher recipe, early stopping and Euler steps chosen on tiny-imagenet/val
only), then evaluate every method on the same seeded 5-way episodes of tiny-imagenet/novel and the
cross-domain sets (cifar10, gtsrb, mnist, omniglot); accuracy vs Euler steps; per-domain oracle
(best teacher setting in hindsight, an upper bound); offline cost and break-even.

Quick mode (~1-2 minutes, used by the tests): the same code on the built-in digits with a tiny
backbone trained on the spot.

Example: python benchmarks/adapt.py --quick
         python benchmarks/adapt.py --backbone runs/adapt/backbone.pt --episodes 300
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _episodes import episode_tasks, teacher_grid  # noqa: E402  (benchmarks/ is on the path)

from edgeflow.adapt.meta_train import MetaTrainConfig  # noqa: E402
from edgeflow.adapt.teacher import TeacherConfig  # noqa: E402
from edgeflow.adapt.trajectories import TrajectoryConfig  # noqa: E402
from edgeflow.adapt.workflow import load_backbone, run_evaluate, run_meta_train  # noqa: E402
from edgeflow.data import load_dataset  # noqa: E402

SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared")) / "data"
DOMAINS = {
    "tiny-imagenet/novel": SHARED / "tiny-imagenet" / "novel.zip",
    "cifar10": SHARED / "cifar10" / "test.zip",
    "gtsrb": SHARED / "gtsrb" / "test.zip",
    "mnist": SHARED / "mnist" / "test.zip",
    "omniglot": SHARED / "omniglot" / "images_background_small1.zip",
}
CROSS = ("cifar10", "gtsrb", "mnist", "omniglot")
SWEEP = (1, 2, 5, 10, 20, 50)


def quick_backbone(out: Path) -> Path:
    """A conv4 trained 2 epochs on digits at 16 px (seconds), saved with checkpoint meta."""
    from edgeflow.checkpoint import save_checkpoint
    from edgeflow.data import Preprocess
    from edgeflow.models import create_model
    from edgeflow.train import TrainConfig, fit, to_tensor
    from edgeflow.workflows import checkpoint_meta

    torch.manual_seed(0)
    ds = load_dataset("digits")
    spec = Preprocess(size=16, channels=3)
    net = create_model("conv4", num_classes=10, width=16)
    fit(net, to_tensor(ds, spec), config=TrainConfig(epochs=2, lr=0.05, batch_size=64,
                                                     device="cpu"))
    return save_checkpoint(out, state_dict=net.state_dict(),
                           meta=checkpoint_meta("conv4", net, ds.classes, spec, {"width": 16}))


def oracle(model: str, weights: Path, drift: Path, data: str, *, episodes: int, shots: int,
           seed: int) -> dict:
    """Teacher grid (lr x steps) on the first ``episodes`` episodes: mean accuracy of every
    setting, and the best in hindsight (per-domain upper bound)."""
    from edgeflow.adapt.io import load_drift
    from edgeflow.adapt.split import SplitFeatures

    net, _, pre = load_backbone(model, weights)
    _, spec, theta0, _, _ = load_drift(drift)
    split = SplitFeatures(net, spec)
    ds = load_dataset(data, size=pre.size)
    table: dict[str, list[float]] = {}
    none: list[float] = []
    for tc in episode_tasks(split, ds, pre, shots=shots, episodes=episodes, seed=seed):
        grid, start = teacher_grid(split, tc, theta0, base=TeacherConfig())
        for k, acc in grid.items():
            table.setdefault(k, []).append(acc)
        none.append(start)
    means = {k: statistics.fmean(v) for k, v in table.items()}
    best = max(means, key=means.get)
    return {"episodes": episodes, "shots": shots, "none": statistics.fmean(none),
            "settings": means, "best": best, "best_accuracy": means[best],
            "best_gain": means[best] - statistics.fmean(none)}


def fmt(x: float | None, scale: float = 100.0, nd: int = 2) -> str:
    return "-" if x is None else f"{scale * x:.{nd}f}"


def val_mix(v: dict | None) -> str:
    """"Val tasks (...)" from meta-train's count of its val tasks by kind."""
    if not v:
        return "Val tasks (half with domain shifts)"
    return (f"Val tasks ({v['count']}: {v['shifted']} with domain shifts, {v['instance']} instance "
            "tasks)")


def markdown(res: dict) -> str:
    mt_traj = res["meta_train"].get("trajectory_config", {})
    lines = ["# B2 gradient-free adaptation (HyperFlow)", "",
             *([f"**Note.** {res['note']}", ""] if res.get("note") else []),
             f"Machine: {res['machine']}. Mode: {res['mode']}. Backbone: {res['backbone']} "
             f"({res.get('backbone_meta', {}).get('model')}, theta = {res['meta_train']['theta_size']} "
             "biases (BatchNorm shifts) of the last layers).",
             f"Episodes: 5-way, 15 queries/class, {res['episodes']} per domain and shot count (seed "
             f"{res['seed']}), identical for every method; full fine-tuning on the first "
             f"{res['full_episodes']} of them. Accuracy in %, +- 95% CI (1.96 std/sqrt(n)).",
             f"Cost on the first {res['timing_episodes']} episodes, same run: adapt ms = median wall "
             "time of the adaptation step (support set -> support prototypes at the adapted theta, "
             "from the support set's cached prefix activations, which no adaptation computes at "
             "theta0; full fine-tuning from the images to the tuned network); "
             "end-to-end ms = median time from preprocessed tensors to query logits, each method "
             "computing its own features; adapt MiB = peak of live PyTorch CPU allocations during "
             "the adaptation step (torch.profiler allocation events; the targets compare each "
             "method's extra over no adaptation"
             + (f", {res['memory_episodes']} episodes)." if "memory_episodes" in res else ").") , "",
             f"Teacher recipe chosen on val: {res['meta_train']['teacher']}. HyperFlow integrator "
             f"chosen on val: {res['meta_train']['integrator']}.",
             f"Trajectories: {mt_traj.get('tasks')} base tasks x {mt_traj.get('starts')} starts "
             f"({100 * mt_traj.get('instance_fraction', 0.0):.0f}% instance tasks), "
             + (f"teacher started at theta0 re-centred by alpha {mt_traj['recenter']} (the path "
                "stored minus that move, so the drift learns what fine-tuning adds after "
                "re-centring), " if mt_traj.get("recenter") else "")
             + f"teacher Adam lr {mt_traj.get('teacher', {}).get('lr')} for up to "
             f"{mt_traj.get('teacher', {}).get('steps')} steps, stopped at the task's best query "
             f"accuracy (mean stop {res['meta_train'].get('mean_stop_step', 0):.1f} steps, "
             f"{100 * res['meta_train'].get('fraction_stopped_at_0', 0):.0f}% stopped at 0). "
             + val_mix(res["meta_train"].get("val_tasks")) + ": no adaptation "
             f"{fmt(res['meta_train'].get('val_acc_no_adaptation'))}, HyperFlow "
             f"{fmt(res['meta_train'].get('val_acc_hyperflow'))}.", ""]
    for shots in res["shots"]:
        lines += [f"## 5-way {shots}-shot", "",
                  "| domain | method | accuracy | gain | adapt ms | end-to-end ms | adapt MiB |",
                  "|---|---|---|---|---|---|---|"]
        for dom, dres in res["domains"].items():
            for m, r in dres["by_shots"][str(shots)]["methods"].items():
                lines.append(f"| {dom} | {m} | {fmt(r['accuracy'])} +- {fmt(r['ci95'])} | "
                             f"{fmt(r.get('gain'), nd=2)} | {fmt(r.get('adapt_ms'), 1, 1)} | "
                             f"{fmt(r.get('median_ms'), 1, 1)} | {fmt(r.get('adapt_peak_mib'), 1, 3)} |")
        lines.append("")
    grid = res["meta_train"].get("val_acc_by_recenter")
    if grid:
        counts = sorted(next(iter(grid.values())), key=int)
        lines += ["## Val selection: re-centring alpha x Euler steps (steps 0: re-centring alone; "
                  "alpha 0: the drift alone)", "",
                  "| alpha | " + " | ".join(counts) + " |", "|---|" + "---|" * len(counts)]
        lines += [f"| {a} | " + " | ".join(fmt(row[c]) for c in counts) + " |"
                  for a, row in grid.items()]
        lines.append("")
    lines += ["## Accuracy against the number of Euler steps (5-shot, with the chosen re-centring; "
              f"chosen on val: {res['meta_train']['integrator']['steps']})", "",
              "| domain | " + " | ".join(str(s) for s in SWEEP) + " |",
              "|---|" + "---|" * len(SWEEP)]
    for dom, dres in res["domains"].items():
        sw = dres["by_shots"][str(max(res["shots"]))].get("euler_steps", {})
        lines.append(f"| {dom} | " + " | ".join(fmt(sw.get(str(s), {}).get("accuracy"))
                                                for s in SWEEP) + " |")
    lines += ["", "## Targets", ""]
    for k, v in res["targets"].items():
        lines.append(f"- {k}: {v}")
    if res.get("oracle"):
        lines += ["", "## Per-domain oracle (best teacher setting in hindsight; upper bound)", "",
                  "| domain | episodes | none | best setting | best accuracy | gain |",
                  "|---|---|---|---|---|---|"]
        for dom, o in res["oracle"].items():
            lines.append(f"| {dom} | {o['episodes']} | {fmt(o['none'])} | {o['best']} | "
                         f"{fmt(o['best_accuracy'])} | {fmt(o['best_gain'])} |")
        carried = sorted({o["from"] for o in res["oracle"].values() if "from" in o})
        if carried:
            lines += ["", "Oracle entries carried over from " + ", ".join(carried) + " (same "
                      "backbone, theta layers and episodes; the oracle never calls the drift)."]
    if res.get("cost"):
        c = res["cost"]
        lines += ["", f"## Adaptation-step cost, separate run ({c['data']})", "",
                  "| shots | method | accuracy | adapt ms (median) | end-to-end ms | adapt peak MiB | "
                  "episodes |", "|---|---|---|---|---|---|---|"]
        for k, e in c["by_shots"].items():
            for m, r in e["methods"].items():
                lines.append(f"| {k} | {m} | {fmt(r['accuracy'])} +- {fmt(r['ci95'])} | "
                             f"{fmt(r.get('adapt_ms'), 1, 2)} | {fmt(r.get('median_ms'), 1, 1)} | "
                             f"{fmt(r.get('adapt_peak_mib'), 1, 3)} | {r['episodes']} |")
    oc = res["offline"]
    lines += ["", "## Offline cost", "",
              f"Trajectory generation {oc['trajectories_s']:.0f} s, meta-training "
              f"{oc['meta_train_s']:.0f} s, teacher selection {oc['teacher_selection_s']:.0f} s "
              f"(this machine, shared). Break-even: {oc['break_even_episodes']} adaptations "
              "(offline seconds / (teacher adaptation time - HyperFlow adaptation time) per 5-shot episode).",
              ""]
    return "\n".join(lines)


def targets(res: dict) -> dict:
    """The issue's targets, computed from the measured numbers (5-shot unless said)."""
    s = str(max(res["shots"]))
    dom = res["domains"]
    out = {}
    hf = "hyperflow-euler"
    if "tiny-imagenet/novel" in dom:
        m = dom["tiny-imagenet/novel"]["by_shots"][s]["methods"]
        out["in-domain HyperFlow - none (target >= -0.5 point)"] = f"{100 * m[hf]['gain']:+.2f}"
    cross = [d for d in CROSS if d in dom]
    if cross:
        g_hf = statistics.fmean(dom[d]["by_shots"][s]["methods"][hf]["gain"] for d in cross)
        g_t = statistics.fmean(dom[d]["by_shots"][s]["methods"]["teacher"]["gain"] for d in cross)
        sep = [d for d in cross if (lambda m: m[hf]["accuracy"] - m[hf]["ci95"] >
                                    m["none"]["accuracy"] + m["none"]["ci95"])(
                                        dom[d]["by_shots"][s]["methods"])]
        out["cross-domain mean gain HyperFlow vs teacher (target HF >= teacher)"] = \
            f"{100 * g_hf:+.2f} vs {100 * g_t:+.2f}"
        out["domains with HyperFlow CI above none's (target >= 2)"] = f"{len(sep)}: {sep}"
        if all("recenter" in dom[d]["by_shots"][s]["methods"] for d in cross):
            g_rc = statistics.fmean(dom[d]["by_shots"][s]["methods"]["recenter"]["gain"]
                                    for d in cross)
            out["attribution: cross-domain mean gain of re-centring alone / the drift's share "
                "(HyperFlow - re-centring)"] = f"{100 * g_rc:+.2f} / {100 * (g_hf - g_rc):+.2f}"
    def ratio(m: dict, field: str) -> float | None:
        """HyperFlow's extra adaptation cost over no adaptation's, as a fraction of the teacher's
        (the harness's ``adapt_extra_*``: every step ends with the support prototypes)."""
        h, t = m[hf].get(field), m["teacher"].get(field)
        return None if h is None or not t else h / t

    ratios_t, ratios_m = [], []
    cost = res.get("cost")
    for m in [d["by_shots"][s]["methods"] for d in dom.values()] or \
            ([cost["by_shots"][s]["methods"]] if cost else []):
        for field, into in (("adapt_extra_ms", ratios_t), ("adapt_extra_mib", ratios_m)):
            if (r := ratio(m, field)) is not None:
                into.append(r)
    if ratios_t:
        out["HyperFlow / teacher adaptation time (median over domains, target <= 10%)"] = \
            f"{100 * statistics.median(ratios_t):.1f}%"
    if ratios_m:
        out["HyperFlow / teacher adaptation peak memory (median over domains, target <= 15%)"] = \
            f"{100 * statistics.median(ratios_m):.2f}%"
    chosen = str(res["meta_train"]["integrator"]["steps"])
    gaps = {}
    for name, d in dom.items():
        sw = {k: v["accuracy"] for k, v in (d["by_shots"][s].get("euler_steps") or {}).items()}
        if sw and chosen == "0":  # 0 steps is not in the sweep: it is HyperFlow's own accuracy
            sw["0"] = d["by_shots"][s]["methods"][hf]["accuracy"]
        if sw and chosen in sw:
            gaps[name] = 100 * (max(sw.values()) - sw[chosen])
    if gaps:
        out["overshoot: best step count - chosen (points, target <= 0.5; 0 steps counts too)"] = \
            ", ".join(f"{k} {v:.2f}" for k, v in gaps.items())
    return out


def finish(res: dict, out: Path, stem: str, seconds: float) -> None:
    """Offline cost, break-even and targets from the measured numbers; write JSON + markdown."""
    summary = res["meta_train"]
    s5 = str(max(res["shots"]))
    runs = list(res["domains"].values())
    if not runs[0]["by_shots"][s5]["methods"]["teacher"].get("adapt_ms") and res.get("cost"):
        runs = [res["cost"]]  # adaptation-step costs measured in a separate run
    hf_t = [d["by_shots"][s5]["methods"]["hyperflow-euler"].get("adapt_ms") or 0.0 for d in runs]
    te_t = [d["by_shots"][s5]["methods"]["teacher"].get("adapt_ms") or 0.0 for d in runs]
    offline = summary["seconds"]["trajectories"] + summary["seconds"]["meta_train"]
    saved_ms = statistics.median(te_t) - statistics.median(hf_t)
    res["offline"] = {"trajectories_s": summary["seconds"]["trajectories"],
                      "meta_train_s": summary["seconds"]["meta_train"],
                      "teacher_selection_s": summary["seconds"]["teacher_selection"],
                      "saved_ms_per_episode": saved_ms,
                      "break_even_episodes": round(1e3 * offline / saved_ms) if saved_ms > 0 else None}
    res["targets"] = targets(res)
    res["seconds"] = seconds
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


def merge(parts: list[Path], out: Path, cost: Path | None = None, note: str | None = None,
          oracle_from: list[Path] | None = None) -> None:
    """Combine partial results of runs over disjoint domains (same backbone, drift and episodes);
    ``cost``: an ``edgeflow evaluate --json`` output whose adaptation-step costs are reported;
    ``oracle_from``: earlier partial results whose oracle entries are taken over. The oracle
    fine-tunes theta from theta0 and never calls the drift, so it carries over between drifts of
    the same backbone and theta layers (checked; a mismatch is an error)."""
    runs = [json.loads(p.read_text()) for p in parts]
    res = runs[0]
    if cost is not None:
        res["cost"] = json.loads(cost.read_text())
    if note:
        res["note"] = note
    for other in runs[1:]:
        res["domains"].update(other["domains"])
        res["oracle"].update(other.get("oracle", {}))
    for path in oracle_from or []:
        old = json.loads(path.read_text())
        same = (old["backbone"] == res["backbone"] and old["seed"] == res["seed"]
                and old["meta_train"]["theta_layers"] == res["meta_train"]["theta_layers"])
        if not same:
            raise SystemExit(f"{path}: its backbone, seed or theta layers differ from this run's; "
                             "its oracle does not apply here (run the oracle again)")
        for dom, o in old.get("oracle", {}).items():
            res["oracle"].setdefault(dom, {**o, "from": str(path)})
    rank = {d: i for i, d in enumerate(DOMAINS)}  # B2's order; other domains (digits) after
    order = sorted(res["domains"], key=lambda d: rank.get(d, len(rank)))
    res["domains"] = {d: res["domains"][d] for d in order}
    res["oracle"] = {d: res["oracle"][d] for d in order if d in res["oracle"]}
    res["merged_from"] = [str(p) for p in parts]
    finish(res, out, "adapt", sum(r.get("seconds", 0) for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backbone", type=Path, default=ROOT / "runs" / "adapt" / "backbone.pt")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--drift", type=Path, default=None, help="reuse this drift (skip meta-training)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "adapt")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--timing-episodes", type=int, default=40)
    ap.add_argument("--full-episodes", type=int, default=10)
    ap.add_argument("--oracle-episodes", type=int, default=60)
    ap.add_argument("--meta-steps", type=int, default=3000)
    ap.add_argument("--theta-size", type=int, default=256)
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--traj-lr", type=float, default=TrajectoryConfig().teacher.lr)
    ap.add_argument("--traj-steps", type=int, default=TrajectoryConfig().teacher.steps)
    ap.add_argument("--instance-fraction", type=float,
                    default=TrajectoryConfig().instance_fraction)
    ap.add_argument("--val-count", type=int, default=60)
    ap.add_argument("--teacher-lrs", default="0.001,0.003,0.01")
    ap.add_argument("--teacher-steps", default="5,10,20,40")
    ap.add_argument("--memory-episodes", type=int, default=3)
    ap.add_argument("--merge", default=None, help="comma-separated partial JSONs to combine")
    ap.add_argument("--note", default=None, help="with --merge: a line for the report's top")
    ap.add_argument("--cost", type=Path, default=None, help="with --merge: an evaluate --json "
                    "output measuring adaptation-step costs")
    ap.add_argument("--oracle-from", default=None, help="with --merge: comma-separated earlier "
                    "partial JSONs (same backbone and theta layers) whose oracle entries apply")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trajectory-seconds", type=float, default=None,
                    help="generation time of a trajectory folder the drift reused (its own report "
                    "counts only what it generated); enters the offline cost and break-even")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        merge([Path(p) for p in args.merge.split(",")], args.out, args.cost, args.note,
              [Path(p) for p in args.oracle_from.split(",")] if args.oracle_from else None)
        return
    t_start = time.perf_counter()
    seed = 0
    if args.quick:
        work = Path(tempfile.mkdtemp(prefix="b2-quick-"))
        backbone, model = quick_backbone(work / "backbone.pt"), "conv4"
        base = val = "digits"
        domains = {"digits": "digits"}
        traj = TrajectoryConfig(tasks=8, chunk=4, queries=5,
                                teacher=TeacherConfig(lr=5e-2, steps=8))
        mcfg = MetaTrainConfig(steps=60, eval_every=30, hidden=32, task_dim=16,
                               step_choices=SWEEP)
        episodes, timing, full, oracle_eps, val_count, theta_size = 4, 2, 1, 2, 6, 32
        drift_path = work / "drift.pt"
    else:
        work = args.work
        backbone, model = args.backbone, args.model
        base, val = str(SHARED / "tiny-imagenet" / "base.zip"), str(SHARED / "tiny-imagenet" / "val.zip")
        unknown = [d for d in args.domains.split(",") if d not in DOMAINS]
        if unknown:
            ap.error(f"unknown domain(s) {unknown}; valid: {', '.join(DOMAINS)}")
        domains = {d: str(DOMAINS[d]) for d in args.domains.split(",")}
        traj = TrajectoryConfig(tasks=args.tasks, starts=args.starts,
                                instance_fraction=args.instance_fraction,
                                teacher=TeacherConfig(lr=args.traj_lr, steps=args.traj_steps))
        mcfg = MetaTrainConfig(steps=args.meta_steps, step_choices=SWEEP)
        episodes, timing, full = args.episodes, args.timing_episodes, args.full_episodes
        oracle_eps, val_count, theta_size = args.oracle_episodes, args.val_count, args.theta_size
        drift_path = args.drift or work / "drift.pt"
    if args.drift is None or args.quick:
        summary = run_meta_train(model=model, weights=backbone, data=base, val_data=val,
                                 output=drift_path, trajectories=drift_path.with_suffix(".traj"),
                                 theta_size=theta_size, traj_config=traj, train_config=mcfg,
                                 val_count=val_count, progress=False,
                                 teacher_lrs=tuple(float(v) for v in args.teacher_lrs.split(",")),
                                 teacher_steps=tuple(int(v) for v in args.teacher_steps.split(",")))
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    else:
        from edgeflow.adapt.io import load_drift

        summary = load_drift(drift_path)[4]["report"]
    if args.trajectory_seconds is not None:
        summary["seconds"]["trajectories_reused_s"] = summary["seconds"]["trajectories"]
        summary["seconds"]["trajectories"] = args.trajectory_seconds
    res: dict = {"mode": "quick" if args.quick else "full",
                 "machine": f"{platform.machine()} {os.cpu_count()} cores "
                            f"(shared with other jobs), torch threads {args.threads}",
                 "backbone": str(backbone), "drift": str(drift_path), "episodes": episodes,
                 "timing_episodes": timing, "full_episodes": full,
                 "memory_episodes": 1 if args.quick else args.memory_episodes, "seed": seed, "shots": [1, 5],
                 "meta_train": summary, "domains": {}, "oracle": {}}
    res["backbone_meta"] = {k: v for k, v in load_backbone(model, backbone)[1].items()
                            if k != "classes"}
    methods = ("none", "teacher", "recenter", "hyperflow-euler", "hyperflow-heun", "full-finetune")
    for name, path in domains.items():
        t0 = time.perf_counter()
        r = run_evaluate(model=model, weights=backbone, drift=drift_path, data=path,
                         shots=(1, 5), episodes=episodes, seed=seed, methods=methods,
                         step_sweep=SWEEP, timing_episodes=timing, full_episodes=full,
                         queries=5 if args.quick else 15, progress=False,
                         memory_episodes=1 if args.quick else args.memory_episodes)
        r["seconds"] = time.perf_counter() - t0
        res["domains"][name] = r
        print(name, json.dumps({k: {m: round(v["accuracy"], 4) for m, v in e["methods"].items()}
                                for k, e in r["by_shots"].items()}), flush=True)
        if oracle_eps:
            res["oracle"][name] = oracle(model, backbone, drift_path, path, episodes=oracle_eps,
                                         shots=5, seed=seed)
        partial = args.out / ("adapt-quick.partial.json" if args.quick else "adapt.partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(res, indent=1, default=str))  # survives a later crash
    finish(res, args.out, "adapt-quick" if args.quick else "adapt", time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
