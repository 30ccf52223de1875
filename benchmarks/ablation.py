"""What each part of the drift adds, paired on the same tasks (issue 17's ablation).

Rows, for every compile folder RUN given (one per seed):

- ``none``: theta0;
- ``regression``: RUN's trajectory-objective drift (``drift.trajectory.pt``: the paper's
  HyperFlow, class prototypes only, open loop), at its val-chosen settings;
- ``outcome``: RUN's own drift (``drift.pt``: the compile default, outcome-trained, reading support
  statistics, open loop unless RUN says otherwise);
- one row per ``--variant NAME=LABEL``: the drift of the folder ``RUN-NAME``, a copy of RUN resumed
  with one ``[adapt]`` setting changed (``--no-adapt-stats``: prototypes only; ``--adapt-loop-every
  1``: closed loop; ``--adapt-shot-tokens``: the encoder reads each support image), so the
  backbone, trajectories and regression warm start are RUN's own.

Task sets: ``--val-count`` fresh val tasks (seed = config seed + 1 + 1000, as
``outcome_paired.py --offset 1000``: no choice has seen them) and ``--episodes`` seeded 5-way episodes
(15 queries) per ``--data`` set and shot count. Gains over none with paired 95% intervals; the
summary averages the gains over the runs. ``--versus LABEL`` adds every row's paired difference
against that row (e.g. ``outcome``), per run.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py /tmp/aux/d0 /tmp/aux/s1a0 \\
        --variant nostats="outcome, prototypes only" --variant closed="outcome, closed loop" \\
        --data digits:5-9 --data ../shared/data/mnist/test.zip --out benchmarks/results/ablation_digits
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from _episodes import episode_tasks  # noqa: E402  (benchmarks/ is the script's folder)
from outcome import load_domain  # noqa: E402


def drifts(run: Path, variants: dict[str, str]) -> tuple[dict, object, object]:
    """({label: (drift or None, settings)}, spec, theta0) of one compile folder and its variants."""
    import torch

    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.io import load_drift

    mt = run / "stages" / "meta-train"
    drift, spec, theta0, settings, _ = load_drift(mt / "drift.pt")
    traj, _, _, tsettings, _ = load_drift(mt / "drift.trajectory.pt")
    rows = {"none": (None, IntegratorSettings(steps=0)), "regression": (traj, tsettings),
            "outcome": (drift, settings)}
    for name, label in variants.items():
        other = run.with_name(f"{run.name}-{name}")
        d, _, th0, s, _ = load_drift(other / "stages" / "meta-train" / "drift.pt")
        if not torch.equal(th0, theta0):
            raise SystemExit(f"{other} was meta-trained on another backbone than {run}")
        rows[label] = (d, s)
    return rows, spec, theta0


def gains(accs: dict[str, np.ndarray], base: str = "none") -> dict:
    """Each row's mean accuracy and its paired gain over row ``base`` (points, 95% interval)."""
    ref = accs[base]
    return {k: {"mean": float(100 * a.mean()), "gain": float(100 * (a - ref).mean()),
                "ci95": float(196 * (a - ref).std(ddof=1) / np.sqrt(len(a)))}
            for k, a in accs.items()}


def run_one(run: Path, variants: dict[str, str], args) -> dict:
    from edgeflow.adapt.scores import per_task_accuracy
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.workflow import val_tasks
    from edgeflow.pipeline.config import build_config
    from edgeflow.pipeline.model_stages import prepare_data
    from edgeflow.prune.finalize import load_pruned

    cfg = build_config(file=run / "config.toml")
    data = prepare_data(cfg, progress=False)
    net = load_pruned(run / "stages" / "recover" / "recovered.pt").eval()
    rows, spec, theta0 = drifts(run, variants)
    split = SplitFeatures(net, spec)

    def sets():
        """(name, tasks), built one set at a time: a task keeps its images' prefix activations,
        so holding every domain's at once took over 15 GB on the Tiny-ImageNet recipe."""
        val = val_tasks(split, data.val, data.preprocess, count=args.val_count,
                        seed=cfg.seed + 1001)
        yield "val", val
        for k in sorted({t.shots for t in val}, reverse=True):
            yield f"val {k}-shot", [t for t in val if t.shots == k]
        del val
        for spec_ in args.data:
            ds = load_domain(spec_, data.preprocess.size)
            for shots in (5, 1):
                yield f"{spec_} {shots}-shot", list(episode_tasks(
                    split, ds, data.preprocess, shots=shots, episodes=args.episodes,
                    seed=args.seed))

    out = {}
    for name, tasks in sets():
        accs = {label: np.asarray(per_task_accuracy(d, split, tasks, theta0, settings=s))
                for label, (d, s) in rows.items()}
        out[name] = {"tasks": len(tasks), "rows": gains(accs)}
        if args.versus:  # every variant against one of them, paired on the same tasks
            out[name]["versus"] = gains(accs, args.versus)
        print(run, name, {k: round(v["gain"], 2) for k, v in out[name]["rows"].items()}, flush=True)
    return {"seed": cfg.seed, "settings": {label: None if d is None else s.to_dict()
                                           for label, (d, s) in rows.items()}, "sets": out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="compile folders (one per seed)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=LABEL: folder RUN-NAME")
    ap.add_argument("--data", action="append", default=[], help="PATH or PATH:CLASSES")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--val-count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="episode seed of the --data sets")
    ap.add_argument("--versus", default=None, help="LABEL: also each row's paired difference "
                    "against that row (e.g. 'outcome'), not only against none")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    variants = dict(v.split("=", 1) for v in args.variant)
    t0 = time.perf_counter()
    runs = {str(r): run_one(r, variants, args) for r in args.runs}
    out = {"command": "python benchmarks/ablation.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "seconds": time.perf_counter() - t0, "versus": args.versus, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(out, indent=1))
    (args.out.parent / f"{args.out.name}.md").write_text(render(out))
    return out


def render(out: dict) -> str:
    runs = list(out["runs"].values())
    sets = list(runs[0]["sets"])
    labels = list(runs[0]["sets"][sets[0]]["rows"])[1:]
    lines = ["# What each part of the drift adds (ablation, paired on the same tasks)", "",
             f"`{out['command']}` ({out['machine']}, {out['seconds'] / 60:.1f} min). Gain over "
             "no adaptation in points; mean over the runs (seeds "
             f"{', '.join(str(r['seed']) for r in runs)}), then each run with its paired 95% "
             "interval.", "", "| tasks | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for s in sets:
        lines.append(f"| {s} | " + " | ".join(
            f"{np.mean([r['sets'][s]['rows'][lab]['gain'] for r in runs]):+.2f}"
            for lab in labels) + " |")
    for r in runs:
        lines += ["", f"Seed {r['seed']} (no adaptation's accuracy in the first column):", "",
                  "| tasks | n | none | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for s in sets:
            row = r["sets"][s]["rows"]
            lines.append(f"| {s} | {r['sets'][s]['tasks']} | {row['none']['mean']:.2f} | " +
                         " | ".join(f"{row[lab]['gain']:+.2f} ± {row[lab]['ci95']:.2f}"
                                    for lab in labels) + " |")
        base = out.get("versus")
        if base:
            others = [lab for lab in labels if lab != base]
            lines += ["", f"Seed {r['seed']}, paired difference against `{base}` (points, 95% "
                      "interval):", "", "| tasks | " + " | ".join(others) + " |",
                      "|---|" + "---|" * len(others)]
            for s in sets:
                row = r["sets"][s]["versus"]
                lines.append(f"| {s} | " + " | ".join(f"{row[lab]['gain']:+.2f} ± "
                                                      f"{row[lab]['ci95']:.2f}" for lab in others)
                             + " |")
        lines += ["", "Settings: " + "; ".join(f"{k}: {v}" for k, v in r["settings"].items()
                                              if v is not None)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
