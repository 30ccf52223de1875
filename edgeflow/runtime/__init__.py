"""The on-device runtime: bundles, runners, Session.adapt/predict. numpy + onnxruntime only.

This package never imports torch; ``tensorrt`` and ``pycuda`` are imported only when a TensorRT
runner activates or an engine is built.

Example::

    from edgeflow.runtime import Session
    with Session("r20.bundle") as s:
        task = s.adapt(support_images, support_labels)
        labels, scores = s.predict(query_images, task)
"""

from edgeflow.runtime.backends import BACKENDS, open_runners, tensorrt_available
from edgeflow.runtime.bundle import Bundle, BundleWriter, TensorSpec, load_bundle, update_bundle, verify_files
from edgeflow.runtime.runners import OrtRunner, Runner
from edgeflow.runtime.session import Session, prototype_logits, prototypes
from edgeflow.runtime.task import Task
from edgeflow.runtime.trt_build import BuildOptions, DeviceInfo, EngineCache, cache_key, select_flags
from edgeflow.runtime.trt_runner import TrtRunner
from edgeflow.runtime.trust import fingerprint_of, sign_bundle

__all__ = [
           "BACKENDS",
           "BuildOptions",
           "Bundle",
           "BundleWriter",
           "DeviceInfo",
           "EngineCache",
           "OrtRunner",
           "Runner",
           "Session",
           "Task",
           "TensorSpec",
           "TrtRunner",
           "cache_key",
           "fingerprint_of",
           "load_bundle",
           "open_runners",
           "prototype_logits",
           "prototypes",
           "select_flags",
           "sign_bundle",
           "tensorrt_available",
           "update_bundle",
           "verify_files",
]
