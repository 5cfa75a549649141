"""Federated split: Dirichlet label partitions and the audio-only fraction."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_cache

from data.partition import PartitionError, audio_only_partitions, dirichlet_partitions, get_partition


def labels(n=600, classes=6, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def test_every_sample_in_exactly_one_partition():
    y = labels()
    parts = dirichlet_partitions(y, 20, alpha=0.1, seed=3)
    joined = np.concatenate(parts)
    assert len(parts) == 20
    assert sorted(joined.tolist()) == list(range(len(y)))
    assert all(len(p) >= 1 for p in parts)


def test_deterministic_per_seed_and_different_across_seeds():
    y = labels()
    a = dirichlet_partitions(y, 10, alpha=0.5, seed=1)
    b = dirichlet_partitions(y, 10, alpha=0.5, seed=1)
    c = dirichlet_partitions(y, 10, alpha=0.5, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_small_alpha_gives_skewed_labels():
    y = labels(2000, 10)
    skewed = dirichlet_partitions(y, 10, alpha=0.05, seed=0)
    even = dirichlet_partitions(y, 10, alpha=100.0, seed=0)

    def mean_classes(parts):
        return np.mean([len(np.unique(y[p])) for p in parts])

    assert mean_classes(skewed) < mean_classes(even)


@pytest.mark.parametrize("rate,count", [(0.0, 0), (0.3, 30), (0.55, 55), (0.9, 90)])
def test_audio_only_fraction(rate, count):
    ids = audio_only_partitions(100, rate, seed=4)
    assert len(ids) == count and len(set(ids.tolist())) == count
    assert np.array_equal(ids, audio_only_partitions(100, rate, seed=4))


def test_partitions_never_contain_the_test_split(tmp_path):
    cache = tiny_cache(tmp_path / "c")
    test = set(cache.indices("test").tolist())
    seen = []
    for pid in range(8):
        part = get_partition(str(cache.path), pid, 8, 1.0, 0.25, 0)
        assert not test & set(part.indices.tolist())
        seen.extend(part.indices.tolist())
    assert sorted(seen) == sorted(cache.indices("train").tolist())
    kinds = [get_partition(str(cache.path), pid, 8, 1.0, 0.25, 0).modality for pid in range(8)]
    assert kinds.count("audio") == 2


def test_too_many_partitions_is_a_clear_error():
    with pytest.raises(PartitionError, match="each partition needs at least one sample"):
        dirichlet_partitions(labels(10), 11, alpha=1.0, seed=0)


def test_iid_partitions_are_equal_random_shares_even_for_many_partitions():
    from data.partition import iid_partitions

    parts = iid_partitions(4000, 1000, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(4000))
    assert {len(p) for p in parts} == {4}
    again, other = iid_partitions(4000, 1000, seed=0), iid_partitions(4000, 1000, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    assert not all(np.array_equal(p, np.arange(4 * i, 4 * i + 4)) for i, p in enumerate(parts))  # shuffled
    with pytest.raises(PartitionError, match="at least one sample"):
        iid_partitions(10, 11, seed=0)


def test_an_iid_client_computes_its_own_share_only_and_it_is_the_full_splits(tmp_path, monkeypatch):
    """A SuperNode of a large federation loads its IID share without the other 29,999 (round 1 at 30,000 nodes
    paid about 4 ms per partition per worker before): the same rows as the full split gives it."""
    from flwr_datasets.partitioner import IidPartitioner

    from data.cache import FeatureCache
    from data.partition import iid_partition, iid_partitions

    full = iid_partitions(4000, 1000, seed=3)
    assert all(np.array_equal(iid_partition(4000, 1000, 3, i), full[i]) for i in (0, 417, 999))

    cache = tiny_cache(tmp_path)
    train = FeatureCache(cache.path, dev_fraction=0.1, dev_seed=3).indices("train")
    calls = []
    original = IidPartitioner.load_partition
    monkeypatch.setattr(IidPartitioner, "load_partition", lambda self, i: calls.append(i) or original(self, i))
    part = get_partition(str(cache.path), 7, 50, 1.0, 0.3, 3, dev_fraction=0.1, partitioner="iid")
    assert calls == [7]
    np.testing.assert_array_equal(part.indices, train[iid_partitions(len(train), 50, 3)[7]])
