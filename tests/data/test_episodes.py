import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.data import EpisodeSampler
from edgeflow.errors import DataError

LABELS = np.repeat(np.arange(20), 30)


def test_same_seed_same_episodes_other_seed_differs():
    a = EpisodeSampler(LABELS, ways=5, shots=5, queries=15, seed=3)
    b = EpisodeSampler(LABELS, ways=5, shots=5, queries=15, seed=3)
    c = EpisodeSampler(LABELS, ways=5, shots=5, queries=15, seed=4)
    for i in range(5):
        ea, eb, ec = a.episode(i), b.episode(i), c.episode(i)
        np.testing.assert_array_equal(ea.support, eb.support)
        np.testing.assert_array_equal(ea.query, eb.query)
        assert not np.array_equal(ea.query, ec.query)
    # episode i does not depend on which episodes were drawn before it
    np.testing.assert_array_equal(list(a(3, start=2))[1].support, a.episode(3).support)


@settings(max_examples=40, deadline=None)
@given(ways=st.integers(1, 20), shots=st.integers(1, 10), queries=st.integers(1, 20),
       index=st.integers(0, 10_000))
def test_episode_structure(ways, shots, queries, index):
    ep = EpisodeSampler(LABELS, ways=ways, shots=shots, queries=queries, seed=0).episode(index)
    assert len(set(ep.classes.tolist())) == ways
    assert len(ep.support) == ways * shots and len(ep.query) == ways * queries
    assert not set(ep.support.tolist()) & set(ep.query.tolist())
    # episode-local labels agree with the global class of every image
    np.testing.assert_array_equal(ep.classes[ep.support_labels], LABELS[ep.support])
    np.testing.assert_array_equal(ep.classes[ep.query_labels], LABELS[ep.query])


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="need 21 classes"):
        EpisodeSampler(LABELS, ways=21, shots=1, queries=1)
    with pytest.raises(DataError, match="need 31 images per class"):
        EpisodeSampler(LABELS, ways=5, shots=16, queries=15)
    with pytest.raises(DataError, match="shots must be at least 1"):
        EpisodeSampler(LABELS, ways=5, shots=0, queries=15)
