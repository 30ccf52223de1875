"""Issue 20 (3): dependency-graph channel pruning, Hyperflows scores vs Torch-Pruning magnitude.

For ResNet-20 (CIFAR-10, the B1 model, Idelbayev's weights) and EfficientNet-Lite0 (ImageNet
weights, fresh 10-class head, CIFAR-10 upsampled to ``--lite-size``), every run prunes the same
dense starting model to the same MAC budget (``--sparsity``: fraction of conv+linear MACs removed,
kept widths multiples of ``--multiple``) over the same dependency-graph groups
(:func:`edgeflow.prune.depgraph.depgraph_plan`), then recovers on the same images:

* ``hyperflows``: ``prune(channel_groups="depgraph", budget="flops")``, pruning + regrowth epochs,
  then ``--recovery-epochs`` of fine-tuning.
* ``magnitude``: Torch-Pruning's ``tp.importance.MagnitudeImportance`` (group L2 norm, normalised
  by the group mean, as its global pruner ranks) as the channel scores, our trim to the same budget
  (lowest score first, the same rule Hyperflows' final trim uses), then fine-tuning for the same
  number of epochs Hyperflows had in total (prune + regrowth + recovery).
* ``magnitude@hf``: magnitude's channel choice at *Hyperflows' kept widths*: the same speed-up by
  construction, so the two differ only in which channels they keep.
* ``dense``: the starting model fine-tuned for the same total epochs (the reference for "loss").

Latency: ONNX Runtime CPU, one intra-op thread, batch 32 and 1, dense and pruned timed interleaved
in one process (median of ``--repeats`` runs, ``--rounds`` rounds; speed-up = median over rounds),
as ``benchmarks/channel_speed.py`` does. MACs: analytic (``count_macs``) at the run's input size.

    OMP_NUM_THREADS=1 python benchmarks/depgraph_prune.py --quick    # ~5 min CPU, labelled quick
    OMP_NUM_THREADS=1 python benchmarks/depgraph_prune.py            # full (QUICK/FULL below)
    python benchmarks/depgraph_prune.py --scan                       # latency of budgets, no training

``hyperflows`` starts from the spec's random scores, ``hyperflows-m`` from scores ordered by group
magnitude (``score_init_order="magnitude"``), ``hyperflows-ms`` the same with a score lr that lets
scores travel twice their initial range over the pruning phase; ``magnitude@hf`` takes the last
Hyperflows run's widths.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _latency import onnx_latency  # noqa: E402  (benchmarks/ is the script's folder)

SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
R20_WEIGHTS = SHARED / "weights" / "cifar10-resnet20-12fca82f.th"
TRAIN, TEST = SHARED / "data" / "cifar10" / "train.zip", SHARED / "data" / "cifar10" / "test.zip"
# (flops sparsity, kept-width multiple) per model: budgets at which dense -> pruned is >= 1.8x
# faster on ORT CPU at batch 32 in the latency scan (--scan)
BUDGETS = {"resnet20": (0.7, 8), "efficientnet_lite0": (0.6, 8)}
# per model: images, epochs (dense start, Hyperflows pruning / regrowth / recovery), methods
FULL = {m: {"limit": 10000, "test_limit": 5000, "dense_epochs": 0 if m == "resnet20" else 3,
            "epochs": 6, "regrowth_epochs": 2, "recovery_epochs": 4, "repeats": 30, "rounds": 3,
            "methods": ("dense", "hyperflows", "hyperflows-m", "magnitude", "magnitude@hf")}
        for m in BUDGETS}
QUICK = {"resnet20": {"limit": 2000, "test_limit": 2000, "dense_epochs": 0, "epochs": 2,
                      "regrowth_epochs": 1, "recovery_epochs": 2, "repeats": 10, "rounds": 1,
                      "methods": ("dense", "hyperflows", "hyperflows-m", "magnitude", "magnitude@hf")},
         "efficientnet_lite0": {"limit": 640, "test_limit": 1000, "dense_epochs": 2, "epochs": 1,
                                "regrowth_epochs": 0, "recovery_epochs": 1, "repeats": 10, "rounds": 1,
                                "methods": ("dense", "hyperflows-m", "magnitude")}}


def latency(dense, pruned, *, size: int, repeats: int, rounds: int) -> dict:
    runs = [onnx_latency(dense, pruned, size=size, warmup=3, repeats=repeats) for _ in range(rounds)]
    return {b: {"dense_ms": statistics.median(r[b]["dense_ms"] for r in runs),
                "pruned_ms": statistics.median(r[b]["pruned_ms"] for r in runs),
                "speedup": statistics.median(r[b]["speedup"] for r in runs),
                "speedups": [r[b]["speedup"] for r in runs]} for b in runs[0]}


def base_model(name: str):
    """(dense model, input size) with the published weights (Lite0: fresh 10-class head)."""
    from edgeflow.checkpoint import load_weights
    from edgeflow.models import create_model

    if name == "resnet20":
        net = create_model("resnet20", num_classes=10)
        load_weights(net, R20_WEIGHTS)
        return net, 32
    return create_model("efficientnet_lite0", num_classes=10, pretrained=True), None


def data(net, size: int, limit: int, test_limit: int):
    from edgeflow.data import load_dataset
    from edgeflow.train import to_tensor
    from edgeflow.workflows import preprocess_for

    spec = preprocess_for(net, None, size)
    return (to_tensor(load_dataset(str(TRAIN), limit=limit), spec),
            to_tensor(load_dataset(str(TEST), limit=test_limit), spec))


def fit(net, train, *, epochs: int, lr: float, size: int, seed: int):
    from edgeflow.train import TrainConfig
    from edgeflow.train import fit as _fit

    if epochs > 0:
        _fit(net, train, config=TrainConfig(epochs=epochs, lr=lr, batch_size=64, label_smoothing=0.1,
                                            crop_padding=max(1, size // 8), seed=seed, device="cpu"))
    return net.eval()


def magnitude_scores(net, plan) -> dict:
    """Torch-Pruning's group magnitude importance, per group (root channel order = our order)."""
    import torch_pruning as tp

    from edgeflow.prune.depgraph import dependency_graph, to_group

    _, groups, shortcuts = dependency_graph(net)
    names = {m: n for n, m in net.named_modules()}
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    out = {}
    for grp in groups:
        g = to_group(grp, names, shortcuts)
        if g is not None:
            out[g.name] = imp(grp).detach().float()
    assert set(out) == {g.name for g in plan}, "Torch-Pruning groups differ from the plan's"
    return out


def magnitude_prune(base, *, sparsity: float, multiple: int, widths: dict | None = None):
    """One-shot magnitude pruning over the dependency-graph groups (the same trim, or ``widths``)."""
    import torch

    from edgeflow.prune import attach_scores, finalize

    net = copy.deepcopy(base)
    ms = attach_scores(net, granularity="channel", channel_groups="depgraph")
    imp = magnitude_scores(base, ms.plan)
    with torch.no_grad():
        for name, mk in ms.masks.items():
            mk.scores.copy_(imp[name] + 1e-3)  # all kept (>= 0) before the trim
    if widths is None:
        ms.trim(1 - sparsity, budget="flops", min_channels=multiple, multiple=multiple)
    else:
        ms.set_keep({n: torch.zeros(len(imp[n]), dtype=torch.bool).index_fill(
            0, imp[n].argsort(descending=True)[:w], True) for n, w in widths.items()})
    return finalize(net).eval(), ms.density("flops")


def run_model(name: str, a, cfg: dict, rows: list, log) -> None:
    import torch

    from edgeflow.prune import PruneConfig, count_macs, finalize, prune
    from edgeflow.train import evaluate

    torch.manual_seed(0)
    net, size = base_model(name)
    size = size or a.lite_size
    sparsity, multiple = BUDGETS[name]
    train, test = data(net, size, cfg["limit"], cfg["test_limit"])
    t0 = time.perf_counter()
    base = fit(net, train, epochs=cfg["dense_epochs"], lr=0.01 if name == "resnet20" else 0.05,
               size=size, seed=0)
    dense_macs = count_macs(base, input_size=size)
    log(f"{name}: base top-1 {evaluate(base, *test):.4f} ({time.perf_counter() - t0:.0f} s)")
    total = cfg["epochs"] + cfg["regrowth_epochs"] + cfg["recovery_epochs"]
    rec_lr = 0.01

    def row(method: str, model, seconds: float, **extra) -> dict:
        top1 = evaluate(model, *test)
        macs = count_macs(model, input_size=size)
        lat = latency(base, model, size=size, repeats=cfg["repeats"], rounds=cfg["rounds"])
        r = {"model": name, "method": method, "top1": top1, "macs": macs, "dense_macs": dense_macs,
             "macs_ratio": dense_macs / macs, "latency": lat, "seconds": seconds, "size": size,
             "widths": getattr(model, "channel_widths", None), **extra}
        log(f"  {method:13} top-1 {top1:.4f}  MACs x{r['macs_ratio']:.2f}  b32 "
            f"x{lat['batch32']['speedup']:.2f}  b1 x{lat['batch1']['speedup']:.2f}  ({seconds:.0f} s)")
        rows.append(r)
        return r

    methods = cfg["methods"]
    if "dense" in methods:
        t0 = time.perf_counter()
        dense = fit(copy.deepcopy(base), train, epochs=total, lr=rec_lr, size=size, seed=1)
        row("dense", dense, time.perf_counter() - t0)
    hf_widths = None
    # "-ms": scores may travel twice their initial range (0.2-0.5) over the pruning phase, instead
    # of the auto lr (10 / pruning steps: 0.16 per step at 64 steps, which scrambles any order)
    slow_lr = 2 * 0.3 / max(1, -(-cfg["limit"] // 64) * cfg["epochs"])
    for method in [m for m in methods if m.startswith("hyperflows")]:
        t0 = time.perf_counter()
        hf_net = copy.deepcopy(base)
        res = prune(hf_net, train, config=PruneConfig(
            sparsity=sparsity, granularity="channel", channel_groups="depgraph", budget="flops",
            epochs=cfg["epochs"], regrowth_epochs=cfg["regrowth_epochs"], batch_size=64,
            lr=rec_lr, ft_lr=rec_lr, device="cpu", channel_multiple=multiple, min_channels=multiple,
            score_init_order="random" if method == "hyperflows" else "magnitude",
            score_lr=slow_lr if method == "hyperflows-ms" else None, seed=0))
        hf = fit(finalize(hf_net).cpu(), train, epochs=cfg["recovery_epochs"], lr=rec_lr, size=size,
                 seed=1)
        r = row(method, hf, time.perf_counter() - t0, flops_density=res.masks.density("flops"))
        hf_widths = r["widths"]
    for method in [m for m in methods if m.startswith("magnitude")]:
        t0 = time.perf_counter()
        widths = hf_widths if method == "magnitude@hf" else None
        small, dens = magnitude_prune(base, sparsity=sparsity, multiple=multiple, widths=widths)
        small = fit(small, train, epochs=total, lr=rec_lr, size=size, seed=1)
        row(method, small, time.perf_counter() - t0, flops_density=dens)


def write(rows: list, meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Dependency-graph channel pruning: Hyperflows vs Torch-Pruning magnitude ({meta['mode']})",
             "", f"`{meta['command']}` on {meta['cpu']}, torch {meta['torch']}, onnxruntime "
             f"{meta['onnxruntime']}, torch-pruning {meta['torch_pruning']}, {meta['date']}; "
             f"1-min load average {meta['load_avg_1min']:.1f} at the start. Budget: {meta['budget']}.",
             "", "| model | method | top-1 | vs dense | MACs (M) | MACs ratio | b32 dense ms | b32 ms "
             "| b32 speed-up | b1 speed-up | seconds |", "|" + "---|" * 11]
    dense = {r["model"]: r["top1"] for r in rows if r["method"] == "dense"}
    for r in rows:
        b32, b1 = r["latency"]["batch32"], r["latency"]["batch1"]
        d = f"{100 * (r['top1'] - dense[r['model']]):+.2f}" if r["model"] in dense else "n/a"
        lines.append(f"| {r['model']} | {r['method']} | {100 * r['top1']:.2f} | {d} | "
                     f"{r['macs'] / 1e6:.1f} | {r['macs_ratio']:.2f} | {b32['dense_ms']:.1f} | "
                     f"{b32['pruned_ms']:.1f} | {b32['speedup']:.2f} | {b1['speedup']:.2f} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "Kept widths per group (first producer: channels):", ""]
    lines += [f"- {r['model']} {r['method']}: {r['widths']}" for r in rows if r["widths"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def scan(a) -> None:
    """Latency and MACs of magnitude pruning at several budgets (no training): picks BUDGETS."""
    for name in a.models:
        net, size = base_model(name)
        size = size or a.lite_size
        for s in (0.5, 0.6, 0.7, 0.75):
            small, _ = magnitude_prune(net.eval(), sparsity=s, multiple=8)
            from edgeflow.prune import count_macs

            lat = latency(net, small, size=size, repeats=10, rounds=1)
            ratio = count_macs(net, input_size=size) / count_macs(small, input_size=size)
            print(f"{name} flops-sparsity {s}: MACs x{ratio:.2f} b32 x{lat['batch32']['speedup']:.2f} "
                  f"b1 x{lat['batch1']['speedup']:.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="640 images, 1+1+1 epochs (labelled quick)")
    ap.add_argument("--models", default="resnet20,efficientnet_lite0")
    ap.add_argument("--lite-size", type=int, default=64, help="EfficientNet-Lite0 input side")
    ap.add_argument("--scan", action="store_true", help="latency of several budgets, no training")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--methods", default=None, help="comma list overriding the mode's methods "
                    "(dense, hyperflows, hyperflows-m, hyperflows-ms, magnitude, magnitude@hf)")
    a = ap.parse_args(argv)
    a.models = a.models.split(",")
    warnings.filterwarnings("ignore")
    import onnxruntime as ort
    import torch
    import torch_pruning as tp

    torch.set_num_threads(1)
    if a.scan:
        scan(a)
        return
    cfgs = QUICK if a.quick else FULL
    if a.methods:
        cfgs = {m: {**c, "methods": tuple(a.methods.split(","))} for m, c in cfgs.items()}
    out = a.out or ROOT / "benchmarks" / "results" / ("depgraph_prune_quick" if a.quick else "depgraph_prune")
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
               platform.processor())
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "torch_pruning": getattr(tp, "__version__", "?"), "mode": "quick" if a.quick else "full",
            "load_avg_1min": os.getloadavg()[0], "config": {m: cfgs[m] for m in a.models},
            "budgets": {m: {"flops_sparsity": BUDGETS[m][0], "multiple": BUDGETS[m][1]} for m in a.models},
            "budget": "; ".join(
                f"{m}: {c['limit']} CIFAR-10 train / {c['test_limit']} test images, dense start "
                f"fine-tuned {c['dense_epochs']} epochs, Hyperflows {c['epochs']} pruning + "
                f"{c['regrowth_epochs']} regrowth + {c['recovery_epochs']} recovery epochs, "
                "magnitude and dense fine-tuned for the same total" for m, c in cfgs.items()
                if m in a.models) + "; batch 64, weight lr 0.01 (cosine) everywhere, one CPU thread",
            "command": " ".join(["python benchmarks/depgraph_prune.py", *sys.argv[1:]])}
    rows: list = []
    for name in a.models:
        run_model(name, a, cfgs[name], rows, lambda m: print(m, flush=True))
        write(rows, meta, out)


if __name__ == "__main__":
    main()
