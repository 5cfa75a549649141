"""What a dataset holds, read from its distributed layout before any decoding.

Each reader checks the layout and returns a :class:`Source`: one :class:`Item` per clip
with its label and its split in every fold. Nothing is decoded here, so every layout error
is raised (as :class:`SourceError`, one line naming what is wrong and what is expected)
before any expensive work starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import DEV, TEST, TRAIN, UNUSED

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v")
UCF101_VIDEOS = 13320  # the full distribution
UCF101_WITH_AUDIO = 51  # classes whose videos have sound (the paper's UCF101 subset)
ACTIVITYNET_JSON = "activity_net.v1-3.min.json"


class SourceError(ValueError):
    """The source folder or manifest is not what the dataset reader expects."""


@dataclass(frozen=True)
class Item:
    key: str  # stable id (path relative to the source), names the per-clip work file
    label: str
    splits: tuple[int, ...]  # TRAIN / TEST / DEV / UNUSED for each fold
    video: str | None = None
    audio: str | None = None
    image: str | None = None


@dataclass
class Source:
    dataset: str
    root: Path
    items: list[Item]
    classes: list[str]  # canonical order; classes with no usable clip are dropped later
    num_folds: int = 1
    expected_classes: int | None = None  # checked when the source is complete
    missing: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): listed but absent
    has_video: bool = True  # False: an audio-only collection (its nodes can only take the audio role)

    def check_test_labels(self) -> None:
        check_test_labels([i.label for i in self.items], np.array([i.splits for i in self.items]), self.dataset)


def check_test_labels(labels: list[str], splits: np.ndarray, what: str) -> None:
    """Every label that occurs in a fold's test (or dev) split must occur in its train split."""
    labels_arr = np.asarray(labels, dtype=object)
    for f in range(splits.shape[1] if splits.ndim == 2 else 0):
        train = set(labels_arr[splits[:, f] == TRAIN])
        held = set(labels_arr[(splits[:, f] == TEST) | (splits[:, f] == DEV)])
        unseen = sorted(held - train)
        if unseen:
            raise SourceError(
                f"{what}: labels in the test split of fold {f + 1} never occur in its train split: "
                f"{unseen[:5]}{' ...' if len(unseen) > 5 else ''}; every test label needs train examples"
            )


# ------------------------------------------------------------------------------ UCF101
def _ucf_root(src: Path) -> tuple[Path, Path]:
    for base in (src, src / "UCF101"):
        videos, lists = base / "UCF-101", base / "ucfTrainTestlist"
        if videos.is_dir() and lists.is_dir():
            return videos, lists
    raise SourceError(
        f"ucf101 source {src} must contain UCF-101/<Class>/*.avi and ucfTrainTestlist/ "
        "(classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt)"
    )


def read_ucf101(src: str | Path) -> Source:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi plus the official three train/test folds.

    The class is the folder name (folder ``HandstandPushups`` holds ``v_HandStandPushups_*``),
    and list entries are matched case-insensitively for the same reason.
    """
    src = Path(src).expanduser().resolve()
    videos_dir, lists_dir = _ucf_root(src)
    needed = ["classInd.txt"] + [f"{kind}list0{k}.txt" for k in (1, 2, 3) for kind in ("train", "test")]
    absent = [n for n in needed if not (lists_dir / n).is_file()]
    if absent:
        raise SourceError(
            f"ucf101: {lists_dir} lacks {absent}; the official split files are "
            "classInd.txt, trainlist01-03.txt and testlist01-03.txt"
        )
    classes = []
    for line in (lists_dir / "classInd.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            classes.append(parts[1])
    if not classes:
        raise SourceError(f"ucf101: {lists_dir / 'classInd.txt'} lists no classes (lines look like '1 ApplyEyeMakeup')")
    known = {c.lower(): c for c in classes}

    files: dict[str, tuple[str, str]] = {}  # lower-case relative path -> (relative path, class)
    for folder in sorted(p for p in videos_dir.iterdir() if p.is_dir()):
        if folder.name.lower() not in known:
            raise SourceError(f"ucf101: folder {folder.name!r} is not a class of classInd.txt")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in VIDEO_EXTENSIONS:
                rel = f"{folder.name}/{f.name}"
                files[rel.lower()] = (rel, known[folder.name.lower()])
    if not files:
        raise SourceError(f"ucf101: no videos under {videos_dir} (expected UCF-101/<Class>/v_<Class>_gXX_cYY.avi)")

    splits = {key: [UNUSED] * 3 for key in files}
    listed_missing = set()
    for k in (1, 2, 3):
        for kind, value in (("train", TRAIN), ("test", TEST)):
            for line in (lists_dir / f"{kind}list0{k}.txt").read_text().splitlines():
                if not line.strip():
                    continue
                rel = line.split()[0].replace("\\", "/").lower()
                if rel in splits:
                    splits[rel][k - 1] = value
                else:
                    listed_missing.add(line.split()[0])
    items = [Item(rel, label, tuple(splits[key]), video=str(videos_dir / rel)) for key, (rel, label) in files.items()]
    complete = len(files) >= UCF101_VIDEOS
    return Source(
        "ucf101",
        src,
        items,
        classes,
        num_folds=3,
        expected_classes=UCF101_WITH_AUDIO if complete else None,
        missing=[(m, "missing-file") for m in sorted(listed_missing)],
    )


# -------------------------------------------------------------------------- ActivityNet
def read_activitynet(src: str | Path) -> Source:
    """activity_net.v1-3.min.json plus videos named ``v_<id>.<ext>`` or ``<id>.<ext>`` anywhere below ``src``.

    Training videos form the train split and validation videos the test split (the testing
    subset has no labels). A clip's label is its most frequent annotation label. Videos listed
    in the JSON but absent on disk (often the case: many were taken down) are reported, not fatal.
    """
    src = Path(src).expanduser().resolve()
    ann = src / ACTIVITYNET_JSON
    if not ann.is_file():
        raise SourceError(f"activitynet source {src} must contain {ACTIVITYNET_JSON} and the videos")
    try:
        database = json.loads(ann.read_text())["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SourceError(
            f"activitynet: {ann} is not the v1.3 annotation file ({type(exc).__name__}: {exc}); "
            "expected {'database': {video id: {'subset', 'annotations': [{'label'}]}}}"
        ) from None
    on_disk: dict[str, Path] = {}
    for f in src.rglob("*"):
        if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file():
            stem = f.stem[2:] if f.stem.startswith("v_") else f.stem
            on_disk.setdefault(stem, f)
    items, missing, labels_all = [], [], set()
    for vid, entry in sorted(database.items()):
        subset = entry.get("subset")
        if subset not in ("training", "validation"):
            continue
        names = [a.get("label") for a in entry.get("annotations", []) if a.get("label")]
        if not names:
            missing.append((vid, "unlabelled"))
            continue
        label = max(dict.fromkeys(names), key=names.count)  # most frequent, first on ties
        labels_all.add(label)
        if vid not in on_disk:
            missing.append((vid, "missing-file"))
            continue
        split = TRAIN if subset == "training" else TEST
        items.append(Item(str(on_disk[vid].relative_to(src)), label, (split,), video=str(on_disk[vid])))
    if not items:
        raise SourceError(
            f"activitynet: none of the {len(database)} videos of {ann.name} was found under {src} "
            "(names v_<id>.mp4 or <id>.mp4; extensions " + ", ".join(VIDEO_EXTENSIONS) + ")"
        )
    return Source(
        "activitynet",
        src,
        items,
        sorted(labels_all),
        num_folds=1,
        expected_classes=len(labels_all) if not missing else None,
        missing=missing,
    )


# ----------------------------------------------------------------------------- manifest
def read_manifest(src: str | Path, seed: int = 0, test_fraction: float = 0.2) -> Source:
    """``src/manifest.csv``: column ``label`` and either ``video``, ``audio`` + ``image``, or ``audio``
    alone (an audio-only device's data) as paths (relative to ``src`` or absolute), optional
    ``split`` (train / test / dev). Without a split
    column a stratified ``test_fraction`` of each class (seeded) becomes the test split.
    """
    import pandas as pd

    src = Path(src).expanduser().resolve()
    path = src / "manifest.csv"
    if not path.is_file():
        raise SourceError(f"manifest source {src} must contain manifest.csv")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SourceError(f"manifest: {path} is not a readable CSV ({exc})") from None
    cols = set(table.columns)
    has_video, has_pair, audio_only = "video" in cols, {"audio", "image"} <= cols, "audio" in cols
    if "label" not in cols or not (has_video or has_pair or audio_only):
        raise SourceError(
            f"manifest: {path.name} needs columns 'label' and either 'video', 'audio' + 'image', "
            f"or 'audio' alone (data without video); found {sorted(cols)}"
        )
    if table.empty:
        raise SourceError(f"manifest: {path.name} has no rows")
    if (table["label"].str.strip() == "").any():
        row = int(np.flatnonzero(table["label"].str.strip() == "")[0]) + 2
        raise SourceError(f"manifest: {path.name} line {row} has an empty label")
    kinds = ["video"] if has_video else ["audio", "image"] if has_pair else ["audio"]

    def resolve(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else src / p

    absent = [
        (i + 2, k, table.at[i, k])
        for i in range(len(table))
        for k in kinds
        if not table.at[i, k] or not resolve(table.at[i, k]).is_file()
    ]
    if absent:
        line, kind, value = absent[0]
        raise SourceError(
            f"manifest: {len(absent)} path(s) in {path.name} do not exist, first line {line} "
            f"{kind} = {value!r}; paths are relative to {src} or absolute"
        )
    if "split" in cols:
        names = {"train": TRAIN, "test": TEST, "dev": DEV}
        bad = sorted(set(table["split"]) - set(names))
        if bad:
            raise SourceError(f"manifest: column 'split' has {bad}; allowed: ['dev', 'test', 'train']")
        split = table["split"].map(names).to_numpy(dtype=np.uint8)
    else:
        split = np.full(len(table), TRAIN, np.uint8)
        rng = np.random.default_rng([seed, 15485863])
        for label in sorted(set(table["label"])):
            rows = np.flatnonzero(table["label"].to_numpy() == label)
            take = int(round(test_fraction * rows.size)) if rows.size >= 2 else 0
            split[rng.choice(rows, min(take, rows.size - 1), replace=False)] = TEST
    items = []
    seen = set()
    for i in range(len(table)):
        paths = {k: str(resolve(table.at[i, k])) for k in kinds}
        key = "|".join(table.at[i, k] for k in kinds)
        if key in seen:
            raise SourceError(f"manifest: line {i + 2} repeats {key!r}; every clip must appear once")
        seen.add(key)
        items.append(Item(key, table.at[i, "label"].strip(), (int(split[i]),), **paths))
    source = Source("manifest", src, items, sorted({i.label for i in items}), num_folds=1, has_video=kinds != ["audio"])
    source.check_test_labels()
    return source


READERS = {"ucf101": read_ucf101, "activitynet": read_activitynet, "manifest": read_manifest}


def readable_name(name: str) -> str:
    """A class name as a phrase: 'PlayingDaf' -> 'playing daf', 'Playing_congas' -> 'playing congas'."""
    name = re.sub(r"[_\-]+", " ", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return re.sub(r"\s+", " ", name).strip().lower()
