"""Which rule should the guard choose its candidate by? Offline, from recorded episodes.

``benchmarks/outcome.py --candidates FILE`` records, for every episode of a guarded method, each
candidate's support-set scores (leave-one-out, or the flipped views' at 1 shot) and its query
accuracy. This script replays a small, fixed family of choice rules over those records, so every
rule is judged on the same episodes and candidates, with nothing recomputed:

- ``acc>logp``: the best by (accuracy, mean log-probability), theta0 unless strictly beaten (the
  guard's rule in "loo" mode);
- ``acc``: accuracy alone (the rule in "flip" mode);
- ``logp``: log-probability alone;
- ``acc>=,logp+D``: among candidates whose accuracy is at least theta0's and whose
  log-probability beats theta0's by more than D nats, the best by (accuracy, log-probability);
  theta0 if none (D = 0.02, 0.05, 0.1).

Rows: the mean gain over no adaptation with its paired 95% interval, per data set, shot count and
method; and, reading the query labels (no rule can): the one candidate best for the whole row,
and the best candidate per episode. ``--choose-on`` names the
data sets a rule is chosen on (their mean gain over shot counts); the others are reported as they
fall.

    python benchmarks/guard_rules.py /tmp/grc/candidates.jsonl --choose-on val.zip \\
        --out benchmarks/results/guard_rules_tiny_recipe
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgeflow.runtime.guard import choose  # noqa: E402  (numpy only: the device's rule)

Score = tuple[float, float]


def _best(cands: dict[str, tuple[float, ...]], *, tie_break: bool) -> str:
    """The device guard's own choice (:func:`edgeflow.runtime.guard.choose`): theta0 unless a
    candidate is strictly better, by (accuracy, log-probability) or the first score alone."""
    return choose([("theta0", cands["theta0"]), *((k, v) for k, v in cands.items()
                                                 if k != "theta0")], tie_break=tie_break)


def _margin(d: float) -> Callable[[dict[str, Score]], str]:
    def rule(cands: dict[str, Score]) -> str:
        a0, l0 = cands["theta0"]
        return _best({k: v for k, v in cands.items()
                      if k == "theta0" or (v[0] >= a0 and v[1] > l0 + d)}, tie_break=True)
    return rule


RULES: dict[str, Callable[[dict[str, Score]], str]] = {
    "acc>logp": lambda c: _best(c, tie_break=True),
    "acc": lambda c: _best(c, tie_break=False),
    "logp": lambda c: _best({k: (v[1],) for k, v in c.items()}, tie_break=False),
    **{f"acc>=,logp+{d}": _margin(d) for d in (0.02, 0.05, 0.1)},
}


def label(data: str) -> str:
    """``cifar10/test`` for ``../shared/data/cifar10/test.zip``; other specs as given."""
    p = Path(data)
    return f"{p.parent.name}/{p.stem}" if p.suffix == ".zip" else data


def replay(records: list[dict]) -> dict:
    """{(data, shots, method): {rule: [gain per episode]}, with "hindsight" the best candidate's}."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        mode = r["mode"]
        cands = {k: (v[f"{mode}_accuracy"], v[f"{mode}_logp"]) for k, v in r["support"].items()}
        own = RULES["acc>logp" if mode == "loo" else "acc"](cands)
        if own != r["chosen"]:  # the replay must reproduce what the guard chose
            raise SystemExit(f"episode {r['episode']} of {r['data']}: the guard chose "
                             f"{r['chosen']}, its rule replayed gives {own}")
        key = (label(r["data"]), r["shots"], r["method"])
        for name, rule in RULES.items():
            out[key][name].append(100 * (r["query"][rule(cands)] - r["none"]))
        out[key]["hindsight"].append(100 * (max(r["query"].values()) - r["none"]))
        for name, acc in r["query"].items():
            out[key][f"cand:{name}"].append(100 * (acc - r["none"]))
    return out


def _mean_ci(g: list[float]) -> dict:
    return {"gain": float(np.mean(g)), "ci95": float(1.96 * np.std(g, ddof=1) / np.sqrt(len(g)))}


def summarise(table: dict, choose_on: list[str]) -> dict:
    rows = {}
    for (data, shots, method), by_rule in sorted(table.items()):
        row = {"data": data, "shots": shots, "method": method, "episodes": len(by_rule["acc"]),
               **{rule: _mean_ci(g) for rule, g in by_rule.items() if not rule.startswith("cand:")}}
        # one candidate for every episode of the row, the best in hindsight: a ceiling for a
        # per-domain choice, without the per-episode maximum's optimism
        fixed = {k.removeprefix("cand:"): _mean_ci(g) for k, g in by_rule.items()
                 if k.startswith("cand:")}
        best = max(fixed, key=lambda k: fixed[k]["gain"])
        row["fixed"] = {**fixed[best], "candidate": best}
        rows[f"{data} {shots}-shot {method}"] = row
    chosen = None
    picked = [r for r in rows.values() if any(c in r["data"] for c in choose_on)]
    if picked:
        means = {rule: float(np.mean([r[rule]["gain"] for r in picked])) for rule in RULES}
        chosen = {"on": sorted({r["data"] for r in picked}), "means": means,
                  "rule": max(means, key=means.get)}
    return {"rows": rows, "chosen": chosen}


def render(out: dict) -> str:
    names = [*RULES, "fixed", "hindsight"]
    lines = ["# The guard's choice rule, replayed on recorded episodes", "",
             f"`{out['command']}`; records: {out['records']}. Gain over no adaptation in points "
             "(paired 95% interval in brackets). Read off the query labels, so no rule can reach them: "
             "fixed = the one candidate best for the whole row; hindsight = the best candidate "
             "per episode (optimistic: the maximum of a few noisy 75-query accuracies gains even "
             "between candidates that are equal on average).", "",
             "| data | shots | method | episodes | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for r in out["rows"].values():
        lines.append(f"| {r['data']} | {r['shots']} | {r['method']} | {r['episodes']} | "
                     + " | ".join(f"{r[n]['gain']:+.2f} [{r[n]['ci95']:.2f}]"
                                  + (f" {r[n]['candidate']}" if n == "fixed" else "")
                                  for n in names) + " |")
    if out["chosen"]:
        c = out["chosen"]
        lines += ["", f"Chosen on {', '.join(c['on'])} (mean gain over their rows): "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in c["means"].items())
                  + f" -> **{c['rule']}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", type=Path, nargs="+", help="JSON lines of outcome.py --candidates")
    ap.add_argument("--choose-on", action="append", default=[],
                    help="data sets (substring of the name) the rule is chosen on")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    records = [json.loads(line) for p in args.records for line in p.read_text().splitlines()
               if line.strip()]
    missing = [r for r in records if r.get("none") is None]
    if missing:
        raise SystemExit(f"{len(missing)} records lack the no-adaptation accuracy: run "
                         "outcome.py with 'none' among --methods")
    out = {"command": "python benchmarks/guard_rules.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "records": len(records), **summarise(replay(records), args.choose_on)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(out, indent=1))
    (args.out.parent / f"{args.out.name}.md").write_text(render(out))
    return out


if __name__ == "__main__":
    main()
