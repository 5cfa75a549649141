"""Preprocess a real dataset into the feature cache that runs memory-map.

    python -m data.prepare ucf101 --src /datasets/UCF101 --data-dir ~/.cache/modality-mirror
    python -m data.prepare activitynet --src /datasets/ActivityNet
    python -m data.prepare manifest --src /my/folder        # folder with manifest.csv

Each clip is decoded once (PyAV): the first ``--audio-seconds`` of audio, resampled to
16 kHz mono, become a kaldi log-mel filterbank (``--mel-bins``; 128 for AST/SSAST), and the
middle frame, resized to ``--image-size`` (224 for ResNet-18), is kept as uint8 RGB.

* Several processes (``--workers``) with a progress bar.
* Resumable: every clip's features go to ``<data-dir>/.<dataset>.work/`` as soon as they
  are computed (atomic rename); an interrupted run picks up where it stopped.
* Silent, video-less or corrupt files are skipped and listed in ``<dataset>.skipped.csv``
  with the reason; the summary gives the counts.
* The cache ``<data-dir>/<dataset>`` is assembled in a temporary directory and renamed
  into place only when complete; a cache or work folder made with other settings is
  refused instead of mixed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .cache import TEST, TRAIN, UNUSED, CacheMismatchError, FeatureCache, ensure_cache, finished_cache
from .features import FeatureSpec
from .sources import READERS, Item, Source, SourceError, check_test_labels

FORMAT = 1  # bump when the per-clip features change meaning


class PrepareError(ValueError):
    """Preprocessing cannot go on; the message says why."""


def _clip_id(item: Item) -> str:
    return hashlib.sha1(item.key.encode()).hexdigest()[:20]


def features(item: Item, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel (frames, mels) float32, frame (3, S, S) uint8) of one clip; raises decode.Skip."""
    import torch
    from torchvision.transforms import v2

    from . import decode
    from .features import log_mel

    if item.video:
        wave = decode.audio(item.video, spec.audio_seconds)
        frame = decode.middle_frame(item.video)
    else:
        wave = decode.audio(item.audio, spec.audio_seconds)
        # audio-only data keeps a black frame so every cache has the same layout
        frame = decode.image(item.image) if item.image else np.zeros((spec.image_size, spec.image_size, 3), np.uint8)
    mel = log_mel(wave, spec)
    img = torch.from_numpy(np.array(frame, copy=True)).permute(2, 0, 1)
    img = v2.Resize((spec.image_size, spec.image_size), antialias=True)(img)
    return mel, img.numpy().astype(np.uint8)


def _work(args: tuple[Item, FeatureSpec, str]) -> tuple[str, str]:
    """Compute one clip into the work folder; returns (clip id, "" or the skip reason)."""
    from .decode import Skip

    item, spec, work = args
    cid = _clip_id(item)
    out = Path(work) / f"{cid}.npz"
    try:
        mel, img = features(item, spec)
    except Skip as exc:
        reason = str(exc)
        tmp = Path(work) / f".{cid}.skip.tmp"
        tmp.write_text(reason)
        tmp.rename(Path(work) / f"{cid}.skip")
        return cid, reason
    tmp = Path(work) / f".{cid}.tmp.npz"
    np.savez(tmp, audio=mel, video=img)
    tmp.rename(out)
    return cid, ""


def _init_worker() -> None:
    import torch

    from .decode import quiet

    torch.set_num_threads(1)
    quiet()


def _compute(todo: list[Item], spec: FeatureSpec, work: Path, workers: int) -> None:
    from tqdm import tqdm

    args = [(item, spec, str(work)) for item in todo]
    bar = tqdm(total=len(args), desc="decoding", unit="clip", file=sys.stderr, disable=not args)
    if workers <= 1:
        _init_worker()
        for a in args:
            _work(a)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(_work, args, chunksize=1):
                bar.update()
    bar.close()


def fingerprint(source: Source, spec: FeatureSpec, seed: int) -> dict:
    digest = hashlib.sha1("\n".join(f"{i.key}\t{i.label}\t{i.splits}" for i in source.items).encode()).hexdigest()
    return {
        "dataset": source.dataset,
        "format": FORMAT,
        "source": str(source.root),
        "features": spec.as_dict(),
        "seed": seed,
        "clips": digest,
    }


def prepare(
    dataset: str,
    src: str | Path,
    data_dir: str | Path,
    spec: FeatureSpec | None = None,
    workers: int | None = None,
    seed: int = 0,
    log=print,
) -> FeatureCache:
    """Read ``src`` as ``dataset``, compute what is missing, write ``<data_dir>/<dataset>``."""
    if dataset not in READERS:
        raise PrepareError(f"dataset {dataset!r} cannot be prepared; one of {sorted(READERS)}")
    spec = spec or FeatureSpec(num_mel_bins=128, audio_seconds=5.0, image_size=224)
    if spec.num_frames < 1:
        raise PrepareError(f"--audio-seconds {spec.audio_seconds} is too short: at least 0.025 s")
    if not Path(src).expanduser().is_dir():
        raise PrepareError(f"--src {src} is not a folder")
    source = READERS[dataset](src, seed=seed) if dataset == "manifest" else READERS[dataset](src)
    source.check_test_labels()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    final = data_dir / dataset
    fp = fingerprint(source, spec, seed)
    done = finished_cache(final, fp)  # refuses a cache made with other settings or clips
    if done is not None:
        log(f"{dataset}: cache {final} is already complete")
        return done

    work = data_dir / f".{dataset}.work"
    settings = {k: v for k, v in fp.items() if k != "clips"}
    work.mkdir(exist_ok=True)
    marker = work / "settings.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != json.loads(json.dumps(settings)):
            raise CacheMismatchError(
                f"{work} holds clips computed with other settings "
                f"({marker.read_text().strip()}); delete it or use the same settings"
            )
    else:
        marker.write_text(json.dumps(settings))
    for stale in work.glob(".*.tmp*"):  # a worker killed mid-write
        stale.unlink()
    done = {p.stem for p in work.glob("*.npz")} | {p.stem for p in work.glob("*.skip")}
    todo = [i for i in source.items if _clip_id(i) not in done]
    reused = len(source.items) - len(todo)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    log(
        f"{dataset}: {len(source.items)} clips listed, {reused} already computed, {len(todo)} to decode "
        f"with {workers} process(es)"
    )
    _compute(todo, spec, work, workers)

    cache = ensure_cache(final, fp, lambda tmp: _assemble(source, spec, work, tmp, log))
    shutil.rmtree(work, ignore_errors=True)
    return cache


def _assemble(source: Source, spec: FeatureSpec, work: Path, tmp: Path, log) -> dict:
    kept, skipped = [], list(source.missing)
    for item in source.items:
        cid = _clip_id(item)
        if (work / f"{cid}.npz").is_file():
            kept.append(item)
        elif (work / f"{cid}.skip").is_file():
            skipped.append((item.key, (work / f"{cid}.skip").read_text()))
        else:
            raise PrepareError(f"clip {item.key} has no computed features; run the command again to resume")
    _write_skips(tmp.parent / f"{source.dataset}.skipped.csv", skipped)
    reasons = Counter(r.split(":")[0] for _, r in skipped)
    log(
        f"{source.dataset}: kept {len(kept)} of {len(source.items) + len(source.missing)} clips; skipped "
        + (", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none")
        + (f" (list: {tmp.parent / (source.dataset + '.skipped.csv')})" if skipped else "")
    )
    if not kept:
        raise PrepareError(f"{source.dataset}: no usable clip (every file was skipped); nothing written")

    present = {i.label for i in kept}
    classes = [c for c in source.classes if c in present]
    log(f"{source.dataset}: {len(classes)} classes: {', '.join(classes)}")
    if source.expected_classes is not None and len(classes) != source.expected_classes:
        log(
            f"{source.dataset}: WARNING expected {source.expected_classes} classes with usable clips, "
            f"found {len(classes)}"
        )
    index = {c: k for k, c in enumerate(classes)}
    splits = np.array([i.splits for i in kept], dtype=np.uint8)
    check_test_labels([i.label for i in kept], splits, f"{source.dataset} (after skipping unusable clips)")

    n = len(kept)
    audio = np.lib.format.open_memmap(tmp / "audio.npy", "w+", np.float32, (n, spec.num_frames, spec.num_mel_bins))
    video = np.lib.format.open_memmap(tmp / "video.npy", "w+", np.uint8, (n, 3, spec.image_size, spec.image_size))
    for row, item in enumerate(kept):
        with np.load(work / f"{_clip_id(item)}.npz") as z:
            audio[row], video[row] = z["audio"], z["video"]
    audio.flush()
    video.flush()
    del audio, video
    np.save(tmp / "labels.npy", np.array([index[i.label] for i in kept], dtype=np.int64))
    if source.num_folds > 1:
        np.save(tmp / "folds.npy", splits)
    np.save(tmp / "split.npy", splits[:, 0])
    counts = {
        f"fold{f + 1}": {
            "train": int((splits[:, f] == TRAIN).sum()),
            "test": int((splits[:, f] == TEST).sum()),
            "unused": int((splits[:, f] == UNUSED).sum()),
        }
        for f in range(source.num_folds)
    }
    return {
        "dataset": source.dataset,
        "classes": classes,
        "num_samples": n,
        "num_folds": source.num_folds,
        "has_video": source.has_video,
        "splits": counts,
        "clips": [i.key for i in kept],
        "skipped": len(skipped),
        "audio": f"kaldi log-mel fbank, {spec.num_mel_bins} bins, first {spec.audio_seconds:g} s at 16 kHz mono",
        "video": f"middle frame, uint8 RGB {spec.image_size}x{spec.image_size}"
        if source.has_video
        else "none (audio-only data; black frames)",
    }


def _write_skips(path: Path, rows: list[tuple[str, str]]) -> None:
    import csv

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip", "reason"])
        w.writerows(rows)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=sorted(READERS))
    p.add_argument("--src", required=True, help="the dataset as distributed (or the folder with manifest.csv)")
    p.add_argument("--data-dir", default="~/.cache/modality-mirror", help="where the cache goes (run config data-dir)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores, at most 8)")
    p.add_argument("--mel-bins", type=int, default=128, help="log-mel bins (128 for AST/SSAST)")
    p.add_argument("--audio-seconds", type=float, default=5.0, help="seconds of audio from the start of each clip")
    p.add_argument("--image-size", type=int, default=224, help="frame side in pixels (224 for ResNet-18)")
    p.add_argument("--seed", type=int, default=0, help="seed of the manifest's stratified split (no split column)")
    a = p.parse_args(argv)
    for flag, value, low in (("--mel-bins", a.mel_bins, 8), ("--image-size", a.image_size, 8)):
        if value < low:
            p.error(f"{flag} {value} is too small: at least {low}")
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers {a.workers}: at least 1")
    spec = FeatureSpec(num_mel_bins=a.mel_bins, audio_seconds=a.audio_seconds, image_size=a.image_size)
    try:
        cache = prepare(a.dataset, a.src, a.data_dir, spec, a.workers, a.seed)
    except (SourceError, PrepareError, CacheMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{a.dataset}: cache ready at {cache.path} ({len(cache)} clips, {cache.num_classes} classes); "
        f"run with --run-config \"dataset='{a.dataset}' data-dir='{Path(a.data_dir).expanduser()}'\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
