"""The embedded default dataset: synthetic audiovisual clips, generated locally from a seed.

Every sample is a real 16 kHz waveform and a 64x64 RGB frame that go through the same
front end as real datasets (kaldi log-mel fbank, the frame transform). It mirrors the
paper's situation:

* video is the strong modality: each class has its own shape and colour;
* audio is the weak one, but never useless: every class has its own sound, buried in
  background noise at a low signal-to-noise ratio. Classes that share a sound source
  ("playing congas", "drumming" and "playing tabla" are all a struck membrane) differ only
  by subtle cues (pitch, rhythm, decay, timbre), so audio alone confuses them often, yet
  no two classes are indistinguishable by ear. That is the situation in which the paper's
  distillation helps: the audiovisual teacher knows which weak audio cue goes with which
  class (the paper's Fig. 2).

``python -m mirror_app.studies.centralized`` measures it (docs/datasets.md, "The embedded dataset").

A second, disjoint set of classes (``proxy``: other sounds, other colours, other seeds) is
generated the same way for ``make pretrain``: general features learned there play the part
ImageNet and AudioSet play for UCF101, without containing the task's classes.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .cache import TEST, TRAIN, FeatureCache, ensure_cache
from .features import SAMPLE_RATE, FeatureSpec, frame_transform, log_mel

VERSION = 3
DATA_SEED = 2024
PROXY_SEED = 7331
SAMPLES_PER_CLASS = 250
SERIAL_UP_TO = 400  # clips rendered in this process rather than by worker processes
TEST_FRACTION = 0.2
FRAME_SIZE = 64
SNR_DB = (-21.0, -9.0)

# Sound sources: "hits" are repeated decaying tones, "tone" a sustained harmonic tone,
# "noise" band-limited noise with a slow amplitude envelope.
SOUNDS: dict[str, dict] = {
    "membrane": dict(kind="hits", pitch=190.0, rate=5.0, decay=0.08, noise=0.3),
    "bowed": dict(kind="tone", pitch=330.0, harmonics=8, rolloff=0.7, vibrato=6.0),
    "splash": dict(kind="noise", center=1500.0, width=2500.0, am=2.0),
    "bounce": dict(kind="hits", pitch=600.0, rate=2.5, decay=0.03, noise=0.6),
    "buzz": dict(kind="tone", pitch=120.0, harmonics=20, rolloff=0.95, vibrato=0.0),
    "pluck": dict(kind="hits", pitch=250.0, rate=3.0, decay=0.3, noise=0.05),
    "breath": dict(kind="tone", pitch=700.0, harmonics=3, rolloff=0.3, vibrato=4.0),
    "keys": dict(kind="hits", pitch=440.0, rate=2.0, decay=0.5, noise=0.0),
    "clicks": dict(kind="hits", pitch=3000.0, rate=9.0, decay=0.01, noise=0.9),
    "knock": dict(kind="hits", pitch=120.0, rate=1.5, decay=0.06, noise=0.5),
    "scrub": dict(kind="noise", center=4000.0, width=3000.0, am=4.0),
    "rumble": dict(kind="noise", center=300.0, width=400.0, am=0.5),
    "jingle": dict(kind="hits", pitch=5000.0, rate=4.0, decay=0.15, noise=0.8),
    "snip": dict(kind="hits", pitch=2000.0, rate=3.0, decay=0.02, noise=0.7),
}

# (class name, sound source, subtle cue). A cue multiplies the source's parameters (pitch,
# rate, decay, rolloff, centre frequency, amplitude modulation), so classes sharing a
# source sound alike but not the same; each clip also varies pitch and rhythm by +-10-20 %.
CLASSES: list[tuple[str, str, dict]] = [
    ("playing congas", "membrane", {}),
    ("drumming", "membrane", {"pitch": 0.75, "rate": 1.4}),
    ("playing tabla", "membrane", {"pitch": 1.35, "decay": 1.8}),
    ("playing violin", "bowed", {"pitch": 1.3}),
    ("playing cello", "bowed", {"pitch": 0.7, "rolloff": 1.2}),
    ("breast stroke", "splash", {"am": 0.6}),
    ("diving", "splash", {"center": 0.6, "am": 1.6}),
    ("basketball dribbling", "bounce", {}),
    ("volleyball spiking", "bounce", {"pitch": 1.4, "rate": 0.6}),
    ("shaving beard", "buzz", {"pitch": 1.35}),
    ("blow drying hair", "buzz", {"pitch": 0.75, "rolloff": 0.9}),
    ("playing guitar", "pluck", {}),
    ("playing flute", "breath", {}),
    ("playing piano", "keys", {}),
    ("typing", "clicks", {}),
    ("hammering", "knock", {}),
    ("brushing teeth", "scrub", {}),
    ("bowling", "rumble", {}),
    ("playing daf", "jingle", {}),
    ("cutting hair", "snip", {}),
]

_TABLE = 4096
SHAPES = ("disk", "square", "triangle", "ring", "cross")
COLOURS = ((220, 40, 40), (40, 190, 60), (50, 80, 230), (230, 210, 40))
PROXY_COLOURS = ((40, 200, 210), (200, 50, 200), (240, 140, 30), (235, 235, 235))


def class_names() -> list[str]:
    return [name for name, _, _ in CLASSES]


def class_sound(source: str, cue: dict | None = None) -> dict:
    """The sound parameters of a source with a class's cue applied (multiplicative)."""
    params = dict(SOUNDS[source])
    for key, factor in (cue or {}).items():
        params[key] = params[key] * factor
    params["rolloff"] = min(params.get("rolloff", 0.0), 0.97)
    return params


def _task_table() -> list[tuple[str, str, dict, tuple[str, tuple[int, int, int]]]]:
    """(name, source, sound parameters, (shape, colour)) of each task class."""
    return [
        (name, source, class_sound(source, cue), (SHAPES[i % len(SHAPES)], COLOURS[i // len(SHAPES)]))
        for i, (name, source, cue) in enumerate(CLASSES)
    ]


def _proxy_table(num_classes: int = 20) -> list[tuple[str, str, dict, tuple[str, tuple[int, int, int]]]]:
    """A disjoint set of classes for pretraining: random sounds of the three kinds, other colours."""
    rng = np.random.default_rng(PROXY_SEED)
    table = []
    for i in range(num_classes):
        kind = ("hits", "tone", "noise")[i % 3]
        if kind == "hits":
            params = dict(
                kind=kind,
                pitch=float(np.exp(rng.uniform(np.log(100), np.log(6000)))),
                rate=float(rng.uniform(1, 10)),
                decay=float(np.exp(rng.uniform(np.log(0.01), np.log(0.5)))),
                noise=float(rng.uniform(0, 0.9)),
            )
        elif kind == "tone":
            params = dict(
                kind=kind,
                pitch=float(np.exp(rng.uniform(np.log(100), np.log(1000)))),
                harmonics=int(rng.integers(2, 21)),
                rolloff=float(rng.uniform(0.3, 0.95)),
                vibrato=float(rng.uniform(0, 7)),
            )
        else:
            params = dict(
                kind=kind,
                center=float(np.exp(rng.uniform(np.log(200), np.log(6000)))),
                width=float(rng.uniform(300, 3000)),
                am=float(rng.uniform(0.3, 5)),
            )
        table.append(
            (
                f"proxy {i:02d}",
                f"proxy-{kind}",
                params,
                (SHAPES[i % len(SHAPES)], PROXY_COLOURS[i // len(SHAPES) % len(PROXY_COLOURS)]),
            )
        )
    return table


# ----------------------------------------------------------------------------- audio
def _bandpass_noise(rng: np.random.Generator, n: int, center: float, width: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum *= np.exp(-0.5 * ((freqs - center) / (width / 2.0)) ** 2)
    out = np.fft.irfft(spectrum, n)
    return out / (np.abs(out).max() + 1e-8)


def render_sound(sound: str | dict, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One clean clip of a sound (a source name or its parameters) with random pitch, rhythm and timing."""
    p = SOUNDS[sound] if isinstance(sound, str) else sound
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if p["kind"] == "hits":
        pitch = p["pitch"] * rng.uniform(0.9, 1.1)
        rate = p["rate"] * rng.uniform(0.8, 1.2)
        decay = p["decay"] * rng.uniform(0.8, 1.25)
        onsets = np.arange(rng.uniform(0, 1 / rate), seconds, 1 / rate)
        out = np.zeros(n)
        noise = rng.standard_normal(n)
        seg = np.arange(min(n, int(7 * decay * SAMPLE_RATE) + 1)) / SAMPLE_RATE
        hit = np.exp(-seg / decay)
        tone = hit * (np.sin(2 * np.pi * pitch * seg) + 0.5 * np.sin(4 * np.pi * pitch * seg))
        for start in (onsets * SAMPLE_RATE).astype(int):
            m = min(seg.size, n - start)
            out[start : start + m] += (1 - p["noise"]) * tone[:m] + p["noise"] * hit[:m] * noise[start : start + m]
    elif p["kind"] == "tone":
        pitch = p["pitch"] * rng.uniform(0.9, 1.1)
        vib = 1 + 0.01 * np.sin(2 * np.pi * p["vibrato"] * t + rng.uniform(0, 2 * np.pi))
        cycles = np.cumsum(pitch * vib) / SAMPLE_RATE + rng.uniform()
        # one period of the harmonic waveform, read at the running phase (a wavetable)
        grid = np.arange(_TABLE) / _TABLE
        table = sum(p["rolloff"] ** k * np.sin(2 * np.pi * (k + 1) * grid) for k in range(int(p["harmonics"])))
        out = table[((cycles % 1.0) * _TABLE).astype(int)] * np.minimum(1.0, t / 0.05)
    else:
        am = p["am"] * rng.uniform(0.7, 1.3)
        env = 0.6 + 0.4 * np.sin(2 * np.pi * am * t + rng.uniform(0, 2 * np.pi))
        out = env * _bandpass_noise(rng, n, p["center"] * rng.uniform(0.9, 1.1), p["width"])
    return out / (np.abs(out).max() + 1e-8)


def make_waveform(
    sound: str | dict, rng: np.random.Generator, seconds: float, snr_db: tuple[float, float] = SNR_DB
) -> np.ndarray:
    """Clean clip plus coloured background noise at a random SNR, as float32 in [-1, 1]."""
    clean = render_sound(sound, rng, seconds)
    background = np.cumsum(rng.standard_normal(clean.size)) * 0.02 + rng.standard_normal(clean.size)
    background = background - background.mean()
    snr = rng.uniform(*snr_db)
    scale = np.sqrt(np.mean(clean**2) / (np.mean(background**2) * 10 ** (snr / 10)))
    mix = clean + scale * background
    return (0.9 * mix / (np.abs(mix).max() + 1e-8)).astype(np.float32)


# ----------------------------------------------------------------------------- video
def make_frame(look: int | tuple[str, tuple[int, int, int]], rng: np.random.Generator) -> np.ndarray:
    """A 64x64 uint8 RGB frame: textured background, the class's shape in its colour.

    ``look`` is a task class index or a (shape, colour) pair.
    """
    size = FRAME_SIZE
    if isinstance(look, (int, np.integer)):
        look = (SHAPES[look % len(SHAPES)], COLOURS[look // len(SHAPES)])
    shape, rgb = look
    colour = np.array(rgb, dtype=np.float32)
    # background: a smooth, weakly saturated random field (clutter that never looks like a class colour)
    coarse = (rng.uniform(70, 170, size=(4, 4, 1)) + rng.uniform(-15, 15, size=(4, 4, 3))).astype(np.float32)
    img = np.kron(coarse, np.ones((size // 4, size // 4, 1), dtype=np.float32))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(20, size - 20, size=2)
    r = rng.uniform(12, 18)
    dy, dx = yy - cy, xx - cx
    if shape == "disk":
        mask = dy**2 + dx**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif shape == "triangle":
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif shape == "ring":
        d2 = dy**2 + dx**2
        mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    else:  # cross
        mask = ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
    tint = colour + rng.normal(0, 10, size=3)
    img[mask] = tint
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- cache
TABLES = {"embedded": _task_table, "proxy": _proxy_table}
SEEDS = {"embedded": DATA_SEED, "proxy": PROXY_SEED}


def fingerprint(spec: FeatureSpec, samples_per_class: int = SAMPLES_PER_CLASS, kind: str = "embedded") -> dict:
    return {
        "dataset": kind,
        "version": VERSION,
        "seed": SEEDS[kind],
        "samples_per_class": samples_per_class,
        "test_fraction": TEST_FRACTION,
        "snr_db": list(SNR_DB),
        "features": spec.as_dict(),
    }


def _render_chunk(args: tuple) -> None:
    """Render samples ``idx`` into the cache arrays (runs in a worker process)."""
    tmp, spec, kind, idx, seeds, labels = args
    torch.set_num_threads(1)
    table = TABLES[kind]()
    audio = np.load(Path(tmp) / "audio.npy", mmap_mode="r+")
    video = np.load(Path(tmp) / "video.npy", mmap_mode="r+")
    transform = frame_transform(spec.image_size)
    with torch.inference_mode():
        for i, seed, label in zip(idx, seeds, labels):
            r = np.random.default_rng(seed)
            _, _, sound, look = table[label]
            audio[i] = log_mel(make_waveform(sound, r, spec.audio_seconds), spec)
            video[i] = transform(make_frame(look, r)).numpy()
    audio.flush()
    video.flush()


def _build(tmp: Path, spec: FeatureSpec, samples_per_class: int, kind: str = "embedded") -> dict:
    rng = np.random.default_rng(SEEDS[kind])
    table = TABLES[kind]()
    num_classes = len(table)
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    rng.shuffle(labels)
    n = labels.size
    split = np.full(n, TRAIN, dtype=np.uint8)
    for c in range(num_classes):  # stratified held-out test split
        idx = np.flatnonzero(labels == c)
        split[rng.choice(idx, int(round(TEST_FRACTION * idx.size)), replace=False)] = TEST

    audio = np.lib.format.open_memmap(tmp / "audio.npy", "w+", np.float32, (n, spec.num_frames, spec.num_mel_bins))
    video = np.lib.format.open_memmap(tmp / "video.npy", "w+", np.float32, (n, 3, spec.image_size, spec.image_size))
    del video
    # one child generator per sample: the dataset does not depend on generation order
    seeds = rng.integers(0, 2**63, size=n)
    # a small dataset is rendered here: starting worker processes (each imports torch) costs more than it saves
    workers = 1 if n <= SERIAL_UP_TO else max(1, min(os.cpu_count() or 1, 8))
    chunks = np.array_split(np.arange(n), workers * 4)
    args = [(str(tmp), spec, kind, c, seeds[c], labels[c]) for c in chunks if c.size]
    if workers == 1:
        list(map(_render_chunk, args))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_render_chunk, args))
    audio = np.load(tmp / "audio.npy", mmap_mode="r+")
    video = np.load(tmp / "video.npy", mmap_mode="r+")
    train = split == TRAIN
    mean = float(audio[train].mean())
    std = float(audio[train].std())
    audio[:] = (audio[:] - mean) / std
    audio.flush()
    video.flush()
    np.save(tmp / "labels.npy", labels.astype(np.int64))
    np.save(tmp / "split.npy", split)
    return {
        "dataset": kind,
        "classes": [name for name, _, _, _ in table],
        "sound_sources": [source for _, source, _, _ in table],
        "num_samples": int(n),
        "audio_norm": {"mean": mean, "std": std},
    }


def _folder(kind: str, data_dir: str | Path, spec: FeatureSpec | None, samples_per_class: int) -> Path:
    spec = spec or FeatureSpec()
    return Path(data_dir) / f"{kind}-v{VERSION}-n{samples_per_class}-mel{spec.num_mel_bins}-img{spec.image_size}"


def present(data_dir: str | Path, spec: FeatureSpec | None = None, samples_per_class: int = SAMPLES_PER_CLASS) -> bool:
    """Whether the embedded dataset of these settings is already generated under ``data_dir``."""
    return (_folder("embedded", Path(data_dir).expanduser(), spec, samples_per_class) / "meta.json").is_file()


def _load(kind: str, data_dir: str | Path, spec: FeatureSpec | None, samples_per_class: int) -> FeatureCache:
    spec = spec or FeatureSpec()
    return ensure_cache(
        _folder(kind, data_dir, spec, samples_per_class),
        fingerprint(spec, samples_per_class, kind),
        lambda tmp: _build(tmp, spec, samples_per_class, kind),
    )


def load(
    data_dir: str | Path, spec: FeatureSpec | None = None, samples_per_class: int = SAMPLES_PER_CLASS
) -> FeatureCache:
    """The embedded dataset's cache under ``data_dir``, generated on first use."""
    return _load("embedded", data_dir, spec, samples_per_class)


def load_proxy(
    data_dir: str | Path, spec: FeatureSpec | None = None, samples_per_class: int = SAMPLES_PER_CLASS
) -> FeatureCache:
    """The proxy set for pretraining (classes disjoint from the embedded dataset's), generated on first use."""
    return _load("proxy", data_dir, spec, samples_per_class)
