"""Preprocessing's speed: ``data.prepare`` on generated clips against the ffmpeg command line decoding the
same audio and middle frame (imageio-ffmpeg)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


# --------------------------------------------------------------------- preprocessing
def make_clips(root: Path, count: int, seconds: float, size: tuple[int, int], fps: int) -> list[Path]:
    """``count`` clips (MPEG-4 + MP3 in AVI, like UCF101) under ``root``."""
    from data.media import write_video

    return [write_video(root / f"clip{i:04d}.avi", i % 4, seconds=seconds, size=size, fps=fps) for i in range(count)]


def write_manifest(src: Path, clips: list[Path]) -> Path:
    """A manifest over ``clips`` (>= 8): 4 labels, 1 clip in 4 for test, every label in train."""
    rows = ["label,video,split"] + [
        f"class{i % 4},{clip},{'test' if i % 8 >= 6 else 'train'}" for i, clip in enumerate(clips)
    ]
    src.mkdir(parents=True, exist_ok=True)
    (src / "manifest.csv").write_text("\n".join(rows) + "\n")
    return src


def ffmpeg_decode(clips: list[Path], seconds: float, audio_seconds: float, image_size: int, workers: int) -> float:
    """Seconds for the ffmpeg CLI to decode what preprocessing needs from each clip: the first
    ``audio_seconds`` of audio as 16 kHz mono float PCM, and the middle frame scaled to
    ``image_size`` squared RGB (one ffmpeg process per clip, ``workers`` at a time)."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()

    def one(clip: Path) -> None:
        cmd = [
            exe,
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(clip),
            "-map",
            "0:a:0",
            "-t",
            str(audio_seconds),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "f32le",
            "-y",
            "/dev/null",
            "-map",
            "0:v:0",
            "-ss",
            str(seconds / 2),
            "-frames:v",
            "1",
            "-s",
            f"{image_size}x{image_size}",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-y",
            "/dev/null",
        ]
        subprocess.run(cmd, check=True, capture_output=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, clips))
    return time.perf_counter() - t0


def preprocessing(work: Path, count: int, workers: int, seconds: float = 4.0) -> dict:
    """``data.prepare`` on ``count`` generated clips (worker start-up included), and the same per-clip
    work (decode, fbank, resize) in this process once warm, which is the rate a long job settles at."""
    import torch

    from data.features import FeatureSpec
    from data.prepare import features, prepare
    from data.sources import Item

    clips = make_clips(work / "clips", count, seconds, (320, 240), 25)
    spec = FeatureSpec(num_mel_bins=128, audio_seconds=5.0, image_size=224)
    src = write_manifest(work / "src", clips)
    t0 = time.perf_counter()
    prepare("manifest", src, work / "data", spec=spec, workers=workers, log=lambda *a, **k: None)
    total = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a preprocessing worker
    try:
        items = [Item(key=str(c), label="x", splits=(0,), video=str(c)) for c in clips]
        features(items[0], spec)  # warm-up
        t0 = time.perf_counter()
        for item in items[1:]:
            features(item, spec)
        per_worker = (len(items) - 1) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    ref = ffmpeg_decode(clips, seconds, spec.audio_seconds, spec.image_size, workers)
    return {
        "videos": count,
        "workers": workers,
        "clip": f"{seconds:g} s, 320x240, 25 fps, MPEG-4 + MP3",
        "prepare_videos_per_s": count / total,
        "prepare_steady_videos_per_s": per_worker * workers,
        "ffmpeg_cli_videos_per_s": count / ref,
        "ratio_prepare_over_ffmpeg": (count / total) / (count / ref),
        "ratio_steady_over_ffmpeg": per_worker * workers / (count / ref),
    }
