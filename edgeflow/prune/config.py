"""``PruneConfig``: every knob of a pruning run, frozen, with the spec's defaults.

Defaults follow the Hyperflows spec (``docs/hyperflows.md``) where it gives a value. Two defaults
differ on purpose because runs here are short (a few epochs, not 100 + 60):

* ``controller_every``: the spec updates the pressure once per epoch (100 updates in 100 epochs).
  With 3-10 epochs that gives the bang-bang controller 3-10 moves, far too coarse to follow a
  trajectory, so by default (``0`` = auto) it moves ~25 times over the pruning phase; set it to the
  steps per epoch for the spec's behaviour.
* ``score_lr``: Adam moves a score by about ``lr`` per step whatever the gradient's size. In the
  spec (lr 1e-3, ~390 steps per epoch) a score can travel ~0.39 between two controller moves,
  about the width of its initial range U(0.2, 0.5), so each move's effect is visible before the
  next. ``None`` (auto) keeps that ratio for short runs: ``max(1e-3, 10 / pruning_steps)``, i.e.
  ~0.4 per controller move with ~25 moves. Pass 1e-3 for the spec's value.

Short budgets remain hard for Hyperflows: a flow is a noisy per-batch estimate that Adam averages
over many steps, and a run of a few hundred steps cannot average much. ``score_init_order=
"magnitude"`` (same range, ordered by |w|) is offered for that regime; the spec's random order is
the default. See ``benchmarks/results/prune.md`` for measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeflow.errors import ConfigError, unknown_name

GRANULARITIES = ("weight", "n:m", "channel")
METHODS = ("hyperflows", "gmp", "magnitude", "random")
BUDGETS = ("weights", "flops")
# channel granularity: which channels form a group. "inner": the block-inner plan of
# edgeflow.prune.channel (CIFAR ResNets, conv4, VGG); "depgraph": Torch-Pruning's dependency graph
# (any traceable model: residual streams, depthwise convs, concatenations); "auto": inner where it
# applies, else depgraph.
CHANNEL_GROUPS = ("auto", "inner", "depgraph")


def parse_granularity(text: str) -> tuple[str, int, int]:
    """``"weight"`` / ``"channel"`` / ``"n:m"`` (2:4) / ``"N:M"`` -> (kind, n, m)."""
    if text in ("weight", "channel"):
        return text, 0, 0
    if text == "n:m":
        return "n:m", 2, 4
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return "n:m", n, m
    raise ConfigError(f"unknown granularity {text!r}; use weight, channel, n:m (= 2:4) or N:M "
                      "with 0 < N < M, e.g. 2:4")


RELEASES = ("auto", "inertia", "reset")
AUTO_RESET_BELOW_EPOCHS = 20  # the spec's controller was tuned for 100 pruning epochs


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`edgeflow.prune.prune`.

    ``sparsity`` is the fraction of conv+linear weights that end up zero (for ``channel`` with
    ``budget="flops"``: the fraction of conv+linear multiply-accumulates removed instead).
    ``epochs`` is the pruning phase, ``regrowth_epochs`` the fine-tune/regrowth phase after it.
    """

    sparsity: float = 0.9
    granularity: str = "weight"
    method: str = "hyperflows"
    epochs: int = 3
    regrowth_epochs: int = 1
    batch_size: int = 128
    # weights: SGD momentum 0.9, wd 5e-4, cosine lr -> lr * lr_final_frac in phase 1, then
    # ft_lr -> ft_lr * ft_lr_final_frac in phase 2 (the spec: 0.1 -> 0.1/30, then 1e-3 -> 1e-4).
    lr: float = 0.1
    lr_final_frac: float = 1 / 30
    ft_lr: float = 1e-3
    ft_lr_final_frac: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: bool = True
    # scores (Hyperflows): Adam, own learning rate, no weight decay
    score_lr: float | None = None
    score_init: tuple[float, float] = (0.2, 0.5)
    # "random": t ~ U(low, high) (the spec). "magnitude": the same range, ordered by global |w|
    # rank (channel groups of the dependency graph: by the group's channel magnitude, see
    # depgraph_shrink.group_magnitudes), so that under uniform pressure weights cross zero in
    # global-magnitude order and flows
    # only have to correct that order (helps short budgets, where there are too few steps to
    # average the flows that must otherwise undo a random pruning order).
    score_init_order: str = "random"
    ste_slope: float = 0.25
    score_lr_decay: float = 0.75  # phase 2: score lr multiplied by this per epoch ...
    score_freeze_frac: float = 50 / 60  # ... and 0 after this fraction of phase 2 (mask frozen)
    # pressure controller and trajectory
    controller_step: float = 0.2
    # "inertia" (the spec), "reset" (gamma -> 0 below the target; see PressureController) or
    # "auto": reset for pruning phases shorter than AUTO_RESET_BELOW_EPOCHS epochs, else inertia
    controller_release: str = "auto"
    controller_every: int = 0  # steps between controller moves; 0 = auto (~50 moves)
    trajectory_ceiling: float = 0.999
    trajectory_steepness: float = 6.0
    gamma_init: float = 0.0
    power_law_start: bool = False  # fit density ~ c * gamma^-alpha first and start gamma from it
    sweep_gammas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sweep_steps: int = 20
    # baselines
    gmp_every: int = 0  # steps between GMP mask updates; 0 = auto (~50 updates)
    # structure
    exclude: tuple[str, ...] = ()  # module names left dense (e.g. "conv1", "linear")
    budget: str = "weights"  # channel only: count removed weights or removed MACs
    min_channels: int = 1
    channel_multiple: int = 1  # channel only: round each layer's kept channels up to a multiple
    channel_groups: str = "auto"  # channel only: "auto", "inner" or "depgraph" (CHANNEL_GROUPS)
    seed: int = 0
    device: str = "auto"
    freeze_bn: bool = False  # BatchNorm statistics frozen (edgeflow.train.batchnorm)

    def __post_init__(self) -> None:
        kind, _, _ = parse_granularity(self.granularity)
        if self.method not in METHODS:
            raise unknown_name("method", self.method, METHODS)
        if self.channel_groups not in CHANNEL_GROUPS:
            raise unknown_name("channel_groups", self.channel_groups, CHANNEL_GROUPS)
        if self.budget not in BUDGETS:
            raise unknown_name("budget", self.budget, BUDGETS)
        if self.controller_release not in RELEASES:
            raise unknown_name("controller release", self.controller_release, RELEASES)
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1) (a fraction of weights set to zero, "
                              f"e.g. 0.9); got {self.sparsity}")
        if self.budget == "flops" and kind != "channel":
            raise ConfigError("budget 'flops' applies to channel granularity only (weight and n:m "
                              "sparsity do not remove MACs on dense kernels); use budget 'weights'")
        if self.method != "hyperflows" and kind != "weight":
            raise ConfigError(f"method {self.method!r} is a weight-granularity baseline; use "
                              "--method hyperflows for n:m or channel granularity")
        if self.epochs < 1 or self.regrowth_epochs < 0:
            raise ConfigError(f"epochs >= 1 and regrowth_epochs >= 0 are required; got "
                              f"{self.epochs}, {self.regrowth_epochs}")
        if self.batch_size < 1 or self.lr <= 0 or self.ft_lr <= 0:
            raise ConfigError("batch_size >= 1, lr > 0 and ft_lr > 0 are required")
        lo, hi = self.score_init
        if not 0.0 <= lo <= hi:
            raise ConfigError(f"score_init must be (low, high) with 0 <= low <= high; got "
                              f"{self.score_init}")
        if self.score_init_order not in ("random", "magnitude"):
            raise unknown_name("score_init_order", self.score_init_order, ("random", "magnitude"))
        if self.min_channels < 1 or self.channel_multiple < 1:
            raise ConfigError("min_channels and channel_multiple must be >= 1")

    @property
    def release(self) -> str:
        """The controller release in effect (``auto`` resolved by the pruning-phase length)."""
        if self.controller_release != "auto":
            return self.controller_release
        return "reset" if self.epochs < AUTO_RESET_BELOW_EPOCHS else "inertia"

    @property
    def kind(self) -> str:
        return parse_granularity(self.granularity)[0]

    @property
    def nm(self) -> tuple[int, int]:
        _, n, m = parse_granularity(self.granularity)
        return n, m
