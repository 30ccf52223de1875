"""B1: Hyperflows vs baselines on ResNet-20 / CIFAR-10 (see docs/benchmarks.md), scaled to this machine.

Every method gets the same budget: the same images, epochs (pruning + fine-tune/regrowth), batch,
SGD schedule, augmentation and label smoothing, starting from the pretrained ResNet-20. Runs go to
worker processes (one thread each); each finished run is appended to the JSON and the markdown
table is rewritten, so a run cut short by ``--deadline`` still leaves honest, labelled results.

    python benchmarks/prune.py --quick                 # a minute or two: proves the script runs
    python benchmarks/prune.py --limit 3000 --test-limit 5000 --batch-size 32 --jobs 1  # committed

Run names are ``<variant>:<sparsity>``: ``hf`` Hyperflows with the spec's inertia controller,
``hfr`` with the reset release (pressure off as soon as the density is below its trajectory; the
default for short schedules), ``hfm``/``hfmr`` with magnitude-ordered initial scores, ``hfpl``/
``hfplr`` with the power-law start; ``gmp``, ``magnitude``, ``random`` the baselines; ``dense``,
``nm`` (2:4) and ``channel:<fraction>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _latency import onnx_latency  # noqa: E402  (benchmarks/ is the script's folder)

SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "cifar10-resnet20-12fca82f.th"
TRAIN = SHARED / "data" / "cifar10" / "train.zip"
TEST = SHARED / "data" / "cifar10" / "test.zip"
FULL_RUNS = ("dense,hfr:0.9,gmp:0.9,hfr:0.95,gmp:0.95,hfr:0.98,gmp:0.98,hfr:0.99,gmp:0.99,nm,"
             "channel:0.5,hf:0.9,hf:0.95,hf:0.98,hf:0.99,magnitude:0.9,magnitude:0.95,"
             "magnitude:0.98,magnitude:0.99,random:0.9,random:0.95,random:0.98,random:0.99,"
             "hfmr:0.95,hfplr:0.95")
# Run-name prefixes that are not a baseline's method name. Unset keys: weight granularity,
# random score init, release "auto" (reset at this short a schedule), no power-law start.
HF = "hyperflows"
VARIANTS = {
    "hf": {"method": HF, "release": "inertia"},  # the spec's controller
    "hfm": {"method": HF, "release": "inertia", "init": "magnitude"},
    "hfpl": {"method": HF, "release": "inertia", "power_law": True},
    "hfr": {"method": HF, "release": "reset"},
    "hfmr": {"method": HF, "release": "reset", "init": "magnitude"},
    "hfplr": {"method": HF, "release": "reset", "power_law": True},
    "hfs": {"method": HF, "init": "magnitude"},  # plus a slow score lr, see run_one
    "dense": {"method": "magnitude"},  # magnitude at sparsity 0: fine-tuning only
    "nm": {"method": HF, "granularity": "2:4"},
    "channel": {"method": HF, "granularity": "channel"},
}
QUICK_RUNS = "dense,hfr:0.9,hf:0.9,gmp:0.9,magnitude:0.9,random:0.9,nm,channel:0.5,hfplr:0.9"
_DATA: dict = {}


def _data(limit: int, test_limit: int):
    if "train" not in _DATA:
        from edgeflow.data import load_dataset
        from edgeflow.models import create_model
        from edgeflow.train import to_tensor
        from edgeflow.workflows import preprocess_for

        spec = preprocess_for(create_model("resnet20"), None, 32)
        _DATA["train"] = to_tensor(load_dataset(str(TRAIN), limit=limit), spec)
        _DATA["test"] = to_tensor(load_dataset(str(TEST), limit=test_limit), spec)
    return _DATA["train"], _DATA["test"]


def overhead(repeats: int, batch: int) -> dict:
    """Same-process step time of plain vs scored ResNet-20, and the scores' extra memory."""
    import torch
    import torch.nn.functional as F

    from edgeflow.models import create_model
    from edgeflow.prune import attach_scores

    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    plain, scored = create_model("resnet20"), create_model("resnet20")
    ms = attach_scores(scored)
    sopt = torch.optim.Adam(ms.scores(), lr=1e-3)
    weights = [p for p in scored.parameters() if id(p) not in {id(s) for s in ms.scores()}]
    popt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    wopt = torch.optim.SGD(weights, lr=0.01, momentum=0.9)
    times: dict = {"plain": [], "scored": []}
    for _ in range(repeats):
        for name, model, opts in (("plain", plain, [popt]), ("scored", scored, [wopt, sopt])):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y) + (1e-3 * ms.mean_score() if name == "scored" else 0)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            times[name].append(time.perf_counter() - t0)
    n_w = sum(p.numel() for p in weights)
    n_s = ms.num_scores()
    return {"plain_step_s": statistics.median(times["plain"]),
            "scored_step_s": statistics.median(times["scored"]),
            "time_ratio": statistics.median(times["scored"]) / statistics.median(times["plain"]),
            "weights": n_w, "scores": n_s,
            "extra_bytes": 3 * 4 * n_s,  # score + Adam's two moments, float32
            "extra_vs_weights": 3 * n_s / n_w, "batch": batch, "repeats": repeats}


def run_one(run: str, args: dict) -> dict:
    """One benchmark cell: prune (or fine-tune dense), finalize, evaluate on the test images."""
    import torch

    torch.set_num_threads(1)
    from edgeflow.models import create_model
    from edgeflow.prune import PruneConfig, count_macs, finalize, nm_pattern_ok, prune, sparsity_report
    from edgeflow.prune.scored import weight_numel
    from edgeflow.train import evaluate

    t0 = time.perf_counter()
    name, _, level = run.partition(":")
    (x, y), (xt, yt) = _data(args["limit"], args["test_limit"])
    v = VARIANTS.get(name, {"method": name})
    method, granularity = v["method"], v.get("granularity", "weight")
    sparsity = 0.0 if name in ("dense", "nm") else float(level)
    config = PruneConfig(sparsity=sparsity if name != "nm" else 0.5, granularity=granularity,
                         method=method, epochs=args["epochs"], regrowth_epochs=args["regrowth"],
                         batch_size=args["batch_size"], lr=args["lr"], ft_lr=args["ft_lr"],
                         budget="flops" if name == "channel" else "weights",
                         power_law_start=v.get("power_law", False),
                         score_init_order=v.get("init", "random"),
                         controller_release=v.get("release", "auto"),
                         sweep_steps=args["sweep_steps"],
                         sweep_gammas=tuple(args["sweep_gammas"]),
                         channel_multiple=args["channel_multiple"] if name == "channel" else 1,
                         score_init=tuple(args["score_init"]),
                         # hfs: magnitude-ordered scores that travel `slow_travel` in total, so
                         # that flow noise (~0.23 * lr * sqrt(steps)) stays far below the init range
                         score_lr=(args["slow_travel"] / (math.ceil(len(y) / args["batch_size"])
                                                          * args["epochs"]))
                         if name == "hfs" else args["score_lr"],
                         controller_every=args["controller_every"],
                         controller_step=args["controller_step"],
                         seed=args["seed"], device="cpu")
    model = create_model("resnet20", num_classes=10, weights=WEIGHTS)
    reference = {n: m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    dense_macs = count_macs(model)
    res = prune(model, (x, y), config=config)
    masked_top1 = evaluate(model, xt, yt)
    plain = finalize(model)
    rep = sparsity_report(plain, reference)
    row = {"run": run, "method": method, "granularity": granularity, "requested": sparsity,
           "sparsity": rep["sparsity"], "top1": evaluate(plain, xt, yt), "masked_top1": masked_top1,
           "density": rep["density"], "seconds": time.perf_counter() - t0,
           "epoch_seconds": [h["seconds"] for h in res.history], "history": res.history,
           "score_lr": res.score_lr, "reach_step": res.reach_step, "power_law": res.power_law,
           "controller": res.controller[:: max(1, len(res.controller) // 25)]}
    if granularity == "2:4":
        row["nm_layers"] = {n: nm_pattern_ok(m.weight, 2, 4) for n, m in plain.named_modules()
                            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                            and m.weight.shape[1] % 4 == 0}
        row["nm_dense_layers"] = [n for n in reference if n not in row["nm_layers"]]
        row["nm_all_valid"] = all(row["nm_layers"].values())
    if granularity == "channel":
        row["macs"] = {"dense": dense_macs, "pruned": count_macs(plain),
                       "reduction": dense_macs / count_macs(plain)}
        dense_model = create_model("resnet20", num_classes=10, weights=WEIGHTS)
        row["onnx"] = onnx_latency(dense_model, plain, repeats=args["latency_repeats"])
        row["channels"] = {n: int(weight_numel(m) // (m.weight.shape[1] * 9))
                           for n, m in plain.named_modules() if n.endswith("conv1") and "layer" in n}
    return row


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, checked against the measured numbers (missing runs say so)."""
    by = {r["run"]: r for r in results}
    dense = by.get("dense", {}).get("top1")
    out = ["", "## Targets (issue 3) against these numbers", ""]

    def pts(a: float, b: float) -> str:
        return f"{100 * (a - b):+.2f} pts"

    for level in ("0.9", "0.95", "0.98", "0.99"):
        g = by.get(f"gmp:{level}")
        for variant in ("hfr", "hf", "hfm"):
            h = by.get(f"{variant}:{level}")
            if h and g:
                need = {"0.95": 0.02, "0.98": 0.04}.get(level, 0.0)
                ok = h["top1"] - g["top1"] >= need
                out.append(f"- {variant} vs GMP at {level}: {100 * h['top1']:.2f}% vs "
                           f"{100 * g['top1']:.2f}% ({pts(h['top1'], g['top1'])}; target >= "
                           f"{100 * need:+.0f} pts): {'met' if ok else 'MISSED'}")
    if dense is not None:
        for variant in ("hfr", "hf", "hfm"):
            h = by.get(f"{variant}:0.9")
            if h:
                ok = dense - h["top1"] <= 0.015
                out.append(f"- {variant} at 0.90 vs dense {100 * dense:.2f}%: "
                           f"{pts(h['top1'], dense)} (target within 1.5): {'met' if ok else 'MISSED'}")
        if "nm" in by:
            n = by["nm"]
            ok = dense - n["top1"] <= 0.01 and n["nm_all_valid"]
            out.append(f"- 2:4 vs dense: {pts(n['top1'], dense)}, pattern valid on every eligible "
                       f"layer: {n['nm_all_valid']} (target within 1 pt): {'met' if ok else 'MISSED'}")
        for run, r in by.items():
            if "macs" in r:
                b32 = r["onnx"].get("batch32", {}).get("speedup", float("nan"))
                ok = (r["macs"]["reduction"] >= 2 and b32 >= 1.8 and dense - r["top1"] <= 0.025)
                out.append(f"- {run}: {r['macs']['reduction']:.2f}x fewer MACs, ORT batch-32 "
                           f"speedup {b32:.2f}x, accuracy {pts(r['top1'], dense)} (targets >= 2x, "
                           f">= 1.8x, within 2.5 pts): {'met' if ok else 'MISSED'}")
    exact = [r["run"] for r in results if r["requested"] > 0 and r["granularity"] == "weight"
             and abs(r["sparsity"] - r["requested"]) > 0.001]
    out.append(f"- weight-granularity runs off the requested sparsity by > 0.1 pt: {exact or 'none'}")
    return out


def seeds_table(datasets: list[dict]) -> str:
    """Top-1 of every run that each seed completed, per seed, with mean, sample standard deviation
    and range; then Hyperflows (reset) minus GMP per sparsity, paired by seed."""
    seeds = [d["meta"]["seed"] for d in datasets]
    by = [{r["run"]: r["top1"] for r in d["results"]} for d in datasets]
    common = [r for r in by[0] if all(r in b for b in by[1:])]
    lines = ["", f"## Seeds {seeds}: top-1 of the runs every seed completed", "",
             "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | range |",
             "|---|" + "---|" * (len(seeds) + 2)]

    def spread(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}"

    for run in common:
        vals = [b[run] for b in by]
        lines.append(f"| {run} | " + " | ".join(f"{100 * v:.2f}%" for v in vals)
                     + f" | {spread(vals)} | {100 * (max(vals) - min(vals)):.2f} |")
    pairs = [(f"hfr:{lv}", f"gmp:{lv}") for lv in ("0.9", "0.95", "0.98", "0.99")]
    pairs = [(h, g) for h, g in pairs if h in common and g in common]
    if pairs:
        lines += ["", "Hyperflows (reset) minus GMP, points, paired by seed (same images, same "
                  "budget):", "", "| sparsity | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean ± sd | seeds where Hyperflows wins |", "|---|" + "---|" * (len(seeds) + 2)]
        for h, g in pairs:
            d = [b[h] - b[g] for b in by]
            lines.append(f"| {h.split(':')[1]} | " + " | ".join(f"{100 * v:+.2f}" for v in d)
                         + f" | {spread(d)} | {sum(v > 0 for v in d)} of {len(d)} |")
    return "\n".join(lines) + "\n"


def table(results: list[dict], meta: dict) -> str:
    dense = next((r["top1"] for r in results if r["run"] == "dense"), None)
    lines = [f"# B1 pruning quality ({meta['mode']} mode, scaled to this machine: see below)", "",
             f"ResNet-20, pretrained `{WEIGHTS.name}`; train: {meta['limit']} images of "
             f"cifar10/train.zip (class-balanced); test: {meta['test_limit']} images of "
             f"cifar10/test.zip. Budget for every method: {meta['epochs']} pruning + "
             f"{meta['regrowth']} fine-tune/regrowth epochs, batch {meta['batch_size']}, SGD "
             f"momentum 0.9 wd 5e-4, lr {meta['lr']} (cosine to /30) then {meta['ft_lr']} "
             f"(cosine to /10), crop+flip, label smoothing 0.1; seed {meta['seed']}. "
             f"Machine: {meta['machine']}; {meta['jobs']} worker processes x 1 thread, "
             "shared with other jobs (timings are noisy).", "",
             *([f"**Note.** {meta['note']}.", ""] if meta.get("note") else []),
             "| run | method | granularity | requested | achieved sparsity | top-1 | vs dense | "
             "s/epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        delta = f"{100 * (r['top1'] - dense):+.2f}" if dense is not None else "n/a"
        lines.append(f"| {r['run']} | {r['method']} | {r['granularity']} | {r['requested']:.2f} | "
                     f"{100 * r['sparsity']:.3f}% | {100 * r['top1']:.2f}% | {delta} | "
                     f"{statistics.median(r['epoch_seconds']):.0f} |")
    for r in results:
        if "macs" in r:
            lines += ["", f"Channel variant ({r['run']}): MACs {r['macs']['dense']:,} -> "
                      f"{r['macs']['pruned']:,} ({r['macs']['reduction']:.2f}x fewer); block widths "
                      f"{r['channels']}.", "", "| batch | dense ms | pruned ms | speedup |",
                      "|---|---|---|---|"]
            for b, v in r["onnx"].items():
                lines.append(f"| {b} | {v['dense_ms']:.2f} | {v['pruned_ms']:.2f} | "
                             f"{v['speedup']:.2f}x |")
        if "nm_all_valid" in r:
            lines += ["", f"2:4 variant ({r['run']}): pattern valid on all "
                      f"{len(r['nm_layers'])} eligible layers: {r['nm_all_valid']}; dense "
                      f"(not 4-divisible input channels): {r['nm_dense_layers']}."]
        if r.get("power_law"):
            pl = r["power_law"]
            lines += ["", f"Power-law start ({r['run']}): sweep {pl.get('points')} -> c="
                      f"{pl.get('c', float('nan')):.3g}, alpha={pl.get('alpha', float('nan')):.3g}, "
                      f"gamma0={pl.get('gamma0', 'n/a')}; sweep cost {pl['steps']} steps; first step "
                      f"on the trajectory: {r['reach_step']}."]
    lines += targets(results)
    at = [r for r in results if r["run"].endswith(":0.95") and r["granularity"] == "weight"]
    if at:
        layers = list(at[0]["density"])
        lines += ["", "Per-layer density at 95% sparsity (fraction of weights kept):", "",
                  "| layer | " + " | ".join(r["run"] for r in at) + " |",
                  "|---|" + "---|" * len(at)]
        for layer in layers:
            lines.append(f"| {layer} | " + " | ".join(f"{r['density'][layer]:.3f}" for r in at) + " |")
    reach = {r["run"]: r["reach_step"] for r in results if r["method"] == "hyperflows"}
    lines += ["", f"First step at which Hyperflows' density is on/below its trajectory: {reach}."]
    if "overhead" in meta:
        o = meta["overhead"]
        lines += ["", f"Pruning overhead (ResNet-20, batch {o['batch']}, median of {o['repeats']} "
                  f"interleaved steps): step time plain {o['plain_step_s']:.3f} s vs scored "
                  f"{o['scored_step_s']:.3f} s ({o['time_ratio']:.2f}x); extra memory "
                  f"{o['extra_bytes'] / 1e6:.2f} MB for {o['scores']:,} scores + Adam state "
                  f"({o['extra_vs_weights']:.2f}x the weights)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", default=None, help=f"comma list (default full: {FULL_RUNS})")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--regrowth", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--ft-lr", type=float, default=0.005)
    ap.add_argument("--sweep-steps", type=int, default=30)
    ap.add_argument("--sweep-gammas", default="1,2,4,8")
    ap.add_argument("--score-init", default="0.2,0.5")
    ap.add_argument("--score-lr", type=float, default=None)
    ap.add_argument("--controller-every", type=int, default=0)
    ap.add_argument("--slow-travel", type=float, default=1.2)
    ap.add_argument("--controller-step", type=float, default=0.2)
    ap.add_argument("--channel-multiple", type=int, default=8)
    ap.add_argument("--latency-repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--deadline", default=None, help="UTC HH:MM; runs not started by then are skipped")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune"))
    ap.add_argument("--render", default=None, help="only rewrite the markdown of this JSON")
    ap.add_argument("--other-seeds", default=None,
                    help="with --render: comma list of JSONs of other seeds, for a per-seed table")
    a = ap.parse_args()
    if a.render:
        data = json.loads(Path(a.render).read_text())
        md = table(data["results"], data["meta"])
        if data["meta"].get("skipped"):
            md += f"\nNot run (deadline): {data['meta']['skipped']}\n"
        if a.other_seeds:
            md += seeds_table([data, *(json.loads(Path(f).read_text())
                                       for f in a.other_seeds.split(","))])
        Path(a.render).with_suffix(".md").write_text(md)
        print(md)
        return
    if a.quick:
        a.limit, a.test_limit, a.epochs, a.regrowth = 256, 256, 1, 1
        a.latency_repeats, a.sweep_steps, a.sweep_gammas = 5, 2, "1,8"
        a.out = a.out + "_quick" if a.out.endswith("prune") else a.out
    runs = (a.runs or (QUICK_RUNS if a.quick else FULL_RUNS)).split(",")
    args = {"limit": a.limit, "test_limit": a.test_limit, "epochs": a.epochs, "regrowth": a.regrowth,
            "batch_size": a.batch_size, "lr": a.lr, "ft_lr": a.ft_lr, "sweep_steps": a.sweep_steps,
            "sweep_gammas": [float(g) for g in a.sweep_gammas.split(",")],
            "channel_multiple": a.channel_multiple,
            "score_init": [float(v) for v in a.score_init.split(",")], "score_lr": a.score_lr,
            "controller_every": a.controller_every, "controller_step": a.controller_step,
            "latency_repeats": a.latency_repeats, "slow_travel": a.slow_travel,
            "seed": a.seed}
    meta = {**args, "mode": "quick" if a.quick else "full", "jobs": a.jobs,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": runs}
    out = Path(a.out + ".json").with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def write() -> None:
        order = {r: i for i, r in enumerate(runs)}
        results.sort(key=lambda r: order[r["run"]])
        meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta["skipped"] = [r for r in runs if r not in {x["run"] for x in results}]
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
        os.replace(tmp, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(table(results, meta) + (
            f"\nNot run (deadline): {meta['skipped']}\n" if meta["skipped"] else ""))

    import torch

    torch.set_num_threads(1)
    meta["overhead"] = overhead(repeats=3 if a.quick else 10, batch=a.batch_size)
    deadline = None
    if a.deadline:
        hh, mm = (int(v) for v in a.deadline.split(":"))
        deadline = datetime.now(timezone.utc).replace(hour=hh, minute=mm, second=0)
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        pending = {}
        queue = list(runs)
        while queue or pending:
            while queue and len(pending) < a.jobs:
                if deadline and datetime.now(timezone.utc) > deadline:
                    queue.clear()
                    break
                run = queue.pop(0)
                pending[run] = pool.submit(run_one, run, args)
            done = [r for r, f in pending.items() if f.done()]
            for r in done:
                row = pending.pop(r).result()
                results.append(row)
                print(f"{r}: sparsity {row['sparsity']:.4f} top1 {row['top1']:.4f} "
                      f"({row['seconds']:.0f}s)", flush=True)
                write()
            if not done:
                time.sleep(2)
    write()
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
