import pytest

from tests.export.helpers import build_bundle


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The PyTorch references run on one thread: on a shared 2-core machine torch's thread pool
    spins against other processes and made these tests several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def drift_bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.getbasetemp(), drift=True)


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.getbasetemp(), drift=False)
