"""The teacher: fine-tune theta on a support set with Adam and a prototype loss (backprop).

This is what HyperFlow emulates. The loss uses only the support set:

- ``loo`` (leave-one-out): each support image is classified against prototypes where its own class
  mean excludes it (needs >= 2 shots);
- ``flip``: horizontally flipped support images are classified against the prototypes of the
  originals (works at 1 shot);
- ``auto``: ``loo`` from 2 shots, ``flip`` at 1 shot.

Logits are :func:`edgeflow.adapt.apply.prototype_logits`'s (same metric and scale as evaluation).
The backbone stays in eval mode (BatchNorm statistics of training). The result is the whole path
theta_0..theta_T, plus the query accuracy and loss at every step when queries are given: the
trajectories use them to stop each training task where adaptation stops helping.

Example::

    split = SplitFeatures(model, spec)
    result = finetune(split, split.prefix(task.support_x), task.support_y, task.ways,
                      spec.get(model), config=TeacherConfig(lr=1e-2, steps=40))
    theta = result.path[-1]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from edgeflow.adapt.apply import prototype_logits
from edgeflow.adapt.split import Cache, SplitFeatures, cat, select
from edgeflow.adapt.theta import prototypes
from edgeflow.errors import ConfigError, unknown_name

LOSSES = ("auto", "loo", "flip")


@dataclass(frozen=True)
class TeacherConfig:
    """Adam on theta for ``steps`` steps of ``lr`` with the ``loss`` prototype objective."""

    lr: float = 1e-2
    steps: int = 40
    loss: str = "auto"
    metric: str = "cosine"
    scale: float = 10.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise unknown_name("teacher loss", self.loss, LOSSES)
        if self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"teacher needs steps >= 0 and lr > 0, got {self.steps}, {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TeacherResult:
    """``path`` (T+1, P); ``query_acc``/``query_loss`` (T+1,) when queries were given."""

    path: torch.Tensor
    query_acc: torch.Tensor | None = None
    query_loss: torch.Tensor | None = None


def resolve_loss(loss: str, shots: int) -> str:
    if loss == "auto":
        return "loo" if shots >= 2 else "flip"
    if loss == "loo" and shots < 2:
        raise ConfigError("the leave-one-out loss needs at least 2 shots; use loss='flip' or 'auto'")
    return loss


def loo_logits(feats: torch.Tensor, labels: torch.Tensor, ways: int, *, metric: str,
               scale: float) -> torch.Tensor:
    """(N, ways) logits of each support feature against prototypes that exclude itself."""
    onehot = F.one_hot(labels, ways).to(feats.dtype)  # (N, W)
    sums, counts = onehot.T @ feats, onehot.sum(0)  # (W, D), (W,)
    own = (sums[labels] - feats) / (counts[labels] - 1).clamp_min(1)[:, None]  # (N, D)
    protos = (sums / counts.clamp_min(1)[:, None]).expand(len(feats), -1, -1)  # (N, W, D)
    protos = torch.where(onehot[..., None].bool(), own[:, None, :], protos)
    if metric == "cosine":
        return scale * torch.einsum("nd,nwd->nw", F.normalize(feats, dim=-1),
                                    F.normalize(protos, dim=-1))
    return -(feats[:, None, :] - protos).pow(2).sum(-1)


def flip_cache(split: SplitFeatures, support_x: torch.Tensor) -> Cache:
    """Prefix cache of [support; h-flipped support] (what the ``flip`` loss needs)."""
    return split.prefix(torch.cat([support_x, support_x.flip(3)]))


def support_loss(feats: torch.Tensor, labels: torch.Tensor, ways: int, *, loss: str, metric: str,
                 scale: float) -> torch.Tensor:
    """The teacher's objective on support features (``flip``: [originals; flipped views])."""
    if loss == "loo":
        return F.cross_entropy(loo_logits(feats, labels, ways, metric=metric, scale=scale), labels)
    n = len(labels)
    protos = prototypes(feats[:n], labels, ways)
    return F.cross_entropy(prototype_logits(feats[n:], protos, metric=metric, scale=scale), labels)


@torch.no_grad()
def query_scores(split: SplitFeatures, support: Cache, support_y: torch.Tensor, query: Cache,
                 query_y: torch.Tensor, ways: int, theta: torch.Tensor, *, metric: str = "cosine",
                 scale: float = 10.0) -> tuple[float, float]:
    """(accuracy, cross-entropy) of the prototype classifier at ``theta``."""
    n = len(support_y)
    feats = split.suffix(cat([select(support, slice(0, n)), query]), theta)
    logits = prototype_logits(feats[n:], prototypes(feats[:n], support_y, ways), metric=metric,
                              scale=scale)
    return (float((logits.argmax(1) == query_y).float().mean()),
            float(F.cross_entropy(logits, query_y)))


def finetune(split: SplitFeatures, support: Cache, support_y: torch.Tensor, ways: int,
             theta0: torch.Tensor, *, config: TeacherConfig, query: Cache | None = None,
             query_y: torch.Tensor | None = None, eval_every: int = 1) -> TeacherResult:
    """Run the teacher from ``theta0``; ``support`` is the prefix cache of the support images
    (for the ``flip`` loss: of [support; flipped support], see :func:`flip_cache`).

    With ``query``/``query_y`` the query accuracy and loss are recorded every ``eval_every`` steps
    (and at the end); steps in between repeat the last value.
    """
    loss_name = resolve_loss(config.loss, len(support_y) // ways)
    n_rows = len(support[0])
    if loss_name == "flip" and n_rows != 2 * len(support_y):
        raise ConfigError("the flip loss needs the cache of [support; flipped support] "
                          "(use teacher.flip_cache)")
    if loss_name == "loo" and n_rows != len(support_y):
        support = select(support, slice(0, len(support_y)))
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=config.lr)
    path = [theta0.detach().clone()]
    accs: list[float] = []
    losses: list[float] = []

    def record(k: int) -> None:
        if query is None or query_y is None:
            return
        if k % eval_every == 0 or k == config.steps or not accs:
            a, lo = query_scores(split, support, support_y, query, query_y, ways, theta.detach(),
                                 metric=config.metric, scale=config.scale)
        else:
            a, lo = accs[-1], losses[-1]
        accs.append(a)
        losses.append(lo)

    record(0)
    for k in range(config.steps):
        feats = split.suffix(support, theta)
        loss = support_loss(feats, support_y, ways, loss=loss_name, metric=config.metric,
                            scale=config.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        path.append(theta.detach().clone())
        record(k + 1)
    result = TeacherResult(path=torch.stack(path))
    if accs:
        result.query_acc, result.query_loss = torch.tensor(accs), torch.tensor(losses)
    return result


def stopping_step(query_acc: torch.Tensor, *, tolerance: float = 0.0, smooth: int = 1) -> int:
    """The step where adaptation stops helping: the fewest steps whose (moving-average over
    ``smooth`` steps) query accuracy is within ``tolerance`` of the best."""
    acc = query_acc.double()
    if smooth > 1:
        kernel = torch.ones(1, 1, smooth, dtype=acc.dtype) / smooth
        padded = F.pad(acc[None, None], (smooth // 2, smooth - 1 - smooth // 2), mode="replicate")
        acc = F.conv1d(padded, kernel)[0, 0]
    best = float(acc.max())
    return int(torch.nonzero(acc >= best - tolerance - 1e-12)[0])
