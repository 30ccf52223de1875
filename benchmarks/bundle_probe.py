"""Can a damaged or hostile bundle, task file, image or array change predictions or crash the runtime?

Two measurements on a small exported bundle (a conv4 backbone with a random drift, re-centring on):

1. **Damage.** Random single-byte flips spread evenly over every bundle file (manifest included),
   and an edit of every numeric value in the manifest. Each altered bundle is loaded, adapted on a
   fixed support set and asked for predictions; the outcome is *rejected* (a clear error at load),
   *identical* (predictions and theta bit-identical to the original's) or *changed* (the danger:
   it loaded and answers differently). The same bundles are loaded again with ``expect=`` the
   original fingerprint. Targets: 0 changed; 100% rejected with ``expect=``. The numeric edits are
   also made *re-sealed* (digest recomputed, as a deliberate edit or a version-1 bundle without
   digest would be) to show what the schema's bounds catch alone; there, in-bounds edits of the
   adaptation settings do change predictions, which is what ``expect=`` and signatures are for.
2. **Malformed inputs.** Manifests (every field replaced by values of the wrong type or out of
   bounds, deleted, and hand-made cases: links, traversal, bombs), task files, images and arrays
   passed to the API. Each must end in success or one EdgeflowError; any other exception is a
   *traceback*. Target: 0.

3. **kill -9 during writes.** A process rewriting the bundle and saving a task in a loop is
   killed at random moments; the bundle and the task must still load, and once the leftovers are
   an hour old the next write removes them and nothing else (a user's ``.NAME.backup-2024``).

    OMP_NUM_THREADS=1 python benchmarks/bundle_probe.py            # ~600 flips, all cases
    OMP_NUM_THREADS=1 python benchmarks/bundle_probe.py --quick    # seconds: proves it runs

Writes benchmarks/results/bundle_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from edgeflow.errors import EdgeflowError  # noqa: E402

INFO = ("created", "edgeflow_version", "exported_with", "source", "sparsity", "target", "metrics")


def build_bundle(out: Path) -> Path:
    """A conv4 (width 16) bundle with a random drift, Euler 3 steps, re-centring 0.5."""
    import torch

    from edgeflow.adapt import DriftConfig, DriftNet, IntegratorSettings, ThetaSpec
    from edgeflow.data import Preprocess
    from edgeflow.export import export_bundle
    from edgeflow.models import create_model

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=5, width=16).eval()
    spec = ThetaSpec.from_model(model, max_size=64)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=16, hidden=32, task_dim=16,
                                 heads=2, encoder_layers=1, blocks=1))
    torch.nn.init.normal_(drift.velocity_net.out.weight, std=0.05)
    torch.nn.init.normal_(drift.velocity_net.out.bias, std=0.05)
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    export_bundle(model, output=out, preprocess_spec=Preprocess(size=32), parity_images=images,
                  spec=spec, drift=drift.eval(), settings=IntegratorSettings(steps=3, recenter=0.5))
    return out


class Probe:
    """The reference answer of the original bundle, and outcomes of altered ones against it."""

    def __init__(self, bundle: Path) -> None:
        from edgeflow.runtime import Session

        rng = np.random.default_rng(1)
        self.support = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
        self.labels = np.repeat(np.arange(5), 2)
        self.query = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
        self.bundle = bundle
        with Session(bundle, backend="onnxruntime", threads=1) as s:
            self.task = s.adapt(self.support, self.labels)
            self.ref = (self.task.theta.tobytes(), s.predict(self.query, self.task)[1].tobytes())
            self.fingerprint = s.bundle.fingerprint

    def outcome(self, path: Path) -> tuple[str, str]:
        from edgeflow.runtime import Session

        try:
            s = Session(path, backend="onnxruntime", threads=1)
        except EdgeflowError as exc:
            return "rejected", str(exc)[:160]
        except Exception as exc:
            return "traceback", f"load: {type(exc).__name__}: {str(exc)[:160]}"
        try:
            with s:
                task = s.adapt(self.support, self.labels)
                got = (task.theta.tobytes(), s.predict(self.query, task)[1].tobytes())
        except EdgeflowError as exc:
            return "error after load", str(exc)[:160]
        except Exception as exc:
            return "traceback", f"run: {type(exc).__name__}: {str(exc)[:160]}"
        return ("identical" if got == self.ref else "changed"), ""

    def pinned(self, path: Path) -> str:
        from edgeflow.runtime import load_bundle

        try:
            load_bundle(path, expect=self.fingerprint)
        except EdgeflowError:
            return "rejected"
        except Exception:
            return "traceback"
        return "accepted"


def flips(probe: Probe, work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    files = sorted(p.name for p in work.iterdir())
    out: dict[str, Counter] = {f: Counter() for f in files}
    pinned, examples = Counter(), []
    for i in range(n):
        name = files[i % len(files)]  # evenly over files: the 6 KB manifest gets its share
        p = work / name
        data = bytearray(p.read_bytes())
        k = rng.randrange(len(data))
        old = data[k]
        data[k] = rng.choice([b for b in range(256) if b != old])
        p.write_bytes(bytes(data))
        kind, why = probe.outcome(work)
        out[name][kind] += 1
        pinned[probe.pinned(work)] += 1
        if kind in ("changed", "traceback") and len(examples) < 10:
            examples.append({"file": name, "offset": k, "old": old, "new": data[k], "outcome": kind,
                             "detail": why})
        data[k] = old
        p.write_bytes(bytes(data))
    total = Counter()
    for c in out.values():
        total.update(c)
    return {"trials": n, "per_file": {f: dict(c) for f, c in out.items()}, "total": dict(total),
            "with_expect": dict(pinned), "examples": examples}


def leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    """JSON paths of every value; long lists (theta layout, per-layer sparsity) by their first two."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            out += leaves(v, (*path, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _write(bundle: Path, man: dict, *, reseal: bool) -> None:
    from edgeflow.runtime.manifest import canonical_digest

    if reseal:
        man["manifest_digest"] = canonical_digest(man)
    (bundle / "manifest.json").write_text(json.dumps(man, indent=2))


def numeric_edits(probe: Probe, work: Path, original: bytes) -> dict[str, Any]:
    man0 = json.loads(original)
    paths = [p for p in leaves(man0) if isinstance(_get(man0, p), (int, float))
             and not isinstance(_get(man0, p), bool)]
    res = {}
    for reseal in (False, True):
        counts, changed = Counter(), []
        for path in paths:
            man = json.loads(original)
            v = _get(man, path)
            _get(man, path[:-1])[path[-1]] = (v + 1) if isinstance(v, int) else (v * 1.5 + 0.1)
            _write(work, man, reseal=reseal)
            kind, _ = probe.outcome(work)
            counts[kind] += 1
            if kind in ("changed", "traceback"):
                changed.append(".".join(map(str, path)))
        (work / "manifest.json").write_bytes(original)
        res["resealed" if reseal else "as_damage"] = {"fields": len(paths), **dict(counts),
                                                      "changed_or_traceback": changed}
    return res


REPLACEMENTS = [None, True, -1, 0, 1e308, 2**70, 0.5, "x", "x" * 5000, [], {}, "../x/backbone.onnx",
                "/etc/passwd"]


def malformed_manifests(probe: Probe, work: Path, original: bytes, rng: random.Random,
                        limit: int | None) -> Counter:
    from typer.testing import CliRunner

    from edgeflow.cli.app import app

    man0 = json.loads(original)
    cases = [(p, r) for p in leaves(man0) for r in [*REPLACEMENTS, "<delete>"]]
    if limit is not None:
        cases = rng.sample(cases, min(limit, len(cases)))
    counts, bad = Counter(), []
    cli = CliRunner()
    for path, value in cases:
        man = json.loads(original)
        parent = _get(man, path[:-1])
        if value == "<delete>":
            if isinstance(parent, list):
                parent.pop(path[-1])
            else:
                del parent[path[-1]]
        else:
            parent[path[-1]] = value
        _write(work, man, reseal=True)
        info_only = path[0] in INFO
        kind = "accepted"
        for args in (["inspect", str(work), "--json"], ["inspect", str(work)]):
            r = cli.invoke(app, args)
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                kind = "traceback"
                bad.append(f"inspect {'.'.join(map(str, path))}={str(value)[:20]}: "
                           f"{type(r.exception).__name__}: {r.exception}"[:200])
        if kind != "traceback" and not info_only:  # the runtime never reads informational fields
            kind, why = probe.outcome(work)
            if kind == "traceback":
                bad.append(f"{'.'.join(map(str, path))}={str(value)[:20]}: {why}")
        # a re-sealed valid edit (steps 3 -> 0) loads and answers: accepted, as it should be
        counts["clean error" if kind in ("rejected", "error after load") else
               "traceback" if kind == "traceback" else "accepted"] += 1
    (work / "manifest.json").write_bytes(original)
    counts.update(special_manifests(probe, work, original, bad))
    return {"cases": sum(counts.values()), **dict(counts), "tracebacks": bad[:20]}


def special_manifests(probe: Probe, work: Path, original: bytes, bad: list) -> Counter:
    man = json.loads(original)
    outside = work.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(work / "backbone.onnx", outside / "backbone.onnx")
    cases: dict[str, Any] = {
        "empty": b"", "not json": b"{not json", "list": b"[]", "string": b'"edgeflow-bundle"',
        "deep nesting": b"[" * 200_000 + b"]" * 200_000, "not utf-8": b"\xff\xfe{}",
        "nan": original.replace(b"0.229", b"NaN", 1),
        "duplicate key": original.replace(b'"steps": 3,', b'"steps": 3, "steps": 1000,', 1),
        "5 MB": b" " * (5 << 20) + original,
        "v1 without digest": {**{k: v for k, v in man.items() if k != "manifest_digest"},
                              "schema_version": 1},
        "version as string": {**man, "schema_version": "2"},
        "traversal": _with(man, "graphs", "backbone", "file", "../outside/backbone.onnx"),
        "absolute": _with(man, "precisions", "fp32", str(outside / "backbone.onnx")),
        "listed /etc/passwd": {**man, "files": {**man["files"], "/etc/passwd": {
            "sha256": "0" * 64, "bytes": 1}}},
    }
    counts = Counter()
    for name, content in cases.items():
        if isinstance(content, dict):
            _write(work, content, reseal="manifest_digest" in content)
        else:
            (work / "manifest.json").write_bytes(content)
        kind, why = probe.outcome(work)
        counts["traceback" if kind == "traceback" else "clean error" if kind != "identical"
               else "accepted"] += 1
        if kind == "traceback":
            bad.append(f"{name}: {why}")
    (work / "manifest.json").write_bytes(original)
    for link in ("backbone.onnx", "manifest.json"):  # a symlink to identical bytes elsewhere
        shutil.copy(work / link, outside / link)
        (work / link).unlink()
        os.symlink(outside / link, work / link)
        kind, why = probe.outcome(work)
        counts["traceback" if kind == "traceback" else "clean error" if kind == "rejected"
               else "accepted (link followed!)"] += 1
        (work / link).unlink()
        shutil.copy(outside / link, work / link)
    return counts


def _with(man: dict, *path_and_value: Any) -> dict:
    out = json.loads(json.dumps(man))
    *path, key, value = path_and_value
    _get(out, tuple(path))[key] = value
    return out


def _run(fn) -> str:
    try:
        fn()
    except EdgeflowError:
        return "clean error"
    except Exception as exc:
        return f"traceback: {type(exc).__name__}: {str(exc)[:120]}"
    return "accepted"


def task_files(probe: Probe, tmp: Path, rng: random.Random, n_flips: int) -> dict[str, Any]:
    from edgeflow.runtime import Session, Task

    good = probe.task.save(tmp / "good.npz").read_bytes()
    blobs = {"empty": b"", "text": b"hello", "truncated": [good[: len(good) * k // 10]
                                                           for k in range(1, 10)],
             "flipped": [_flip(good, rng) for _ in range(n_flips)]}
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in ("theta.npy", "prototypes.npy", "classes.npy", "meta.npy"):
            z.writestr(name, b"\0" * ((200 << 20) if name == "meta.npy" else 10))
    blobs["zip bomb"] = bomb.getvalue()
    header = io.BytesIO()  # a .npy header declaring 10**12 values in a 2 KB member
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(header, "w") as z:
        for name in src.namelist():
            data = src.read(name)
            if name == "theta.npy":
                shape = repr(probe.task.theta.shape).encode()
                data = data.replace(shape, f"({10**12},)".encode(), 1)
            z.writestr(name, data)
    blobs["npy header bomb"] = header.getvalue()
    blobs["structured"] = _structured_tasks(good)
    counts, bad = Counter(), []
    with Session(probe.bundle, backend="onnxruntime", threads=1) as s:
        for name, items in blobs.items():
            for data in items if isinstance(items, list) else [items]:
                (tmp / "t.npz").write_bytes(data)
                for verb in ("predict", "update", "remove"):  # update/remove use the support cache
                    r = _run(lambda v=verb: _use(s, v, Task.load(tmp / "t.npz"), probe))
                    counts[r.split(":")[0]] += 1
                    if r.startswith("traceback"):
                        bad.append(f"{name} ({verb}): {r}")
    return {"cases": sum(counts.values()), **dict(counts), "tracebacks": bad[:10]}


def _use(s: Any, verb: str, task: Any, probe: Probe) -> None:
    if verb == "predict":
        s.predict(probe.query, task)
    elif verb == "update" and hasattr(s, "update"):
        s.update(task, probe.query[:2], [0, 1])
    elif verb == "remove" and hasattr(s, "remove"):
        s.remove(task, [int(task.classes[0])])


def _structured_tasks(good: bytes) -> list[bytes]:
    """Well-formed archives with wrong values: each member (the support cache and open-set
    statistics included) NaN, negative, reshaped, retyped or emptied, and the metadata edited."""
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    variants = []
    for key, a in arrays.items():
        if key == "meta":
            continue
        alts = [a[:0], a.reshape(-1)[:1], a.astype(np.float64), a.astype(np.int32)]
        if a.dtype.kind == "f":
            alts += [np.full_like(a, np.nan), -np.abs(a), np.zeros_like(a)]
        if a.ndim >= 2:
            alts.append(a[:, :1])
        variants += [{**arrays, key: alt} for alt in alts]
        variants.append({k: v for k, v in arrays.items() if k != key})  # member missing
    for k, v in [("support_names", ["x"]), ("support_names", []), ("support_names", None),
                 ("class_names", ["a"]), ("info", []), ("bundle", 5), ("format", "edgeflow-task/9")]:
        variants.append({**arrays, "meta": np.asarray(json.dumps({**meta, k: v}))})
    out = []
    for v in variants:
        buf = io.BytesIO()
        np.savez(buf, **v)
        out.append(buf.getvalue())
    return out


def _flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    k = rng.randrange(len(b))
    b[k] = rng.choice([v for v in range(256) if v != b[k]])
    return bytes(b)


def images(probe: Probe, rng: random.Random, n_flips: int) -> dict[str, Any]:
    from PIL import Image

    from edgeflow.data.imagefolder import decode_image
    from edgeflow.runtime import Session

    encoded = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(probe.query[0]).save(buf, format=fmt)
        encoded[fmt] = buf.getvalue()
    huge = io.BytesIO()
    Image.new("L", (9000, 9000)).save(huge, format="PNG")
    blobs = [b"", b"not an image", huge.getvalue()]
    for data in encoded.values():
        blobs += [data[: len(data) * k // 8] for k in range(1, 8)]
        blobs += [_flip(data, rng) for _ in range(n_flips)]
    counts, bad = Counter(), []
    with Session(probe.bundle, backend="onnxruntime", threads=1) as s:
        for data in blobs:
            r = _run(lambda d=data: s.predict([decode_image(d, name="probe", mode="RGB")],
                                              probe.task))
            counts[r.split(":")[0]] += 1
            if r.startswith("traceback"):
                bad.append(r)
    return {"cases": sum(counts.values()), **dict(counts), "tracebacks": bad[:10]}


def arrays(probe: Probe) -> dict[str, Any]:
    from dataclasses import replace

    from edgeflow.runtime import Session

    sx, sy, q, t = probe.support, probe.labels, probe.query, probe.task
    f = sx.astype(np.float64).transpose(0, 3, 1, 2) / 255
    with Session(probe.bundle, backend="onnxruntime", threads=1) as s:
        cases = {
            "float overflow": lambda: s.adapt(np.where(f > 0.5, 1e300, f), sy),
            "NaN images": lambda: s.adapt(f * np.nan, sy),
            "labels 2**63 (uint64)": lambda: s.adapt(sx, sy.astype(np.uint64) + np.uint64(2**63)),
            "labels 2**64 (python)": lambda: s.adapt(sx, [int(v) + 2**64 for v in sy]),
            "labels float": lambda: s.adapt(sx, sy + 0.5),
            "labels str": lambda: s.adapt(sx, [str(v) for v in sy]),
            "labels 2-d": lambda: s.adapt(sx, sy[:, None]),
            "labels short": lambda: s.adapt(sx, sy[:-1]),
            "labels None": lambda: s.adapt(sx, None),
            "steps -5": lambda: s.adapt(sx, sy, steps=-5),
            "steps 1e9": lambda: s.adapt(sx, sy, steps=10**9),
            "steps 2.5": lambda: s.adapt(sx, sy, steps=2.5),
            "steps nan": lambda: s.adapt(sx, sy, steps=float("nan")),
            "ways 0": lambda: s.adapt(sx, sy, ways=0),
            "ways str": lambda: s.adapt(sx, sy, ways="5"),
            "class_names short": lambda: s.adapt(sx, sy, class_names=["a"]),
            "images 5-d": lambda: s.adapt(sx[None], sy),
            "images bool": lambda: s.adapt(sx > 0, sy),
            "images int16": lambda: s.adapt(sx.astype(np.int16), sy),
            "images object": lambda: s.adapt(np.array([object()] * 10), sy),
            "images empty": lambda: s.adapt(sx[:0], sy[:0]),
            "images None": lambda: s.adapt(None, sy),
            "image list with 0x0": lambda: s.adapt([sx[0], np.zeros((0, 0, 3), np.uint8)], sy[:2]),
            "image list mixed dtype": lambda: s.adapt([sx[0], f[1]], sy[:2]),
            "image 1x1": lambda: s.predict(np.zeros((1, 1, 1, 3), np.uint8), t),
            "image 7 channels": lambda: s.predict(np.zeros((1, 32, 32, 7), np.uint8), t),
            "task NaN theta": lambda: s.predict(q, replace(t, theta=t.theta * np.nan)),
            "task NaN prototypes": lambda: s.predict(q, replace(t, prototypes=t.prototypes * np.nan)),
            "task short theta": lambda: s.predict(q, replace(t, theta=t.theta[:3])),
            "task wrong width": lambda: s.predict(q, replace(t, prototypes=t.prototypes[:, :3])),
            "task classes mismatch": lambda: s.predict(q, replace(t, classes=t.classes[:2])),
            "task None": lambda: s.predict(q, None),
        }
        results = {name: _run(fn) for name, fn in cases.items()}
    counts = Counter(r.split(":")[0] for r in results.values())
    return {"cases": len(cases), **dict(counts),
            "accepted_cases": [k for k, v in results.items() if v == "accepted"],
            "tracebacks": [f"{k}: {v}" for k, v in results.items() if v.startswith("traceback")]}


_WRITER = """
import sys
import numpy as np
from edgeflow.runtime import Task
from edgeflow.runtime.bundle import update_bundle
bundle, task, i = sys.argv[1], sys.argv[2], 0
t = Task(theta=np.zeros(4, np.float32), prototypes=np.ones((2, 3), np.float32),
         classes=np.arange(2), bundle="sha256:" + "0" * 64)
print("ready", flush=True)
while True:
    update_bundle(bundle, manifest={"metrics": {"probe_iteration": i}})
    t.save(task)
    i += 1
"""


def kill_trials(bundle: Path, tmp: Path, n: int, rng: random.Random) -> dict[str, Any]:
    """SIGKILL a process that rewrites the bundle and saves a task in a loop, at random moments;
    after each kill the bundle must load and verify and the task file must load (old or new).
    Then the leftovers are aged past an hour and one more write must remove exactly them."""
    import signal
    import subprocess

    from edgeflow.runtime import Task, load_bundle

    work = shutil.copytree(bundle, tmp / "killed.bundle")
    task = tmp / "killed.npz"
    user = tmp / ".killed.bundle.backup-2024"  # a user's folder matching the old cleanup pattern
    user.mkdir()
    (tmp / ".killed.npz.backup.npz").write_bytes(b"mine")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    broken, loads = [], Counter()
    for _ in range(n):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(work), str(task)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # "ready": imports done, the loop starts
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        try:
            load_bundle(work)
            loads["bundle ok"] += 1
            if task.exists():
                Task.load(task)
                loads["task ok"] += 1
        except Exception as exc:
            broken.append(f"{type(exc).__name__}: {str(exc)[:160]}")
    mine = {user.name, ".killed.npz.backup.npz"}
    leftovers = sorted(p.name for p in tmp.iterdir() if p.name.startswith(".killed.")
                       and p.name not in mine)
    old = time.time() - 7200
    for name in leftovers:
        os.utime(tmp / name, (old, old))
    from edgeflow.runtime.bundle import update_bundle

    update_bundle(work, manifest={"metrics": {"probe_iteration": -1}})
    Task.load(task).save(task) if task.exists() else None
    after = sorted(p.name for p in tmp.iterdir() if p.name.startswith(".killed.")
                   and p.name not in mine)
    return {"trials": n, **dict(loads), "broken": broken,
            "leftovers_after_kills": len(leftovers), "left_after_cleanup": after,
            "user_files_kept": user.is_dir() and (tmp / ".killed.npz.backup.npz").exists()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = build_bundle(tmp / "bundle")
        probe = Probe(bundle)
        work = shutil.copytree(bundle, tmp / "work")
        original = (work / "manifest.json").read_bytes()
        damage = {"flips": flips(probe, work, args.flips, rng),
                  "numeric_edits": numeric_edits(probe, work, original)}
        malformed = {"manifests": malformed_manifests(probe, work, original, rng, args.manifest_cases),
                     "task_files": task_files(probe, tmp, rng, args.input_flips),
                     "images": images(probe, rng, args.input_flips), "arrays": arrays(probe)}
        kills = kill_trials(bundle, tmp, args.kills, rng)
    import onnxruntime

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full", "seed": args.seed,
            "onnxruntime": onnxruntime.__version__, "seconds": round(time.time() - t0, 1),
            "command": "OMP_NUM_THREADS=1 python benchmarks/bundle_probe.py"
                       + (" --quick" if args.quick else "")}
    return {"meta": meta, "damage": damage, "malformed": malformed, "kill_trials": kills,
            "summary": summarize(damage, malformed)}


def summarize(damage: dict, malformed: dict) -> dict[str, Any]:
    f, e = damage["flips"], damage["numeric_edits"]["as_damage"]
    return {"flips": f["trials"], "flips_rejected": f["total"].get("rejected", 0),
            "flips_identical": f["total"].get("identical", 0),
            "flips_changed": f["total"].get("changed", 0),
            "flips_rejected_with_expect": f["with_expect"].get("rejected", 0),
            "numeric_fields": e["fields"], "numeric_edits_rejected": e.get("rejected", 0),
            "numeric_edits_changed": e.get("changed", 0),
            "malformed_cases": sum(m["cases"] for m in malformed.values()),
            "tracebacks": sum(m.get("traceback", 0) for m in malformed.values())
            + f["total"].get("traceback", 0) + e.get("traceback", 0)}


def table(res: dict[str, Any]) -> str:
    s, m, k = res["summary"], res["meta"], res["kill_trials"]
    rs = res["damage"]["numeric_edits"]["resealed"]
    lines = [f"# Bundle probe ({m['mode']}, {m['date']}, onnxruntime {m['onnxruntime']})", "",
             f"`{m['command']}` ({m['seconds']} s)", "",
             "| measurement | count |", "|---|---|",
             f"| single-byte flips (even over all files, manifest included) | {s['flips']} |",
             f"| ... rejected at load | {s['flips_rejected']} |",
             f"| ... loaded, predictions bit-identical | {s['flips_identical']} |",
             f"| ... loaded, predictions **changed** (target 0) | {s['flips_changed']} |",
             f"| ... rejected with `expect=` (target all) | {s['flips_rejected_with_expect']} |",
             f"| numeric manifest fields edited | {s['numeric_fields']} |",
             f"| ... rejected (digest) | {s['numeric_edits_rejected']} |",
             f"| ... predictions **changed** (target 0) | {s['numeric_edits_changed']} |",
             f"| malformed inputs (manifests, task files, images, arrays) | {s['malformed_cases']} |",
             f"| ... **tracebacks** (target 0) | {s['tracebacks']} |",
             f"| kill -9 during bundle rewrite + task save | {k['trials']} |",
             f"| ... bundle or task unreadable after the kill (target 0) | {len(k['broken'])} |",
             f"| ... temp leftovers after the kills / after an aged cleanup | "
             f"{k['leftovers_after_kills']} / {len(k['left_after_cleanup'])} |",
             f"| ... user folders/files matching the temp patterns kept | {k['user_files_kept']} |",
             "",
             "Re-sealed numeric edits (digest recomputed: a deliberate edit, or a version-1 bundle "
             f"without digest; only `expect=` or a signature refuses these): {rs['fields']} fields, "
             f"{rs.get('rejected', 0)} rejected by the schema's bounds, {rs.get('identical', 0)} "
             f"identical, {rs.get('changed', 0)} changed ({', '.join(rs['changed_or_traceback'])}).",
             "", "| malformed | cases | clean error | accepted | tracebacks |", "|---|---|---|---|---|"]
    for k, v in res["malformed"].items():
        ok = sum(n for key, n in v.items() if key.startswith("accepted") and isinstance(n, int))
        lines.append(f"| {k} | {v['cases']} | {v.get('clean error', 0)} | {ok} | "
                     f"{v.get('traceback', 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 flips, 150 manifest cases, 5 input flips")
    ap.add_argument("--flips", type=int, default=None, help="single-byte flips (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bundle_probe")
    args = ap.parse_args(argv)
    args.flips = args.flips or (60 if args.quick else 600)
    args.manifest_cases = 150 if args.quick else None
    args.input_flips = 5 if args.quick else 40
    args.kills = 3 if args.quick else 30
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(res))
    print(table(res))
    return res


if __name__ == "__main__":
    main()
