"""Dependency-graph channel groups: masks while pruning, weight counts, and the physical surgery.

While pruning, one :class:`~edgeflow.prune.scored.ScoreMask` per :class:`DepGroup` holds its scores;
every *producer* of the group's channels (conv or linear output rows, BatchNorm weight and bias, an
option-A shortcut's output) multiplies them by the group's hard mask, so a pruned channel is exactly
zero wherever it exists (ReLU, ReLU6, additions, pooling and concatenation keep zeros zero). Removing
it, and the matching input slice of every consumer, changes no output: :func:`shrink_groups` does that
removal and returns a plain, smaller model. :func:`group_widths` / :func:`rebuild` record and replay
the kept widths (JSON), so a checkpoint needs no pickle.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.errors import ConfigError
from edgeflow.models.cifar_resnet import PadShortcut
from edgeflow.prune.depgraph import (
    DepGroup,
    DepPlan,
    Member,
    ShortcutScatter,
    depgraph_plan,
    shortcut_index,
)
from edgeflow.prune.scored import ScoreMask, latent_weight


class GroupMask(nn.Module):
    """Parametrisation of one producer's weight/bias: the group mask at positions ``idxs`` of dim 0.

    The first member of a group owns the :class:`ScoreMask` (a registered submodule, so the scores are
    model parameters exactly once); the others hold it in a list.
    """

    def __init__(self, owner: ScoreMask, group: DepGroup, idxs, root_idxs, size: int, *,
                 own: bool) -> None:
        super().__init__()
        if own:
            self.owner = owner
        self._owner = [owner]
        self.group = group
        self.size = size
        self.register_buffer("idxs", torch.tensor(idxs, dtype=torch.long), persistent=False)
        self.register_buffer("root_idxs", torch.tensor(root_idxs, dtype=torch.long), persistent=False)
        self.identity = list(idxs) == list(range(size)) and list(root_idxs) == list(range(size))

    def gate(self) -> torch.Tensor:
        m = self._owner[0].mask()
        if self.identity:
            return m
        return torch.ones(self.size, dtype=m.dtype, device=m.device).index_put(
            (self.idxs.to(m.device),), m[self.root_idxs.to(m.device)])

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p * self.gate().view(-1, *([1] * (p.dim() - 1)))


class OutputGate:
    """Forward hook of a shortcut in a stream group: its output channels times the group mask."""

    def __init__(self, mask: GroupMask) -> None:
        self.mask = mask

    def __call__(self, _module, _inputs, out: torch.Tensor) -> torch.Tensor:
        return out * self.mask.gate().view(1, -1, 1, 1)


def attach_group_masks(model: nn.Module, plan: DepPlan, init, *, slope: float = 0.25
                       ) -> dict[str, ScoreMask]:
    """Register the masks of every group of ``plan`` on ``model``; ``init(shape)`` gives scores."""
    mods = dict(model.named_modules())
    masks: dict[str, ScoreMask] = {}
    for g in plan:
        mk = ScoreMask("channel", init(torch.Size([g.size])), slope=slope)
        mk.group, mk.plan = g, plan
        owned = False
        for mem in g.members:
            if mem.dim != "out":
                continue
            mod = mods[mem.module]
            size = mod.out_features if isinstance(mod, nn.Linear) else (
                mod.num_features if isinstance(mod, nn.BatchNorm2d) else
                plan.shortcuts.get(mem.module, (0, getattr(mod, "out_channels", 0)))[1])
            for pname in ("weight", "bias"):
                if getattr(mod, pname, None) is None:
                    continue
                gm = GroupMask(mk, g, mem.idxs, mem.root_idxs, size, own=not owned)
                owned = True
                parametrize.register_parametrization(mod, pname, gm)
            if isinstance(mod, (PadShortcut, ShortcutScatter)):
                gm = GroupMask(mk, g, mem.idxs, mem.root_idxs, size, own=False)
                mod._gate_mask = [gm]  # a list: not a submodule, no state-dict entry
                mod.register_forward_hook(OutputGate(gm))
        masks[g.name] = mk
    return masks


def group_magnitudes(model: nn.Module, plan: DepPlan) -> dict[str, torch.Tensor]:
    """Per group channel: mean over its members of the squared L2 norm of the channel's weights
    (conv/linear output rows and input columns, BatchNorm scale), divided by the group's mean:
    Torch-Pruning's ``MagnitudeImportance()`` (p=2, mean reduction, mean normaliser) on our groups,
    except that depthwise convs count too (Torch-Pruning skips them)."""
    mods = dict(model.named_modules())
    out = {}
    for g in plan:
        total, n = torch.zeros(g.size), 0
        for mem in g.members:
            mod = mods[mem.module]
            if not isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                continue
            w = latent_weight(mod).detach().cpu()
            if mem.dim == "in" and isinstance(mod, nn.Conv2d) and mod.groups > 1:
                continue  # a depthwise conv's input side is its output side, counted once
            if mem.dim == "in":
                w = w.transpose(0, 1)
            sq = w.pow(2) if w.dim() == 1 else w.flatten(1).pow(2).sum(1)
            total.index_add_(0, torch.tensor(mem.root_idxs), sq[list(mem.idxs)])
            n += 1
        imp = total / max(1, n)
        out[g.name] = imp / imp.mean().clamp_min(1e-12)
    return out


def magnitude_ordered_scores(masks: dict[str, ScoreMask], model: nn.Module, plan: DepPlan,
                             lo: float, hi: float) -> None:
    """Scores spread evenly over [lo, hi] in the global order of :func:`group_magnitudes`."""
    imps = group_magnitudes(model, plan)
    names = list(masks)
    flat = torch.cat([imps[n] for n in names])
    ranks = torch.empty_like(flat)
    ranks[flat.argsort()] = torch.arange(len(flat), dtype=flat.dtype)
    vals = lo + (hi - lo) * ranks / max(1, len(flat) - 1)
    i = 0
    with torch.no_grad():
        for n in names:
            k = masks[n].scores.numel()
            masks[n].scores.copy_(vals[i:i + k].to(masks[n].scores))
            i += k


def layer_keeps(plan: DepPlan, keeps: dict[str, torch.Tensor]):
    """Per conv/linear/BN/shortcut: (kept output positions, kept input positions) as bool vectors."""
    out: dict[str, list[torch.Tensor | None]] = {}
    for g in plan:
        k = keeps.get(g.name)
        if k is None:
            continue
        k = k.bool().cpu() if k.dtype == torch.bool else torch.zeros(g.size, dtype=torch.bool).index_fill(
            0, k.long().cpu(), True)
        for mem in g.members:
            slot = out.setdefault(mem.module, [None, None])
            i = 0 if mem.dim == "out" else 1
            if slot[i] is None:
                slot[i] = torch.ones(mem.count, dtype=torch.bool)
            idxs, roots = _index_tensors(mem)
            slot[i][idxs] = k[roots]
    return out


@functools.lru_cache(maxsize=4096)
def _index_tensors(mem: Member) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's positions as index tensors, made once (the trim asks thousands of times)."""
    return torch.tensor(mem.idxs, dtype=torch.long), torch.tensor(mem.root_idxs, dtype=torch.long)


def group_layer_counts(ms, keeps: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """(remaining, total) weights of every conv/linear layer when ``keeps`` channels survive."""
    lk = layer_keeps(ms.plan, keeps)
    res = {}
    for name, layer in ms.layers.items():
        w = latent_weight(layer)
        o, i, k = int(w.shape[0]), int(w.shape[1]), int(w[0, 0].numel())
        ko, ki = lk.get(name, [None, None])
        depthwise = isinstance(layer, nn.Conv2d) and layer.groups > 1
        kept_o = int(ko.sum()) if ko is not None else o
        kept_i = i if depthwise or ki is None else int(ki.sum())
        res[name] = (float(kept_o * kept_i * k), float(o * i * k))
    return res


def _sel(v: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if v is None else torch.nonzero(v).flatten()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _shrunk(mod: nn.Module, o: torch.Tensor, i: torch.Tensor) -> nn.Module:
    if isinstance(mod, nn.BatchNorm2d):
        new = nn.BatchNorm2d(len(o), eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                             track_running_stats=mod.track_running_stats)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, attr, None) is not None:
                getattr(new, attr).data.copy_(getattr(mod, attr).detach()[o])
        if mod.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(mod.num_batches_tracked)
        return new
    w = mod.weight.detach()
    if isinstance(mod, nn.Linear):
        new = nn.Linear(len(i), len(o), bias=mod.bias is not None)
        new.weight.data.copy_(w[o][:, i])
    elif mod.groups > 1:  # depthwise: input channels are the output channels
        new = nn.Conv2d(len(o), len(o), mod.kernel_size, stride=mod.stride, padding=mod.padding,
                        dilation=mod.dilation, groups=len(o), bias=mod.bias is not None,
                        padding_mode=mod.padding_mode)
        new.weight.data.copy_(w[o])
    else:
        new = nn.Conv2d(len(i), len(o), mod.kernel_size, stride=mod.stride, padding=mod.padding,
                        dilation=mod.dilation, bias=mod.bias is not None, padding_mode=mod.padding_mode)
        new.weight.data.copy_(w[o][:, i])
    if mod.bias is not None:
        new.bias.data.copy_(mod.bias.detach()[o])
    return new.to(w.device)


def shrink_groups(model: nn.Module, plan: DepPlan, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A plain copy of ``model`` keeping only the ``keep`` channels (bool or index) of each group."""
    unknown = [n for n in keep if n not in {g.name for g in plan}]
    if unknown:
        raise ConfigError(f"{unknown} are not channel groups of this model; valid: "
                          f"{[g.name for g in plan][:8]}...")
    model = copy.deepcopy(model)
    lk = layer_keeps(plan, keep)
    for name, (ko, ki) in lk.items():
        mod = model.get_submodule(name)
        if name in plan.shortcuts:
            cin, cout = plan.shortcuts[name]
            index = shortcut_index(mod, cin, cout)
            o, i = _sel(ko, cout), _sel(ki, cin)
            new_pos = torch.full((cin + 1,), len(i), dtype=torch.long)
            new_pos[i] = torch.arange(len(i))
            _replace(model, name, ShortcutScatter(new_pos[index[o]]).to(index.device))
            continue
        if isinstance(mod, nn.BatchNorm2d):
            o, i = _sel(ko, mod.num_features), None
        elif isinstance(mod, nn.Linear):
            o, i = _sel(ko, mod.out_features), _sel(ki, mod.in_features)
        else:
            o, i = _sel(ko, mod.out_channels), _sel(ki, mod.in_channels)
            if mod.groups > 1 and ki is not None and not torch.equal(_sel(ki, mod.in_channels), o):
                raise ConfigError(f"depthwise conv {name}: input and output channels disagree")
        _replace(model, name, _shrunk(mod, o, i))
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear) and hasattr(model, "feature_dim"):
        model.feature_dim = head.in_features
    model.channel_groups = "depgraph"
    model.channel_widths = {g.name: int(lk_count(keep[g.name], g.size)) if g.name in keep else g.size
                            for g in plan}
    return model


def lk_count(k: torch.Tensor, size: int) -> int:
    return int(k.sum()) if k.dtype == torch.bool else int(k.numel())


def strip_gates(model: nn.Module) -> None:
    """Remove the shortcut output gates (forward hooks) that :func:`attach_group_masks` added."""
    for mod in model.modules():
        for key, hook in list(mod._forward_hooks.items()):
            if isinstance(hook, OutputGate):
                del mod._forward_hooks[key]
        if hasattr(mod, "_gate_mask"):
            del mod._gate_mask


def rebuild(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """``model`` (dense, fresh) shrunk to recorded ``widths`` (the first channels of each group), so
    that the pruned checkpoint's state dict loads into it."""
    plan = depgraph_plan(model)
    names = {g.name for g in plan}
    unknown = sorted(set(widths) - names)
    if unknown:
        raise ConfigError(f"recorded channel groups {unknown[:4]} are not groups of "
                          f"{type(model).__name__}; was the checkpoint made with another model?")
    return shrink_groups(model, plan, {n: torch.arange(w) for n, w in widths.items()})
