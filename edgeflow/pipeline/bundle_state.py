"""The compile's bundle between its stages: what export and calibrate put there, and getting it
back to what export left when only calibrate's part of it is damaged.

``export`` writes the bundle; ``calibrate`` rewrites it with the INT8 graphs added (both atomically,
through :class:`edgeflow.runtime.writer.BundleWriter`). Each stage records the bundle files it
added (``products`` in its ``done.json``); the manifest is rewritten by both, so it is checked by
what it lists rather than by its bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgeflow.errors import BundleError

# export's manifest, kept in its stage folder: calibrate can rerun on a bundle whose INT8 files
# were damaged only after the bundle is back to what export wrote (update_bundle needs one that
# verifies)
EXPORT_MANIFEST = "bundle_manifest.json"


def members(bundle: Path) -> list[Path]:
    """The files ``bundle``'s manifest lists."""
    from edgeflow.runtime.bundle import read_manifest

    _, manifest, _ = read_manifest(bundle)
    return [bundle / name for name in manifest["files"]]


def lists(bundle: Path, products: dict[str, Any], root: Path) -> str | None:
    """None when ``bundle``'s manifest reads and lists each of ``products`` (recorded relative to
    ``root``) with the recorded sha256; else what is wrong, in words. The files can be intact while
    the manifest beside them is damaged, or was rewritten by another export."""
    from edgeflow.runtime.bundle import read_manifest

    try:
        _, manifest, _ = read_manifest(bundle)
    except BundleError:
        return "bundle manifest.json unreadable or damaged"
    listed = manifest["files"]
    for name, want in products.items():
        p = root / name  # an absolute name stays absolute
        if p.parent.absolute() != bundle.absolute():
            continue
        entry = listed.get(p.name)
        if entry is None:
            return f"bundle manifest does not list {p.name}"
        if entry.get("sha256") != want["sha256"]:
            return f"bundle manifest lists another {p.name}"
    return None


def keep_export_manifest(bundle: Path, stage_dir: Path) -> None:
    shutil.copyfile(bundle / "manifest.json", stage_dir / EXPORT_MANIFEST)


def restore_export(bundle: Path, export_dir: Path) -> bool:
    """Rewrite ``bundle`` (atomically) as export left it when it does not verify; True if it did.

    Export's own files must still be intact (the export stage's record has just said so); files
    that a later stage added are dropped, and that stage runs again.
    """
    from edgeflow.runtime.bundle import load_bundle, member
    from edgeflow.runtime.manifest import DIGEST_KEY
    from edgeflow.runtime.writer import BundleWriter

    try:
        load_bundle(bundle)
        return False
    except BundleError:
        pass
    saved = json.loads((export_dir / EXPORT_MANIFEST).read_text())
    body = {k: v for k, v in saved.items()
            if k not in ("schema", "schema_version", DIGEST_KEY, "files")}
    with BundleWriter(bundle) as w:
        for name in saved["files"]:
            shutil.copy2(member(bundle, name), w.path(name))
        w.commit(body)
    load_bundle(bundle)  # export's files hashed against the manifest just written
    return True


def verified(bundle: Path) -> None:
    """Load ``bundle`` with every hash checked: a compile never ends on a bundle that does not
    load, whatever it reused."""
    from edgeflow.runtime.bundle import load_bundle

    try:
        load_bundle(bundle)
    except BundleError as exc:
        raise BundleError(f"{exc}\nthe bundle stages' recorded outputs matched, yet the bundle "
                          "does not verify; run the compile again without --resume") from None
