"""Fold masks into ordinary weights, count what is left, save and load pruned checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.errors import CheckpointError
from edgeflow.prune.channel import channel_counts, shrink_channels
from edgeflow.prune.scored import ScoreMask


def finalize(model: nn.Module) -> nn.Module:
    """A plain copy of a masked model: masks folded into the weights, no scores, no hooks.

    Pruned weights are exactly zero (``w * 0``). For channel masks the copy is rebuilt smaller
    (pruned channels removed) and computes the same outputs as the masked model. The input model
    is left untouched.
    Example: ``plain = finalize(net); torch.onnx.export(plain.eval(), x, "m.onnx")``.
    """
    from edgeflow.prune.depgraph_shrink import GroupMask, shrink_groups, strip_gates

    model = copy.deepcopy(model)
    channel_keep: dict[str, torch.Tensor] = {}
    group_keep: dict[str, torch.Tensor] = {}
    plan = None
    for name, mod in model.named_modules():
        if parametrize.is_parametrized(mod, "weight"):
            mk = mod.parametrizations.weight[0]
            if isinstance(mk, ScoreMask) and mk.kind == "channel":
                channel_keep[name] = mk.keep().clone()
            if isinstance(mk, GroupMask):
                group_keep[mk.group.name] = mk._owner[0].keep().clone()
                plan = mk._owner[0].plan
    strip_gates(model)
    for mod in list(model.modules()):
        if parametrize.is_parametrized(mod):
            # deepcopy shares the dynamic Parametrized* class with the original module, and removing
            # a parametrisation deletes its property from that class: give the copy its own class,
            # or the masked model loses ``.weight`` once it is finalized
            cls = mod.__class__
            mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for pname in list(mod.parametrizations.keys()):
                parametrize.remove_parametrizations(mod, pname, leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    if channel_keep:
        model = shrink_channels(model, channel_keep)
    if group_keep:
        model = shrink_groups(model, plan, group_keep)
    return model


def weight_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def sparsity_report(model: nn.Module, reference: dict[str, int] | None = None) -> dict[str, Any]:
    """Sparsity of a plain model: zero conv+linear weights / all (of ``reference`` sizes if given).

    ``reference`` maps layer names to the original weight counts, so a channel-pruned model's
    removed weights count as zeros. Returns ``sparsity``, ``nonzero``, ``total`` and per-layer
    ``density``.
    """
    layers = weight_layers(model)
    nonzero, total, density = 0, 0, {}
    for name, w in layers.items():
        nz = int((w != 0).sum())
        size = reference.get(name, w.numel()) if reference else w.numel()
        nonzero, total = nonzero + nz, total + size
        density[name] = nz / max(1, size)
    return {"sparsity": 1.0 - nonzero / max(1, total), "nonzero": nonzero, "total": total,
            "density": density}


def save_pruned(path: str | Path, model: nn.Module, *, meta: dict[str, Any]) -> Path:
    """Save a *finalized* model; ``meta`` must carry ``model`` and ``model_kwargs``.

    The channel widths of channel-pruned models go into ``meta["prune"]["channels"]`` so that
    :func:`load_pruned` can rebuild the architecture.
    """
    from edgeflow.checkpoint import save_checkpoint
    from edgeflow.prune.channel import SUPPORTED

    meta = copy.deepcopy(meta)
    prune_meta = meta.setdefault("prune", {})
    if getattr(model, "channel_groups", None) == "depgraph":
        prune_meta["channel_groups"] = "depgraph"
        prune_meta["channels"] = dict(model.channel_widths)
    elif meta.get("model") in SUPPORTED:
        prune_meta["channels"] = channel_counts(model)
    return save_checkpoint(path, state_dict=model.state_dict(), meta=meta)


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild a pruned checkpoint written by ``edgeflow prune`` (weights_only load) in eval mode."""
    from edgeflow.checkpoint import load_checkpoint
    from edgeflow.models import create_model

    sd, meta = load_checkpoint(path)
    if "model" not in meta:
        raise CheckpointError(f"{path} has no model name in its metadata; it was not written by "
                              "`edgeflow prune` (load it with --model and load_weights instead)")
    num_classes = meta.get("num_classes")
    if num_classes is None:
        head = [v for k, v in sd.items() if k.split(".")[0] in ("linear", "classifier")
                and k.endswith("weight")]
        num_classes = int(head[0].shape[0]) if head else 10
    model = create_model(meta["model"], num_classes=int(num_classes), **meta.get("model_kwargs", {}))
    channels = meta.get("prune", {}).get("channels")
    if channels and meta["prune"].get("channel_groups") == "depgraph":
        from edgeflow.prune.depgraph_shrink import rebuild

        model = rebuild(model, channels)
    elif channels:
        full = channel_counts(model)
        if any(channels[k] != full[k] for k in channels):
            model = shrink_channels(model, {k: torch.arange(v) for k, v in channels.items()})
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the architecture its metadata describes "
                              f"({meta['model']}): {str(exc)[:300]}") from exc
    return model.eval()
