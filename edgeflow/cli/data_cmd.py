"""``edgeflow data ...``: look at a dataset before training on it."""

from __future__ import annotations

import numpy as np
import typer

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
    human = (f"[bold]{path}[/]: {ds.num_classes} classes, {len(ds)} images "
             f"({counts.min()}-{counts.max()} per class), {h}x{w}x{c}, "
             f"{len(ds.skipped)} unreadable\nfirst classes: {', '.join(ds.classes[:8])}")
    emit(out, as_json=as_json, human=human)
