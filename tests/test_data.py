"""The embedded dataset, the feature front end and the cache's all-or-nothing writes."""

from __future__ import annotations

import numpy as np
import pytest

from data import synthetic
from data.cache import CacheMismatchError, ensure_cache
from data.features import FeatureSpec, frame_transform, log_mel


def test_log_mel_shape_and_determinism():
    spec = FeatureSpec()
    wav = synthetic.make_waveform("membrane", np.random.default_rng(0), spec.audio_seconds)
    assert wav.dtype == np.float32 and wav.shape == (16000,) and np.abs(wav).max() <= 1.0
    a, b = log_mel(wav, spec), log_mel(wav.copy(), spec)
    assert a.shape == (spec.num_frames, spec.num_mel_bins) == (98, 40)
    np.testing.assert_array_equal(a, b)
    assert log_mel(wav[:8000], spec).shape == a.shape  # short clips are padded


def test_frame_transform_normalises_to_the_configured_size():
    frame = synthetic.make_frame(3, np.random.default_rng(0))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    out = frame_transform(32)(frame)
    assert tuple(out.shape) == (3, 32, 32) and abs(float(out.mean())) < 3


def test_classes_are_readable_every_class_has_its_own_sound_and_no_two_share_a_look():
    names = synthetic.class_names()
    assert len(names) == len(set(names)) == 20
    assert all(n == n.lower() and n.replace(" ", "").isalpha() for n in names)
    sources = [src for _, src, _ in synthetic.CLASSES]
    shared = {s for s in sources if sources.count(s) > 1}
    assert len(shared) >= 4 and sources.count("membrane") == 3  # classes that share a sound source ...
    sounds = [tuple(sorted(synthetic.class_sound(src, cue).items())) for _, src, cue in synthetic.CLASSES]
    assert len(set(sounds)) == len(sounds)  # ... still differ by a cue: no two classes sound the same
    looks = {(i % len(synthetic.SHAPES), i // len(synthetic.SHAPES)) for i in range(len(names))}
    assert len(looks) == len(names)


def test_proxy_classes_are_disjoint_from_the_task():
    task = synthetic.TABLES["embedded"]()
    proxy = synthetic.TABLES["proxy"]()
    assert len(proxy) == 20
    assert not {name for name, *_ in task} & {name for name, *_ in proxy}
    assert not {look for *_, look in task} & {look for *_, look in proxy}  # other colours
    assert not {tuple(sorted(s.items())) for _, _, s, _ in task} & {tuple(sorted(s.items())) for _, _, s, _ in proxy}


def test_classes_sharing_a_source_differ_by_a_cue_that_the_noise_weakens():
    """Congas vs drumming (one sound source): their clean clips differ on average by more than two
    draws of congas do; at the dataset's SNR the difference shrinks to a weak cue."""
    rng = np.random.default_rng(0)
    spec = FeatureSpec()
    congas, drums = (synthetic.class_sound(src, cue) for _, src, cue in synthetic.CLASSES[:2])

    def mean_spectrum(sound, noisy: bool, n: int = 24) -> np.ndarray:
        clip = synthetic.make_waveform if noisy else synthetic.render_sound
        return np.mean([log_mel(clip(sound, rng, 1.0), spec).mean(0) for _ in range(n)], axis=0)

    within = np.abs(mean_spectrum(congas, False) - mean_spectrum(congas, False)).mean()
    across = np.abs(mean_spectrum(congas, False) - mean_spectrum(drums, False)).mean()
    noisy_across = np.abs(mean_spectrum(congas, True) - mean_spectrum(drums, True)).mean()
    assert across > 1.5 * within
    assert noisy_across < 0.5 * across


def test_embedded_dataset_is_deterministic_stratified_and_memory_mapped(tmp_path):
    a = synthetic.load(tmp_path / "a", samples_per_class=5)
    b = synthetic.load(tmp_path / "b", samples_per_class=5)
    assert a.audio.shape == (100, 98, 40) and a.video.shape == (100, 3, 32, 32)
    assert isinstance(a.audio, np.memmap) and isinstance(a.video, np.memmap)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.labels, b.labels)
    test_labels = a.labels[a.indices("test")]
    assert np.bincount(test_labels, minlength=20).tolist() == [1] * 20
    train = a.audio[a.indices("train")]
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-2
    assert a.classes == synthetic.class_names()


def test_cache_with_other_settings_is_refused(tmp_path):
    def build(tmp):
        np.save(tmp / "labels.npy", np.zeros(3, dtype=np.int64))
        return {"classes": ["x"]}

    ensure_cache(tmp_path / "c", {"v": 1}, build)
    with pytest.raises(CacheMismatchError, match="made with settings"):
        ensure_cache(tmp_path / "c", {"v": 2}, build)


def test_failed_build_leaves_no_cache_and_leftovers_are_rebuilt(tmp_path):
    def broken(tmp):
        np.save(tmp / "labels.npy", np.zeros(3, dtype=np.int64))
        raise OSError("disk full")

    with pytest.raises(OSError):
        ensure_cache(tmp_path / "c", {"v": 1}, broken)
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.tmp")]

    (tmp_path / "c").mkdir()  # half-written leftover without meta.json
    (tmp_path / "c" / "labels.npy").write_bytes(b"garbage")
    cache = ensure_cache(
        tmp_path / "c", {"v": 1}, lambda tmp: (np.save(tmp / "labels.npy", np.arange(4)), {"classes": ["a"]})[1]
    )
    assert cache.labels.tolist() == [0, 1, 2, 3]
