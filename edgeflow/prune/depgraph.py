"""Channel groups of any model from Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023).

``depgraph_plan(model)`` traces the model once with ``torch_pruning.DependencyGraph`` and turns every
group it finds into a :class:`DepGroup`: the channels that must go together, and for each conv /
BatchNorm / linear (or shortcut) that touches them, which of its output or input positions they are.
That covers what the block-inner plan of :mod:`edgeflow.prune.channel` cannot: residual streams (every
conv that adds into the stream, the identity and projection shortcuts, the next blocks' inputs),
depthwise convolutions (input = output channels, tied to the expansion conv before them) and
concatenations (a consumer's input slice per producer, through Torch-Pruning's index mapping).

Only the graph comes from Torch-Pruning. The scores (one Hyperflows presence score per group channel,
shared by every member, so its flow is the sum of the members' flows), the pressure, the exact trim
and the surgery (:mod:`edgeflow.prune.depgraph_shrink`) are ours.

CIFAR ResNets with option-A shortcuts: Torch-Pruning treats the parameter-free zero-pad shortcut
(``F.pad`` on the channel dimension) as an element-wise op and couples stage 1's 16 stream channels
to stage 2's channels 0-15 with the wrong offset (they land at 8-23) and leaves the other 16 in no
group. So :class:`PadShortcut` is registered as a custom layer whose input and output channels are
*not* tied: each stage's stream is its own group, and after pruning the shortcut becomes a
:class:`ShortcutScatter` that places the kept input channels at their kept output positions (zeros
elsewhere), which is exactly what the pad did to the surviving channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeflow.errors import ConfigError
from edgeflow.models.cifar_resnet import PadShortcut

SHRINKABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class ShortcutScatter(nn.Module):
    """A pruned option-A shortcut: subsample 2x, then output channel j = input ``index[j]``.

    ``index[j] == in_channels`` reads an appended zero channel (a position the pad filled with zeros,
    or whose input channel was pruned). Exports as Slice + Pad + Gather.
    """

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.long().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 1))
        return x.index_select(1, self.index)


def shortcut_index(module: nn.Module, cin: int, cout: int) -> torch.Tensor:
    """Output -> input channel map of a shortcut (``cin`` = the appended zero channel)."""
    if isinstance(module, ShortcutScatter):
        return module.index.clone()
    j = torch.arange(cout) - module.pad
    return torch.where((j >= 0) & (j < cin), j, torch.full_like(j, cin))


@dataclass(frozen=True)
class Member:
    """One module's share of a group: positions ``idxs`` of its ``dim`` carry the group channels
    ``root_idxs`` (equal for plain coupling; offset for a slice of a concatenation)."""

    module: str
    dim: str  # "out" or "in"
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]
    count: int  # the module's channels along ``dim`` (before pruning)


@dataclass(frozen=True)
class DepGroup:
    """Channels that are pruned together; ``name`` is the first conv/linear producing them."""

    name: str
    size: int
    members: tuple[Member, ...]

    @property
    def conv(self) -> str:  # the key MaskSet, trim and the width map use (as ChannelGroup.conv)
        return self.name


@dataclass(frozen=True)
class DepPlan:
    """Every prunable group plus the (in, out) channel counts of each shortcut module."""

    groups: tuple[DepGroup, ...]
    shortcuts: dict[str, tuple[int, int]]

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:  # a core dependency; only a broken install lacks it
        raise ConfigError("channel_groups 'depgraph' needs torch-pruning: pip install "
                          "'torch-pruning==1.6.1' (it is a dependency of edgeflow)") from exc
    return tp


def _shortcut_pruner(tp, io: dict[nn.Module, tuple[int, int]]):
    """A Torch-Pruning layer pruner for our shortcuts: input and output channels independent.

    Only used to find groups (channel counts); the surgery is ours, so pruning through it is an error.
    """

    class ShortcutPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            raise NotImplementedError("edgeflow shrinks shortcuts itself (depgraph_shrink)")

        def prune_in_channels(self, layer, idxs):
            raise NotImplementedError("edgeflow shrinks shortcuts itself (depgraph_shrink)")

        def get_out_channels(self, layer):
            return io[layer][1]

        def get_in_channels(self, layer):
            return io[layer][0]

    return ShortcutPruner()


def example_input(model: nn.Module, size: int | None = None) -> torch.Tensor:
    """One zero image at the model's design size (or ``size``) on the model's device."""
    side = size or int(getattr(model, "input_size", 32))
    dev = next(model.parameters()).device
    return torch.zeros(1, int(getattr(model, "in_channels", 3)), side, side, device=dev)


def dependency_graph(model: nn.Module, *, exclude: tuple[str, ...] = (), size: int | None = None):
    """(Torch-Pruning DependencyGraph, its groups, shortcut channel counts by name) of ``model``.

    The classifier head (``model.classifier`` when present) and ``exclude`` are ignored as roots, so
    no group changes the number of classes or an excluded layer's output width.
    """
    tp = _tp()
    mods = dict(model.named_modules())
    shortcuts = {n: m for n, m in mods.items() if isinstance(m, (PadShortcut, ShortcutScatter))}
    io: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: io.__setitem__(m, (i[0].shape[1], o.shape[1])))
             for m in shortcuts.values()]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input(model, size))
    finally:
        for h in hooks:
            h.remove()
    pruner = _shortcut_pruner(tp, io)
    ignored = [mods[n] for n in exclude]
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module):
        ignored.append(head)
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input(model, size), verbose=False,
                customized_pruners={PadShortcut: pruner, ShortcutScatter: pruner})
    except Exception as exc:  # tracing runs the model: report any failure as the model's
        raise ConfigError(f"Torch-Pruning could not trace {type(model).__name__} ({exc}); use "
                          "--granularity weight or n:m for this model") from exc
    finally:
        model.train(was)
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)))
    return dg, groups, {n: io[m] for n, m in shortcuts.items() if m in io}


def _member_dim(module: nn.Module, handler) -> str:
    name = getattr(handler, "__name__", "")
    if isinstance(module, nn.BatchNorm2d) or (isinstance(module, nn.Conv2d) and module.groups > 1):
        return "out"  # one channel set: input == output
    return "out" if "out_channels" in name else "in"


def _count(module: nn.Module, dim: str, io: tuple[int, int] | None) -> int:
    if io is not None:
        return io[0 if dim == "in" else 1]
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if dim == "out" else module.in_features
    return module.out_channels if dim == "out" else module.in_channels


def to_group(group, names: dict[nn.Module, str],
             shortcuts: dict[str, tuple[int, int]] | None = None) -> DepGroup | None:
    """A Torch-Pruning group as a :class:`DepGroup` (None when no conv/linear produces it)."""
    members: dict[tuple[str, str], Member] = {}
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if module not in names:  # an element-wise op of the traced graph: nothing to shrink
            continue
        name = names[module]
        if not isinstance(module, (*SHRINKABLE, PadShortcut, ShortcutScatter)):
            if any(True for _ in module.parameters(recurse=False)):
                raise ConfigError(f"{name} ({type(module).__name__}) shares channels with a pruned "
                                  "group but EdgeFlow cannot shrink it; supported: Conv2d (plain or "
                                  "depthwise), BatchNorm2d, Linear. Exclude the producing convs "
                                  "(--exclude) or use --granularity weight")
            continue
        if isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels:
            raise ConfigError(f"{name} is a grouped conv (groups={module.groups}); channel pruning "
                              "supports plain and depthwise convs")
        dim = _member_dim(module, dep.handler)
        roots = tuple(int(r) for r in item.root_idxs)
        members[(name, dim)] = Member(name, dim, tuple(int(i) for i in idxs), roots,
                                      _count(module, dim, (shortcuts or {}).get(name)))
    by_name = {n: m for m, n in names.items()}
    producers = [m.module for m in members.values() if m.dim == "out"
                 and isinstance(by_name[m.module], (nn.Conv2d, nn.Linear))]
    if not producers:
        return None
    order = {n: i for i, n in enumerate(names.values())}
    size = len(group[0].idxs)
    return DepGroup(min(producers, key=order.__getitem__), size,
                    tuple(sorted(members.values(), key=lambda m: (order[m.module], m.dim))))


def depgraph_plan(model: nn.Module, *, exclude: tuple[str, ...] = (),
                  size: int | None = None) -> DepPlan:
    """The prunable channel groups of any traceable model, ordered by their first producer.

    Example: ``[g.name for g in depgraph_plan(create_model("resnet18", num_classes=10))]``.
    """
    _, groups, shortcuts = dependency_graph(model, exclude=exclude, size=size)
    names = {m: n for n, m in model.named_modules()}
    out = [g for g in (to_group(grp, names, shortcuts) for grp in groups) if g is not None]
    order = {n: i for i, n in enumerate(names.values())}
    out.sort(key=lambda g: order[g.name])
    if not out:
        raise ConfigError(f"Torch-Pruning found no prunable channel group in {type(model).__name__} "
                          "(every conv feeds the head or an excluded layer); use --granularity weight")
    return DepPlan(tuple(out), shortcuts)
