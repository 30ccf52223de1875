"""What the outcome-trained drift sees of the support set besides its prototypes (PyTorch).

``support_stats(features, means, labels, ways, theta)`` -> a (3P + 3,) vector, all forward-only
and computed from one suffix pass over the support set at the current theta:

- ``[0:P]``   mean drift: the support set's mean spatial output of each theta layer minus theta
  (what re-centring reads; 0 for entries that are not BatchNorm shifts);
- ``[P:2P]``  within-class spread: the RMS over classes of the per-image means' standard deviation
  within the class (0 with one shot);
- ``[2P:3P]`` between-class spread: the standard deviation of the class means;
- ``[3P:]``   leave-one-out accuracy and mean log-probability of the true class of the support
  images (prototype classifier, scaled cosine), and 1 when they exist (every class has 2 shots),
  else all three 0.

The device computes the same numbers in numpy (:mod:`edgeflow.runtime.signals`); a test holds the
two together. Nothing here needs gradients: the drift's inputs are constants of the task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeflow.adapt.apply import prototype_logits


def stats_dim(theta_dim: int) -> int:
    """Length of the statistics vector for a theta of ``theta_dim`` entries."""
    return 3 * theta_dim + 3


def _paired(a: torch.Tensor, b: torch.Tensor, metric: str, scale: float) -> torch.Tensor:
    """Row i of ``a`` against row i of ``b``: the diagonal of :func:`prototype_logits`."""
    if metric == "cosine":
        return scale * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    return -(a - b).pow(2).sum(-1)


def loo_logits(features: torch.Tensor, labels: torch.Tensor, ways: int, *,
               metric: str = "cosine", scale: float = 10.0) -> torch.Tensor:
    """(N, W) float64 support logits with each image's own class column against the mean of its
    class's *other* shots (the formula of :func:`edgeflow.runtime.protos.loo_logits`)."""
    features = features.float()
    f = features.double()
    onehot = F.one_hot(labels, ways).double()
    sums, counts = onehot.T @ f, onehot.sum(0)
    logits = prototype_logits(features, (sums / counts[:, None]).float(), metric=metric,
                              scale=scale).double()
    own = ((sums[labels] - f) / (counts[labels] - 1)[:, None]).float()
    own_logit = _paired(features, own, metric, scale).double()
    return logits.scatter(1, labels[:, None], own_logit[:, None])


def query_score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean log-probability of the true class) of query logits (Q, W), in float64
    (:func:`edgeflow.runtime.guard.query_score`)."""
    logits = logits.double()
    logp = logits.log_softmax(1).gather(1, labels[:, None]).mean()
    return float((logits.argmax(1) == labels).double().mean()), float(logp)


def loo_score(features: torch.Tensor, labels: torch.Tensor, ways: int, *,
              metric: str = "cosine", scale: float = 10.0) -> tuple[float, float]:
    """(leave-one-out accuracy, mean log-probability of the true class) of a support set; every
    class needs 2 shots."""
    return query_score(loo_logits(features, labels, ways, metric=metric, scale=scale), labels)


@torch.no_grad()
def support_stats(features: torch.Tensor, means: torch.Tensor, labels: torch.Tensor, ways: int,
                  theta: torch.Tensor, *, scale: float = 10.0) -> torch.Tensor:
    """The (3P + 3,) statistics of a support set (see the module docstring).

    ``features`` (N, D) and ``means`` (N, P) come from one suffix pass at ``theta`` (P,)."""
    m = means.double()
    onehot = F.one_hot(labels, ways).double()
    counts = onehot.sum(0)
    cmeans = (onehot.T @ m) / counts[:, None]
    drift = m.mean(0) - theta.double()
    within = ((m - cmeans[labels]) ** 2)
    within = (onehot.T @ within) / (counts[:, None] - 1).clamp_min(1)
    within = within.mean(0).sqrt()
    between = ((cmeans - cmeans.mean(0)) ** 2).mean(0).sqrt()
    loo = torch.zeros(3, dtype=torch.float64, device=m.device)
    if counts.min() >= 2:
        acc, logp = loo_score(features, labels, ways, scale=scale)
        loo = torch.tensor([acc, logp, 1.0], dtype=torch.float64, device=m.device)
    return torch.cat([drift, within, between, loo]).float()
