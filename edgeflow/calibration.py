"""Calibration samples for INT8: a stratified, seeded draw of preprocessed images, saved as .npy.

The same sample feeds ONNX Runtime's static quantiser (QDQ ONNX) and TensorRT's entropy
calibrator, so the two INT8 variants of a bundle are calibrated on identical data. The draw is a
pure function of (labels, samples, seed): every class gets ``samples // classes`` images and the
remainder goes to classes chosen by the seed, so a rerun, on any machine, picks the same images.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from edgeflow.data import ImageDataset, Preprocess
from edgeflow.data import preprocess as apply_preprocess  # the keyword below is `preprocess`
from edgeflow.errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


def calibration_indices(labels: np.ndarray, *, samples: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified sample of ``samples`` images, sorted; reproducible per seed.

    Classes with too few images give all they have and the shortfall is spread over the others.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if samples < 1:
        raise DataError(f"--samples must be at least 1, got {samples}")
    if samples > len(labels):
        raise DataError(f"asked for {samples} calibration images but the data has only "
                        f"{len(labels)}; lower --samples")
    rng = np.random.default_rng([seed, samples])
    classes = np.unique(labels)
    pools = {int(c): rng.permutation(np.nonzero(labels == c)[0]) for c in classes}
    sizes = np.asarray([len(p) for p in pools.values()])
    # Water-filling: the largest per-class level L with sum(min(size, L)) <= samples, then the
    # remainder (fewer than the classes still above L) to classes above L chosen by the seed.
    level = 0
    while level < sizes.max() and np.minimum(sizes, level + 1).sum() <= samples:
        level += 1
    quota = np.minimum(sizes, level)
    above = np.nonzero(sizes > level)[0]
    remainder = samples - int(quota.sum())
    if remainder:
        quota[rng.choice(above, size=remainder, replace=False)] += 1
    picked = np.concatenate([pool[:q] for pool, q in zip(pools.values(), quota, strict=True)])
    return np.sort(picked)


def draw_calibration_sample(dataset: ImageDataset, *, samples: int, seed: int = 0,
                            preprocess: Preprocess) -> np.ndarray:
    """A stratified, seeded sample of ``dataset`` as preprocessed float32 NCHW.

    Example::

        ds = load_dataset("../shared/data/tiny-imagenet/base.zip")
        x = draw_calibration_sample(ds, samples=512, seed=0, preprocess=Preprocess(size=64))
        save_sample("calib.npy", x)
    """
    idx = calibration_indices(dataset.labels, samples=samples, seed=seed)
    return apply_preprocess(dataset.images[idx], preprocess)


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    Readers never see a half-written file; the file gets the usual umask permissions (mkstemp's
    are owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_sample(path: str | Path, sample: np.ndarray) -> Path:
    """Write the sample as a plain .npy (no pickle), atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(sample, dtype=np.float32), allow_pickle=False)
    return atomic_write(path, buf.getvalue())


def load_sample(path: str | Path) -> np.ndarray:
    """Read a sample written by :func:`save_sample`; checks it is float32 NCHW."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration sample {path} does not exist; draw one with `edgeflow calibrate`")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path} is not a plain .npy array ({exc}); redraw the sample") from exc
    if x.ndim != 4 or x.dtype != np.float32:
        raise DataError(f"{path} holds {x.dtype} {x.shape}; a calibration sample is float32 "
                        "(N, C, H, W)")
    return x


def sample_digest(sample: np.ndarray) -> str:
    """sha256 of the sample's shape and bytes: keys calibration caches to the data they came from."""
    h = hashlib.sha256(str(tuple(sample.shape)).encode())
    h.update(np.ascontiguousarray(sample, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CalibrationRecipe:
    """How to calibrate one backbone: which images, how many, which method (a ``calibration/*.toml``).

    ``data`` is relative to the recipe file unless absolute. ``None`` fields mean "take it from the
    model" (size, channels) or ImageNet statistics (mean, std). Explicit command-line options
    override the recipe.
    """

    data: str
    samples: int = 512
    seed: int = 0
    method: str = "entropy"
    per_channel: bool = True
    split: str | None = None
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    description: str = ""

    @classmethod
    def load(cls, path: str | Path) -> CalibrationRecipe:
        """Read a recipe; unknown keys are errors naming them and the valid ones."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"calibration recipe {path} does not exist (see calibration/*.toml)")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"calibration recipe {path} is not valid TOML: {exc}") from exc
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(valid))
        if unknown or "data" not in table:
            raise ConfigError(f"calibration recipe {path}: unknown keys {unknown}, "
                              f"{'' if 'data' in table else 'missing key data, '}valid keys: "
                              f"{', '.join(valid)}")
        data = str(table["data"])
        if data != "digits" and not Path(data).is_absolute():
            data = str((path.parent / data).resolve())
        for key in ("mean", "std"):
            if key in table:
                table[key] = tuple(float(v) for v in table[key])
        try:
            return cls(**{**table, "data": data})
        except TypeError as exc:
            raise ConfigError(f"calibration recipe {path}: {exc}") from exc

    def with_overrides(self, **options: object) -> CalibrationRecipe:
        """A copy with every option that is not None replacing the recipe's value."""
        given = {k: v for k, v in options.items() if v is not None}
        valid = {f.name for f in fields(self)}
        if set(given) - valid:
            raise ConfigError(f"unknown recipe fields {sorted(set(given) - valid)}")
        return replace(self, **given)

    def to_dict(self) -> dict:
        return asdict(self)
