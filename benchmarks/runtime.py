"""B3 runtime benchmark: ONNX Runtime (2 threads) vs PyTorch eager on the same model, the adaptation
cost against the no-adaptation path, peak RSS of a runtime-only process, and a long adapt/predict
soak for memory growth.

Parts (``--part``, default all), each merged into ``<out>/runtime.json`` and re-rendered as
``<out>/runtime.md``, so the long soak can run in the background on its own:

- ``latency``: backbone batch 1 and 32, one drift step, Session.adapt (5-way 5-shot),
  Session.predict (75 queries), the no-adaptation path; ORT and PyTorch runs are interleaved
  (one each, alternately) so that load from other processes hits both alike; median/p90/p99.
- ``rss``: two fresh subprocesses adapt one task: runtime only (torch must stay unloaded) and the
  PyTorch-side equivalent (edgeflow.adapt); ``ru_maxrss`` of each.
- ``soak``: ``--cycles`` consecutive adapt+predict cycles on real CIFAR-10 episodes in a torch-free
  subprocess; RSS sampled along the way, growth measured after a warm-up.

The bundle: ``--bundle DIR`` (e.g. one with a trained drift), else one is exported from the
pretrained CIFAR ResNet-20 plus an UNTRAINED DriftNet (random output layer): its weights do not
change the timing, and the results say which drift was used.

Example: python benchmarks/runtime.py --quick
         nohup python benchmarks/runtime.py --part soak --cycles 10000 > soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights/cifar10-resnet20-12fca82f.th"
DATA = SHARED / "data/cifar10/test.zip"
THREADS = 2


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- bundle -------------------------------------------------------------------------------------

def make_bundle(work: Path) -> Path:
    """ResNet-20 (pretrained) + an untrained DriftNet of the default size -> work/b3.bundle."""
    import torch

    from edgeflow.adapt import DriftConfig, DriftNet, IntegratorSettings, ThetaSpec, save_drift
    from edgeflow.data import Preprocess, load_dataset
    from edgeflow.export import export_bundle
    from edgeflow.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", weights=WEIGHTS).eval()
    spec = ThetaSpec.from_model(model, max_size=1024)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=model.feature_dim)).eval()
    torch.nn.init.normal_(drift.velocity_net.out.weight, std=0.01)  # untrained, but not a no-op
    settings = IntegratorSettings(method="euler", steps=10)
    save_drift(work / "drift_untrained.pt", drift=drift, spec=spec, theta0=spec.get(model),
               settings=settings)
    images = load_dataset(DATA, limit=64).images
    out = work / "b3.bundle"
    export_bundle(model, output=out, preprocess_spec=Preprocess(size=32), parity_images=images,
                  spec=spec, drift=drift, settings=settings,
                  source={"model": "resnet20", "weights": WEIGHTS.name,
                          "drift": "untrained DriftNet (random output layer, std 0.01)"},
                  target="cpu-2core")
    return out


def torch_side(bundle: Path, work: Path):
    """(model, spec, drift, settings) of the PyTorch reference for ``bundle``."""
    from edgeflow.adapt import IntegratorSettings, load_drift
    from edgeflow.models import create_model
    from edgeflow.runtime import load_bundle

    b = load_bundle(bundle)
    model = create_model("resnet20", weights=WEIGHTS).eval()
    drift, spec, _, _, _ = load_drift(work / "drift_untrained.pt")
    return model, spec, drift, IntegratorSettings(**b.integrator)


# ---- latency ------------------------------------------------------------------------------------

def _stats(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "runs": len(a)}


def _interleaved(fns: dict, *, repeats: int, warmup: int) -> dict[str, dict]:
    """Time several callables in turn, one run each per round, so all see the same load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: _stats(v) for k, v in ts.items()}


def _pair(ort_fn, torch_fn, *, repeats: int, warmup: int) -> dict:
    """ORT vs PyTorch, interleaved; ``speedup`` = PyTorch median / ORT median."""
    fns = {"ort": ort_fn, **({"torch": torch_fn} if torch_fn else {})}
    out = _interleaved(fns, repeats=repeats, warmup=warmup)
    if torch_fn:
        out["speedup"] = out["torch"]["median_ms"] / out["ort"]["median_ms"]
    return out


def run_latency(bundle: Path, work: Path, *, repeats: int, warmup: int) -> dict:
    import torch

    from edgeflow.adapt import features_with_theta, hyperflow_adapt, prototype_logits, prototypes
    from edgeflow.data import EpisodeSampler, load_dataset, preprocess
    from edgeflow.runtime import Session
    from edgeflow.runtime.drift_loop import first_inputs

    torch.set_num_threads(THREADS)
    model, spec, drift, settings = torch_side(bundle, work)
    ds = load_dataset(DATA, limit=2000)
    ep = EpisodeSampler(ds.labels, ways=5, shots=5, queries=15, seed=0).episode(0)
    sx, sy, qx = ds.images[ep.support], ep.support_labels, ds.images[ep.query]
    res: dict = {}
    with Session(bundle, backend="onnxruntime", threads=THREADS) as s, torch.no_grad():
        pre = s.preprocess
        theta0 = torch.from_numpy(np.array(s.theta0))
        backbone = s.runners["backbone"]  # one call at batch b (Session.features would chunk)
        for b in (1, 32):
            x = s.prepare(ds.images[:b])
            xt = torch.from_numpy(x)
            res[f"backbone_b{b}"] = _pair(lambda x=x: backbone.infer({"images": x, "theta": s.theta0}),
                                          lambda xt=xt: model.features(xt), repeats=repeats,
                                          warmup=warmup)
            res[f"backbone_theta_b{b}"] = _pair(lambda x=x: backbone.infer({"images": x,
                                                                             "theta": s.theta0}),
                                                lambda xt=xt: features_with_theta(model, xt, theta0, spec),
                                                repeats=repeats, warmup=warmup)
        task = s.adapt(sx, sy)
        z, stats = first_inputs(s, task)
        zt = torch.from_numpy(z)
        st = None if stats is None else torch.from_numpy(stats)
        res["drift_step"] = _pair(lambda: s.velocity(s.theta0, 0.5, z, stats),
                                  lambda: drift.velocity(theta0[None], 0.5, zt, st),
                                  repeats=repeats, warmup=warmup)

        def torch_adapt():
            xs = torch.from_numpy(preprocess(sx, pre))
            ys = torch.from_numpy(sy)
            theta = hyperflow_adapt(model, spec, drift, xs, ys, 5, settings=settings)
            return theta, prototypes(features_with_theta(model, xs, theta, spec), ys, 5)

        def torch_predict(theta, protos):
            xq = torch.from_numpy(preprocess(qx, pre))
            return prototype_logits(features_with_theta(model, xq, theta, spec), protos).argmax(1)

        t_theta, t_protos = torch_adapt()
        res["adapt_5w5s"] = _pair(lambda: s.adapt(sx, sy), torch_adapt, repeats=repeats, warmup=warmup)
        res["predict_75q"] = _pair(lambda: s.predict(qx, task), lambda: torch_predict(t_theta, t_protos),
                                   repeats=repeats, warmup=warmup)
        res["adapt_predict"] = _pair(lambda: s.predict(qx, s.adapt(sx, sy)),
                                     lambda: torch_predict(*torch_adapt()), repeats=repeats,
                                     warmup=warmup)
        # the adaptation-cost ratio: both ORT paths interleaved in one loop
        both = _interleaved({"adapt_predict": lambda: s.predict(qx, s.adapt(sx, sy)),
                             "no_adaptation": lambda: s.predict(qx, s.adapt(sx, sy, steps=0))},
                            repeats=repeats, warmup=warmup)
    res["no_adaptation"] = {"ort": both["no_adaptation"]}
    res["adapt_vs_no_adaptation"] = {
        "adapt_predict_median_ms": both["adapt_predict"]["median_ms"],
        "no_adaptation_median_ms": both["no_adaptation"]["median_ms"],
        "ratio": both["adapt_predict"]["median_ms"] / both["no_adaptation"]["median_ms"]}
    return res


# ---- peak RSS -----------------------------------------------------------------------------------

# Peak RSS = VmHWM of /proc/self/status: ru_maxrss would be wrong here, because Linux carries it
# over fork+exec (a child of a big parent reports the parent's peak).
_PEAK = """
def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""

_RUNTIME_ONLY = _PEAK + """
import json, sys
sys.path.insert(0, {root!r})
import numpy as np
from edgeflow.runtime import Session
d = np.load({episode!r})
with Session({bundle!r}, threads={threads}) as s:
    task = s.adapt(d["sx"], d["sy"])
    labels, _ = s.predict(d["qx"], task)
print(json.dumps({{"maxrss_kb": peak_kb(), "torch_loaded": "torch" in sys.modules,
                  "queries": len(labels)}}))
"""

_TORCH_SIDE = _PEAK + """
import json, sys
sys.path.insert(0, {root!r})
import numpy as np, torch
torch.set_num_threads({threads})
from edgeflow.adapt import classify, hyperflow_adapt, load_drift, IntegratorSettings
from edgeflow.data import Preprocess, preprocess
from edgeflow.models import create_model
d = np.load({episode!r})
model = create_model("resnet20", weights={weights!r}).eval()
drift, spec, theta0, settings, meta = load_drift({drift!r})
pre = Preprocess(size=32)
xs, ys = torch.from_numpy(preprocess(d["sx"], pre)), torch.from_numpy(d["sy"])
xq = torch.from_numpy(preprocess(d["qx"], pre))
theta = hyperflow_adapt(model, spec, drift, xs, ys, 5, settings=settings)
labels = classify(model, spec, theta, xs, ys, xq, 5).argmax(1)
print(json.dumps({{"maxrss_kb": peak_kb(), "queries": len(labels)}}))
"""


def _episode_file(work: Path) -> Path:
    from edgeflow.data import EpisodeSampler, load_dataset

    path = work / "episode.npz"
    if not path.exists():
        ds = load_dataset(DATA, limit=2000)
        ep = EpisodeSampler(ds.labels, ways=5, shots=5, queries=15, seed=0).episode(0)
        np.savez(path, sx=ds.images[ep.support], sy=ep.support_labels, qx=ds.images[ep.query])
    return path


def _subprocess_json(code: str, *, timeout: float | None = 600, log: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON. ``log`` passes its stderr
    (progress lines) through to ours."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stderr=None if log else subprocess.PIPE, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"subprocess failed ({out.returncode}): {(out.stderr or '')[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rss(bundle: Path, work: Path) -> dict:
    episode = str(_episode_file(work))
    fmt = {"root": str(ROOT), "bundle": str(bundle), "episode": episode, "threads": THREADS,
           "weights": str(WEIGHTS), "drift": str(work / "drift_untrained.pt")}
    rt = _subprocess_json(_RUNTIME_ONLY.format(**fmt))
    pt = _subprocess_json(_TORCH_SIDE.format(**fmt))
    return {"measure": "VmHWM (peak resident set) of a fresh process",
            "runtime_only_mb": rt["maxrss_kb"] / 1024, "torch_side_mb": pt["maxrss_kb"] / 1024,
            "ratio": rt["maxrss_kb"] / pt["maxrss_kb"], "runtime_torch_loaded": rt["torch_loaded"]}


# ---- soak ---------------------------------------------------------------------------------------

_SOAK = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from edgeflow.data import EpisodeSampler, load_dataset
from edgeflow.runtime import Session

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

ds = load_dataset({data!r}, limit=2000)
sampler = EpisodeSampler(ds.labels, ways=5, shots={shots}, queries={queries}, seed=1)
episodes = [sampler.episode(i) for i in range(50)]
samples, errors, correct, total = [], 0, 0, 0
t0 = time.time()
with Session({bundle!r}, threads={threads}) as s:
    for i in range({cycles}):
        ep = episodes[i % len(episodes)]
        try:
            task = s.adapt(ds.images[ep.support], ep.support_labels)
            labels, _ = s.predict(ds.images[ep.query], task)
            correct += int((labels == ep.query_labels).sum()); total += len(labels)
        except Exception as exc:
            errors += 1
            print("error", i, repr(exc), file=sys.stderr)
        if i % {every} == 0 or i == {cycles} - 1:
            samples.append((i + 1, rss_mb()))
            print("cycle", i + 1, "rss_mb", round(samples[-1][1], 1), flush=True, file=sys.stderr)
print(json.dumps({{"cycles": {cycles}, "shots": {shots}, "queries_per_cycle": 5 * {queries}, "errors": errors,
                  "samples": samples, "seconds": time.time() - t0,
                  "torch_loaded": "torch" in sys.modules, "accuracy": correct / max(1, total)}}))
"""


def run_soak(bundle: Path, *, cycles: int, shots: int = 1, queries: int = 1) -> dict:
    """5-way ``shots``-shot episodes with ``queries`` per class. The default (1-shot, 5 queries)
    keeps 10,000 cycles within the time this shared 2-core machine gives; every code path
    (preprocess, backbone at theta0, task encoder, drift integration, backbone at the adapted
    theta, predict) runs in every cycle all the same."""
    every = max(1, cycles // 50)
    res = _subprocess_json(_SOAK.format(root=str(ROOT), data=str(DATA), bundle=str(bundle),
                                        threads=THREADS, cycles=cycles, every=every,
                                        shots=shots, queries=queries),
                           timeout=None, log=True)
    samples = res["samples"]
    warm = next((rss for n, rss in samples if n >= min(100, cycles // 10 + 1)), samples[0][1])
    final = samples[-1][1]
    res.update({"rss_after_warmup_mb": warm, "rss_final_mb": final,
                "growth": (final - warm) / warm, "seconds_per_cycle": res["seconds"] / cycles})
    return res


# ---- report -------------------------------------------------------------------------------------

def render(results: dict) -> str:
    m = results.get("machine", {})
    lines = ["# B3 runtime benchmark", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores visible), ONNX Runtime "
             f"{m.get('onnxruntime')} with intra_op_num_threads={THREADS} and graph optimisation ALL; "
             f"PyTorch {m.get('torch')} eager with torch.set_num_threads({THREADS}). Other CPU-heavy "
             "jobs shared these cores during the runs, so absolute times are noisy; ORT and PyTorch "
             "samples were taken interleaved and the ratios come from the same run.", "",
             f"Bundle: {results.get('bundle', {}).get('source')}", ""]
    for note in results.get("notes", []):
        lines += [f"Note: {note}", ""]
    lat = results.get("latency")
    if lat:
        lines += [f"## Latency ({results.get('mode')} mode, ms)", "",
                  "| case | ORT median | p90 | p99 | PyTorch median | p90 | p99 | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in lat.items():
            if "ort" not in r:
                continue
            o, t = r["ort"], r.get("torch")
            tcols = (f"{t['median_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} | "
                     f"{r['speedup']:.2f}x") if t else "- | - | - | -"
            lines.append(f"| {name} | {o['median_ms']:.2f} | {o['p90_ms']:.2f} | {o['p99_ms']:.2f} | "
                         f"{tcols} |")
        a = lat["adapt_vs_no_adaptation"]
        lines += ["", f"Adapt (5-way 5-shot) + predict (75 queries): {a['adapt_predict_median_ms']:.1f} "
                      f"ms median vs {a['no_adaptation_median_ms']:.1f} ms for the no-adaptation path "
                      f"(prototypes at theta0): ratio **{a['ratio']:.2f}x** (target <= 3x).", ""]
        lines += [f"Backbone speed-up over PyTorch eager: batch 1 **{lat['backbone_b1']['speedup']:.2f}x**, "
                  f"batch 32 **{lat['backbone_b32']['speedup']:.2f}x** (target >= 1.3x). "
                  "`backbone_theta_*` compares with PyTorch's features_with_theta (theta substituted).",
                  ""]
    rss = results.get("rss")
    if rss:
        lines += ["## Peak RSS (adapt one task, fresh process)", "",
                  "| process | peak RSS (VmHWM) MB |", "|---|---|",
                  f"| runtime only (numpy + onnxruntime; torch loaded: {rss['runtime_torch_loaded']}) | "
                  f"{rss['runtime_only_mb']:.1f} |",
                  f"| PyTorch side (edgeflow.adapt) | {rss['torch_side_mb']:.1f} |", "",
                  f"Ratio **{rss['ratio']:.1%}** (target < 30%).", ""]
    soak = results.get("soak")
    if soak:
        lines += ["## Soak", "",
                  f"{soak['cycles']} consecutive adapt+predict cycles (5-way {soak.get('shots', 5)}-shot, "
                  f"{soak.get('queries_per_cycle', 75)} queries, real "
                  f"CIFAR-10 episodes, torch loaded: {soak['torch_loaded']}): {soak['errors']} errors, "
                  f"RSS {soak['rss_after_warmup_mb']:.1f} MB after warm-up -> {soak['rss_final_mb']:.1f} "
                  f"MB at the end: growth **{soak['growth']:.2%}** (target < 5%); "
                  f"{soak['seconds_per_cycle'] * 1e3:.0f} ms per cycle; accuracy of the untrained-drift "
                  f"bundle {soak['accuracy']:.3f}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats and a short soak (for tests)")
    ap.add_argument("--part", choices=["all", "latency", "rss", "soak"], default="all")
    ap.add_argument("--bundle", type=Path, help="bundle to measure (default: export the B3 bundle)")
    ap.add_argument("--cycles", type=int, help="soak cycles (default 10000, quick 20)")
    ap.add_argument("--repeats", type=int, help="timed runs per case (default 100, quick 5)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--work", type=Path, default=ROOT / "runs/b3")
    ap.add_argument("--render", action="store_true", help="only re-render <out>/runtime.md from the JSON")
    args = ap.parse_args()
    if args.render:
        results = json.loads((args.out / "runtime.json").read_text())
        (args.out / "runtime.md").write_text(render(results) + "\n")
        print(render(results))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if bundle is None:
        bundle = args.work / "b3.bundle"
        if not bundle.exists() or not (args.work / "drift_untrained.pt").exists():
            bundle = make_bundle(args.work)
    repeats = args.repeats or (5 if args.quick else 100)
    cycles = args.cycles or (20 if args.quick else 10_000)
    jpath = args.out / "runtime.json"
    results = json.loads(jpath.read_text()) if jpath.exists() else {}
    import onnxruntime

    from edgeflow.runtime import load_bundle

    man = load_bundle(bundle).manifest
    results.update({"mode": "quick" if args.quick else "full",
                    "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                                "onnxruntime": onnxruntime.__version__,
                                "torch": _torch_version(), "python": platform.python_version()},
                    "bundle": {"path": str(bundle), "source": man["source"],
                               "theta_size": man["theta"]["size"],
                               "integrator": man["adaptation"]["integrator"]}})
    if args.part in ("all", "latency"):
        results["latency"] = run_latency(bundle, args.work, repeats=repeats,
                                         warmup=1 if args.quick else 5)
    if args.part in ("all", "rss"):
        results["rss"] = run_rss(bundle, args.work)
    if args.part in ("all", "soak"):
        results["soak"] = run_soak(bundle, cycles=cycles)
    # Re-read before writing: another part (the soak) may have finished meanwhile.
    merged = json.loads(jpath.read_text()) if jpath.exists() else {}
    merged.update({k: v for k, v in results.items() if k not in ("latency", "rss", "soak")})
    for part in ("latency", "rss", "soak"):
        if part in results and (args.part in ("all", part)):
            merged[part] = results[part]
    results = merged
    jpath.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "runtime.md").write_text(render(results) + "\n")
    print(render(results))


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
