"""The Markdown report of ``benchmarks/outcome.py`` (also re-renders its older JSON files)."""

from __future__ import annotations

from pathlib import Path

CROSS = ("cifar10", "gtsrb", "mnist", "omniglot")


def _methods(out: dict) -> list[str]:
    row = next(iter(next(iter(out["results"].values())).values()))
    return out.get("methods") or [m for m in row if "mean" in row[m]]


def _name(data: str) -> str:
    for d in CROSS:
        if d in data:
            return d
    if "tiny-imagenet" in data:  # its val classes are a row of their own (in-domain, selection's)
        return "tiny-imagenet val" if Path(data).stem == "val" else "tiny-imagenet"
    return data


def render(out: dict) -> str:
    methods = _methods(out)
    lines = ["# Adaptation on data nobody tuned for: every method on the same episodes", "",
             f"`{out['command']}` ({out['machine']}, {out['seconds'] / 60:.1f} min); 5-way, 15 "
             f"queries per class, {out['episodes']} episodes per row (EpisodeSampler seed "
             f"{out['seed']}). Accuracy in % with its 95% interval; gain over none with the "
             "paired 95% interval in brackets.", "",
             f"Outcome drift: {out['outcome_settings']}; trajectory drift: "
             f"{out['trajectory_settings']}; re-centring alone at alpha {out['recenter_alpha']}; "
             f"teacher {out['teacher']} (teacher-40: the same for 40 steps).", "",
             "| data | shots | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for data, by_shots in out["results"].items():
        for shots, row in by_shots.items():
            cells = [f"{row[m]['mean']:.2f} ± {row[m]['ci95']:.2f}" + (
                "" if m == "none" else f" ({row[m]['gain']:+.2f} [{row[m]['gain_ci95']:.2f}])")
                for m in methods]
            lines.append(f"| {_name(data)} | {shots} | " + " | ".join(cells) + " |")
    lines += _cross_means(out, methods) + _cost(out, methods) + _oracle(out, methods)
    lines += _curve(out) + _guard(out, methods)
    if out.get("selection"):
        lines += ["Selection (fresh val tasks inside meta-training, mean accuracy): " +
                  ", ".join(f"{k} {100 * v['mean']:+.2f}" if " - " in k else
                            f"{k} {100 * v['mean']:.2f}" for k, v in out["selection"].items()), ""]
    return "\n".join(lines)


def _cross_means(out: dict, methods: list[str]) -> list[str]:
    """Mean gain over the cross-domain sets present, per shot count (the issue's headline)."""
    rows = []
    for shots in sorted({s for by in out["results"].values() for s in by}, reverse=True):
        sets = [by[shots] for d, by in out["results"].items() if _name(d) in CROSS and shots in by]
        if not sets:
            continue
        rows.append(f"| {shots} ({len(sets)} sets) | " + " | ".join(
            f"{sum(r[m]['gain'] for r in sets) / len(sets):+.2f}" for m in methods[1:]) + " |")
    if not rows:
        return []
    return ["", "Cross-domain mean gain over none (CIFAR-10, GTSRB, MNIST, Omniglot):", "",
            "| shots | " + " | ".join(methods[1:]) + " |", "|---|" + "---|" * (len(methods) - 1),
            *rows]


def _cost(out: dict, methods: list[str]) -> list[str]:
    last = next(iter(out["results"].values()))
    row = last[next(iter(last))]
    lines = ["", "Cost of the adaptation step, support set -> a ready classifier (theta and the "
             "prototypes at it; none pays that support pass too), median ms / peak MiB of live "
             "PyTorch allocations, PyTorch on this CPU, one thread, first row:", "",
             "| " + " | ".join(methods) + " |", "|" + "---|" * len(methods),
             "| " + " | ".join(f"{row[m]['adapt_ms']:.1f} / {row[m]['adapt_peak_mib']:.2f}"
                               if row[m]["adapt_ms"] is not None
                               and row[m]["adapt_peak_mib"] is not None else "-"
                               for m in methods) + " |", ""]
    t40, none = row.get("teacher-40"), row.get("none")
    if t40 and none and t40["adapt_ms"] and t40["adapt_peak_mib"]:
        extra_ms = t40["adapt_ms"] - none["adapt_ms"]
        extra_mib = t40["adapt_peak_mib"] - none["adapt_peak_mib"]
        lines.append("Extra over none as a share of teacher-40's extra (time / peak memory): " +
                     ", ".join(f"{m} {100 * (row[m]['adapt_ms'] - none['adapt_ms']) / extra_ms:.0f}%"
                               f" / {100 * (row[m]['adapt_peak_mib'] - none['adapt_peak_mib']) / extra_mib:.0f}%"  # noqa: E501
                               for m in methods if m not in ("none", "teacher-40")) + ".")
        offline = out.get("offline_seconds") or {}
        saved = t40["adapt_ms"] - row["outcome"]["adapt_ms"] if "outcome" in row else None
        if offline and saved and saved > 0:
            total = sum(v for v in offline.values() if isinstance(v, int | float))
            lines.append(f"Offline cost of the drift (meta-training, where it ran: {offline}): "
                         f"{total:.0f} s. Break-even against teacher-40 at {saved:.1f} ms saved "
                         f"per adaptation: {1000 * total / saved:,.0f} adaptations (mixing the "
                         "offline machine's seconds with this CPU's per-adaptation time).")
        lines.append("")
    return lines


def _oracle(out: dict, methods: list[str]) -> list[str]:
    rows = [(d, s, r) for d, by in out["results"].items() for s, r in by.items() if "oracle" in r]
    if not rows:
        return []
    lines = ["Per-domain oracle: the teacher grid (lr x steps) scored on each row's first episodes, "
             "the best setting in hindsight (an upper bound: it reads the query labels). Every "
             "method's gain on the same episodes:", "",
             "| data | shots | episodes | oracle setting | oracle | " +
             " | ".join(m for m in methods[1:]) + " |",
             "|---|---|---|---|---|" + "---|" * (len(methods) - 1)]
    for d, s, r in rows:
        o = r["oracle"]
        lines.append(f"| {_name(d)} | {s} | {o['episodes']} | {o['best']} | {o['gain']:+.2f} | " +
                     " | ".join(f"{r[m]['gain_first']:+.2f}" for m in methods[1:]) + " |")
    return [*lines, ""]


def _curve(out: dict) -> list[str]:
    rows = [(d, s, r["steps_curve"]) for d, by in out["results"].items() for s, r in by.items()
            if "steps_curve" in r]
    if not rows:
        return []
    n = len(rows[0][2]["gain"])
    c = rows[0][2]
    lines = [f"Outcome drift: gain over none against Euler steps (step size {c['dt']:g}, trained "
             f"for {c['trained_steps']} steps; all episodes; step 0 is theta0 plus the drift's own "
             "re-centring move, none when it does not re-centre):", "",
             "| data | shots | " + " | ".join(str(k) for k in range(n)) + " |",
             "|---|---|" + "---|" * n]
    lines += [f"| {_name(d)} | {s} | " + " | ".join(f"{g:+.2f}" for g in c["gain"]) + " |"
              for d, s, c in rows]
    return [*lines, ""]


def _guard(out: dict, methods: list[str]) -> list[str]:
    lines = []
    for m in methods:
        picks = [f"{_name(d)} {s}-shot: {r[m]['guard_chosen']}"
                 for d, by in out["results"].items() for s, r in by.items()
                 if "guard_chosen" in r.get(m, {})]
        if picks:
            lines += [f"{m}, the guard's choices (episodes per candidate): " + "; ".join(picks), ""]
        rows = [(d, s, r[m]) for d, by in out["results"].items() for s, r in by.items()
                if "guard_matches_best" in r.get(m, {})]
        if rows:
            lines += [f"{m}: every candidate scored on the queries too. The guard's gain, the "
                      "best candidate's in hindsight (an upper bound for any selector over these "
                      "candidates: it reads the query labels), and how often the guard's choice "
                      "was a query-best one (ties count):", "",
                      "| data | shots | guard | best candidate | guard = query-best |",
                      "|---|---|---|---|---|"]
            lines += [f"| {_name(d)} | {s} | {r['gain']:+.2f} | {r['best_candidate_gain']:+.2f} "
                      f"| {100 * r['guard_matches_best']:.0f}% |" for d, s, r in rows]
            lines.append("")
    return lines
