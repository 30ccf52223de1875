"""Read ImageFolder trees from a directory or a .zip into decoded uint8 arrays.

Layouts understood (after stripping single wrapper folders such as ``images_background_small1/``):

- ``<class>/<image>``
- ``<split>/<class>/<image>`` (choose the split with ``split=``; a single split is taken as is)
- ``<group>/<class>/<image>`` such as Omniglot's ``<alphabet>/<character>/``: class = ``group/class``

Images are decoded once, resized and kept as one ``(N, H, W, C)`` uint8 array; decoded arrays are
cached on disk under a key of the archive's content hash, so the second load of a 24k-image archive
takes a fraction of a second instead of a JPEG decode per image. numpy + PIL only (no torch): the
on-device runtime reads support folders with this module too.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeflow.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
KNOWN_SPLITS = ("train", "test", "val", "valid", "validation", "base", "novel")
MODES = {"RGB": 3, "L": 1}
# Limits checked before decoding: PIL reads the header (width, height) first, so an image that
# would decode to gigabytes is refused without allocating it. 40 MP covers any camera frame.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_FILE_BYTES = 64 << 20
CACHE_VERSION = 1


@dataclass(frozen=True)
class ImageDataset:
    """Decoded images with integer labels; ``classes[label]`` is the class name."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    source: str
    skipped: tuple[str, ...] = field(default=())  # members left out as unreadable

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"{self.source}: images must be (N, H, W, C) uint8, got "
                            f"{self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def counts(self) -> np.ndarray:
        """Images per class, indexed by label."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, index: np.ndarray) -> ImageDataset:
        """The images at ``index`` (labels and classes unchanged)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.source,
                            self.skipped)

    def select_classes(self, class_ids: list[int] | np.ndarray) -> ImageDataset:
        """Only the given classes, relabelled 0..len(class_ids)-1 in the given order."""
        class_ids = [int(c) for c in class_ids]
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[class_ids] = np.arange(len(class_ids))
        keep = np.nonzero(remap[self.labels] >= 0)[0]
        return ImageDataset(self.images[keep], remap[self.labels[keep]],
                            tuple(self.classes[c] for c in class_ids), self.source, self.skipped)


def stratified_limit(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of ``limit`` items taken round-robin over classes, first items first.

    Archives are sorted by class, so "the first N images" would be one or two classes; a
    round-robin prefix is deterministic *and* representative.
    """
    if limit <= 0:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    per_class = [np.nonzero(labels == c)[0] for c in np.unique(labels)]
    order: list[int] = []
    depth = 0
    while len(order) < min(limit, len(labels)):
        for idx in per_class:
            if depth < len(idx):
                order.append(int(idx[depth]))
        depth += 1
    return np.sort(np.asarray(order[:limit], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Listing members of a directory or an archive


class _Source:
    """Uniform access to the files of a directory or a zip archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise DataError(f"{path} is a file but not a .zip archive; pass a directory of "
                                "class folders or a .zip holding one")
            self.zip = zipfile.ZipFile(path)

    def members(self) -> list[str]:
        if self.zip is not None:
            return [n for n in self.zip.namelist() if not n.endswith("/")]
        return [p.relative_to(self.path).as_posix() for p in sorted(self.path.rglob("*"))
                if p.is_file()]

    def folders(self) -> list[str]:
        """Every folder (posix, relative), including empty ones, which ``members`` cannot show."""
        if self.zip is not None:
            names = self.zip.namelist()
            out = {n.rstrip("/") for n in names if n.endswith("/")}
            out |= {str(p) for n in names for p in PurePosixPath(n).parents if str(p) != "."}
            return sorted(out)
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_dir())

    def read(self, member: str) -> bytes:
        # sizes as stored (zip directory / stat) are checked before reading, so a member that
        # inflates to gigabytes is refused unread; decode_image then bounds the pixels
        if self.zip is not None:
            size = self.zip.getinfo(member).file_size
        else:
            size = (self.path / member).stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"{self.path}:{member} is {size} bytes (at most {MAX_IMAGE_FILE_BYTES} "
                            "per image); give camera-sized images")
        if self.zip is not None:
            return self.zip.read(member)
        return (self.path / member).read_bytes()

    def fingerprint(self) -> str:
        """Content hash of the archive, or of the directory's names, sizes and mtimes."""
        h = hashlib.sha256()
        if self.zip is not None:
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        else:
            for p in sorted(self.path.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p.relative_to(self.path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _is_hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def check_no_empty_folders(folders: list[str], members: list[str], source: str) -> None:
    """Raise :class:`DataError` naming folders that hold no (visible) file at any depth.

    A folder with nothing in it never appears among the files, so a class folder the user made but
    left empty (or whose images were not copied) used to vanish from the task without a word.
    """
    full = {str(p) for m in members if not _is_hidden(PurePosixPath(m).parts)
            for p in PurePosixPath(m).parents}
    empty = [f for f in folders if f not in full and not _is_hidden(PurePosixPath(f).parts)]
    # report the deepest ones: an empty folder's empty parent adds nothing
    empty = [f for f in empty if not any(e.startswith(f + "/") for e in empty)]
    if empty:
        raise DataError(f"{source}: folder(s) with no images: {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''}; add images of that class or remove "
                        "the folder")


def _layout(members: list[str], source: str, split: str | None) -> dict[str, list[str]]:
    """Map class name -> sorted member paths, following the documented layouts."""
    paths = [PurePosixPath(m) for m in members if not _is_hidden(PurePosixPath(m).parts)]
    if not paths:
        raise DataError(f"{source} holds no files; expected <class>/<image> folders")
    prefix: tuple[str, ...] = ()
    # Strip wrapper folders that hold everything, but never the class level itself.
    while True:
        parts = [p.parts[len(prefix):] for p in paths]
        tops = {p[0] for p in parts if len(p) > 1}
        if len(tops) == 1 and all(len(p) > 2 for p in parts):
            top = next(iter(tops))
            if top in KNOWN_SPLITS and split not in (None, top):
                raise DataError(f"{source} has only the split {top!r}, not {split!r}; "
                                f"pass split={top!r} or omit it")
            prefix += (top,)
            continue
        break
    depths = {len(p) for p in parts}
    if depths == {1}:
        raise DataError(f"{source} has images but no class folders; put each class's images in a "
                        "folder named after the class")
    if len(depths) > 1:
        raise DataError(f"{source} mixes folder depths {sorted(depths)}; expected "
                        "<class>/<image> or <split>/<class>/<image> throughout")
    depth = depths.pop()
    if depth > 3:
        raise DataError(f"{source} nests images {depth - 1} folders deep; expected "
                        "<class>/<image>, <split>/<class>/<image> or <group>/<class>/<image>")
    tops = sorted({p[0] for p in parts})
    if depth == 3 and (split is not None or set(tops) <= set(KNOWN_SPLITS)):
        if split is None:
            raise DataError(f"{source} holds several splits {tops}; choose one with split= "
                            "(--split on the command line)")
        if split not in tops:
            raise DataError(f"{source} has no split {split!r}; splits there: {tops}")
        keep = [(p, q) for p, q in zip(paths, parts, strict=True) if q[0] == split]
        paths, parts = [p for p, _ in keep], [q[1:] for _, q in keep]
    classes: dict[str, list[str]] = {}
    for path, rel in zip(paths, parts, strict=True):
        classes.setdefault("/".join(rel[:-1]), []).append(path.as_posix())
    return {name: sorted(files) for name, files in sorted(classes.items())}


# ---------------------------------------------------------------------------------------------
# Decoding


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("RGB" or "L") from any PIL mode, keeping what the pixels mean.

    PIL's own ``convert`` is right for 1 (0/255), L, LA and RGBA (alpha dropped), P (through the
    palette) and CMYK/YCbCr, but clips 16-bit and 32-bit greyscale at 255, so a 16-bit PNG (depth
    or thermal camera) became almost all white; those are scaled from 0..65535 instead.
    """
    if img.mode == mode:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        # 16-bit images use 0..65535; a float image in 0..1 is scaled to 0..255, else clipped
        scale = 255.0 / 65535.0 if img.mode != "F" else (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert(mode)
    if img.mode == "P":  # via RGBA: a palette with transparency would otherwise warn
        img = img.convert("RGBA")
    return img.convert(mode)


def decode_image(data: bytes, *, name: str, mode: str = "RGB",
                 size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to (H, W, C) uint8 in ``mode`` ("RGB" or "L"), resized if asked."""
    if mode not in MODES:
        raise DataError(f"unknown colour mode {mode!r}; valid modes: {', '.join(MODES)}")
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise DataError(f"image {name} is {len(data)} bytes (at most {MAX_IMAGE_FILE_BYTES}); "
                        "give camera-sized images")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size  # from the header; nothing is decoded yet
            if w * h > MAX_IMAGE_PIXELS or w <= 0 or h <= 0:
                raise DataError(f"image {name} is {w}x{h} pixels (at most {MAX_IMAGE_PIXELS} "
                                "pixels are decoded); resize it first")
            img.load()
            img = convert_mode(img, mode)
            if size is not None:
                hw = (size, size) if isinstance(size, int) else tuple(size)
                if img.size != (hw[1], hw[0]):
                    img = img.resize((hw[1], hw[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {name} is too large to decode safely ({exc}); resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from exc
    except Exception as exc:  # a decoder plugin's own error on crafted bytes (MemoryError too)
        # PIL's format plugins raise struct.error, IndexError, TypeError, ... on crafted files;
        # whatever the plugin, a file that does not decode is a data problem, not a crash
        raise DataError(f"cannot decode image {name} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image_file(path: str | Path, *, mode: str = "RGB") -> np.ndarray:
    """Decode the image file ``path`` (size-checked before it is read) to (H, W, C) uint8."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"image {path} is {size} bytes (at most {MAX_IMAGE_FILE_BYTES}); give "
                            "camera-sized images")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image(data, name=str(path), mode=mode)


def _cache_dir() -> Path:
    root = os.environ.get("EDGEFLOW_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeflow"


def _iter_decoded(src: _Source, layout: dict[str, list[str]], *, mode: str, size, skip_corrupt: bool,
                  source: str) -> Iterator[tuple[int, np.ndarray | None, str]]:
    for label, files in enumerate(layout.values()):
        for member in files:
            name = f"{source}:{member}" if src.zip is not None else str(src.path / member)
            if not member.lower().endswith(IMAGE_SUFFIXES):
                if skip_corrupt:
                    yield label, None, member
                    continue
                raise DataError(f"{name} is not an image (by its extension); remove it, or pass "
                                "skip_corrupt=True (--skip-corrupt) to leave it out")
            try:
                yield label, decode_image(src.read(member), name=name, mode=mode, size=size), member
            except DataError as exc:
                if not skip_corrupt:
                    raise DataError(f"{exc}; fix or remove the file, or pass skip_corrupt=True "
                                    "(--skip-corrupt) to leave unreadable images out") from exc
                yield label, None, member


def load_image_folder(path: str | Path, *, split: str | None = None, mode: str = "RGB",
                      size: int | tuple[int, int] | None = None, skip_corrupt: bool = False,
                      cache: bool = True, progress: bool = False) -> ImageDataset:
    """Load every image of an ImageFolder directory or .zip (see the module docstring).

    ``size`` resizes (bilinear) so that differently sized images stack; without it every image must
    already have one size. Decoded arrays are cached under ``$EDGEFLOW_CACHE`` (default
    ``~/.cache/edgeflow``) keyed by content hash and options; ``cache=False`` disables that.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist; pass a directory of class folders, a "
                        ".zip archive, or 'digits' for the built-in dataset")
    src = _Source(path)
    source = str(path)
    members = src.members()
    layout = _layout(members, source, split)
    check_no_empty_folders(src.folders(), members, source)
    key = hashlib.sha256(f"{CACHE_VERSION}|{src.fingerprint()}|{split}|{mode}|{size}|"
                         f"{skip_corrupt}".encode()).hexdigest()[:24]
    cache_file = _cache_dir() / f"{path.stem}-{key}.npz"
    if cache and cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                return ImageDataset(z["images"], z["labels"], tuple(str(c) for c in z["classes"]),
                                    source, tuple(str(s) for s in z["skipped"]))
        except (OSError, ValueError, KeyError):
            cache_file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    total = sum(len(f) for f in layout.values())
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    items = _iter_decoded(src, layout, mode=mode, size=size, skip_corrupt=skip_corrupt,
                          source=source)
    if progress:
        from rich.progress import track

        items = track(items, total=total, description=f"decoding {path.name}", transient=True)
    for label, arr, member in items:
        if arr is None:
            skipped.append(member)
            continue
        if images and arr.shape != images[0].shape:
            raise DataError(f"{source}:{member} is {arr.shape[1]}x{arr.shape[0]} but earlier images "
                            f"are {images[0].shape[1]}x{images[0].shape[0]}; pass size= (--size) "
                            "to resize all images to one size")
        images.append(arr)
        labels.append(label)
    classes = tuple(layout)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    if not images or (counts == 0).any():
        bad = [classes[i] for i in np.nonzero(counts == 0)[0]][:5]
        raise DataError(f"{source}: class folders with no readable images: {bad}; remove them or "
                        "add images")
    ds = ImageDataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes, source,
                      tuple(skipped))
    if cache:
        _write_cache(cache_file, ds)
    return ds


def _write_cache(cache_file: Path, ds: ImageDataset) -> None:
    """Write atomically; a cache that cannot be written is only a lost speed-up."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=ds.images, labels=ds.labels, classes=np.asarray(ds.classes),
                 skipped=np.asarray(ds.skipped, dtype=str))
        os.replace(tmp, cache_file)
    except OSError:
        pass


def class_image_files(path: str | Path, *, allow_empty: bool = False) -> dict[str, list[Path]]:
    """Class name -> image files of a directory of class folders (the layouts above, no splits).

    For reading query images with known classes at their own size (``edgeflow predict`` on a
    labelled folder): files without an image extension are left out, as plain ``predict`` leaves
    them out of a folder; an empty class folder is an error that names it unless ``allow_empty``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path} is not a directory of class folders")
    src = _Source(path)
    members = [m for m in src.members() if m.lower().endswith(IMAGE_SUFFIXES)]
    if not members:
        raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    layout = _layout(members, str(path), None)
    if not allow_empty:
        check_no_empty_folders(src.folders(), members, str(path))
    return {name: [path / m for m in files] for name, files in layout.items()}
