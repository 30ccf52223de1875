"""Labels for flat folders: a CSV of ``file,label`` rows (numpy + PIL only; the runtime uses it).

Robots capture images into one folder in the order they come; a label file beside it says which
class each image shows, instead of copying images into class folders::

    file,label
    frame_0001.png,mug
    frame_0002.png,bottle

The header is optional (a first row ``file,label``, ``path,label``, ``image,label`` or
``filename,class`` is taken as one). Paths are relative to the folder given on the command line,
else to the CSV's own folder; absolute paths are taken as they are. Every row must name an existing
file and a non-empty label, and no file may be listed twice.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeflow.data.imagefolder import MAX_IMAGE_FILE_BYTES, ImageDataset, decode_image
from edgeflow.errors import DataError

HEADER_FILE = ("file", "path", "image", "filename", "filepath")
HEADER_LABEL = ("label", "class", "class_name")
MAX_LABEL_ROWS = 1_000_000


@dataclass(frozen=True)
class LabelledFile:
    """One row of a label file: the resolved image path, its class name and the CSV row number."""

    path: Path
    label: str
    row: int


def read_label_csv(csv_path: str | Path, *, root: str | Path | None = None) -> list[LabelledFile]:
    """The rows of ``csv_path`` with paths resolved against ``root`` (else the CSV's folder).

    Raises :class:`DataError` naming the row for a missing file, an empty label, a row with other
    than two columns, or a file listed twice.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"label file {csv_path} does not exist; give a CSV of file,label rows")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: a BOM from a spreadsheet export
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {csv_path}: {exc}") from None
    bases = [Path(root).expanduser()] if root is not None else []
    bases.append(csv_path.parent)
    out: list[LabelledFile] = []
    seen: dict[Path, int] = {}
    rows = csv.reader(text.splitlines())
    for number, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue  # blank lines (a trailing newline, spacing between blocks)
        cells = [c.strip() for c in row]
        if number == 1 and cells[0].lower() in HEADER_FILE and len(cells) == 2 \
                and cells[1].lower() in HEADER_LABEL:
            continue
        where = f"{csv_path} row {number}"
        if len(cells) != 2:
            raise DataError(f"{where} has {len(cells)} columns ({','.join(row)[:80]!r}); each row "
                            "must be file,label")
        name, label = cells
        if not name:
            raise DataError(f"{where} has no file name; each row must be file,label")
        if not label:
            raise DataError(f"{where}: {name} has an empty label; give its class name")
        path = _resolve(name, bases, where)
        key = path.resolve()
        if key in seen:
            raise DataError(f"{where} lists {name} again (first on row {seen[key]}); list each "
                            "image once, with one label")
        seen[key] = number
        out.append(LabelledFile(path=path, label=label, row=number))
        if len(out) > MAX_LABEL_ROWS:
            raise DataError(f"{csv_path} lists more than {MAX_LABEL_ROWS} images")
    if not out:
        raise DataError(f"label file {csv_path} lists no images; give file,label rows")
    return out


def _resolve(name: str, bases: list[Path], where: str) -> Path:
    candidate = Path(name).expanduser()
    tried = [candidate] if candidate.is_absolute() else [b / candidate for b in bases]
    for p in tried:
        if p.is_file():
            return p
    raise DataError(f"{where}: image {name} does not exist (looked for "
                    f"{' and '.join(str(p) for p in tried)})")


def classes_and_labels(labels: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted class names and each item's index into them (the order class folders give)."""
    classes = tuple(sorted(set(labels)))
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.asarray([index[c] for c in labels], dtype=np.int64)


def load_labelled_files(rows: list[LabelledFile], *, source: str, mode: str = "RGB",
                        size: int | tuple[int, int] | None = None,
                        skip_corrupt: bool = False) -> ImageDataset:
    """Decode the rows' images into an :class:`ImageDataset` (classes sorted by name).

    ``size`` and ``skip_corrupt`` mean what they mean for :func:`load_image_folder`; a class whose
    every image was skipped is an error that names it.
    """
    images: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[str] = []
    for r in rows:
        try:
            arr = _read(r.path, mode=mode, size=size)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"{exc} (row {r.row}); fix or remove the file, or pass "
                                "--skip-corrupt to leave unreadable images out") from exc
            skipped.append(str(r.path))
            continue
        if images and arr.shape != images[0].shape:
            raise DataError(f"{r.path} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; give images of one size")
        images.append(arr)
        kept.append(r.label)
    lost = sorted({r.label for r in rows} - set(kept))
    if lost:
        raise DataError(f"{source}: no readable image of class(es) {lost[:5]}; add images")
    classes, labels = classes_and_labels(kept)
    return ImageDataset(np.stack(images), labels, classes, source, tuple(skipped))


def _read(path: Path, *, mode: str, size: int | tuple[int, int] | None) -> np.ndarray:
    try:
        if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"image {path} is larger than {MAX_IMAGE_FILE_BYTES} bytes; give "
                            "camera-sized images")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image(data, name=str(path), mode=mode, size=size)
