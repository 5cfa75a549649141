"""Datasets, feature caches and federated partitions.

``DATASETS`` maps a run-config ``dataset`` name to a loader ``(data_dir) -> FeatureCache``.
``embedded`` is generated on first use; the real datasets are prepared once with
``python -m data.prepare <dataset> --src ...`` (see data/prepare.py) into ``<data_dir>/<dataset>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import synthetic
from .cache import FeatureCache

PREPARED = ("ucf101", "activitynet", "manifest")


class DatasetNotPrepared(FileNotFoundError):
    """A real dataset's cache is not under data-dir yet."""


def _prepared(name: str) -> Callable[[str | Path], FeatureCache]:
    def load(data_dir: str | Path) -> FeatureCache:
        path = Path(data_dir).expanduser() / name
        if not (path / "meta.json").is_file():
            raise DatasetNotPrepared(
                f"dataset {name!r} is not prepared under data-dir {Path(data_dir).expanduser()}: run "
                f"`make prepare DATASET={name} SRC=<folder> DATA_DIR={data_dir}` first"
            )
        return FeatureCache(path)

    return load


DATASETS: dict[str, Callable[[str | Path], FeatureCache]] = {
    "embedded": synthetic.load,
    **{name: _prepared(name) for name in PREPARED},
}


def load_dataset(
    name: str,
    data_dir: str | Path,
    fold: int = 1,
    dev_fraction: float = 0.0,
    seed: int = 0,
    clips_per_class: int = synthetic.SAMPLES_PER_CLASS,
    generate: bool = True,
) -> FeatureCache:
    """The cache of dataset ``name`` with the chosen fold and a seeded dev split carved from train.
    ``clips_per_class``: the embedded dataset's size (generated on first use at each size; the default is the
    size its calibration is stated for); ``generate`` false: a missing embedded dataset is DatasetNotPrepared
    instead (a deployed node generates it only where its node config asks)."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is unknown; available: {sorted(DATASETS)}")
    if name == "embedded":
        if not generate and not synthetic.present(data_dir, samples_per_class=clips_per_class):
            raise DatasetNotPrepared(
                f"the embedded dataset is not under data-dir {Path(data_dir).expanduser()}, and this node does not "
                "generate it: give node config make-embedded=true (a demonstration node) or the data-dir that holds it"
            )
        cache = synthetic.load(data_dir, samples_per_class=clips_per_class)
    else:
        cache = DATASETS[name](data_dir)
    return FeatureCache(cache.path, fold=fold, dev_fraction=dev_fraction, dev_seed=seed)
