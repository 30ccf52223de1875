"""The runtime tests share the export tests' bundles and single-thread torch references."""

from tests.export.conftest import _one_torch_thread, drift_bundle, plain_bundle  # noqa: F401
