"""B2's backbone and drifts, reproducibly: the Tiny-ImageNet ResNet-20 (width 32, 32 px, trained on
the 120 base classes), then the trajectory-regressed drift and the outcome-trained drift on top
(hyper-parameters and selection on the 30 val classes only). No pruning: B2 measures adaptation.

    python benchmarks/b2_train.py --out runs/b2 --device cuda          # the full run
    python benchmarks/b2_train.py --out /tmp/b2q --quick               # seconds: the code path

Writes OUT/backbone.pt, OUT/drift.pt (outcome), OUT/drift.trajectory.pt and OUT/b2_train.json.
Then ``benchmarks/outcome.py --run OUT`` evaluates every method on the B2 domains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=SHARED / "data/tiny-imagenet",
                    help="folder with base.zip and val.zip")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", type=Path, help="use this backbone checkpoint (skip training)")
    ap.add_argument("--trajectories", type=Path, help="trajectory folder (default OUT/trajectories)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--val-tasks", type=int, default=300)
    ap.add_argument("--meta-steps", type=int, default=3000)
    ap.add_argument("--outcome-steps", type=int, default=300)
    ap.add_argument("--euler-steps", type=int, default=4)
    ap.add_argument("--loop-every", type=int, default=0)
    ap.add_argument("--selection-tasks", type=int, default=1000)
    ap.add_argument("--aux-weight", type=float, default=None, help="outcome: weight of the "
                    "decaying trajectory-regression term (default: OutcomeConfig's)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the code path")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.tasks, args.val_tasks, args.meta_steps = 1, 4, 6, 20
        args.outcome_steps, args.selection_tasks = 4, 6

    from edgeflow.adapt.meta_train import MetaTrainConfig
    from edgeflow.adapt.outcome import OutcomeConfig
    from edgeflow.adapt.trajectories import TrajectoryConfig
    from edgeflow.adapt.workflow import load_backbone, meta_train_backbone
    from edgeflow.data import load_dataset
    from edgeflow.pipeline.model_stages import model_kwargs
    from edgeflow.workflows import train_model

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    limit = 3000 if args.quick else None
    trained: dict = {"train_acc": None}
    backbone = args.backbone or args.out / "backbone.pt"
    if args.backbone is None:
        trained = train_model(model="resnet20", data=str(args.data / "base.zip"),
                              epochs=args.epochs, output=backbone, lr=0.1, size=32, limit=limit,
                              device=args.device, model_kwargs=model_kwargs("resnet20", 32))
    t_backbone = time.perf_counter() - t0
    print(f"backbone: {t_backbone:.0f} s, train acc {trained['train_acc']}", flush=True)
    net, meta, pre = load_backbone("resnet20", backbone)
    base = load_dataset(args.data / "base.zip", size=32, limit=limit)
    val = load_dataset(args.data / "val.zip", size=32)
    res = meta_train_backbone(
        net, meta, base=base, val=val, pre=pre, output=args.out / "drift.pt",
        trajectories=args.trajectories or args.out / "trajectories", theta_size=256,
        traj_config=TrajectoryConfig(tasks=args.tasks, starts=2, seed=0,
                                     chunk=max(1, min(25, args.tasks))),
        train_config=MetaTrainConfig(steps=args.meta_steps, eval_every=max(1, args.meta_steps // 8),
                                     device=args.device),
        val_count=args.val_tasks, objective="outcome",
        outcome_config=OutcomeConfig(steps=args.outcome_steps, euler_steps=args.euler_steps,
                                     loop_every=args.loop_every,
                                     eval_every=max(1, args.outcome_steps // 6),
                                     device=args.device,
                                     **({} if args.aux_weight is None
                                        else {"aux_weight": args.aux_weight})),
        selection_tasks=args.selection_tasks, progress=False)
    out = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
           "backbone_seconds": t_backbone, "backbone_train_acc": trained["train_acc"],
           **{k: v for k, v in res.items() if k != "history"},
           "total_seconds": time.perf_counter() - t0}
    (args.out / "b2_train.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: out[k] for k in ("integrator", "val_acc_no_adaptation",
                                          "val_acc_hyperflow")}, default=str))
    print(json.dumps(out.get("outcome", {}).get("selection"), indent=1))
    print(f"total {out['total_seconds']:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
