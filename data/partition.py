"""Federated split: Dirichlet label partitions of the train split, and which ones lost video.

Partitions are index lists into the memory-mapped cache, never copies. The held-out test
split is never part of any partition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

AUDIO, AUDIOVISUAL = "audio", "audiovisual"
MODALITIES = (AUDIO, AUDIOVISUAL)


class PartitionError(ValueError):
    """The requested split cannot be made."""


@dataclass(frozen=True)
class Partition:
    partition_id: int
    indices: np.ndarray  # sorted rows of the feature cache
    modality: str


def dirichlet_partitions(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split rows ``0..len(labels)-1`` into ``num_partitions`` by a Dirichlet label split.

    Uses flwr-datasets' DirichletPartitioner on an in-memory dataset (no hub). Every row
    lands in exactly one partition; each partition gets at least one row.
    """
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    if num_partitions < 1:
        raise PartitionError(f"num-partitions must be >= 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise PartitionError(
            f"{num_partitions} partitions for {len(labels)} training samples: each partition needs at least one sample"
        )
    table = datasets.Dataset.from_dict({"label": labels.tolist(), "row": list(range(len(labels)))})
    last_error: Exception | None = None
    for min_size in (2, 1):
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
        partitioner.dataset = table
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [
                    np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))
                    for i in range(num_partitions)
                ]
        except ValueError as exc:
            last_error = exc
    raise PartitionError(
        f"could not split {len(labels)} samples into {num_partitions} non-empty Dirichlet "
        f"partitions with dirichlet-alpha={alpha}; raise dirichlet-alpha or use fewer partitions"
    ) from last_error


def audio_only_partitions(num_partitions: int, missing_rate: float, seed: int) -> np.ndarray:
    """Sorted ids of the partitions that lost video: round(missing_rate * P), seeded. A longer share takes the
    partitions of a shorter one and more, in one seeded order (so a schedule's losses extend the set)."""
    count = int(round(missing_rate * num_partitions))
    rng = np.random.default_rng([seed, 7919])
    return np.sort(rng.permutation(num_partitions)[:count])


def parse_schedule(text: str) -> list[tuple[int, float]]:
    """Run config ``missing-schedule`` ("120:+0.2,180:-0.1": from round 120 another 20 % of all clients lose
    their camera, from round 180 10 % get it back) -> [(round, change)], in round order; a ValueError names the
    entry that is not ``<round>:<+/-share>``."""
    out = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        head, sep, tail = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            out.append((int(head), float(tail)))
        except ValueError:
            raise ValueError(f"entry {entry!r} is not <round>:<+/-share>, e.g. '120:+0.2'") from None
    return sorted(out)


def audio_only_share(missing_rate: float, schedule: list[tuple[int, float]], server_round: int) -> float:
    """The share of partitions without video at ``server_round``: the missing rate plus every change of the
    schedule made at or before that round."""
    return missing_rate + sum(change for at, change in schedule if at <= server_round)


def audio_only_at(
    num_partitions: int, missing_rate: float, seed: int, schedule: list[tuple[int, float]], server_round: int
) -> np.ndarray:
    """Sorted ids of the partitions without video at ``server_round`` (the run's seeded order: the last to lose
    their camera are the first to get it back)."""
    share = audio_only_share(missing_rate, schedule, server_round)
    return audio_only_partitions(num_partitions, share, seed)


def missing_video_rows(indices: np.ndarray, fraction: float, seed: int, partition_id: int) -> np.ndarray:
    """Sorted rows of a partition (``indices``, training rows only) whose clip has no video: round(fraction * n),
    seeded per partition (run config ``sample-missing-video``)."""
    count = int(round(fraction * len(indices)))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 2711, partition_id])
    return np.sort(rng.choice(np.asarray(indices), count, replace=False))


def attacked_partitions(num_partitions: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted ids of the partitions that attack (a simulation's ``attack-fraction``): round(fraction * P), seeded,
    drawn apart from the audio-only set."""
    count = int(round(fraction * num_partitions))
    rng = np.random.default_rng([seed, 6007])
    return np.sort(rng.permutation(num_partitions)[:count])


@lru_cache(maxsize=8)
def _iid_partitioner(num_samples: int, num_partitions: int, seed: int):
    """flwr-datasets' IidPartitioner over rows ``0..num_samples-1`` shuffled with ``seed`` (built once a process)."""
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    if not 1 <= num_partitions <= num_samples:
        raise PartitionError(
            f"{num_partitions} partitions for {num_samples} training samples: each partition needs at least one sample"
        )
    rows = np.random.default_rng([seed, 104729]).permutation(num_samples)
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = datasets.Dataset.from_dict({"row": rows.tolist()})
    return partitioner


def iid_partition(num_samples: int, num_partitions: int, seed: int, partition_id: int) -> np.ndarray:
    """Partition ``partition_id`` of :func:`iid_partitions`, without computing the others: a client of a
    federation of 30,000 needs its own share only (all of them cost about 4 ms each)."""
    part = _iid_partitioner(num_samples, num_partitions, seed).load_partition(partition_id)
    return np.sort(np.asarray(part["row"], dtype=np.int64))


def iid_partitions(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split rows ``0..num_samples-1`` into ``num_partitions`` near-equal random shares with
    flwr-datasets' IidPartitioner (rows shuffled with ``seed`` first)."""
    return [iid_partition(num_samples, num_partitions, seed, i) for i in range(num_partitions)]


PARTITIONERS = ("dirichlet", "iid")


@lru_cache(maxsize=8)
def _train(cache_path: str, fold: int, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The train split's rows of the cache and their labels."""
    from .cache import FeatureCache

    cache = FeatureCache(cache_path, fold=fold, dev_fraction=dev_fraction, dev_seed=seed)
    train = cache.indices("train")
    return train, cache.labels[train]


@lru_cache(maxsize=8)
def _dirichlet_split(
    cache_path: str, num_partitions: int, alpha: float, seed: int, fold: int, dev_fraction: float
) -> tuple[np.ndarray, ...]:
    train, labels = _train(cache_path, fold, dev_fraction, seed)
    return tuple(train[p] for p in dirichlet_partitions(labels, num_partitions, alpha, seed))


def federation_problem(
    train_labels: np.ndarray, num_partitions: int, partitioner: str, alpha: float, seed: int, dataset: str
) -> str:
    """Why ``num_partitions`` clients cannot each hold clips of this training split ('' when they can): more
    clients than clips, or a Dirichlet split that leaves clients empty. One line naming the counts and the fixes;
    the ServerApp says it before it asks any node, and `make run` / the sweep before Flower starts."""
    clips = len(train_labels)
    fixes = "use fewer SuperNodes (--num-supernodes, NUM_CLIENTS), a larger dataset" + (
        " (run config embedded-clips-per-class)" if dataset == "embedded" else ""
    )
    if num_partitions > clips:
        return (
            f"{num_partitions} SuperNodes but dataset {dataset!r} has {clips} training clips: every client needs at "
            f"least one; {fixes}"
        )
    if partitioner == "dirichlet":
        try:
            dirichlet_partitions(np.asarray(train_labels), num_partitions, alpha, seed)
        except PartitionError as exc:
            return f"{exc} ({num_partitions} SuperNodes); {fixes}, partitioner='iid' or a larger dirichlet-alpha"
    return ""


def get_partition(
    cache_path: str,
    partition_id: int,
    num_partitions: int,
    alpha: float,
    missing_rate: float,
    seed: int,
    fold: int = 1,
    dev_fraction: float = 0.0,
    partitioner: str = "dirichlet",
) -> Partition:
    """Partition ``partition_id`` of the cache's train split (computed once per process).

    ``fold`` and ``dev_fraction`` select the train rows as :class:`data.cache.FeatureCache` does
    (the dev split is seeded by ``seed``).
    """
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    if partitioner not in PARTITIONERS:
        raise PartitionError(f"partitioner {partitioner!r} is unknown; one of {list(PARTITIONERS)}")
    if partitioner == "iid":  # this client's share alone
        train, _ = _train(str(cache_path), int(fold), float(dev_fraction), int(seed))
        rows = train[iid_partition(len(train), num_partitions, int(seed), partition_id)]
    else:  # the Dirichlet draw is one joint computation over every partition
        rows = _dirichlet_split(
            str(cache_path), num_partitions, float(alpha), int(seed), int(fold), float(dev_fraction)
        )[partition_id]
    audio_only = audio_only_partitions(num_partitions, missing_rate, seed)
    modality = AUDIO if partition_id in audio_only else AUDIOVISUAL
    return Partition(partition_id, rows, modality)
