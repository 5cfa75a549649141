"""Datasets, feature caches and federated partitions.

``DATASETS`` maps a run-config ``dataset`` name to a loader ``(data_dir) -> FeatureCache``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .cache import FeatureCache
from . import synthetic

DATASETS: dict[str, Callable[[str | Path], FeatureCache]] = {
    "embedded": synthetic.load,
}


def load_dataset(name: str, data_dir: str | Path) -> FeatureCache:
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is unknown; available: {sorted(DATASETS)}")
    return DATASETS[name](data_dir)
