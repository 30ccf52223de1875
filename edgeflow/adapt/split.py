"""Split a backbone at theta: a prefix that theta cannot change, and a suffix that takes theta.

Theta sits in the last blocks, so everything before the first theta-carrying layer gives the same
activations whatever theta is. Computing that prefix once per image and re-running only the suffix
makes every fine-tuning step (teacher, trajectories) and every integration check many times cheaper,
with bit-identical features. The split is found by tracing ``model.features`` with torch.fx; a model
that does not trace falls back to "prefix = the input, suffix = the whole network" (still correct,
just not faster).

Example::

    split = SplitFeatures(model, spec)
    cache = split.prefix(x)                 # once, no gradients needed
    feats = split.suffix(cache, theta)      # == features_with_theta(model, x, theta, spec)
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.func import functional_call

from edgeflow.adapt.theta import ThetaSpec, _Features, features_with_theta
from edgeflow.models import Backbone

Cache = tuple[torch.Tensor, ...]


def _owns_theta(module: nn.Module, prefix: str, theta_names: set[str]) -> bool:
    return any(f"{prefix}.{n}" in theta_names for n, _ in module.named_parameters())


def _split_graph(gm: fx.GraphModule, theta_names: set[str]) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(prefix module: x -> frontier tuple, suffix module: *frontier -> features)."""
    modules = dict(gm.named_modules())
    dep: set[fx.Node] = set()
    for node in gm.graph.nodes:  # nodes are in topological order
        direct = ((node.op == "call_module" and _owns_theta(modules[node.target], node.target,
                                                             theta_names))
                  or (node.op == "get_attr" and node.target in theta_names))
        if direct or any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    dep.discard(out_node)
    frontier: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node in dep:
            for a in node.all_input_nodes:
                if a not in dep and a not in frontier and a.op != "get_attr":
                    frontier.append(a)
    if not frontier:
        raise ValueError("theta does not reach the features")

    pre = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node in dep or node.op == "output":
            continue
        env[node] = pre.node_copy(node, lambda n: env[n])
    pre.output(tuple(env[n] for n in frontier))

    suf = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(frontier):
        senv[node] = suf.placeholder(f"frontier_{i}")
    for node in gm.graph.nodes:
        if node in dep:
            for a in node.all_input_nodes:  # constants read by the suffix (get_attr)
                if a not in senv:
                    senv[a] = suf.node_copy(a, lambda n: senv[n])
            senv[node] = suf.node_copy(node, lambda n: senv[n])
    suf.output(fx.map_arg(out_node.args[0], lambda n: senv[n]))
    pre_gm = fx.GraphModule(gm, pre)
    pre_gm.graph.eliminate_dead_code()
    pre_gm.recompile()
    return pre_gm, fx.GraphModule(gm, suf)


class SplitFeatures:
    """``prefix(x) -> cache`` (theta-independent) and ``suffix(cache, theta) -> features``.

    ``traced`` says whether a real split was found (else the cache is the input itself).
    BatchNorm layers follow the backbone's mode: keep it in eval mode while adapting.
    """

    def __init__(self, model: Backbone, spec: ThetaSpec) -> None:
        self.model, self.spec = model, spec
        names = {f"backbone.{n}" for n in spec.names}
        try:
            gm = fx.symbolic_trace(_Features(model))
            self._pre, self._suf = _split_graph(gm, names)
            self.traced = True
        except Exception:  # any untraceable model: exact but unsplit fallback
            self._pre = self._suf = None
            self.traced = False

    @torch.no_grad()
    def prefix(self, x: torch.Tensor, *, batch_size: int = 256) -> Cache:
        """The activations the suffix needs, for images ``x`` (N, C, H, W)."""
        if self._pre is None:
            return (x,)
        parts = [self._pre(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return tuple(torch.cat([p[j] for p in parts]) for j in range(len(parts[0])))

    def suffix(self, cache: Cache, theta: torch.Tensor) -> torch.Tensor:
        """Features (N, D) at ``theta``; differentiable in theta."""
        if self._suf is None:
            return features_with_theta(self.model, cache[0], theta, self.spec)
        overrides = {f"backbone.{n}": v for n, v in self.spec.split(theta).items()}
        return functional_call(self._suf, overrides, tuple(cache), strict=False)

    def features(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x), theta)


def select(cache: Cache, index: torch.Tensor | slice) -> Cache:
    """Rows ``index`` of every cached tensor."""
    return tuple(c[index] for c in cache)


def cat(caches: list[Cache]) -> Cache:
    return tuple(torch.cat([c[j] for c in caches]) for j in range(len(caches[0])))


class TaskCache:
    """A task's prefix caches: ``support`` (with h-flipped views appended when ``views``, default at
    1 shot, for the teacher's flip loss), ``query``, plus labels and ways."""

    def __init__(self, split: SplitFeatures, support_x: torch.Tensor, support_y: torch.Tensor,
                 query_x: torch.Tensor, query_y: torch.Tensor, ways: int, *,
                 views: bool | None = None, shift: tuple[str, ...] = (),
                 kind: str = "class") -> None:
        self.ways, self.support_y, self.query_y, self.shift = ways, support_y, query_y, shift
        self.kind = kind
        self.shots = len(support_y) // ways
        views = self.shots == 1 if views is None else views
        sx = torch.cat([support_x, support_x.flip(3)]) if views else support_x
        self.support = split.prefix(sx)
        self.query = split.prefix(query_x)

    @property
    def support_only(self) -> Cache:
        """The cache rows of the support images themselves (no flipped views)."""
        return select(self.support, slice(0, len(self.support_y)))

    @property
    def views(self) -> Cache | None:
        """The cache rows of the h-flipped views (row i = support image i), None without them."""
        n = len(self.support_y)
        return select(self.support, slice(n, 2 * n)) if len(self.support[0]) > n else None
