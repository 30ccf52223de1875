"""On-device commands: inspect, build, adapt, predict, bench, doctor (torch is never imported)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli import inspect_report, predict_report
from edgeflow.cli.common import JSON_OPT, command, console, emit

BACKEND_OPT = typer.Option("auto", "--backend", "-b", help="auto (TensorRT when it works, else ONNX "
                           "Runtime), onnxruntime or tensorrt.")
PRECISION_OPT = typer.Option(None, "--precision", help="fp32 (CPU default), fp16 (TensorRT default) "
                             "or int8 (when the bundle has a Q/DQ backbone).")
THREADS_OPT = typer.Option(None, "--threads", min=1, help="CPU threads for ONNX Runtime (default: "
                           "all cores this process may use).")
EXPECT_OPT = typer.Option(None, "--expect", help="Refuse the bundle unless its fingerprint is this "
                          "(sha256:..., as `edgeflow inspect` prints it).")
TRUSTED_KEY_OPT = typer.Option(None, "--trusted-key", help="Ed25519 public key (PEM) whose signature "
                               "the bundle must carry (repeatable; see `edgeflow sign`).")


def _open_bundle(bundle: Path, expect: str | None, trusted_key: list[Path] | None):
    """The verified bundle, pinned (--expect) and signed (--trusted-key) where asked."""
    from edgeflow.runtime import load_bundle

    return load_bundle(bundle, expect=expect, trusted_keys=trusted_key or None)


def register(app: typer.Typer) -> None:
    for name, fn in (("inspect", inspect), ("build", build), ("adapt", adapt), ("predict", predict),
                     ("bench", bench), ("doctor", doctor)):
        command(app, name)(fn)


def inspect(bundle: Path = typer.Argument(..., help="Bundle directory."),
            expect: str = EXPECT_OPT, trusted_key: list[Path] = TRUSTED_KEY_OPT,
            as_json: bool = JSON_OPT) -> None:
    """Show a bundle: fingerprint, files and whether their hashes check out, tensors, theta,
    pruning, metrics, signature, and files in the directory the manifest does not list.

    Pruning: method and granularity; the backbone's parameters, multiply-accumulates per image
    and (channel pruning) per-layer widths, against the unpruned backbone where the manifest
    records it; the fraction of zero conv weights (unstructured and 2:4 pruning).

    Exits 1 when the manifest is invalid, a file is missing, truncated or altered, or the
    fingerprint / signature is not the expected one. The fingerprint (sha256 of manifest.json,
    which lists every file's sha256) is what `--expect` and `Session(expect=...)` pin.

    Example: edgeflow inspect runs/r20.bundle
    """
    from edgeflow.errors import BundleError
    from edgeflow.runtime.bundle import read_manifest, unlisted_files, verify_files
    from edgeflow.runtime.trust import read_signature

    path, man, digest = read_manifest(bundle, expect=expect, trusted_keys=trusted_key or None)
    files = verify_files(path, man)
    sig = read_signature(path)
    res = {"bundle": str(path), "fingerprint": digest, "schema_version": man["schema_version"],
           "manifest_digest": "manifest_digest" in man,
           "files": files, "ok": all(f["status"] == "ok" for f in files),
           "unlisted": unlisted_files(path, man),
           "signature": None if sig is None else {"key_id": sig.get("key_id"),
                                                  "verified": bool(trusted_key),
                                                  "for_this_manifest": sig["fingerprint"] == digest},
           "graphs": man["graphs"], "precisions": man["precisions"],
           "theta_size": man["theta"]["size"], "theta_layers": len(man["theta"]["layout"]),
           "adaptation": man["adaptation"], "preprocess": man["preprocess"],
           "sparsity": {k: v for k, v in (man.get("sparsity") or {}).items() if k != "per_layer"},
           "target": man.get("target"), "source": man.get("source"), "metrics": man.get("metrics")}
    # what pruning did (parameters, MACs, widths), from the backbone graph once its hash checked out
    backbone = man["graphs"]["backbone"]["file"]
    res["structure"] = (inspect_report.structure(path, man)
                        if any(f["file"] == backbone and f["status"] == "ok" for f in files) else None)
    if as_json:
        emit(res, as_json=True)
    else:
        inspect_report.print_inspect(path, man, res)
    if not res["ok"]:
        bad = [f"{f['file']} ({f['status']})" for f in files if f["status"] != "ok"]
        raise BundleError(f"bundle {path} failed verification: {', '.join(bad)}")


def build(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    target: str = typer.Option(None, "--target", "-t", help="Target profile (edgeflow.targets) whose "
                               "precision, 2:4, DLA, workspace and batch sizes to use."),
    precision: str = typer.Option("fp16", "--precision", help="fp32, fp16 or int8."),
    workspace_mb: int = typer.Option(None, "--workspace-mb", min=1, help="Builder workspace limit."),
    max_batch: int = typer.Option(None, "--max-batch", min=1, help="Largest batch of the profile."),
    dla_core: int = typer.Option(None, "--dla-core", min=0, help="Run on this DLA core (+GPU fallback)."),
    sparse: bool = typer.Option(None, "--sparse/--no-sparse", help="SPARSE_WEIGHTS (2:4) on SM >= 8.0."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a cached engine fits."),
    cache: Path = typer.Option(None, "--cache", help="Engine cache dir (default BUNDLE/engines)."),
    expect: str = EXPECT_OPT,
    trusted_key: list[Path] = TRUSTED_KEY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Build (or reuse) TensorRT engines for the bundle on this device.

    Engines are cached under a key of (TensorRT version, GPU, SM, ONNX hash, build options), with a
    timing cache beside them.

    Example: edgeflow build runs/r20.bundle --target orin-nano --precision fp16
    """
    import dataclasses

    from edgeflow.runtime.backends import open_trt
    from edgeflow.runtime.trt_build import BuildOptions

    b = _open_bundle(bundle, expect, trusted_key)
    options = BuildOptions.for_precision(precision)
    if target is not None:
        options = BuildOptions.from_target(_load_target(target), precision=precision,
                                           dla_core=dla_core)
    changes = {}
    if workspace_mb is not None:
        changes["workspace_bytes"] = workspace_mb << 20
    if max_batch is not None:
        lo = min(options.batch[0], max_batch)
        changes["batch"] = (lo, min(max(options.batch[1], lo), max_batch), max_batch)
    if dla_core is not None:
        changes["dla_core"] = dla_core
    if sparse is not None:
        changes["sparse_weights"] = sparse
    options = dataclasses.replace(options, **changes)
    opened = open_trt(b, precision=precision, engine_cache=cache, build_options=options, force=force)
    for r in opened.runners.values():
        r.deactivate()
    res = {"bundle": str(b.path), "target": target, "precision": precision,
           "options": options.to_dict(), "engines": opened.engines, "details": opened.details}
    emit(res, as_json=as_json, human="\n".join(_built_line(g, d) for g, d in opened.details.items()))


def _built_line(graph: str, d: dict) -> str:
    """One line of `edgeflow build`: what, where, how long, from the cache or not."""
    from rich.markup import escape

    profile = "; ".join(f"{name} " + ("static " + "x".join(map(str, lo)) if lo == hi else
                                      f"{'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))}")
                        for name, (lo, _, hi) in d["profile"].items()) or "static shapes"
    flags = ", ".join(d["flags"]) or "FP32"
    if d["cleared_flags"]:
        flags += f" (cleared {', '.join(d['cleared_flags'])})"
    if d["calibrated"]:
        flags += ", INT8 calibrated here"
    notes = "".join(f"\n    note: {escape(n)}" for n in d["notes"])
    return (f"{graph}: {escape(d['result'])} in {d['seconds']:.1f} s from {escape(d['onnx'])} on "
            f"{d['device']}; {flags}; profile {profile}\n    -> {escape(d['engine'])}{notes}")


def _load_target(name: str):
    from edgeflow.targets import Target

    return Target.load(name)


SKIP_CORRUPT_OPT = typer.Option(False, "--skip-corrupt", help="Leave out files that do not decode "
                                "as images (listed in the output and under skipped in --json) "
                                "instead of stopping at the first.")


def adapt(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    support: Path = typer.Option(None, "--support", "-s", help="Labelled images: a directory or .zip "
                                 "with one folder per class (at least two classes, none empty); "
                                 "with --labels, the folder its paths are relative to."),
    output: Path = typer.Option(..., "--output", "-o", help="Task file to write (.npz)."),
    labels: Path = typer.Option(None, "--labels", help="CSV of file,label rows (header optional) "
                                "for images in a flat folder; paths relative to --support (or "
                                "--add), else to the CSV's folder."),
    task_in: Path = typer.Option(None, "--task", help="A task to grow (--add) or shrink (--remove) "
                                 "without its old images: it keeps what it needs (its support "
                                 "images' backbone-prefix activations)."),
    add: Path = typer.Option(None, "--add", help="With --task: images to add, as for --support "
                             "(new classes, or more shots of known ones: class folders named as "
                             "the task's classes)."),
    remove: str = typer.Option(None, "--remove", help="With --task: comma-separated class names to "
                               "drop."),
    one_class: bool = typer.Option(False, "--one-class", help="Accept a single class (\"is this my "
                                   "mug?\"); predict then needs --reject to say \"unknown\"."),
    skip_corrupt: bool = SKIP_CORRUPT_OPT,
    backend: str = BACKEND_OPT,
    precision: str = PRECISION_OPT,
    steps: int = typer.Option(None, "--steps", min=0, help="Integration steps (default: manifest)."),
    threads: int = THREADS_OPT,
    expect: str = EXPECT_OPT,
    trusted_key: list[Path] = TRUSTED_KEY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Adapt the bundle to new classes from a few labelled images (no gradients) -> TASK.npz.

    With --task, adapt an existing task again: --add images (the result equals adapting on the
    old and new images together) or --remove classes, without the old images.

    Example: edgeflow adapt runs/r20.bundle --support my_classes/ --output task.npz

    Example: edgeflow adapt runs/r20.bundle --support captures/ --labels captures/labels.csv -o task.npz

    Example: edgeflow adapt runs/r20.bundle --task task.npz --add new_objects/ -o task.npz
    """
    from edgeflow.errors import DataError
    from edgeflow.runtime import Session, Task
    from edgeflow.runtime.inputs import check_class_count

    b = _open_bundle(bundle, expect, trusted_key)  # pinned/signed before anything else is read
    if task_in is None and (add is not None or remove is not None):
        raise DataError("--add and --remove change an existing task: give it with --task task.npz")
    if task_in is not None and support is not None:
        raise DataError("--support makes a new task; to grow the --task one, give the images with "
                        "--add")
    if task_in is not None and add is None and remove is None:
        raise DataError("with --task, say what changes: --add FOLDER and/or --remove CLASSES")
    ds = None
    if task_in is None or add is not None:
        ds = _support_images(b, add if task_in is not None else support, labels, skip_corrupt)
        if task_in is None:
            check_class_count(ds.classes, what=f"the support set {ds.source}",
                              min_classes=1 if one_class else 2)
    with Session(b, backend=backend, precision=precision, threads=threads) as s:
        if task_in is None:
            task = s.adapt(ds.images, ds.labels, class_names=ds.classes, steps=steps,
                           one_class=one_class)
        else:
            task = _change_task(s, Task.load(task_in), ds, remove, steps)
        path = task.save(output)
        res = {"task": str(path), "classes": list(task.class_names or ()), "shots": task.info["shots"],
               "mode": task.info["mode"], "backend": s.backend, "precision": s.precision,
               "theta_change_max": float(abs(task.theta - s.theta0).max()),
               "support_bytes_per_image": task.info.get("support_bytes_per_image"),
               "fallback_reason": s.fallback_reason, "skipped": list(ds.skipped) if ds else []}
    skipped = (f"\nskipped {len(res['skipped'])} unreadable file(s): "
               f"{escape(', '.join(res['skipped'][:10]))}{' ...' if len(res['skipped']) > 10 else ''}"
               if res["skipped"] else "")
    emit(res, as_json=as_json,
         human=f"wrote [bold]{escape(str(path))}[/]: {len(res['classes'])} classes "
               f"({escape(', '.join(res['classes'][:6]))}{'...' if len(res['classes']) > 6 else ''}), "
               f"{sum(res['shots'])} images, {res['mode']} on {res['backend']}{skipped}")


def _support_images(b, folder: Path | None, labels: Path | None, skip_corrupt: bool):
    """Labelled images from class folders, or a flat folder with a label CSV."""
    from edgeflow.data import load_image_folder
    from edgeflow.data.labelfile import load_labelled_files, read_label_csv
    from edgeflow.errors import DataError

    pre = b.preprocess
    mode, size = "L" if pre.channels == 1 else "RGB", pre.size if b.allow_resize else None
    if labels is not None:
        return load_labelled_files(read_label_csv(labels, root=folder), source=str(labels),
                                   mode=mode, size=size, skip_corrupt=skip_corrupt)
    if folder is not None:
        return load_image_folder(folder, mode=mode, size=size, cache=False, skip_corrupt=skip_corrupt)
    raise DataError("give the support images: --support FOLDER (one folder per class) or "
                    "--labels FILE.csv (file,label rows)")


def _change_task(s, task, ds, remove: str | None, steps: int | None):
    """``task`` with the images of ``ds`` added (by class name) and the ``remove`` classes dropped."""
    from edgeflow.errors import DataError

    if task.class_names is None:
        raise DataError("this task has no class names (made through the Python API); grow it with "
                        "Session.update there")
    import numpy as np

    names = list(task.class_names)
    if ds is not None:
        # the task's ids keep their names; a new class gets the next free id
        by_name = {n: int(c) for n, c in zip(names, task.classes, strict=True)}
        for c in ds.classes:
            by_name.setdefault(c, max(by_name.values()) + 1)
        table = [""] * (max(by_name.values()) + 1)  # class_names by id (gaps: removed classes)
        for n, c in by_name.items():
            table[c] = n
        ids = np.array([by_name[ds.classes[i]] for i in ds.labels], np.int64)
        task = s.update(task, ds.images, ids, class_names=table, steps=steps)
        names = list(task.class_names)
    if remove:
        drop = [c.strip() for c in remove.split(",") if c.strip()]
        unknown = [c for c in drop if c not in names]
        if unknown:
            raise DataError(f"--remove names classes the task does not have: {unknown}; it has "
                            f"{', '.join(names[:20])}")
        task = s.remove(task, [int(task.classes[names.index(c)]) for c in drop], steps=steps)
    return task


def predict(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    images: list[Path] = typer.Argument(None, help="Image files and/or directories of images; or "
                                        "one folder of class folders named like the task's "
                                        "classes, to measure accuracy."),
    task: Path = typer.Option(..., "--task", help="Task file from `edgeflow adapt`."),
    labels: Path = typer.Option(None, "--labels", help="CSV of file,label rows giving the true "
                                "classes (accuracy report); paths relative to the one folder "
                                "given, else to the CSV's folder."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Classes to show per image."),
    reject: float = typer.Option(None, "--reject", min=0.0, max=1.0, help="Say \"unknown\" (class "
                                 "index -1) for images of none of the task's classes, keeping "
                                 "about this share of known-class images (e.g. 0.95); the "
                                 "threshold comes from the task's own support images."),
    skip_corrupt: bool = SKIP_CORRUPT_OPT,
    backend: str = BACKEND_OPT,
    precision: str = PRECISION_OPT,
    threads: int = THREADS_OPT,
    expect: str = EXPECT_OPT,
    trusted_key: list[Path] = TRUSTED_KEY_OPT,
    as_json: bool = typer.Option(False, "--json", help=predict_report.JSON_HELP),
) -> None:
    """Classify images with an adapted task: top-k classes with scores (softmax over the task).

    Given one folder of class folders (as for adapt) whose names match the task's classes, or a
    --labels file, it reports accuracy, per-class recall and the confusion matrix instead of a
    line per image (--json has both); images of classes the task does not know are counted apart.

    Example: edgeflow predict runs/r20.bundle --task task.npz photos/ --top-k 2 --json

    Example: edgeflow predict runs/r20.bundle --task task.npz held_out/   (class folders)
    """
    from edgeflow.runtime import Session, Task

    b = _open_bundle(bundle, expect, trusted_key)  # pinned/signed before anything else is read
    t = Task.load(task)
    names = list(t.class_names) if t.class_names else [str(c) for c in t.classes]
    q = predict_report.find_queries(images, labels=labels, task_names=names)
    arrays, kept, skipped = predict_report.read_queries(
        q, mode="L" if b.preprocess.channels == 1 else "RGB", skip_corrupt=skip_corrupt)
    with Session(b, backend=backend, precision=precision, threads=threads) as s:
        labels_out, scores = s.predict(arrays, t, reject=reject)
    files = [q.files[i] for i in kept]
    truth = None if q.truth is None else [q.truth[i] for i in kept]
    rows = predict_report.prediction_rows(files, scores, names=names, ids=t.classes, top_k=top_k,
                                          truth=truth,
                                          rejected=None if reject is None else labels_out == -1)
    res = {"task": str(task), "predictions": rows, "skipped": skipped}
    if truth is not None:
        res["evaluation"] = predict_report.evaluate(truth, [r["class_name"] for r in rows],
                                                    names=names, ids=t.classes)
    if as_json:
        emit(res, as_json=True)
        return
    if truth is not None:
        predict_report.print_evaluation(res["evaluation"], source=q.source)
    else:
        for r in rows:
            tops = ", ".join(f"{x['class_name']} {x['score']:.3f}" for x in r["top"])
            head = "unknown; nearest: " if r.get("rejected") else ""
            console.print(f"{r['image']}: {head}{tops}", highlight=False, markup=False)
    if skipped:
        console.print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:10])}"
                      f"{' ...' if len(skipped) > 10 else ''}", highlight=False, markup=False)


def bench(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    backend: str = typer.Option("onnxruntime", "--backend", "-b", help="onnxruntime or tensorrt."),
    precision: str = PRECISION_OPT,
    threads: int = THREADS_OPT,
    repeats: int = typer.Option(100, "--repeats", min=3, help="Timed runs per case (after warm-up)."),
    expect: str = EXPECT_OPT,
    trusted_key: list[Path] = TRUSTED_KEY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """How long the bundle takes on this machine: wall-clock milliseconds (median, p90, p99) over
    --repeats runs after 5 warm-up runs, on random images of the bundle's input size.

    Rows: backbone_b1 and backbone_b32 (one backbone call on 1 and on 32 images); drift_step (one
    step of the drift network, bundles with one); adapt_5w5s (adapting to 5 classes from 5 images
    each) and adapt_no_drift_5w5s (the same with prototypes only); predict_75 (classifying 75
    images); adapt_predict_5w5s_75q (a new task end to end) and no_adaptation_5w5s_75q (the same
    without moving theta, for comparison).

    Example: edgeflow bench runs/r20.bundle --threads 2 --repeats 100
    """
    from edgeflow.runtime.bench import bench_session

    res = bench_session(_open_bundle(bundle, expect, trusted_key), backend=backend,
                        precision=precision, threads=threads, repeats=repeats, progress=not as_json)
    if as_json:
        emit(res, as_json=True)
        return
    from rich.table import Table

    t = Table(title=escape(f"{bundle}") + f" on {res['backend']} {res['precision']} ({repeats} runs, ms)")
    for col in ("case", "median", "p90", "p99"):
        t.add_column(col)
    for name, r in res["cases"].items():
        t.add_row(name, f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}")
    console.print(t)


def doctor(
    cache: Path = typer.Option(None, "--cache", help="Engine cache folder to check for writing "
                               "(default ./engines; Sessions use BUNDLE/engines)."),
    as_json: bool = JSON_OPT,
) -> None:
    """What is installed and which backends work, as a pass/fail table (one line per check).

    Runs a tiny graph on ONNX Runtime against numpy. Where TensorRT is installed: TensorRT's import
    and version, the CUDA device, FP32/FP16/INT8 engines of the tiny graph (and FP16 on DLA where
    the device has DLA cores), each compared with ONNX Runtime, and whether the engine cache is
    writable. Exits 1 when a check fails; TensorRT being absent is reported, not a failure.

    Example: edgeflow doctor --json
    """
    from edgeflow.errors import BackendError
    from edgeflow.runtime.doctor import run_checks

    res = run_checks(engine_cache=cache)
    if as_json:
        emit(res, as_json=True)
    else:
        from rich.markup import escape
        from rich.table import Table

        env = res["environment"]
        console.print(", ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, list)),
                      highlight=False)
        t = Table(title="edgeflow doctor")
        for col in ("check", "result", "detail"):
            t.add_column(col)
        for r in res["checks"]:
            mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]absent[/]"}[r["ok"]]
            t.add_row(escape(r["check"]), mark, escape(r["detail"]))
        console.print(t)
    if not res["ok"]:
        raise BackendError("some backend checks failed (see the table); fix the failing backend or "
                           "use another with --backend")
