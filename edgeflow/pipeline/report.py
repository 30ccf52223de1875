"""The compile report: ``metrics.json`` is the source of truth; ``report.md`` and PNGs render it.

Every number in report.md is read from the metrics dict passed in (a test checks that the two
agree), so the report can be re-rendered from metrics.json alone: ``render_report(metrics, dir)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# one name per method, in the report and the compile summary alike (metrics keys stay short)
METHOD_LABELS = {"none": "no adaptation", "finetune": "fine-tuning",
                 "recenter": "re-centring alone", "hyperflow": "HyperFlow (drift)"}


def method_labels(metrics: dict[str, Any]) -> dict[str, str]:
    """METHOD_LABELS, with HyperFlow named "drift + re-centring" only where the bundle re-centres
    (its integrator's ``recenter`` > 0); otherwise the drift alone moves theta."""
    integrator = metrics.get("integrator") or (metrics.get("adapt") or {}).get("integrator") or {}
    if float(integrator.get("recenter") or 0.0) > 0:
        return {**METHOD_LABELS, "hyperflow": "HyperFlow (drift + re-centring)"}
    return dict(METHOD_LABELS)


def engines_note(metrics: dict[str, Any]) -> str:
    """One line on TensorRT engines: built, not wanted (no GPU), or not built and how to build them
    (empty without engine information)."""
    eng = metrics.get("engines") or {}
    target = (metrics.get("source") or {}).get("target", "TARGET")
    if not eng:  # metrics from before the engines stage, or not from a compile
        return ""
    if eng.get("built"):
        return f"TensorRT engines: built ({eng.get('precision', '?')})"
    reason = eng.get("reason") or "not attempted"
    if not eng.get("gpu", "has no GPU" not in reason):
        return f"TensorRT engines: none ({reason}); the bundle runs on ONNX Runtime"
    return (f"TensorRT engines: NOT built here. Build them on the device with `edgeflow build "
            f"{metrics.get('bundle', 'BUNDLE')} --target {target}` (the bundle's path there). "
            f"Why not here: {reason}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _acc(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    return f"{100 * entry['acc']:.2f} ± {100 * entry['ci95']:.2f}"


def _plots(metrics: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the PNG plots; return {name: file name}. Headless (Agg) so it runs on servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    layers = metrics.get("prune", {}).get("layers") or []
    if layers:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 3.5))
        ax.bar(range(len(layers)), [la["density"] for la in layers], color="#4477aa")
        ax.set_xticks(range(len(layers)), [la["name"] for la in layers], rotation=75, fontsize=7)
        ax.set_ylabel("density (kept fraction)")
        ax.set_ylim(0, 1.05)
        ax.set_title("Per-layer density after pruning")
        fig.tight_layout()
        fig.savefig(out / "density.png", dpi=110)
        plt.close(fig)
        files["density"] = "density.png"
    curve = metrics.get("steps_curve") or {}
    if curve:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for shots, points in curve.items():
            xs = [p["steps"] for p in points]
            ys = [100 * p["acc"] for p in points]
            err = [100 * p["ci95"] for p in points]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{shots}-shot")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("Euler steps (0 = no adaptation)")
        ax.set_ylabel("query accuracy (%)")
        ax.set_title("Accuracy against integration steps")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "steps.png", dpi=110)
        plt.close(fig)
        files["steps"] = "steps.png"
    fewshot = metrics.get("fewshot") or {}
    labels = method_labels(metrics)
    if fewshot:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        shots = list(fewshot)
        methods = [m for m in labels if any(m in fewshot[s] for s in shots)]
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            ys = [100 * fewshot[s].get(m, {}).get("acc", 0) for s in shots]
            err = [100 * fewshot[s].get(m, {}).get("ci95", 0) for s in shots]
            ax.bar([j + i * width for j in range(len(shots))], ys, width, yerr=err, capsize=3,
                   label=labels[m])
        ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(shots))],
                      [f"{s}-shot" for s in shots])
        ax.set_ylabel("query accuracy (%)")
        ax.set_title("Few-shot accuracy on novel classes (95% CI)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fewshot.png", dpi=110)
        plt.close(fig)
        files["fewshot"] = "fewshot.png"
    return files


def render_report(metrics: dict[str, Any], out: Path) -> Path:
    """Write ``metrics.json``, the PNG plots and ``report.md`` into ``out``; return report.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))
    plots = _plots(metrics, out)
    lines = ["# EdgeFlow compile report", ""]
    src = metrics.get("source", {})
    if src:
        lines += [f"Model `{src.get('model')}` on `{src.get('data')}`, target `{src.get('target')}`, "
                  f"bundle `{metrics.get('bundle')}`.", ""]
    prune = metrics.get("prune") or {}
    if prune:
        b, a = prune.get("before", {}), prune.get("after", {})
        lines += ["## Pruning", "",
                  f"{prune.get('method')} / {prune.get('granularity')}, requested sparsity "
                  f"{_pct(prune.get('requested'))}, achieved {_pct(prune.get('sparsity'))}.", "",
                  "| | top-1 | parameters | MACs | size (bytes) |", "|---|---|---|---|---|",
                  f"| before | {_pct(b.get('top1'))} | {b.get('params', 'n/a')} | "
                  f"{b.get('macs', 'n/a')} | {b.get('size_bytes', 'n/a')} |",
                  f"| after | {_pct(a.get('top1'))} | {a.get('params', 'n/a')} | "
                  f"{a.get('macs', 'n/a')} | {a.get('size_bytes', 'n/a')} |", ""]
        if "density" in plots:
            lines += ["![per-layer density](density.png)", ""]
    fewshot = metrics.get("fewshot") or {}
    labels = method_labels(metrics)
    # the three core columns always (n/a where absent); re-centring only where it was measured
    shown = [m for m in labels
             if m != "recenter" or any("recenter" in row for row in fewshot.values())]
    if fewshot:
        lines += ["## Few-shot accuracy on held-out classes", "",
                  f"{metrics.get('episodes', '?')} episodes per shot count, "
                  f"{metrics.get('ways', '?')}-way, the same episodes for every method; "
                  "mean ± 95% confidence interval (%).", "",
                  "| shots | " + " | ".join(labels[m] for m in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for shots, row in fewshot.items():
            lines.append(f"| {shots} | " + " | ".join(_acc(row.get(m)) for m in shown) + " |")
        lines.append("")
        if (metrics.get("config") or {}).get("backbone", {}).get("weights") == "imagenet":
            lines += ["**Note.** The backbone started from ImageNet weights: held-out classes "
                      "drawn from ImageNet (Tiny-ImageNet's are) were seen in pre-training, so "
                      "these numbers are not novel-class numbers; the other domains below are "
                      "what count.", ""]
        if "fewshot" in plots:
            lines += ["![few-shot accuracy](fewshot.png)", ""]
    lines += _cross_domain_lines(metrics, labels)
    cost = metrics.get("cost") or {}
    if cost:
        lines += ["## Adaptation cost per episode", "",
                  "| method | median time (ms) | peak memory (bytes) |", "|---|---|---|"]
        for m, c in cost.get("methods", {}).items():
            lines.append(f"| {labels.get(m, m)} | {c.get('time_ms', float('nan')):.2f} | "
                         f"{c.get('memory_bytes', 'n/a')} |")
        lines += ["", f"HyperFlow's extra time over no adaptation is "
                  f"{_pct(cost.get('time_ratio'))} of fine-tuning's; its extra memory "
                  f"{_pct(cost.get('memory_ratio'))} ({cost.get('memory_method', '')}).", ""]
    adapt = metrics.get("adapt") or {}
    if adapt.get("val_acc_by_euler_steps"):
        by = adapt["val_acc_by_euler_steps"]
        none = adapt.get("val_acc_no_adaptation")
        lines += ["## Meta-training (val tasks)", "",
                  f"Val accuracy without adaptation {_pct(none)}; with the drift, by Euler steps: "
                  + ", ".join(f"{k}: {_pct(by[k])}" for k in sorted(by, key=int))
                  + f". Device integrator: {adapt.get('integrator')}.", ""]
        data_cfg = (metrics.get("config") or {}).get("data") or {}
        if "val" in data_cfg and not data_cfg["val"]:
            lines += ["**Note.** No `[data] val` was given, so the val tasks are drawn from the "
                      "base classes' held-out images: classes the backbone was trained on. They "
                      "cannot show what the drift does to classes it never saw (the few-shot "
                      "section above can); on the default digits compile they rewarded drifts "
                      "that lose on the held-out digits. Where you have classes disjoint from "
                      "base and novel, give them as `[data] val`.", ""]
        rec = adapt.get("val_acc_by_recenter") or {}
        if rec:  # re-centring alone is the steps-0 column of the selection grid
            lines += ["Re-centring alone (no drift), by alpha: "
                      + ", ".join(f"{a}: {_pct(row.get('0'))}" for a, row in rec.items())
                      + ".", ""]
        if adapt.get("best_step") == 0 or (none is not None and all(v == none for v in by.values())):
            lines += ["**The drift is the untrained (zero) one.** No drift checkpoint beat no "
                      "adaptation on the val tasks, so meta-training kept the zero-initialised "
                      "drift: it leaves theta unchanged (no harm, and no gain; only the re-centring move, "
                      "if val chose one, adapts). Compare the "
                      "fine-tuning column above: where fine-tuning the same biases gains little, "
                      "there is little for the drift to learn.",
                      ""]
    outcome = adapt.get("outcome") or {}
    if outcome.get("selection"):
        sel = outcome["selection"]

        def diff(key: str) -> str:
            return f"{100 * sel[key]['mean']:+.2f} ± {100 * sel[key]['ci95']:.2f} points"
        lines += ["## Outcome meta-training", "",
                  f"The regressed drift was then trained on the query loss after adaptation "
                  f"({outcome['config']['euler_steps']} Euler steps, "
                  + (f"closed loop every {outcome['config']['loop_every']} steps"
                     if outcome['config']['loop_every'] else "open loop")
                  + f"; weights of step "
                  f"{outcome['best_step']} kept). On {outcome['val_tasks']} fresh val tasks: no "
                  f"adaptation {_pct(sel['none']['mean'])}, regressed drift "
                  f"{_pct(sel['trajectory']['mean'])}, outcome drift "
                  f"{_pct(sel['outcome']['mean'])}: {diff('outcome - none')} over no "
                  f"adaptation and {diff('outcome - trajectory')} over the regressed drift "
                  "(paired 95% intervals). Learned per-layer re-centring gain: "
                  + ", ".join(f"{g:+.3f}" for g in outcome.get("layer_gain", [])) + ".", ""]
        if outcome.get("damping", 1.0) != 1.0:
            lines += [f"No trained weights did no harm in-domain on val, so the drift's whole "
                      f"move was damped to {outcome['damping']:g} of itself, the largest of "
                      f"{outcome['config'].get('damping_choices')} that does no harm there "
                      "(0: the drift moves nothing).", ""]
        if outcome.get("val_no_harm_in_domain") is False:
            lines += ["**No weights did no harm in-domain:** every checkpoint, the starting one "
                      "too, lost to no adaptation on the val class episodes without a domain "
                      "shift at some shot count; the best by mean val accuracy was kept. Deploy "
                      "with `Session.adapt(..., guard=True)`, or compile with `--adapt-objective "
                      "trajectory` or `--no-adapt-enabled`.", ""]
    if metrics.get("steps_curve"):
        lines += ["## Accuracy against Euler steps", "", "![accuracy vs steps](steps.png)", ""]
        for shots, points in metrics["steps_curve"].items():
            lines.append(f"- {shots}-shot: " + ", ".join(
                f"{p['steps']} steps {100 * p['acc']:.2f}%" for p in points))
        lines.append("")
    latency = metrics.get("latency") or {}
    if latency:
        lines += ["## Latency (median ms)", "", "| backend | batch 1 | batch 32 |", "|---|---|---|"]
        for name, row in latency.items():
            lines.append(f"| {name} | {row.get('batch1_ms', float('nan')):.3f} | "
                         f"{row.get('batch32_ms', float('nan')):.3f} |")
        lines.append("")
    if metrics.get("engines"):
        lines += ["## TensorRT engines", "", engines_note(metrics) + ".", ""]
    checks = metrics.get("checks") or []
    if checks:
        lines += ["## Target checks", "", "| check | result | note |", "|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['name']} | {'pass' if c['ok'] else 'FAIL'} | {c.get('message', '')} |")
        lines.append("")
    seconds = metrics.get("seconds") or {}
    if seconds:
        lines += ["## Stage times", "", "| stage | seconds | reused |", "|---|---|---|"]
        for name, s in seconds.items():
            lines.append(f"| {name} | {s['seconds']:.1f} | {'yes' if s.get('reused') else 'no'} |")
        lines += ["", f"Sum of stage times (reused stages at their original time): "
                  f"{sum(s['seconds'] for s in seconds.values()) / 60:.1f} min.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _cross_domain_lines(metrics: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Accuracy and gain over no adaptation on each cross-domain set, per shot count."""
    cross = metrics.get("cross_domain") or {}
    if not cross:
        return []
    episodes = (metrics.get("config") or {}).get("eval", {}).get("cross_episodes") or \
        metrics.get("episodes", "?")
    first = next(iter(cross.values()))
    methods = [m for m in labels if any(m in row for row in first.values())]
    lines = ["## Few-shot accuracy on other domains", "",
             f"{episodes} episodes per set and shot count, the same for every method; mean ± 95% "
             "confidence interval (%), and in brackets the gain over no adaptation (points). "
             "These sets share no classes with the training data.", "",
             "| set | shots | " + " | ".join(labels[m] for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, table in cross.items():
        for shots, row in table.items():
            cells = []
            for m in methods:
                r = row.get(m)
                gain = "" if m == "none" or not r or r.get("gain") is None else \
                    f" ({100 * r['gain']:+.2f})"
                cells.append(_acc(r) + gain)
            lines.append(f"| {name} | {shots} | " + " | ".join(cells) + " |")
    return [*lines, ""]
