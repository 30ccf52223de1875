"""kill -9 during `edgeflow export`, `edgeflow calibrate BUNDLE` and `edgeflow compile`: is the bundle
ever left broken, and does `compile --resume` always finish on a valid one?

Each trial starts the real command in a subprocess (its own process group) and sends SIGKILL to it:

* at a uniformly random moment of its run (the run's length measured once, unkilled), or
* aimed at the bundle commit: shortly after the writer's temporary folder ``.NAME.tmp-*`` appears,
  or at once / within 2 ms of ``manifest.json`` appearing in it (the swap follows its fsyncs).

The bundle is then judged: *absent*, *previous* (loads, verifies, same fingerprint as before the
trial), *new* (loads, verifies, complete: INT8 present after calibrate), *refused* (a directory
that does not load: a broken bundle, though not accepted) or *broken accepted* (loads but its
session fails, or a "new" bundle is incomplete). After every killed compile, ``compile --resume``
runs to the end and its bundle must load and run. Targets: 0 refused, 0 broken accepted, every
resume valid.

    OMP_NUM_THREADS=1 python benchmarks/kill_probe.py            # 54 kills, ~6 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/kill_probe.py --quick    # 9 kills, ~2 min

Writes benchmarks/results/kill_probe.{json,md} (``--out PREFIX`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

# the tiny compile of tests/pipeline/test_compile.py: every stage real, seconds on a laptop core
TINY = ["--data-size", "8", "--backbone-width", "8", "--backbone-epochs", "2", "--prune-epochs", "1",
        "--prune-regrowth-epochs", "0", "--prune-recovery-epochs", "1", "--adapt-tasks", "10",
        "--adapt-val-tasks", "6", "--adapt-meta-steps", "20", "--adapt-outcome-steps", "4",
        "--adapt-selection-tasks", "6", "--eval-episodes", "4",
        "--eval-shots", "5", "--device", "cpu"]
MODES = ("random", "tmp", "commit")
OK = ("absent", "previous", "new")


def edgeflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeflow", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` to the end (it must succeed); its seconds."""
    t0 = time.monotonic()
    with open(log, "ab") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), check=True)
    return time.monotonic() - t0


def temp_dirs(bundle: Path) -> list[Path]:
    return sorted(bundle.parent.glob(f".{bundle.name}.tmp-*"))


def watcher(bundle: Path, mode: str, nth: int) -> Callable[[], bool]:
    """True once the ``nth`` writer temporary folder (``tmp``) or the ``nth`` manifest written in
    one (``commit``) has been seen; polled every ~0.2 ms."""
    seen: set[str] = set()

    def fired() -> bool:
        for d in temp_dirs(bundle):
            if mode == "tmp" or (d / "manifest.json").exists():
                seen.add(d.name)
        return len(seen) >= nth
    return fired


def kill_during(cmd: list[str], log: Path, *, at: float | None = None,
                fired: Callable[[], bool] | None = None, after: float = 0.0,
                timeout: float = 300.0) -> dict[str, Any]:
    """Start ``cmd``; SIGKILL its process group ``at`` seconds in, or ``after`` seconds once
    ``fired()``. Returns whether it was killed (False: it ended first) and when."""
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(),
                             start_new_session=True)
    t0 = time.monotonic()
    deadline = t0 + (at if at is not None else timeout)
    while p.poll() is None and time.monotonic() < deadline:
        if fired is not None and fired():
            time.sleep(after)
            break
        time.sleep(0.0002 if fired is not None else 0.005)
    killed = p.poll() is None
    if killed:
        os.killpg(p.pid, signal.SIGKILL)  # the group this probe started: the command and children
    rc = p.wait()
    return {"killed": killed, "at_s": round(time.monotonic() - t0, 4), "rc": rc}


def fingerprint(bundle: Path) -> str | None:
    from edgeflow.errors import EdgeflowError
    from edgeflow.runtime import load_bundle

    try:
        return load_bundle(bundle).fingerprint
    except EdgeflowError:
        return None


def judge(bundle: Path, previous: str | None, *, want_int8: bool) -> str:
    """absent / previous / new / refused / broken accepted (see the module docstring)."""
    import numpy as np

    from edgeflow.errors import EdgeflowError
    from edgeflow.runtime import Session, load_bundle

    if not bundle.exists():
        return "absent"
    try:
        b = load_bundle(bundle)
    except EdgeflowError:
        return "refused"
    try:  # accepted: it must also run, at every precision it lists
        for precision in b.manifest["precisions"]:
            with Session(bundle, backend="onnxruntime", precision=precision) as s:
                side = s.preprocess.size
                x = np.random.default_rng(0).integers(0, 256, (4, side, side, 3), dtype=np.uint8)
                s.features(s.prepare(x), s.theta0)
    except Exception:  # any failure of a bundle that loaded is the finding
        return "broken accepted"
    if b.fingerprint == previous:
        return "previous"
    if want_int8 and "int8" not in b.manifest["precisions"]:
        return "broken accepted"  # a "new" calibrated bundle without its INT8 graph
    return "new"


def plan(kind: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` trials of ``kind``: modes in turn, with and without a previous bundle."""
    rows = []
    for i in range(n):
        mode = MODES[i % len(MODES)]
        rows.append({"kind": kind, "mode": mode, "previous": kind == "calibrate" or i % 2 == 0,
                     "nth": rng.choice([1, 2]) if kind == "compile" else 1})
    return rows


class Probe:
    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        self.log = work / "commands.log"

    def setup(self) -> dict[str, float]:
        """A finished tiny compile (checkpoints to export), a reference export and the unkilled
        seconds of each command."""
        base = self.work / "base"
        t_compile = run(self.compile_cmd(base, 32), self.log)
        self.weights = base / "stages" / "recover" / "recovered.pt"
        self.drift = base / "stages" / "meta-train" / "drift.pt"
        self.exported = self.work / "exported"
        t_export = run(self.export_cmd(self.exported), self.log)
        self.calibrated = self.work / "calibrated"
        shutil.copytree(self.exported, self.calibrated)
        t_cal = run(self.calibrate_cmd(self.calibrated), self.log)
        self.base = base
        return {"compile": t_compile, "export": t_export, "calibrate": t_cal}

    def compile_cmd(self, out: Path, samples: int, *extra: str) -> list[str]:
        return edgeflow("compile", "--output", str(out), *TINY, "--export-calibration-samples",
                        str(samples), *extra)

    def export_cmd(self, out: Path) -> list[str]:
        return edgeflow("export", "--weights", str(self.weights), "--drift", str(self.drift),
                        "--output", str(out))

    def calibrate_cmd(self, bundle: Path) -> list[str]:
        return edgeflow("calibrate", str(bundle), "--data", "digits", "--samples", "32",
                        "--output", str(bundle.parent / "calibration"))

    def trial(self, i: int, row: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
        d = self.work / f"t{i:03d}"
        d.mkdir()
        kind = row["kind"]
        if kind == "compile":
            out = d / "out"
            if row["previous"]:  # a finished run whose export options change: the bundle is rewritten
                shutil.copytree(self.base, out)
            bundle = out / "bundle"
            cmd = self.compile_cmd(out, 24 if row["previous"] else 32, "--resume")
        else:
            bundle = d / "bundle"
            if row["previous"]:
                shutil.copytree(self.exported, bundle)
            cmd = self.export_cmd(bundle) if kind == "export" else self.calibrate_cmd(bundle)
        previous = fingerprint(bundle) if row["previous"] else None
        if row["mode"] == "random":
            # up to 90% of the unkilled run: later draws would mostly miss a slightly faster run
            res = kill_during(cmd, self.log, at=self.rng.uniform(0.2, 0.9 * seconds[kind]))
        else:
            # commit: half at once (the manifest's fsyncs are the last moments before the swap),
            # half within 2 ms (around the swap)
            after = (self.rng.uniform(0, 0.5) if row["mode"] == "tmp"
                     else self.rng.choice([0.0, self.rng.uniform(0, 0.002)]))
            res = kill_during(cmd, self.log, fired=watcher(bundle, row["mode"], int(row["nth"])),
                              after=after)
        out_row = {**row, **res, "outcome": judge(bundle, previous, want_int8=kind == "calibrate"),
                   "leftover_temp_dirs": len(temp_dirs(bundle))}
        if kind == "compile":
            out_row.update(self.resume(cmd, out, bundle))
        shutil.rmtree(d, ignore_errors=True)
        return out_row

    def resume(self, cmd: list[str], out: Path, bundle: Path) -> dict[str, Any]:
        """The killed ``compile --resume`` again, to the end: exit 0 and a bundle that loads and
        runs. (The same flags: a kill before the run saved OUTPUT/config.toml leaves nothing to
        resume from but them.)"""
        with open(self.log, "ab") as f:
            rc = subprocess.run([*cmd, "--json"],
                                stdout=subprocess.PIPE, stderr=f, env=env()).returncode
        metrics = out / "report" / "metrics.json"
        reused = []
        if rc == 0 and metrics.is_file():
            reused = [n for n, s in json.loads(metrics.read_text())["seconds"].items()
                      if s["reused"]]
        verdict = judge(bundle, None, want_int8=True)
        return {"resume_rc": rc, "resume_bundle": verdict, "resume_reused": reused,
                "resume_valid": rc == 0 and verdict == "new"}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    killed = [r for r in rows if r["killed"]]
    compiles = [r for r in killed if r["kind"] == "compile"]
    out: dict[str, Any] = {
        "trials": len(rows), "kills": len(killed),
        "ended_before_kill": len(rows) - len(killed),
        "outcomes": dict(Counter(r["outcome"] for r in killed)),
        "by_kind": {k: dict(Counter(r["outcome"] for r in killed if r["kind"] == k))
                    for k in ("export", "calibrate", "compile")},
        "by_mode": {m: dict(Counter(r["outcome"] for r in killed if r["mode"] == m)) for m in MODES},
        "refused": sum(r["outcome"] == "refused" for r in rows),
        "broken_accepted": sum(r["outcome"] == "broken accepted" for r in rows),
        "compile_kills": len(compiles),
        "resumes_valid": sum(bool(r.get("resume_valid")) for r in compiles),
        # how much each resume could keep: stages reused (of 8)
        "resume_stages_reused": dict(sorted(Counter(len(r["resume_reused"])
                                                    for r in compiles).items())),
        "leftover_temp_dirs": sum(r["leftover_temp_dirs"] for r in killed)}
    return out


def markdown(res: dict[str, Any]) -> str:
    s, m = res["summary"], res["meta"]
    lines = [f"# kill -9 probe ({m['mode']}, {m['date']})", "",
             f"Command: `{m['command']}`  ", f"Machine: {m['machine']}; unkilled seconds: "
             + ", ".join(f"{k} {v:.1f}" for k, v in m["seconds"].items()), "",
             f"**{s['kills']} kills** ({s['trials']} trials; {s['ended_before_kill']} ended before "
             f"the kill). Broken bundles accepted: **{s['broken_accepted']}**; broken bundles left "
             f"(refused at load): **{s['refused']}**; `compile --resume` after a killed compile "
             f"valid: **{s['resumes_valid']}/{s['compile_kills']}** (stages reused of 8: "
             + ", ".join(f"{k}: {v}x" for k, v in s["resume_stages_reused"].items()) + ").", "",
             "| kind | absent | previous | new | refused | broken accepted |",
             "|---|---|---|---|---|---|"]
    for kind, c in s["by_kind"].items():
        lines.append(f"| {kind} | " + " | ".join(str(c.get(o, 0)) for o in
                                                 (*OK, "refused", "broken accepted")) + " |")
    lines += ["", "| kill moment | absent | previous | new | refused | broken accepted |",
              "|---|---|---|---|---|---|"]
    for mode, c in s["by_mode"].items():
        lines.append(f"| {mode} | " + " | ".join(str(c.get(o, 0)) for o in
                                                 (*OK, "refused", "broken accepted")) + " |")
    lines += ["", "*random*: uniform over the unkilled run; *tmp*: 0-0.5 s after the writer's "
              "temporary folder appears; *commit*: at once or 0-2 ms after `manifest.json` appears "
              "in it (the swap follows its fsyncs); *previous*/*absent* = killed before the swap, "
              "*new* = after. Compile trials aim at the first or second bundle commit (export, "
              "calibrate); half of them rewrite a finished run's bundle (an export option changed).",
              "", f"Writer temporary folders left by kills: {s['leftover_temp_dirs']} (removed by "
              "the next write once an hour old).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 kills of each command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill_probe"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    counts = {"export": 3, "calibrate": 3, "compile": 3} if args.quick else \
        {"export": 18, "calibrate": 18, "compile": 18}
    with tempfile.TemporaryDirectory(prefix="kill_probe-") as tmp:
        probe = Probe(Path(tmp), rng)
        seconds = probe.setup()
        rows = []
        for kind, n in counts.items():
            todo = plan(kind, n, rng)
            for attempt in range(3 * n):  # trials that end before their kill do not count
                if sum(r["killed"] for r in rows if r["kind"] == kind) >= n:
                    break
                row = todo[attempt % n]
                rows.append(probe.trial(len(rows), row, seconds))
                r = rows[-1]
                print(f"{kind:9s} {r['mode']:6s} killed={r['killed']!s:5s} at {r['at_s']:.3f}s "
                      f"-> {r['outcome']}" + (f"; resume {r['resume_bundle']}" if "resume_rc" in r
                                              else ""), flush=True)
    res = {"meta": {"mode": "quick" if args.quick else "full", "seed": args.seed,
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "command": "OMP_NUM_THREADS=1 python benchmarks/kill_probe.py"
                               + (" --quick" if args.quick else ""),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "seconds": {k: round(v, 2) for k, v in seconds.items()}},
           "summary": summarize(rows), "trials": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(json.dumps(res["summary"], indent=1))
    return res


if __name__ == "__main__":
    main()
