"""Learnable scores with a hard mask and a straight-through gradient (Hyperflows' parametrisation).

Every prunable weight tensor ``W`` (conv and linear weights) is registered with
``torch.nn.utils.parametrize`` so that the module's forward is unchanged: ``module.weight`` reads
as ``W_latent * mask(t)``. The mask is hard, ``m = 1[t >= 0]``; its backward is straight-through
with slope ``0.25`` (the sigmoid's slope at 0): ``dL/dt = 0.25 * dL/dm = 0.25 * W * dL/dW_eff``,
so a pruned weight still receives a signed first-order estimate of what restoring it would do
(its "flow"). The latent weight is kept while pruned. Biases and BatchNorm are never masked at
``weight`` and ``n:m`` granularity.

Granularities, one score per group:

* ``weight``: one score per weight (the paper's setting).
* ``n:m``: one score per weight; keep = ``(t >= 0) AND t among the n largest of its group``, a group
  being m consecutive input channels at one (out, kh, kw) position (TensorRT's 2:4 layout). The
  keep set therefore satisfies the pattern *by construction* at every step, flows decide *which* n
  of the m survive (a pruned weight whose flow lifts its score above a kept neighbour's swaps in),
  and pressure can prune further inside the pattern when a sparsity above (m-n)/m is asked for.
  Scores start in [0.2, 0.5] ordered like |w| within each group, so the first projection is the
  magnitude one. Layers whose input channels are not a multiple of m (the RGB stem) stay dense.
* ``channel``: one score per output channel of a prunable conv (see :mod:`edgeflow.prune.channel`;
  with dependency-graph groups one per group channel, :mod:`edgeflow.prune.depgraph_shrink`);
  the same mask multiplies the conv's filters *and* the following BatchNorm's weight and bias, so a
  pruned channel is exactly zero after BN and the layer can be removed physically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.errors import ConfigError


class StraightThrough(torch.autograd.Function):
    """Forward: ``keep`` as floats. Backward: ``slope * grad`` to the scores (straight-through)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, keep: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.slope = slope
        return keep.to(t.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.slope, None, None


def nm_keep(t: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask of the ``n`` largest entries of ``t`` in each group of ``m`` input channels.

    ``t`` is weight-shaped, (out, in, kh, kw) or (out, in); groups run along dim 1.
    """
    moved = t.movedim(1, -1)
    shape = moved.shape
    grouped = moved.reshape(*shape[:-1], shape[-1] // m, m)
    idx = grouped.topk(n, dim=-1).indices
    keep = torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, idx, True)
    return keep.reshape(shape).movedim(-1, 1)


def nm_pattern_ok(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive input channels has at most ``n`` non-zeros."""
    moved = weight.movedim(1, -1)
    shape = moved.shape
    if shape[-1] % m:
        return False
    nz = (moved.reshape(*shape[:-1], shape[-1] // m, m) != 0).sum(-1)
    return bool((nz <= n).all())


class ScoreMask(nn.Module):
    """The parametrisation of one weight: ``forward(w) = w * STE(keep(t))`` broadcast to ``w``."""

    def __init__(self, kind: str, scores: torch.Tensor, *, slope: float, n: int = 0, m: int = 0):
        super().__init__()
        self.kind, self.n, self.m, self.slope = kind, n, m, slope
        self.scores = nn.Parameter(scores)

    def keep(self) -> torch.Tensor:
        t = self.scores.detach()
        if self.kind == "n:m":
            return nm_keep(t, self.n, self.m) & (t >= 0)
        return t >= 0

    def mask(self) -> torch.Tensor:
        return StraightThrough.apply(self.scores, self.keep(), self.slope)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        if self.kind == "channel":
            mask = mask.view(-1, *([1] * (w.dim() - 1)))
        return w * mask


class AffineMask(nn.Module):
    """BatchNorm weight/bias parametrisation sharing a conv's channel mask (channel kind only)."""

    def __init__(self, owner: ScoreMask) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so the owner's scores are not registered twice

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p * self._owner[0].mask()


def latent_weight(layer: nn.Module) -> torch.Tensor:
    """The stored (unmasked) weight of a layer, parametrised or not."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def weight_numel(layer: nn.Module) -> int:
    return latent_weight(layer).numel()


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer, by module name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def output_positions(model: nn.Module) -> dict[str, int]:
    """Output spatial positions (H*W; 1 for linear) of each conv/linear, from one dummy forward."""
    layers = prunable_layers(model)
    sizes: dict[str, int] = {}
    hooks = [mod.register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, int(out[0, 0].numel())))
        for name, mod in layers.items()]
    size = int(getattr(model, "input_size", 32))
    channels = int(getattr(model, "in_channels", 3))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=next(model.parameters()).device))
    except RuntimeError:  # not an image model (e.g. a bare nn.Linear): MACs = weights
        sizes = {name: 1 for name in layers}
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


@dataclass
class MaskSet:
    """The scored model's bookkeeping: masks by layer name, counts, density, trim."""

    model: nn.Module
    kind: str
    masks: dict[str, ScoreMask]
    layers: dict[str, nn.Module]
    positions: dict[str, int]
    plan: list = field(default_factory=list)  # channel groups (edgeflow.prune.channel)
    n: int = 0
    m: int = 0

    # -- parameters --------------------------------------------------------------------------
    def scores(self) -> list[nn.Parameter]:
        return [mk.scores for mk in self.masks.values()]

    def num_scores(self) -> int:
        return sum(s.numel() for s in self.scores())

    def mean_score(self) -> torch.Tensor:
        """mean(t) over every score: the term the pressure multiplies."""
        return torch.cat([s.reshape(-1) for s in self.scores()]).mean()

    def set_keep(self, keep: dict[str, torch.Tensor]) -> None:
        """Make each layer's mask equal ``keep`` (bool, score-shaped) by moving scores across 0."""
        with torch.no_grad():
            for name, k in keep.items():
                t = self.masks[name].scores
                mag = t.abs().clamp_min(1e-4)
                t.copy_(torch.where(k.to(t.device), mag, -mag))

    def keeps(self) -> dict[str, torch.Tensor]:
        return {name: mk.keep() for name, mk in self.masks.items()}

    # -- counting ----------------------------------------------------------------------------
    def layer_counts(self, budget: str = "weights") -> dict[str, tuple[float, float]]:
        """(remaining, total) weights (or MACs) of every conv/linear layer under the masks."""
        keeps = self.keeps()
        out: dict[str, tuple[float, float]] = {}
        if self.kind == "channel":
            from edgeflow.prune.channel import channel_layer_counts

            counts = channel_layer_counts(self, keeps)
        else:
            counts = {name: (float(keeps[name].sum()) if name in keeps else float(weight_numel(layer)),
                             float(weight_numel(layer))) for name, layer in self.layers.items()}
        for name, (kept, total) in counts.items():
            mult = self.positions.get(name, 1) if budget == "flops" else 1
            out[name] = (kept * mult, total * mult)
        return out

    def density(self, budget: str = "weights") -> float:
        """Remaining fraction of all conv+linear weights (or MACs with ``budget="flops"``)."""
        counts = self.layer_counts(budget).values()
        return sum(k for k, _ in counts) / max(1.0, sum(t for _, t in counts))

    def layer_density(self) -> dict[str, float]:
        return {n: k / max(1.0, t) for n, (k, t) in self.layer_counts().items()}

    # -- exact final sparsity ----------------------------------------------------------------
    def trim(self, target_density: float, *, budget: str = "weights", min_channels: int = 1,
             multiple: int = 1) -> None:
        """Set the masks so the density equals ``target_density`` (ranking by score ``t``).

        ``weight``/``n:m``: the K highest-scored eligible entries are kept, K chosen so that the
        count is exact (for ``n:m`` only entries inside their group's top-n are eligible, so the
        pattern holds; if the pattern alone is sparser than asked, every eligible entry stays).
        ``channel``: channels leave (or come back) one by one by score, each layer keeping at
        least ``min_channels`` (rounded to ``multiple``), until the density is the closest one
        not above the target (channels come in chunks, so exact counts are not always possible).
        """
        if self.kind == "channel":
            from edgeflow.prune.channel import trim_channels

            trim_channels(self, target_density, budget=budget, min_channels=min_channels,
                          multiple=multiple)
            return
        counts = self.layer_counts()
        total = sum(t for _, t in counts.values())
        fixed = sum(t for name, (_, t) in counts.items() if name not in self.masks)
        k = round(target_density * total - fixed)
        names = list(self.masks)
        flat_t = torch.cat([self.masks[n].scores.detach().reshape(-1) for n in names])
        eligible = []
        for name in names:
            mk = self.masks[name]
            t = mk.scores.detach()
            eligible.append((nm_keep(t, mk.n, mk.m) if mk.kind == "n:m"
                             else torch.ones_like(t, dtype=torch.bool)).reshape(-1))
        elig = torch.cat(eligible)
        k = max(0, min(k, int(elig.sum())))
        ranked = torch.where(elig, flat_t, torch.full_like(flat_t, -float("inf")))
        keep_flat = torch.zeros_like(elig)
        if k > 0:
            keep_flat[ranked.topk(k).indices] = True
        keep, i = {}, 0
        for name in names:
            numel = self.masks[name].scores.numel()
            keep[name] = keep_flat[i:i + numel].view_as(self.masks[name].scores)
            i += numel
        self.set_keep(keep)


def attach_scores(model: nn.Module, *, granularity: str = "weight", exclude: tuple[str, ...] = (),
                  score_init: tuple[float, float] = (0.2, 0.5), slope: float = 0.25,
                  init_order: str = "random", generator: torch.Generator | None = None,
                  channel_groups: str = "auto") -> MaskSet:
    """Register score masks on ``model`` (in place) and return the :class:`MaskSet`.

    ``channel_groups`` (channel granularity): ``"inner"``, ``"depgraph"`` or ``"auto"`` (see
    :data:`edgeflow.prune.config.CHANNEL_GROUPS`).

    Example: ``ms = attach_scores(net, granularity="2:4")``; ``net(x)`` then runs masked.
    """
    from edgeflow.prune.config import parse_granularity

    kind, n, m = parse_granularity(granularity)
    layers = prunable_layers(model)
    unknown = [e for e in exclude if e not in layers]
    if unknown:
        raise ConfigError(f"cannot exclude {unknown}: not conv/linear layers of this model; valid "
                          f"names: {', '.join(list(layers)[:12])}...")
    if any(parametrize.is_parametrized(mod) for mod in model.modules()):
        raise ConfigError("model already carries masks; finalize() it before pruning again")
    positions = output_positions(model)
    lo, hi = score_init
    gen = generator or torch.Generator().manual_seed(0)

    def uniform(shape: torch.Size) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    masks: dict[str, ScoreMask] = {}
    plan: list = []
    mods = dict(model.named_modules())
    if kind == "channel" and resolve_channel_groups(model, channel_groups) == "depgraph":
        from edgeflow.prune.depgraph import depgraph_plan
        from edgeflow.prune.depgraph_shrink import attach_group_masks

        plan = depgraph_plan(model, exclude=exclude)
        masks = attach_group_masks(model, plan, uniform, slope=slope)
        if init_order == "magnitude":
            from edgeflow.prune.depgraph_shrink import magnitude_ordered_scores

            magnitude_ordered_scores(masks, model, plan, lo, hi)
    elif kind == "channel":
        from edgeflow.prune.channel import channel_plan

        plan = [g for g in channel_plan(model) if g.conv not in exclude]
        for g in plan:
            conv, bn = mods[g.conv], mods[g.bn]
            mk = ScoreMask("channel", uniform(torch.Size([conv.out_channels])), slope=slope)
            parametrize.register_parametrization(conv, "weight", mk)
            parametrize.register_parametrization(bn, "weight", AffineMask(mk))
            parametrize.register_parametrization(bn, "bias", AffineMask(mk))
            masks[g.conv] = mk
    else:
        for name, layer in layers.items():
            if name in exclude:
                continue
            w = layer.weight.detach()
            if kind == "n:m":
                if w.shape[1] % m or getattr(layer, "groups", 1) != 1:
                    continue  # not n:m-eligible (e.g. the RGB stem): stays dense
                mag = w.abs().cpu()
                gmax = nm_group_max(mag, m).clamp_min(1e-12)
                scores = lo + (hi - lo) * mag / gmax
            else:
                scores = uniform(w.shape)
            mk = ScoreMask(kind, scores.to(w.device, w.dtype), slope=slope, n=n, m=m)
            parametrize.register_parametrization(layer, "weight", mk)
            masks[name] = mk
        if kind == "weight" and init_order == "magnitude" and masks:
            _magnitude_ordered(masks, layers, lo, hi)
    return MaskSet(model=model, kind=kind, masks=masks, layers=layers, positions=positions,
                   plan=plan, n=n, m=m)


def resolve_channel_groups(model: nn.Module, channel_groups: str) -> str:
    """``"auto"`` -> ``"inner"`` for the models the block-inner plan covers, else ``"depgraph"``."""
    from edgeflow.prune.config import CHANNEL_GROUPS

    if channel_groups not in CHANNEL_GROUPS:
        from edgeflow.errors import unknown_name

        raise unknown_name("channel_groups", channel_groups, CHANNEL_GROUPS)
    if channel_groups != "auto":
        return channel_groups
    from edgeflow.prune.channel import inner_plan_covers

    return "inner" if inner_plan_covers(model) else "depgraph"


def _magnitude_ordered(masks: dict[str, ScoreMask], layers: dict[str, nn.Module], lo: float,
                       hi: float) -> None:
    """Scores spread evenly over [lo, hi] in the order of global |w| (largest -> hi)."""
    mags = torch.cat([latent_weight(layers[n]).detach().abs().reshape(-1).cpu() for n in masks])
    ranks = torch.empty_like(mags)
    ranks[mags.argsort()] = torch.arange(len(mags), dtype=mags.dtype)
    vals = lo + (hi - lo) * ranks / max(1, len(mags) - 1)
    i = 0
    with torch.no_grad():
        for mk in masks.values():
            k = mk.scores.numel()
            mk.scores.copy_(vals[i:i + k].view_as(mk.scores).to(mk.scores.device))
            i += k


def nm_group_max(a: torch.Tensor, m: int) -> torch.Tensor:
    """Each entry replaced by the max of its group of ``m`` input channels (dim 1)."""
    moved = a.movedim(1, -1)
    shape = moved.shape
    g = moved.reshape(*shape[:-1], shape[-1] // m, m)
    return g.amax(-1, keepdim=True).expand_as(g).reshape(shape).movedim(-1, 1)
