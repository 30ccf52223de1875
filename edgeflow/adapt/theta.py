"""Theta: the flat vector of backbone biases HyperFlow adapts, and a forward that takes it as input.

Theta is a fixed-size slice of the backbone's per-channel shifts (BatchNorm biases by default),
flattened in a fixed order. It never depends on the number of ways: the classifier is the
prototype classifier on the adapted features. ``features_with_theta`` runs the backbone with theta
substituted functionally, so a batch of tasks can carry different thetas and gradients flow to theta
for the teacher, while the module's own parameters stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from edgeflow.errors import ConfigError
from edgeflow.models import Backbone


@dataclass(frozen=True)
class ThetaSpec:
    """Names and sizes of the adapted parameters, in the order they are flattened."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @classmethod
    def from_model(cls, model: Backbone, *, max_size: int = 1024,
                   names: list[str] | None = None) -> ThetaSpec:
        """The given bias names, or by default the output-side adaptable biases up to ``max_size``.

        Whole layers only: going backwards from the output, a layer is added while the total stays
        within ``max_size`` (the layers nearest the features matter most for prototypes and are the
        cheapest to re-run).
        """
        candidates = dict(model.adaptable_biases())
        if not candidates:
            raise ConfigError(f"{type(model).__name__} has no adaptable biases (BatchNorm or conv "
                              "biases); HyperFlow needs some")
        if names is not None:
            missing = [n for n in names if n not in candidates]
            if missing:
                raise ConfigError(f"not adaptable biases of this model: {missing}; valid: "
                                  f"{list(candidates)}")
            chosen = list(names)
        else:
            chosen, total = [], 0
            for name in reversed(list(candidates)):
                n = candidates[name].numel()
                if total + n > max_size:
                    break
                chosen.insert(0, name)
                total += n
            if not chosen:
                last = list(candidates)[-1]
                raise ConfigError(f"theta size limit {max_size} is smaller than the last adaptable "
                                  f"layer {last} ({candidates[last].numel()} entries); raise it to at "
                                  f"least {candidates[last].numel()} (compile: --adapt-theta-max, "
                                  "[adapt] theta_max; meta-train: --theta-size)")
        return cls(tuple(chosen), tuple(candidates[n].numel() for n in chosen))

    def get(self, model: nn.Module) -> torch.Tensor:
        """The model's current theta as one flat (P,) tensor (a detached copy)."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """(P,) -> {name: slice}; the slices are views of ``theta`` (gradients flow back)."""
        if theta.shape[-1] != self.size:
            raise ConfigError(f"theta has {theta.shape[-1]} entries but the spec needs {self.size}")
        return dict(zip(self.names, torch.split(theta, list(self.sizes), dim=-1), strict=True))

    def layout(self) -> list[dict]:
        """JSON-able layout (name, offset, size) for manifests."""
        out, offset = [], 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out.append({"name": name, "offset": offset, "size": size})
            offset += size
        return out

    @classmethod
    def from_layout(cls, layout: list[dict]) -> ThetaSpec:
        return cls(tuple(d["name"] for d in layout), tuple(int(d["size"]) for d in layout))


class _Features(nn.Module):
    """Calls ``backbone.features`` as forward, so functional_call can target it."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)


def features_with_theta(model: Backbone, x: torch.Tensor, theta: torch.Tensor,
                        spec: ThetaSpec) -> torch.Tensor:
    """``model.features(x)`` with the theta parameters replaced by ``theta`` (P,).

    BatchNorm runs as the model's mode says; adaptation keeps the backbone in eval mode so the
    running statistics stay those of training (a 5-shot support set is too small to re-estimate).
    """
    wrapper = _Features(model)
    overrides = {f"backbone.{n}": v for n, v in spec.split(theta).items()}
    return functional_call(wrapper, overrides, (x,), strict=False)


def prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means (ways, D) of ``features`` (N, D) with episode labels 0..ways-1."""
    onehot = F.one_hot(labels, ways).to(features.dtype)  # (N, ways)
    return (onehot.T @ features) / onehot.sum(0).clamp_min(1)[:, None]
