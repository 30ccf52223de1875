"""DriftNet h(theta, t, z(S)): predicts d theta / dt of fine-tuning from the support set alone.

Two parts, exported as two small graphs so the device computes the task embedding once and then
only runs the velocity part at every integration step:

- ``TaskEncoder``: class prototypes (B, W, D) + a validity mask (B, W) -> z (B, E). A learnable task
  token attends over the prototypes through pre-norm transformer blocks; the padding mask makes any
  number of ways (up to the padded W) work. z is the token's output. With ``shot_tokens`` it also
  reads the individual support features (B, N, D) and their one-hot classes (B, N, W): each shot
  becomes a token of (its offset from its class prototype, that prototype), a second set block
  pools them, and a zero-initialised projection adds the result to z (so the shot path starts as
  a no-op on a warm-started encoder, and the prototypes alone do not have to carry the support
  set's spread).
- ``VelocityNet``: theta (B, P), t (B, 1), z (B, E) [, stats (B, S)] -> velocity (B, P). Each
  input is linearly embedded to H and summed, then residual blocks (RMSNorm -> Linear(H, 2H) ->
  SwiGLU -> Linear(H, H)); the output layer is zero-initialised so an untrained drift adapts
  nothing.

A drift with ``stats_dim`` > 0 (the outcome-trained drift, :mod:`edgeflow.adapt.outcome`) also
reads the support statistics of :mod:`edgeflow.adapt.signals` at the current theta, and adds a
learned per-layer re-centring term ``gain[layer] * (support mean - theta)`` to its velocity: with
the statistics fixed (open loop) its integral over t in [0, 1] is re-centring with a learned
strength per layer; re-read every few steps (closed loop) it re-centres against what the previous
steps did. ``stats_dim`` = 0 is the paper's drift (and every drift checkpoint before it).

Attention and RMSNorm are written out with plain ops so that the ONNX export is a handful of
MatMul/Softmax nodes that ONNX Runtime and TensorRT both run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.adapt.theta import prototypes


@dataclass(frozen=True)
class DriftConfig:
    """Sizes of a DriftNet. ``theta_dim`` and ``feature_dim`` come from the backbone and ThetaSpec."""

    theta_dim: int
    feature_dim: int
    hidden: int = 384
    task_dim: int = 128
    heads: int = 4
    encoder_layers: int = 2
    blocks: int = 3
    stats_dim: int = 0  # 0: no support statistics input (the trajectory-regressed drift)
    layer_sizes: tuple[int, ...] = ()  # theta entries per layer (for the per-layer gain)
    shot_tokens: bool = False  # the task encoder also reads the individual shot features

    def __post_init__(self) -> None:
        if self.stats_dim and sum(self.layer_sizes) != self.theta_dim:
            raise ValueError(f"layer_sizes {self.layer_sizes} do not add up to theta_dim "
                             f"{self.theta_dim}")
        object.__setattr__(self, "layer_sizes", tuple(int(n) for n in self.layer_sizes))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_sizes"] = list(self.layer_sizes)
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _SetBlock(nn.Module):
    """Pre-norm multi-head self-attention + MLP over a padded set."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"task_dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h)) + key_bias[:, None, None, :]
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


def _pool(token: nn.Parameter, tokens: torch.Tensor, mask: torch.Tensor,
          blocks: nn.ModuleList) -> torch.Tensor:
    """The learnable ``token``'s output after ``blocks`` over [token, tokens] (B, 1 + N, E);
    ``mask`` (B, N) is 1 for real tokens (padding gets no attention)."""
    x = torch.cat([token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).to(x.dtype)
    key_bias = (1.0 - valid) * -1e9
    for block in blocks:
        x = block(x, key_bias)
    return x[:, 0]


class ShotEncoder(nn.Module):
    """(prototypes (B, W, D), shots (B, N, D), one-hot classes (B, N, W)) -> a z offset (B, E).

    A shot's token is (shot - its class prototype, that prototype); rows of zeros in the one-hot
    pad. The output projection starts at zero: adding this to a trained encoder changes nothing
    until training moves it."""

    def __init__(self, config: DriftConfig) -> None:
        super().__init__()
        d, e = config.feature_dim, config.task_dim
        self.inp = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, e))
        self.token = nn.Parameter(torch.zeros(1, 1, e))
        self.blocks = nn.ModuleList([_SetBlock(e, config.heads)])
        self.norm = nn.LayerNorm(e)
        self.out = nn.Linear(e, e)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, prototypes: torch.Tensor, shots: torch.Tensor,
                shot_labels: torch.Tensor) -> torch.Tensor:
        own = shot_labels @ prototypes  # (B, N, D): each shot's class prototype
        tokens = self.inp(torch.cat([shots - own, own], dim=-1))
        return self.out(self.norm(_pool(self.token, tokens, shot_labels.sum(-1), self.blocks)))


class TaskEncoder(nn.Module):
    """(prototypes (B, W, D), mask (B, W) with 1 = real class[, shots (B, N, D), one-hot classes
    (B, N, W)]) -> z (B, task_dim)."""

    def __init__(self, config: DriftConfig) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(config.feature_dim),
                                 nn.Linear(config.feature_dim, config.task_dim))
        self.token = nn.Parameter(torch.zeros(1, 1, config.task_dim))
        self.blocks = nn.ModuleList(_SetBlock(config.task_dim, config.heads)
                                    for _ in range(config.encoder_layers))
        self.norm = nn.LayerNorm(config.task_dim)
        self.shots = ShotEncoder(config) if config.shot_tokens else None

    def forward(self, prototypes: torch.Tensor, mask: torch.Tensor,
                shots: torch.Tensor | None = None,
                shot_labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.norm(_pool(self.token, self.inp(prototypes), mask, self.blocks))
        if self.shots is None or shots is None:
            # no shots (trajectory regression's rows hold prototypes only): the shot path's
            # contribution is left out, as for an encoder without one
            return z
        if shot_labels is None:
            raise ValueError("shots need their one-hot classes (shot_labels)")
        return z + self.shots(prototypes, shots, shot_labels.to(shots.dtype))


class _ResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.up(self.norm(x)).chunk(2, dim=-1)
        return x + self.down(a * F.silu(g))


class VelocityNet(nn.Module):
    """(theta (B, P), t (B, 1), z (B, E)[, stats (B, S)]) -> d theta / dt (B, P).

    ``theta_center``/``theta_scale`` normalise theta and ``velocity_scale`` rescales the output;
    they are buffers set by meta-training from trajectory statistics and travel with the weights.
    ``stats_center``/``stats_scale`` do the same for the support statistics.
    """

    def __init__(self, config: DriftConfig) -> None:
        super().__init__()
        p, hdim = config.theta_dim, config.hidden
        self.theta_in = nn.Linear(p, hdim)
        self.task_in = nn.Linear(config.task_dim, hdim)
        self.time_in = nn.Linear(1, hdim)
        self.blocks = nn.Sequential(*(_ResBlock(hdim) for _ in range(config.blocks)))
        self.norm = RMSNorm(hdim)
        self.out = nn.Linear(hdim, p)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("theta_center", torch.zeros(p))
        self.register_buffer("theta_scale", torch.ones(p))
        self.register_buffer("velocity_scale", torch.ones(p))
        self.stats_dim = config.stats_dim
        if config.stats_dim:
            self.stats_in = nn.Linear(config.stats_dim, hdim)
            nn.init.zeros_(self.stats_in.weight)  # a warm start from a stats-free drift is exact
            nn.init.zeros_(self.stats_in.bias)
            self.register_buffer("stats_center", torch.zeros(config.stats_dim))
            self.register_buffer("stats_scale", torch.ones(config.stats_dim))
            self.layer_gain = nn.Parameter(torch.zeros(len(config.layer_sizes)))
            self.register_buffer("layer_of", torch.repeat_interleave(
                torch.arange(len(config.layer_sizes)), torch.tensor(config.layer_sizes)))

    def forward(self, theta: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                stats: torch.Tensor | None = None) -> torch.Tensor:
        if not self.stats_dim:
            return self.network(theta, t, z)
        if stats is None:
            raise ValueError("this drift reads support statistics; pass stats")
        # stats[:, :P] is (support mean - theta) per entry (edgeflow.adapt.signals)
        recentre = self.layer_gain[self.layer_of] * stats[:, :theta.shape[1]]
        return self.network(theta, t, z, stats) + recentre

    def network(self, theta: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                stats: torch.Tensor | None = None) -> torch.Tensor:
        """The learned part of the velocity, without the re-centring term. ``stats`` None on a
        drift that reads statistics stands for the average task's (normalised input 0, so the
        statistics input contributes its bias): what trajectory regression scores, whose data
        carry prototypes but no support sets (:meth:`DriftNet.trajectory_velocity`)."""
        x = self.theta_in((theta - self.theta_center) / self.theta_scale)
        x = x + self.task_in(z) + self.time_in(t - 0.5)
        if self.stats_dim:
            x = x + (self.stats_in.bias if stats is None else
                     self.stats_in((stats - self.stats_center) / self.stats_scale))
        return self.out(self.norm(self.blocks(x))) * self.velocity_scale


class DriftNet(nn.Module):
    """The whole drift: ``forward(theta, t, prototypes, mask)``; or ``embed_task`` once, then
    ``velocity`` per step (what the device does)."""

    def __init__(self, config: DriftConfig) -> None:
        super().__init__()
        self.config = config
        self.task_encoder = TaskEncoder(config)
        self.velocity_net = VelocityNet(config)

    def embed_task(self, prototypes: torch.Tensor, mask: torch.Tensor | None = None,
                   shots: torch.Tensor | None = None,
                   shot_labels: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(prototypes.shape[:2], dtype=prototypes.dtype, device=prototypes.device)
        return self.task_encoder(prototypes, mask, shots, shot_labels)

    def embed_support(self, features: torch.Tensor, labels: torch.Tensor,
                      ways: int) -> torch.Tensor:
        """z (1, E) of one support set: its features (N, D) with episode labels 0..ways-1 (the
        prototypes, and the shots themselves for an encoder with ``shot_tokens``)."""
        protos = prototypes(features, labels, ways)[None]
        if not self.config.shot_tokens:
            return self.embed_task(protos)
        onehot = F.one_hot(labels, ways).to(features.dtype)
        return self.embed_task(protos, shots=features[None], shot_labels=onehot[None])

    @property
    def uses_stats(self) -> bool:
        """Whether the velocity reads support statistics (:mod:`edgeflow.adapt.signals`)."""
        return self.config.stats_dim > 0

    def velocity(self, theta: torch.Tensor, t: torch.Tensor | float, z: torch.Tensor,
                 stats: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.full((theta.shape[0], 1), float(t), dtype=theta.dtype, device=theta.device)
        return self.velocity_net(theta, t.reshape(-1, 1).expand(theta.shape[0], 1), z, stats)

    def forward(self, theta: torch.Tensor, t: torch.Tensor | float, prototypes: torch.Tensor,
                mask: torch.Tensor | None = None, stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.velocity(theta, t, self.embed_task(prototypes, mask), stats)

    def trajectory_velocity(self, theta: torch.Tensor, t: torch.Tensor,
                            prototypes: torch.Tensor) -> torch.Tensor:
        """What trajectory regression (:func:`edgeflow.adapt.meta_train.regression_loss`) fits to
        the teacher's velocity: the whole velocity of a stats-free drift; for one that reads
        support statistics, its network part at the average task's statistics, without the
        re-centring term. The trajectories hold no support sets to compute statistics from, and
        the regressed drift never learned re-centring either: the device added that move on top,
        and the outcome drift's gain term stands for it (its warm start is the regressed drift's
        velocity plus that term, :func:`edgeflow.adapt.outcome.outcome_drift`)."""
        z = self.embed_task(prototypes)
        if not self.uses_stats:
            return self.velocity(theta, t, z)
        return self.velocity_net.network(theta, t.reshape(-1, 1).expand(theta.shape[0], 1), z)
