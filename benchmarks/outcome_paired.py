"""Outcome drifts of several compile folders, paired on the same val tasks (val split only).

The folders must share the backbone stages (one run, the others resumed from a copy of it with
another ``[adapt]`` setting, e.g. ``--adapt-aux-weight``): the first folder's config.toml rebuilds
the data and its recovered backbone the features. ``--offset 7`` rebuilds the very selection tasks
meta-training chose each drift's weights on (seed = config seed + 1 + 7, as compile does); any
other offset draws fresh val tasks no choice has seen.

    python benchmarks/outcome_paired.py /tmp/aux/d0 /tmp/aux/d2 --offset 1000

Prints each drift's mean accuracy and every folder minus the first, with the paired 95% interval,
over all tasks and per shot count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ci(d: np.ndarray) -> str:
    return f"{100 * d.mean():+.2f} ± {100 * 1.96 * d.std(ddof=1) / np.sqrt(len(d)):.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="compile output folders; the first is "
                    "the reference")
    ap.add_argument("--offset", type=int, default=1000, help="task seed = config seed + 1 + this "
                    "(7: the selection tasks)")
    ap.add_argument("--count", type=int, default=0, help="tasks (0: [adapt] selection_tasks)")
    args = ap.parse_args(argv)

    import torch

    from edgeflow.adapt.io import load_drift
    from edgeflow.adapt.scores import per_task_accuracy
    from edgeflow.adapt.split import SplitFeatures
    from edgeflow.adapt.workflow import val_tasks
    from edgeflow.pipeline.config import build_config
    from edgeflow.pipeline.model_stages import prepare_data
    from edgeflow.prune.finalize import load_pruned

    first = args.folders[0]
    cfg = build_config(file=first / "config.toml")
    data = prepare_data(cfg, progress=False)
    net = load_pruned(first / "stages" / "recover" / "recovered.pt").eval()
    accs, tasks, split, theta0 = {}, [], None, None
    for folder in args.folders:
        drift, spec, th0, settings, _ = load_drift(folder / "stages" / "meta-train" / "drift.pt")
        if split is None:
            split, theta0 = SplitFeatures(net, spec), th0
            tasks = val_tasks(split, data.val, data.preprocess,
                              count=args.count or cfg.adapt.selection_tasks,
                              seed=cfg.seed + 1 + args.offset)
        if not torch.equal(th0, theta0):
            raise SystemExit(f"{folder} was meta-trained on another backbone than {first}")
        accs[folder] = np.asarray(per_task_accuracy(drift, split, tasks, theta0,
                                                    settings=settings))
        print(f"{folder}: mean {100 * accs[folder].mean():.2f}", flush=True)
    for folder in args.folders[1:]:
        d = accs[folder] - accs[first]
        per_shot = ", ".join(f"{k}-shot {_ci(d[np.array([t.shots == k for t in tasks])])}"
                             for k in sorted({t.shots for t in tasks}))
        print(f"{folder} - {first}: {_ci(d)} (paired 95%, {len(d)} tasks; {per_shot})")


if __name__ == "__main__":
    main()
