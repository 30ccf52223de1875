"""Checkpoints: tensors plus JSON metadata, written atomically, loaded with ``weights_only=True``.

Format: ``{"state_dict": {name: tensor}, "meta": "<json>"}`` saved by ``torch.save``. Metadata is a
JSON string (not a nested dict) so nothing but tensors and strings is ever unpickled. Checkpoints of
other tools load too when they are a plain state dict or ``{"state_dict": ...}`` (the DataParallel
``module.`` prefix is removed).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeflow.errors import CheckpointError


def save_checkpoint(path: str | Path, *, state_dict: dict[str, torch.Tensor],
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "meta": json.dumps(meta or {}, sort_keys=True, default=str)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a checkpoint; never unpickles anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train one with "
                              "`edgeflow train`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad or foreign files
        raise CheckpointError(f"cannot load {path} as a tensor-only checkpoint ({exc}); it may be "
                              "truncated, or a pickled model (save a state_dict instead)") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd, raw_meta = obj["state_dict"], obj.get("meta", "{}")
        meta = json.loads(raw_meta) if isinstance(raw_meta, str) else {}
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise CheckpointError(f"{path} holds no state_dict; expected a dict of tensors or "
                              "{'state_dict': ...}")
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return sd, meta


def load_weights(model: nn.Module, path: str | Path, *, strict_head: bool = False) -> dict:
    """Load a checkpoint into ``model``; return its metadata.

    Every body tensor must match by name and shape. A classifier head of another size is skipped
    (the model keeps its fresh head) unless ``strict_head``.
    """
    sd, meta = load_checkpoint(path)
    translate = getattr(model, "translate_state_dict", None)  # a user model: its own names too
    if translate is not None:
        sd = translate(sd)
    own = model.state_dict()
    head = {k for k in own if k.split(".")[0] in ("linear", "classifier")}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        name = getattr(model, "user_name", lambda k: k)  # a user model: in its own names
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing "
                              f"{[name(k) for k in missing[:4]]}, unexpected "
                              f"{[name(k) for k in unexpected[:4]]}; is --model right?")
    load = {}
    for k, v in sd.items():
        if own[k].shape != v.shape:
            if k in head and not strict_head:
                continue
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} but the model expects "
                                  f"{tuple(own[k].shape)}; is --model (or its width) right?")
        load[k] = v
    model.load_state_dict(load, strict=False)
    return meta


def state_digest(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and exact bytes: equal digests mean bit-identical models
    (used to check that data-parallel replicas stayed in sync)."""
    import hashlib

    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
