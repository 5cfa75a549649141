"""On-disk feature cache, memory-mapped by every run.

A cache is one directory::

    meta.json     dataset name, settings fingerprint, class names, sizes
    audio.npy     (N, frames, mel_bins) float32, normalised log-mel
    video.npy     (N, 3, H, W) float32, transformed frame
    labels.npy    (N,) int64
    split.npy     (N,) uint8, 0 = train, 1 = test (held out, never given to clients)
    folds.npy     optional (N, F) uint8: the split of each of F official folds (UCF101 has 3);
                  255 = not used in that fold. When present it replaces split.npy.

Video is float32 (already normalised) or uint8 RGB (normalised with ImageNet statistics when
a batch is read, four times smaller on disk). Audio is a log-mel filterbank.

It is written into a temporary sibling directory and renamed into place only when
complete, under a file lock, so concurrent processes never read a half-written cache
and never build it twice. A cache made with other settings is refused.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .features import IMAGENET_MEAN, IMAGENET_STD

TRAIN, TEST, DEV = 0, 1, 2
UNUSED = 255
SPLIT_NAMES = {"train": TRAIN, "test": TEST, "dev": DEV}


# frames stored as uint8 are normalised with the shared statistics, shaped for (C, H, W)
_MEAN = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
_STD = np.asarray(IMAGENET_STD, np.float32)[:, None, None]


class CacheMismatchError(RuntimeError):
    """An existing cache was made with different settings."""


class SplitError(ValueError):
    """A fold or dev split that this cache cannot give."""


class FeatureCache:
    """Read-only, memory-mapped view of a finished cache directory.

    ``fold`` picks one of the cache's official folds (1-based); ``dev_fraction`` carves a
    stratified dev split out of that fold's train rows, seeded by ``dev_seed``.
    """

    def __init__(self, path: str | Path, fold: int = 1, dev_fraction: float = 0.0, dev_seed: int = 0):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no feature cache at {self.path} (meta.json missing)")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        if not 1 <= fold <= self.num_folds:
            raise SplitError(
                f"run config 'fold' = {fold!r} is invalid: one of {list(range(1, self.num_folds + 1))} "
                f"(dataset {self.meta.get('dataset')!r} has {self.num_folds} fold(s))"
            )
        if not 0.0 <= dev_fraction < 1.0:
            raise SplitError(f"run config 'dev-fraction' = {dev_fraction!r} is invalid: a fraction in [0, 1)")
        self.fold, self.dev_fraction, self.dev_seed = int(fold), float(dev_fraction), int(dev_seed)

    @property
    def num_folds(self) -> int:
        return int(self.meta.get("num_folds", 1))

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r")

    @cached_property
    def audio(self) -> np.ndarray:
        return self._load("audio")

    @cached_property
    def video(self) -> np.ndarray:
        return self._load("video")

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self._load("labels"))

    @cached_property
    def split(self) -> np.ndarray:
        if (self.path / "folds.npy").is_file():
            split = np.array(self._load("folds")[:, self.fold - 1])
        else:
            split = np.array(self._load("split"))
        if self.dev_fraction > 0:
            rng = np.random.default_rng([self.dev_seed, 104729])
            for c in np.unique(self.labels):
                rows = np.flatnonzero((split == TRAIN) & (self.labels == c))
                take = min(int(np.floor(self.dev_fraction * rows.size)), rows.size - 1)  # keep >= 1 train row
                if take > 0:
                    split[rng.choice(rows, take, replace=False)] = DEV
        return split

    def frames(self, rows: np.ndarray) -> np.ndarray:
        """Video rows as normalised float32 (C, H, W), whatever the stored dtype."""
        video = np.ascontiguousarray(self.video[rows])
        if video.dtype == np.uint8:
            return (video.astype(np.float32) / 255.0 - _MEAN) / _STD
        return video

    @property
    def spec(self):
        """The front end the cache was made with (a data.features.FeatureSpec): as its fingerprint records it,
        else read off the arrays' shapes."""
        from .features import SAMPLE_RATE, FeatureSpec

        features = (self.meta.get("fingerprint") or {}).get("features")
        if features:
            return FeatureSpec(**features)
        frames, mels = self.audio.shape[1:]
        seconds = ((frames - 1) * 160 + 400) / SAMPLE_RATE  # FBANK's 10 ms shift and 25 ms window
        return FeatureSpec(num_mel_bins=int(mels), audio_seconds=seconds, image_size=int(self.video.shape[-1]))

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLIT_NAMES[split])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finished_cache(path: str | Path, fingerprint: dict[str, Any]) -> FeatureCache | None:
    """The finished cache at ``path``, None if there is none; CacheMismatchError if its settings differ."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        return None
    cache = FeatureCache(path)
    fingerprint = json.loads(json.dumps(fingerprint))  # normalise tuples etc.
    if cache.meta.get("fingerprint") != fingerprint:
        raise CacheMismatchError(
            f"feature cache {path} was made with settings {cache.meta.get('fingerprint')}, not {fingerprint} "
            "(other settings or clips); delete it or choose another data-dir"
        )
    return cache


def ensure_cache(
    path: str | Path,
    fingerprint: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
) -> FeatureCache:
    """Return the cache at ``path``, building it with ``build(tmp_dir) -> meta`` if absent.

    ``fingerprint`` (JSON-serialisable settings) is stored in meta.json; an existing cache
    with a different fingerprint raises :class:`CacheMismatchError` instead of being mixed.
    """
    path = Path(path)
    with _locked(path.parent / f".{path.name}.lock"):
        cache = finished_cache(path, fingerprint)
        if cache is not None:
            return cache
        if path.exists():  # a leftover without meta.json is not a cache
            shutil.rmtree(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            meta = build(tmp)
            meta["fingerprint"] = json.loads(json.dumps(fingerprint))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return FeatureCache(path)


class RelabelledCache:
    """A cache whose labels are permuted by a seeded permutation of the classes (what a label-flip attacker
    trains on); every other attribute is the wrapped cache's."""

    def __init__(self, cache: FeatureCache, seed: int):
        self._cache = cache
        self.permutation = np.random.default_rng(seed).permutation(cache.num_classes)
        self.labels = self.permutation[np.asarray(cache.labels)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


class VideoMaskedCache:
    """A cache in which some clips have no video (run config ``sample-missing-video``): ``has_video(rows)`` says
    which, and their frames read as NaN, so that a task that used them anyway would poison its loss (and the
    server would reject the update) instead of training on a frame the device never had. Every other attribute
    is the wrapped cache's."""

    def __init__(self, cache, rows_without_video: np.ndarray):
        self._cache = cache
        self.without_video = np.asarray(rows_without_video, dtype=np.int64)

    def has_video(self, rows: np.ndarray) -> np.ndarray:
        return ~np.isin(np.asarray(rows), self.without_video)

    def frames(self, rows: np.ndarray) -> np.ndarray:
        out = self._cache.frames(rows)
        missing = ~self.has_video(rows)
        if missing.any():
            out = out.copy()
            out[missing] = np.nan
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)
