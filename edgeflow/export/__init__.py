"""Export: ONNX graphs, INT8 variants and TensorRT helpers (the torch side of deployment)."""
