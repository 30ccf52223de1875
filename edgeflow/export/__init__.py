"""Export: backbone and drift to ONNX (theta as a graph input, BN folded), parity checks, bundles,
INT8 variants (int8.py, calibrate.py) and the TensorRT calibrator (trt_calibrator.py)."""

from edgeflow.export.bundle import export_bundle, weight_sparsity
from edgeflow.export.onnx_graphs import (
                                         ExportError,
                                         backbone_parity,
                                         drift_parity,
                                         export_backbone,
                                         export_drift,
                                         graph_io,
)

__all__ = ["ExportError", "backbone_parity", "drift_parity", "export_backbone", "export_bundle",
           "export_drift", "graph_io", "weight_sparsity"]
