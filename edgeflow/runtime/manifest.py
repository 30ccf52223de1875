"""The bundle manifest's schema: one explicit validator for every field (numpy-free, torch-free).

A manifest is read on a robot from a directory someone copied there, so every value the runtime
acts on is checked here, once, before anything else reads it: types, required keys, bounds
(integrator steps, dt, re-centring, mean/std, metric scale, shapes, file sizes), file names (plain
names inside the bundle) and the cross-references between sections. :func:`validate` raises one
:class:`BundleError` naming the field (``adaptation.integrator.steps``) and the fix.

Schema version 2 adds ``manifest_digest``: the sha256 of the manifest's canonical JSON without that
key (:func:`canonical_digest`). It makes any edit of a manifest value detectable, including a valid
one (steps 10 -> 11), which bounds alone cannot catch. It is a checksum against damage, not an
authentication: whoever can edit the manifest can recompute it; pin the bundle's fingerprint
(``expect=``) or sign it (:mod:`edgeflow.runtime.trust`) against deliberate edits. Version 1
manifests (no digest) still load, validated but without that protection.

Written in the style of timm's ``_builder``: a dict is turned into a checked value at the edge, and
the rest of the runtime trusts it. The checks are small functions rather than a schema library so
the device needs nothing beyond the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from edgeflow.errors import BundleError

SCHEMA = "edgeflow-bundle"
SCHEMA_VERSION = 2  # written by this EdgeFlow; 1 (no manifest_digest) is still read
READABLE_VERSIONS = (1, 2)
DIGEST_KEY = "manifest_digest"
MAX_MANIFEST_BYTES = 4 << 20  # a real one is ~6 KB; refuse to parse a multi-megabyte JSON bomb
MAX_FILE_BYTES = 8 << 30  # one bundle file (an ONNX graph with external weights stays below this)
MAX_FILES = 64
MAX_STEPS = 1000  # integrator steps: training uses ~10; 1000 drift calls still finish in seconds
MAX_RECENTER = 10.0
MAX_SCALE = 1e4
MAX_IMAGE_SIZE = 4096
MAX_THETA = 1 << 24
MAX_DIM = 1 << 31
PRECISIONS = ("fp32", "fp16", "int8")
# backbone_prefix/suffix: the backbone cut at theta (export/onnx_split.py), optional
GRAPH_NAMES = ("backbone", "task_encoder", "drift", "backbone_prefix", "backbone_suffix")
METHODS = ("euler", "heun", "rk4")  # edgeflow.integrate.STEPPERS (test_manifest checks they agree)
METRICS = ("cosine", "euclidean")
MODES = ("hyperflow", "recenter", "prototypes-at-theta0")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
# A bundle file name: a plain name, no directory part, no leading dot (hidden and "." / ".."),
# printable ASCII only, short enough for any filesystem and any terminal
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
RESERVED = ("manifest.json", "manifest.sig", "engines")  # the manifest, signature, engine cache

Check = Callable[[Any, str], Any]


def fail(field: str, problem: str, fix: str = "re-export the bundle (or copy it again)") -> BundleError:
    return BundleError(f"manifest field {field}: {problem}; {fix}")


def _show(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# -- leaf checks --------------------------------------------------------------------------------
def integer(lo: int, hi: int) -> Check:
    def check(v: Any, field: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise fail(field, f"expected an integer, got {_show(v)}")
        if not lo <= v <= hi:
            raise fail(field, f"{v} is outside {lo}..{hi}")
        return v
    return check


def number(lo: float, hi: float, *, lo_open: bool = False) -> Check:
    def check(v: Any, field: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise fail(field, f"expected a number, got {_show(v)}")
        if not math.isfinite(v):
            raise fail(field, f"{_show(v)} is not finite")
        if v < lo or v > hi or (lo_open and v == lo):
            raise fail(field, f"{v} is outside {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)
    return check


def text(max_len: int = 256, choices: tuple[str, ...] | None = None) -> Check:
    def check(v: Any, field: str) -> str:
        if not isinstance(v, str):
            raise fail(field, f"expected a string, got {_show(v)}")
        if len(v) > max_len:
            raise fail(field, f"a string of {len(v)} characters (at most {max_len})")
        if choices is not None and v not in choices:
            raise fail(field, f"{_show(v)} is not one of {', '.join(choices)}")
        return v
    return check


def boolean(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise fail(field, f"expected true or false, got {_show(v)}")
    return v


def optional(check: Check) -> Check:
    return lambda v, field: None if v is None else check(v, field)


def anything(v: Any, field: str) -> Any:  # informational sections: any JSON value
    return v


def file_name(v: Any, field: str) -> str:
    """A plain file name inside the bundle: no directories, no "..", no absolute path, no dot file."""
    if not isinstance(v, str):
        raise fail(field, f"expected a file name, got {_show(v)}")
    if not _NAME.fullmatch(v) or v in RESERVED:
        raise fail(field, f"{_show(v)} is not a plain file name inside the bundle (letters, digits, "
                   "'_.+-', at most 128 characters, no '/', no leading '.', not "
                   f"{', '.join(RESERVED)})")
    return v


def dict_of(fields: dict[str, Check], *, required: tuple[str, ...] = (),
            strict: bool = True) -> Check:
    """An object with known ``fields`` (``required`` ones must be present; unknown keys refused)."""
    def check(v: Any, field: str) -> dict:
        if not isinstance(v, dict):
            raise fail(field, f"expected an object, got {_show(v)}")
        for k in required:
            if k not in v:
                raise fail(_join(field, k), "missing")
        if strict:
            extra = sorted(set(v) - set(fields))
            if extra:
                raise fail(_join(field, str(extra[0])[:40]), "unknown field (this EdgeFlow "
                           f"knows {', '.join(fields)})", "re-export the bundle with this EdgeFlow")
        return {k: fields[k](x, _join(field, k)) if k in fields else x for k, x in v.items()}
    return check


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def list_of(check: Check, *, lo: int = 0, hi: int = 1 << 16) -> Check:
    def run(v: Any, field: str) -> list:
        if not isinstance(v, list):
            raise fail(field, f"expected a list, got {_show(v)}")
        if not lo <= len(v) <= hi:
            raise fail(field, f"{len(v)} entries (expected {lo}..{hi})")
        return [check(x, f"{field}[{i}]") for i, x in enumerate(v)]
    return run


def _dim(v: Any, field: str) -> int | str | None:
    if v is None or isinstance(v, str):
        return None if v is None else text(32)(v, field)
    return integer(0, MAX_DIM)(v, field)


def _free_dict(v: Any, field: str) -> dict:
    if not isinstance(v, dict):
        raise fail(field, f"expected an object, got {_show(v)}")
    return v


# -- sections -----------------------------------------------------------------------------------
TENSOR = dict_of({"name": text(128), "shape": list_of(_dim, hi=8), "dtype": text(16, DTYPES)},
                 required=("name", "shape", "dtype"))
GRAPH = dict_of({"file": file_name, "inputs": list_of(TENSOR, lo=1, hi=16),
                 "outputs": list_of(TENSOR, lo=1, hi=16)}, required=("file", "inputs", "outputs"))
PREPROCESS = dict_of({"size": integer(1, MAX_IMAGE_SIZE), "channels": integer(1, 3),
                      "mean": list_of(number(-1e3, 1e3), lo=1, hi=3),
                      "std": list_of(number(1e-6, 1e3), lo=1, hi=3)},
                     required=("size", "channels", "mean", "std"))
INTEGRATOR = dict_of({"method": text(16, METHODS), "steps": integer(0, MAX_STEPS),
                      "dt": optional(number(0.0, 10.0, lo_open=True)),
                      "recenter": number(0.0, MAX_RECENTER),
                      "loop_every": integer(0, MAX_STEPS),
                      "guard_recenter": number(0.0, MAX_RECENTER)},
                     required=("method", "steps"))
ADAPTATION = dict_of({"drift": boolean, "mode": text(32, MODES), "integrator": INTEGRATOR,
                      "metric": text(16, METRICS), "scale": number(0.0, MAX_SCALE, lo_open=True),
                      "drift_config": optional(dict_of({}, strict=False))},
                     required=("drift", "integrator", "metric"))
THETA = dict_of({"size": integer(1, MAX_THETA), "file": file_name, "feature_dim": integer(1, MAX_DIM),
                 "layout": list_of(dict_of({"name": text(256), "offset": integer(0, MAX_THETA),
                                            "size": integer(1, MAX_THETA)},
                                           required=("name", "offset", "size")), hi=4096)},
                required=("size", "file", "layout"))
FILE_ENTRY = dict_of({"sha256": text(64), "bytes": integer(0, MAX_FILE_BYTES)},
                     required=("sha256", "bytes"))


def _files(v: Any, field: str) -> dict:
    if not isinstance(v, dict):
        raise fail(field, f"expected an object of file name -> {{sha256, bytes}}, got {_show(v)}")
    if not 1 <= len(v) <= MAX_FILES:
        raise fail(field, f"{len(v)} files listed (expected 1..{MAX_FILES})")
    for name, entry in v.items():
        file_name(name, f"{field} key")
        FILE_ENTRY(entry, f"{field}.{name}")
        if not _HEX64.fullmatch(entry["sha256"]):
            raise fail(f"{field}.{name}.sha256", "not 64 lower-case hex digits")
    return v


TOP = dict_of({"schema": text(32), "schema_version": anything, DIGEST_KEY: text(80),
               "graphs": dict_of(dict.fromkeys(GRAPH_NAMES, GRAPH), required=("backbone",)),
               "precisions": dict_of(dict.fromkeys(PRECISIONS, file_name), required=("fp32",)),
               "preprocess": PREPROCESS, "theta": THETA, "adaptation": ADAPTATION, "files": _files,
               "input": dict_of({"layout": text(256), "allow_resize": boolean}, strict=False),
               # TensorRT's own INT8 Q/DQ backbone (edgeflow calibrate on a bundle)
               "tensorrt": dict_of({"int8": file_name, "format": text(64)}),
               # informational (provenance, metrics): the runtime never acts on them, so only
               # their outer type is fixed; readers (inspect) must tolerate any inner value
               "created": optional(text(64)), "edgeflow_version": optional(text(64)),
               "target": optional(text(128)), **dict.fromkeys(
                   ("exported_with", "source", "sparsity", "metrics"), optional(_free_dict))},
              required=("graphs", "precisions", "preprocess", "theta", "adaptation", "files"))


# -- the whole manifest -------------------------------------------------------------------------
def canonical_digest(manifest: dict[str, Any]) -> str:
    """``sha256:`` + hex sha256 of the manifest's canonical JSON, ``manifest_digest`` left out.

    Canonical: keys sorted, no whitespace, ASCII escapes, floats as Python's shortest repr. The
    digest depends on the values only, so re-indenting a manifest keeps it.
    """
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    try:
        data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except ValueError as exc:  # NaN / Infinity somewhere in the informational sections
        raise fail("(any)", f"a non-finite number ({exc})") from exc
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def validate(manifest: Any, *, where: str = "manifest.json") -> dict[str, Any]:
    """Check ``manifest`` (parsed JSON) against the schema; return it, or raise naming the field.

    Beyond each field's own type and bounds: the digest (version 2), mean/std lengths equal to
    ``channels``, the theta layout tiling ``theta.size``, the backbone's ``images`` / ``theta``
    inputs agreeing with the preprocessing and theta size, the drift graphs present exactly when
    ``adaptation.drift`` says so, and every file the manifest uses being listed (hashed).
    """
    try:
        return _validate(manifest)
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None  # the where, not the validator's frames


def _validate(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise BundleError(f"not an EdgeFlow bundle manifest (schema {_show(got)}); pass the "
                          "directory `edgeflow export` wrote")
    version = m.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # not True, not 2.0
        raise BundleError(f"schema version {_show(version)}; this runtime reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the bundle with this "
                          "EdgeFlow")
    for key in ("files", "graphs", "precisions", "preprocess", "theta", "adaptation"):
        if key not in m:
            raise fail(key, "missing (lacks the section)")
    m = TOP(m, "")
    _cross_checks(m)
    # the digest last, so that an invalid value is named as such; a valid one that was changed
    # (steps 10 -> 11) is caught here
    if DIGEST_KEY in m or version >= 2:
        if not isinstance(m.get(DIGEST_KEY), str):
            raise fail(DIGEST_KEY, "missing (schema version 2 carries one)")
        if m[DIGEST_KEY] != canonical_digest(m):
            raise fail(DIGEST_KEY, "does not match the manifest's content: manifest.json was "
                       "edited or damaged after export")
    return m


def _cross_checks(m: dict[str, Any]) -> None:
    pre, theta, ad = m["preprocess"], m["theta"], m["adaptation"]
    for k in ("mean", "std"):
        if len(pre[k]) != pre["channels"]:
            raise fail(f"preprocess.{k}", f"{len(pre[k])} values for {pre['channels']} channels")
    offset = 0
    for i, entry in enumerate(theta["layout"]):
        if entry["offset"] != offset:
            raise fail(f"theta.layout[{i}].offset", f"{entry['offset']}, expected {offset} (the "
                       "layout tiles theta in order)")
        offset += entry["size"]
    if theta["layout"] and offset != theta["size"]:
        raise fail("theta.size", f"{theta['size']} but the layout covers {offset} values")
    inputs = {t["name"]: t for t in m["graphs"]["backbone"]["inputs"]}
    images, th = inputs.get("images"), inputs.get("theta")
    if images is None or th is None:
        raise fail("graphs.backbone.inputs", "needs the inputs 'images' and 'theta'")
    want = [pre["channels"], pre["size"], pre["size"]]
    if len(images["shape"]) != 4 or any(isinstance(d, int) and d != w
                                        for d, w in zip(images["shape"][1:], want, strict=True)):
        raise fail("graphs.backbone.inputs.images.shape", f"{images['shape']} does not take "
                   f"(N, {', '.join(map(str, want))}) images as preprocess says")
    if th["shape"] != [theta["size"]]:
        raise fail("graphs.backbone.inputs.theta.shape", f"{th['shape']} but theta.size is "
                   f"{theta['size']}")
    split = {"backbone_prefix", "backbone_suffix"} & set(m["graphs"])
    if len(split) == 1:
        raise fail("graphs", f"has {split.pop()} without its other half; re-export the bundle")
    if split:
        suf = {t["name"]: t for t in m["graphs"]["backbone_suffix"]["inputs"]}
        pre_out = [t["name"] for t in m["graphs"]["backbone_prefix"]["outputs"]]
        if suf.get("theta", {}).get("shape") != [theta["size"]] or set(suf) != {*pre_out, "theta"}:
            raise fail("graphs.backbone_suffix.inputs", "must be the prefix's outputs and theta "
                       f"({theta['size']})")
        if [t["name"] for t in m["graphs"]["backbone_prefix"]["inputs"]] != ["images"]:
            raise fail("graphs.backbone_prefix.inputs", "must be the images alone")
        if ([t["name"] for t in m["graphs"]["backbone_suffix"]["outputs"]] !=
                [t["name"] for t in m["graphs"]["backbone"]["outputs"]]):
            raise fail("graphs.backbone_suffix.outputs", "must be the backbone's outputs")
    has = {"task_encoder", "drift"} <= set(m["graphs"])
    if ad["drift"] and not has:
        raise fail("adaptation.drift", "true but graphs has no task_encoder and drift")
    used = {g["file"] for g in m["graphs"].values()} | set(m["precisions"].values()) | {theta["file"]}
    used |= {v for k, v in (m.get("tensorrt") or {}).items() if k == "int8"}
    unlisted = sorted(used - set(m["files"]))
    if unlisted:
        raise fail("files", f"the manifest uses files it does not hash: {unlisted}")
    if m["precisions"]["fp32"] != m["graphs"]["backbone"]["file"]:
        raise fail("precisions.fp32", "is not the backbone graph's file")


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` at the current schema version with its ``manifest_digest`` (for the writer)."""
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            **{k: v for k, v in manifest.items() if k not in ("schema", "schema_version", DIGEST_KEY)}}
    return {**body, DIGEST_KEY: canonical_digest(body)}
