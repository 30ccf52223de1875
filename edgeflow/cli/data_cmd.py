"""``edgeflow data ...``: look at a dataset before training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.markup import escape

from edgeflow.cli.common import JSON_OPT, command, emit

app = typer.Typer(help="Inspect datasets (directories, .zip archives, or built-in 'digits').",
                  no_args_is_help=True)


@command(app, "info")
def info(
    path: str = typer.Argument(..., help="Directory, .zip (ImageFolder layout) or 'digits'."),
    split: str = typer.Option(None, "--split", help="Split to read when the archive holds several."),
    skip_corrupt: bool = typer.Option(True, "--skip-corrupt/--strict",
                                      help="Count unreadable files instead of failing on them."),
    as_json: bool = JSON_OPT,
) -> None:
    """Classes, images per class, image sizes and unreadable files of a dataset.

    Example: edgeflow data info ../shared/data/tiny-imagenet/novel.zip --json
    """
    from edgeflow.data import load_dataset

    ds = load_dataset(path, split=split, skip_corrupt=skip_corrupt, progress=not as_json)
    counts = ds.counts()
    h, w, c = ds.image_shape
    out = {
        "path": str(path), "classes": ds.num_classes, "images": len(ds),
        "images_per_class": {"min": int(counts.min()), "max": int(counts.max()),
                             "mean": float(np.mean(counts))},
        "image_size": [int(h), int(w)], "channels": int(c),
        "unreadable": len(ds.skipped), "unreadable_files": list(ds.skipped[:20]),
        "class_names": list(ds.classes),
    }
    human = (f"[bold]{escape(str(path))}[/]: {ds.num_classes} classes, {len(ds)} images "
             f"({counts.min()}-{counts.max()} per class), {h}x{w}x{c}, "
             f"{len(ds.skipped)} unreadable\nfirst classes: {', '.join(ds.classes[:8])}")
    emit(out, as_json=as_json, human=human)


@command(app, "sample")
def sample(
    path: str = typer.Argument(..., help="Directory, .zip (ImageFolder layout) or 'digits'."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write <class>/<n>.png into."),
    classes: str = typer.Option("", "--classes", help="Class indices, e.g. '5-9' or '0,3' (all)."),
    per_class: int = typer.Option(5, "--per-class", min=1, help="Images per class."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many images of each class "
                               "first (so a query set does not overlap the support set)."),
    split: str = typer.Option(None, "--split", help="Split to read when the archive holds several."),
    as_json: bool = JSON_OPT,
) -> None:
    """Write a few images per class as PNG files in ImageFolder layout (a support or query set).

    Example: edgeflow data sample digits --classes 5-9 --per-class 5 --output support/
    """
    from PIL import Image

    from edgeflow.data import load_dataset
    from edgeflow.errors import DataError
    from edgeflow.pipeline.config import parse_int_list

    ds = load_dataset(path, split=split)
    ids = parse_int_list(classes, name="--classes") or list(range(ds.num_classes))
    bad = [c for c in ids if not 0 <= c < ds.num_classes]
    if bad:
        raise DataError(f"--classes {bad} do not exist; {path} has classes 0-{ds.num_classes - 1}")
    written = 0
    for c in ids:
        idx = np.nonzero(ds.labels == c)[0][offset:offset + per_class]
        if len(idx) < per_class:
            raise DataError(f"class {ds.classes[c]!r} has {len(idx)} images after --offset {offset}; "
                            "lower --per-class or --offset")
        folder = output / ds.classes[c].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(idx):
            img = ds.images[i]
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{n:04d}.png")
            written += 1
    emit({"output": str(output), "classes": [ds.classes[c] for c in ids], "images": written},
         as_json=as_json,
         human=f"wrote {written} images of {len(ids)} classes to [bold]{escape(str(output))}[/]")
