"""Shared fixtures: the real datasets and weights in ../shared, skipped with a reason if absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEFLOW_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"


def shared_file(rel: str) -> Path:
    """A file under ../shared, or a skip that says what is missing."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} is absent (set EDGEFLOW_SHARED to the shared folder)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Decoded-image cache shared by the session, out of the user's home."""
    if "EDGEFLOW_CACHE" not in os.environ:
        os.environ["EDGEFLOW_CACHE"] = str(tmp_path_factory.mktemp("edgeflow-cache"))
    yield
