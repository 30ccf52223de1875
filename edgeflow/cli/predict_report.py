"""`edgeflow predict` helpers: which images, their true classes when known, and the accuracy report.

Query images come as files and folders (no truth), as one folder of class folders named like the
task's classes, or with a label file (``--labels``). Where the truth is known the report gives
accuracy, per-class recall and the confusion matrix; images of classes the task does not know are
counted apart (they cannot be right or wrong), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import DataError

JSON_HELP = (
    "Print one JSON object on stdout (for scripts). Each prediction has image, class_name (the "
    "class's name as given to adapt: its folder or label), class_index (its label id in the task), "
    "score (softmax over the task's classes) and top (the top-k, each with class_name, class_index "
    "and score); with known truth also true_class_name, and an evaluation object: images, correct, "
    "accuracy, "
    "per_class (recall), confusion (rows: true class, columns: predicted class), unknown_classes. "
    "With --reject each prediction has rejected (true: class_name 'unknown', class_index -1) and "
    "the evaluation counts unknown_class_images_rejected. "
    "skipped lists unreadable files left out by --skip-corrupt.")
MAX_CONFUSION_COLUMNS = 12


@dataclass(frozen=True)
class Queries:
    """Query image files, their true class names (None: unknown truth) and files left out."""

    files: tuple[Path, ...]
    truth: tuple[str | None, ...] | None  # None: no truth at all (plain predict)
    source: str


def image_files(paths: list[Path]) -> list[Path]:
    """Image files of ``paths`` (files as given; folders searched recursively, by extension)."""
    from edgeflow.data.imagefolder import IMAGE_SUFFIXES

    out = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p} does not exist; pass image files or directories")
    return out


def find_queries(paths: list[Path] | None, *, labels: Path | None,
                 task_names: list[str]) -> Queries:
    """The query images and, where known, their classes.

    Truth is known with a label file, or when ``paths`` is one folder whose images all sit in
    class folders at least one of which is named like a task class; otherwise (photos sorted by
    date, say) the folder is read as plain images, as before.
    """
    from edgeflow.data.imagefolder import class_image_files
    from edgeflow.data.labelfile import read_label_csv

    paths = list(paths or [])
    if labels is not None:
        if len(paths) > 1 or (paths and not paths[0].is_dir()):
            raise DataError("with --labels give at most one folder (the one the label file's "
                            "paths are relative to), not image files")
        rows = read_label_csv(labels, root=paths[0] if paths else None)
        return Queries(tuple(r.path for r in rows), tuple(r.label for r in rows), str(labels))
    if not paths:
        raise DataError("give image files or folders to classify, or --labels FILE.csv")
    if len(paths) == 1 and paths[0].is_dir():
        try:  # an empty class folder is no error here: the report shows the class with 0 images
            per_class = class_image_files(paths[0], allow_empty=True)
        except DataError:
            per_class = None  # images at the top level or mixed depths: a plain folder
        if per_class and set(per_class) & set(task_names):
            files = [f for fs in per_class.values() for f in fs]
            truth = [c for c, fs in per_class.items() for _ in fs]
            return Queries(tuple(files), tuple(truth), str(paths[0]))
    return Queries(tuple(image_files(paths)), None, ", ".join(map(str, paths)))


def read_queries(q: Queries, *, mode: str, skip_corrupt: bool) -> tuple[list[np.ndarray],
                                                                        list[int], list[str]]:
    """(decoded images, their indices into ``q.files``, skipped files) in ``mode``."""
    from edgeflow.data.imagefolder import read_image_file

    arrays, kept, skipped = [], [], []
    for i, f in enumerate(q.files):
        try:
            arrays.append(read_image_file(f, mode=mode))
            kept.append(i)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"{exc}; fix or remove the file, or pass --skip-corrupt to leave "
                                "unreadable images out") from exc
            skipped.append(str(f))
    if not arrays:
        raise DataError(f"no readable image in {q.source} (all {len(q.files)} skipped)")
    return arrays, kept, skipped


UNKNOWN_NAME = "unknown"  # what `predict --reject` answers for "none of the task's classes"


def prediction_rows(files: list[Path], scores: np.ndarray, *, names: list[str], ids: np.ndarray,
                    top_k: int, truth: list[str | None] | None,
                    rejected: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One JSON-ready row per image: the top class and the top-k (see ``JSON_HELP``); with
    rejection, a rejected image's class is ``unknown`` (index -1) and its top-k stays."""
    k = min(top_k, len(names))
    rows = []
    for n, (f, sc) in enumerate(zip(files, scores, strict=True)):
        order = np.argsort(-sc)[:k]
        top = [{"class_name": names[i], "class_index": int(ids[i]), "score": float(sc[i])}
               for i in order]
        row = {"image": str(f), **top[0], "top": top}
        if rejected is not None:
            row["rejected"] = bool(rejected[n])
            if rejected[n]:
                row.update(class_name=UNKNOWN_NAME, class_index=-1)
        if truth is not None:
            row["true_class_name"] = truth[n]
        rows.append(row)
    return rows


def evaluate(truth: list[str], predicted: list[str], *, names: list[str],
             ids: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class recall and confusion matrix over images of the task's classes.

    Images whose true class the task does not know are counted per class under
    ``unknown_classes`` and left out of every other number.
    """
    index = {c: i for i, c in enumerate(names)}
    rejecting = UNKNOWN_NAME in predicted and UNKNOWN_NAME not in index
    cols = [*names, UNKNOWN_NAME] if rejecting else names  # a rejected known image: its own column
    confusion = np.zeros((len(names), len(cols)), dtype=np.int64)
    unknown: dict[str, int] = {}
    unknown_rejected = 0
    for t, p in zip(truth, predicted, strict=True):
        if t in index:
            confusion[index[t], cols.index(p)] += 1
        else:
            unknown[t] = unknown.get(t, 0) + 1
            unknown_rejected += p == UNKNOWN_NAME
    per_row = confusion.sum(1)
    correct = int(np.trace(confusion))
    total = int(per_row.sum())
    per_class = [{"class_name": c, "class_index": int(ids[i]), "images": int(per_row[i]),
                  "correct": int(confusion[i, i]),
                  "recall": float(confusion[i, i] / per_row[i]) if per_row[i] else None}
                 for i, c in enumerate(names)]
    return {"images": total, "correct": correct, "accuracy": correct / total if total else None,
            "per_class": per_class,
            "confusion": {"rows": "true class", "columns": "predicted class", "classes": names,
                          "predicted_classes": cols, "matrix": confusion.tolist()},
            "unknown_classes": dict(sorted(unknown.items())),
            "unknown_class_images": int(sum(unknown.values())),
            # with --reject: images of classes the task does not know that it called "unknown"
            "unknown_class_images_rejected": int(unknown_rejected) if rejecting else None}


def print_evaluation(ev: dict[str, Any], *, source: str) -> None:
    """The human report: accuracy, a per-class table with the confusion matrix, unknown classes."""
    from rich.markup import escape
    from rich.table import Table

    from edgeflow.cli.common import console

    names = ev["confusion"]["classes"]
    acc = "n/a" if ev["accuracy"] is None else f"{ev['accuracy']:.2%}"
    console.print(f"accuracy {acc} ({ev['correct']}/{ev['images']} images of the task's classes "
                  f"in {source})", highlight=False, markup=False)
    # beyond a dozen classes the matrix no longer fits a terminal: it stays in --json
    wide = len(names) > MAX_CONFUSION_COLUMNS
    t = Table(title="per class" + (" (confusion matrix: --json)" if wide else
                                   " (rows: true class; columns: predicted class)"))
    t.add_column("class")
    t.add_column("images", justify="right")
    t.add_column("recall", justify="right")
    for c in [] if wide else ev["confusion"].get("predicted_classes", names):
        t.add_column(escape(c[:12]), justify="right")
    for row, pc in zip(ev["confusion"]["matrix"], ev["per_class"], strict=True):
        recall = "n/a" if pc["recall"] is None else f"{pc['recall']:.2%}"
        t.add_row(escape(pc["class_name"]), str(pc["images"]), recall,
                  *([] if wide else map(str, row)))
    console.print(t)
    if ev["unknown_class_images"]:
        shown = ", ".join(f"{c} {n}" for c, n in list(ev["unknown_classes"].items())[:10])
        rejected = ev.get("unknown_class_images_rejected")
        console.print(f"not counted: {ev['unknown_class_images']} images of classes the task does "
                      f"not know ({shown})" + ("" if rejected is None else
                                               f"; {rejected} of them rejected as unknown"),
                      highlight=False, markup=False)
    console.print("per-image predictions: --json", highlight=False, markup=False)
