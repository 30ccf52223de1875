"""Does ORT CPU speed follow MACs when ResNet-20 channels shrink? (issue 3: >= 2x MACs, >= 1.8x speed)

Random-init CIFAR ResNet-20s (latency does not depend on the weights' values), exported to ONNX
and timed in ONNX Runtime's CPU provider on ONE intra-op thread, batch 1 and 32; every row takes
``--rounds`` ``benchmarks.prune.onnx_latency`` calls (medians of dense and smaller model timed
interleaved in one run) and reports the median speed-up over rounds and its range.

* ``uniform``: every channel count scaled (width 16 vs 16..8, 32 vs 24..16). ``16 vs 16`` is the
  noise control (ideal speed-up 1.00).
* ``inner``: only each basic block's inner channels (conv1 out / conv2 in) shrink, the shape our
  channel pruning produces (``shrink_channels`` over ``channel_plan``); inner widths per stage or
  per block, e.g. 50% everywhere vs widths that are multiples of 16 or 8.

"multiple" is the largest of 16/8/4/2/1 dividing every conv's channel counts (the stem's 3 RGB
inputs aside); with AVX-512, MLAS's NCHWc convolutions work on 16-channel blocks.

    OMP_NUM_THREADS=1 python benchmarks/channel_speed.py            # full, about 2 minutes
    OMP_NUM_THREADS=1 python benchmarks/channel_speed.py --quick    # seconds: proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNIFORM = [(16, w) for w in (16, 14, 12, 10, 8)] + [(32, w) for w in (24, 20, 16)]
INNER = [  # (label, inner widths per stage (3) or per block (9)) of a width-16 ResNet-20
    ("B1 channel:0.5 shape", (8, 8, 8, 16, 16, 16, 32, 32, 24)),
    ("50% every block", (8, 16, 32)),
    ("multiples of 16 (smallest)", (16, 16, 16)),
    ("multiples of 8, stage 1 full", (16, 8, 8)),
    ("ragged ~50%", (7, 15, 31)),
]
QUICK_UNIFORM, QUICK_INNER = [(16, 16), (16, 8)], INNER[1:3]


def _multiple(model) -> int:
    from torch import nn

    counts = [c for m in model.modules() if isinstance(m, nn.Conv2d)
              for c in (m.in_channels, m.out_channels) if c != 3]
    return next(b for b in (16, 8, 4, 2, 1) if all(c % b == 0 for c in counts))


def _uniform(width: int):
    """A width-``width`` ResNet-20, or None when its option-A shortcuts cannot pad (odd widths)."""
    import torch

    from edgeflow.models import create_model

    model = create_model("resnet20", num_classes=10, width=width).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    except RuntimeError:
        return None
    return model


def _inner(dense, widths: tuple[int, ...]):
    import torch

    from edgeflow.prune.channel import channel_plan, shrink_channels

    plan = channel_plan(dense)
    per = len(plan) // 3
    ws = widths if len(widths) == len(plan) else [w for w in widths for _ in range(per)]
    return shrink_channels(dense, {g.conv: torch.arange(w) for g, w in zip(plan, ws, strict=True)})


def _row(family: str, label: str, dense, small, repeats: int, rounds: int) -> dict:
    from benchmarks.prune import onnx_latency
    from edgeflow.prune.channel import count_macs

    md, ms = count_macs(dense), count_macs(small)
    runs = [onnx_latency(dense, small, repeats=repeats) for _ in range(rounds)]
    lat = {b: {k: statistics.median(r[b][k] for r in runs) for k in runs[0][b]}
           | {"speedups": [r[b]["speedup"] for r in runs]} for b in runs[0]}
    print(f"{family:7} {label:32} macs x{md / ms:.2f}  "
          + "  ".join(f"{k} x{v['speedup']:.2f}" for k, v in lat.items()), flush=True)
    return {"family": family, "config": label, "macs_dense": md, "macs": ms, "macs_ratio": md / ms,
            "multiple": _multiple(small), **lat}


def _meta(repeats: int, rounds: int, quick: bool) -> dict:
    import onnxruntime as ort
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": model,
            "avx512f": "avx512f" in flags, "onnxruntime": ort.__version__, "torch": torch.__version__,
            "threads": 1, "batches": [1, 32], "repeats": repeats, "rounds": rounds,
            "load_avg_1min": os.getloadavg()[0], "mode": "quick" if quick else "full",
            "command": " ".join(["python benchmarks/channel_speed.py", *sys.argv[1:]])}


def conclusions(rows: list[dict], block: int) -> list[str]:
    """Plain sentences computed from the rows: batch-32 speed-ups, batch 1 in parentheses."""
    def sp(r: dict, b: str = "batch32") -> float:
        return r[b]["speedup"]

    def both(r: dict) -> str:
        return f"x{sp(r):.2f} (x{sp(r, 'batch1'):.2f})"

    def spread(b: str) -> float:
        return statistics.median((max(r[b]["speedups"]) - min(r[b]["speedups"])) / sp(r, b) for r in rows)

    out, rest = [], [r for r in rows if r["macs_ratio"] > 1.0]
    ctrl = " ".join(f"The same-width control ran {both(r)} (ideal 1.00)." for r in rows[:1]
                    if r["macs_ratio"] == 1.0)
    if len(rows[0]["batch32"]["speedups"]) > 1:
        ctrl += (f" A row's speed-up varied between rounds by a median {spread('batch32'):.0%} "
                 f"({spread('batch1'):.0%}): smaller differences are noise.")
    out += [ctrl.strip()] if ctrl else []
    eff = {a: [r for r in rest if (r["multiple"] >= block) == a] for a in (True, False)}
    out += [" ".join(
        f"Models with {'all' if a else 'not all'} channel counts multiples of {block} turned a median "
        f"{statistics.median(sp(r) / r['macs_ratio'] for r in sel):.0%} "
        f"({statistics.median(sp(r, 'batch1') / r['macs_ratio'] for r in sel):.0%}) of their MAC "
        f"reduction into speed-up ({len(sel)} configs)." for a, sel in eff.items() if sel)]
    inner = [r for r in rest if r["family"] == "inner"]
    if inner:
        lo, hi = min(inner, key=lambda r: r["macs_ratio"]), max(inner, key=lambda r: r["macs_ratio"])
        out.append(f"Shrinking only block-inner channels, '{lo['config']}' (x{lo['macs_ratio']:.2f} fewer "
                   f"MACs) ran {both(lo)} and '{hi['config']}' (x{hi['macs_ratio']:.2f}) ran {both(hi)}; "
                   f"no inner-only shape beat x{max(map(sp, inner)):.2f} "
                   f"(x{max(sp(r, 'batch1') for r in inner):.2f}).")
    hits = [f"{r['family']} {r['config']}" for r in rest if r["macs_ratio"] >= 2 and sp(r) >= 1.8]
    out.append(f"Issue 3's target (>= 2x fewer MACs and >= 1.8x faster at batch 32) was met by "
               f"{', '.join(hits) if hits else 'no configuration'}.")
    return out


def write(rows: list[dict], meta: dict, notes: list[str], out: Path) -> None:
    block = 16 if meta["avx512f"] else 8
    concl = conclusions(rows, block)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "notes": notes, "conclusions": concl}, indent=1) + "\n")
    lines = [f"# ResNet-20 channel shrinking vs ONNX Runtime CPU latency ({meta['mode']})", "",
             f"`{meta['command']}` on {meta['cpu']} (avx512f: {meta['avx512f']}), onnxruntime "
             f"{meta['onnxruntime']}, {meta['threads']} thread, median of {meta['repeats']} interleaved "
             f"runs x {meta['rounds']} rounds (speed-up: median over rounds, range in brackets), "
             f"1-min load average {meta['load_avg_1min']:.1f} at the start, {meta['date']}.", "",
             "| family | config | MACs (M) | MACs ratio | multiple | b1 dense ms | b1 speed-up "
             "| b32 dense ms | b32 ms | b32 speed-up |", "|" + "---|" * 10]
    rng = lambda b: f"{b['speedup']:.2f} [{min(b['speedups']):.2f}-{max(b['speedups']):.2f}]"  # noqa: E731
    for r in rows:
        b1, b32 = r["batch1"], r["batch32"]
        lines.append(f"| {r['family']} | {r['config']} | {r['macs'] / 1e6:.1f} | {r['macs_ratio']:.2f} "
                     f"| {r['multiple']} | {b1['dense_ms']:.2f} | {rng(b1)} "
                     f"| {b32['dense_ms']:.1f} | {b32['pruned_ms']:.1f} | {rng(b32)} |")
    lines += ["", *[f"Note: {n}\n" for n in notes], "## Conclusions", "",
              "Speed-ups at batch 32, batch 1 in parentheses.", "", *[f"- {c}" for c in concl], ""]
    out.parent.joinpath(out.name + ".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per model (30; quick: 5)")
    ap.add_argument("--rounds", type=int, default=None, help="onnx_latency calls per row (3; quick: 1)")
    ap.add_argument("--quick", action="store_true", help="two configs per family, 5 repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "channel_speed")
    args = ap.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 30)
    rounds = args.rounds or (1 if args.quick else 3)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    rows, notes = [], []
    for dw, w in QUICK_UNIFORM if args.quick else UNIFORM:
        dense, small = _uniform(dw), _uniform(w)
        if dense is None or small is None:
            notes.append(f"width {dw} vs {w} skipped: option-A shortcut padding needs even stage widths")
            continue
        rows.append(_row("uniform", f"width {dw} -> {w}", dense, small, repeats, rounds))
    dense = _uniform(16)
    for label, widths in QUICK_INNER if args.quick else INNER:
        rows.append(_row("inner", f"{label} {'/'.join(map(str, widths))}", dense,
                         _inner(dense, widths), repeats, rounds))
    write(rows, _meta(repeats, rounds, args.quick), notes, args.out)


if __name__ == "__main__":
    main()
