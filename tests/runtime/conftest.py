import pytest

from tests.export.helpers import build_bundle


@pytest.fixture(scope="session")
def drift_bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.getbasetemp(), drift=True)


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.getbasetemp(), drift=False)
