"""HyperFlow: gradient-free few-shot adaptation of a backbone's per-channel biases (theta)."""

from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.theta import ThetaSpec, features_with_theta, prototypes

__all__ = ["DriftConfig", "DriftNet", "ThetaSpec", "features_with_theta", "prototypes"]
