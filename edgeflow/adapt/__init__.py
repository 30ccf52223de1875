"""HyperFlow: gradient-free few-shot adaptation of a backbone's per-channel biases (theta)."""

from edgeflow.adapt.apply import IntegratorSettings, classify, hyperflow_adapt, prototype_logits
from edgeflow.adapt.drift import DriftConfig, DriftNet
from edgeflow.adapt.io import load_drift, save_drift
from edgeflow.adapt.theta import ThetaSpec, features_with_theta, prototypes

__all__ = ["DriftConfig", "DriftNet", "IntegratorSettings", "ThetaSpec", "classify",
           "features_with_theta", "hyperflow_adapt", "load_drift", "prototype_logits", "prototypes",
           "save_drift"]
