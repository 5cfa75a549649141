"""Tiny real media files made with PyAV, for the tests (dataset readers, preprocessing) and `make bench`."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_video(
    path: Path,
    label: int,
    seconds: float = 1.0,
    audio: bool = True,
    container: str = "avi",
    size: tuple[int, int] = (64, 48),
    fps: int = 10,
    sample_rate: int = 22050,
) -> Path:
    """A short clip whose colour and tone depend on ``label``: MPEG-4 video, MP3 (or AAC) audio."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w", format=container) as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a_s = None
        if audio:
            a_s = out.add_stream("libmp3lame" if container == "avi" else "aac", rate=sample_rate)
            a_s.layout = "mono"
        colour = np.array([(label * 70) % 256, (label * 130 + 60) % 256, (label * 40 + 120) % 256], np.uint8)
        for i in range(int(seconds * fps)):
            img = np.zeros((h, w, 3), np.uint8) + colour
            img[: (i % h), :] //= 2
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if a_s is not None:
            n = int(seconds * sample_rate)
            t = np.arange(n) / sample_rate
            tone = (0.3 * np.sin(2 * np.pi * (220 + 110 * label) * t)).astype(np.float32)
            step = a_s.codec_context.frame_size or 1024
            fmt = a_s.codec_context.format.name
            for start in range(0, n, step):
                chunk = tone[start : start + step]
                if fmt.startswith("s16"):
                    chunk = (chunk * 32767).astype(np.int16)
                elif fmt.startswith("s32"):
                    chunk = (chunk * 2147483647).astype(np.int32)
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format=fmt, layout="mono")
                frame.sample_rate = sample_rate
                for pkt in a_s.encode(frame):
                    out.mux(pkt)
            for pkt in a_s.encode():
                out.mux(pkt)
    return path


def write_wav(path: Path, label: int, seconds: float = 1.0, sample_rate: int = 16000, silent: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * (200 + 150 * label) * t)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes((tone * 32767).astype("<i2").tobytes())
    return path


def write_png(path: Path, label: int, size: int = 40) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size, size, 3), np.uint8)
    img[..., label % 3] = 200
    Image.fromarray(img).save(path)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 4)
    return path


UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "PlayingDaf", "Typing"]  # Typing: no audio anywhere


def make_ucf101(root: Path, per_class: int = 4) -> Path:
    """UCF101's layout in miniature: 4 classes in classInd.txt, three folds by group.

    HandstandPushups keeps the real quirk (folder HandstandPushups, files v_HandStandPushups_*).
    The class Typing has no audio in any video (as 50 real classes), so it must be dropped.
    One ApplyEyeMakeup video is corrupt.
    """
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    entries: dict[int, list[tuple[str, int]]] = {}
    for ci, cls in enumerate(UCF_CLASSES):
        stem = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in range(1, per_class + 1):
            rel = f"{cls}/v_{stem}_g{g:02d}_c01.avi"
            if cls == "ApplyEyeMakeup" and g == per_class:
                write_corrupt(videos / rel)
            else:
                write_video(videos / rel, ci, audio=cls != "Typing")
            entries.setdefault(g, []).append((rel, ci + 1))
    for k in (1, 2, 3):
        test_group = k  # group k is the test split of fold k (real UCF101 holds out 7 groups per fold)
        train = [f"{rel} {ci}" for g, rows in entries.items() if g != test_group for rel, ci in rows]
        test = [rel for rel, _ in entries[test_group]]
        (lists / f"trainlist0{k}.txt").write_text("\n".join(train) + "\n")
        (lists / f"testlist0{k}.txt").write_text("\n".join(test) + "\n")
    return root


def make_activitynet(root: Path) -> Path:
    """A v1.3-style JSON with 3 labels, training and validation videos, one listed but absent."""
    import json

    db = {}
    labels = ["Playing bagpipes", "Doing karate", "Shaving"]
    n = 0
    for li, label in enumerate(labels):
        for subset, count in (("training", 3), ("validation", 1)):
            for _ in range(count):
                vid = f"vid{n:03d}x"
                db[vid] = {"subset": subset, "duration": 1.0, "annotations": [{"label": label, "segment": [0, 1]}]}
                write_video(root / "videos" / f"v_{vid}.mp4", li, container="mp4")
                n += 1
    db["gone0001"] = {"subset": "training", "annotations": [{"label": labels[0], "segment": [0, 1]}]}
    db["test0001"] = {"subset": "testing", "annotations": []}
    (root / "activity_net.v1-3.min.json").write_text(json.dumps({"version": "VERSION 1.3", "database": db}))
    return root


def make_manifest(root: Path, per_class: int = 5, with_split: bool = False) -> Path:
    """manifest.csv with label, audio (wav) and image (png) columns; one silent wav."""
    rows = ["label,audio,image" + (",split" if with_split else "")]
    for li, label in enumerate(["dog", "cat", "bird"]):
        for k in range(per_class):
            wav = write_wav(root / "audio" / f"{label}{k}.wav", li, silent=(label == "bird" and k == 0))
            png = write_png(root / "images" / f"{label}{k}.png", li)
            split = ",test" if k == 0 else ",train"
            rows.append(f"{label},{wav.relative_to(root)},{png.relative_to(root)}" + (split if with_split else ""))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root
