"""Train the B2 backbone on tiny-imagenet/base at 32x32 (run once; benchmarks/adapt.py reuses it).

Holds out 10 images per base class to report a val top-1 (the tiny-imagenet val split has other
classes, so it cannot measure base-class accuracy).

Example: python benchmarks/adapt_backbone.py --output runs/adapt/backbone.pt --epochs 7
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeflow.checkpoint import save_checkpoint
from edgeflow.data import Preprocess, load_dataset
from edgeflow.models import create_model
from edgeflow.train import TrainConfig, fit, to_tensor
from edgeflow.workflows import checkpoint_meta

BASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tiny-imagenet" / "base.zip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", type=Path, default=Path("runs/adapt/backbone.pt"))
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--data", default=str(BASE))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data, size=32)
    rng = np.random.default_rng(0)
    held = np.concatenate([rng.choice(np.nonzero(ds.labels == c)[0], 10, replace=False)
                           for c in range(ds.num_classes)])
    keep = np.setdiff1d(np.arange(len(ds)), held)
    spec = Preprocess(size=32, channels=3)
    kwargs = {"width": args.width}
    net = create_model(args.model, num_classes=ds.num_classes, **kwargs)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, weight_decay=5e-4,
                         label_smoothing=0.1, augment=True, seed=0, device="cpu")
    t0 = time.perf_counter()

    def save(metrics: dict, path: Path) -> None:
        meta = checkpoint_meta(args.model, net, ds.classes, spec, kwargs,
                               train={"data": "tiny-imagenet/base", "epochs": args.epochs,
                                      "epoch": metrics.get("epoch"), "lr": args.lr,
                                      "held_out_per_class": 10, "val_top1": metrics.get("val_acc"),
                                      "seconds": time.perf_counter() - t0})
        save_checkpoint(path, state_dict={k: v.clone() for k, v in net.state_dict().items()},
                        meta=meta)

    def on_epoch_end(metrics: dict) -> None:  # a checkpoint per epoch: usable while training goes on
        print(json.dumps(metrics), flush=True)
        save(metrics, args.output.with_suffix(".last.pt"))

    hist = fit(net, to_tensor(ds.subset(keep), spec), config=config,
               val=to_tensor(ds.subset(held), spec), progress=False, on_epoch_end=on_epoch_end)
    save(hist.last, args.output)
    print(json.dumps({"output": str(args.output), "val_top1": hist.last.get("val_acc"),
                      "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
