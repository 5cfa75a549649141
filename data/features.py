"""Feature front end shared by every dataset: log-mel fbank for audio, one transform for frames."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

# torchaudio and torchvision are imported where they are used: a deployed ClientApp starts a
# fresh process for every message, and importing them costs seconds it does not need.

SAMPLE_RATE = 16_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# log_mel's kaldi fbank settings (25 ms windows every 10 ms; no dither, so features are deterministic); an
# export's model.json states them (front_end) and predict refuses a model made with others
FBANK = {
    "frame_length": 25.0,
    "frame_shift": 10.0,
    "dither": 0.0,
    "window_type": "hanning",
    "htk_compat": True,
    "use_energy": False,
    "snip_edges": True,
}


@dataclass(frozen=True)
class FeatureSpec:
    """What the cache holds; a cache made with another spec is refused."""

    num_mel_bins: int = 40
    audio_seconds: float = 1.0
    image_size: int = 32

    @property
    def num_samples(self) -> int:
        """Samples of one clip at SAMPLE_RATE."""
        return int(round(self.audio_seconds * SAMPLE_RATE))

    @property
    def num_frames(self) -> int:
        """Frames of one clip's fbank (kaldi framing with FBANK's window and shift, snip_edges)."""
        window = int(SAMPLE_RATE * FBANK["frame_length"] / 1000)
        shift = int(SAMPLE_RATE * FBANK["frame_shift"] / 1000)
        return 1 + (self.num_samples - window) // shift

    def as_dict(self) -> dict:
        return asdict(self)


def log_mel(waveform: np.ndarray | torch.Tensor, spec: FeatureSpec) -> np.ndarray:
    """Kaldi-compatible log-mel filterbank of a mono 16 kHz waveform, padded/cut to spec length.

    Returns an array of shape (num_frames, num_mel_bins), float32. Dither is off so the
    features are deterministic.
    """
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(1, -1)
    samples = spec.num_samples
    if wav.shape[1] < samples:
        wav = torch.nn.functional.pad(wav, (0, samples - wav.shape[1]))
    wav = wav[:, :samples]
    fb = kaldi.fbank(wav, sample_frequency=SAMPLE_RATE, num_mel_bins=spec.num_mel_bins, **FBANK)
    return fb.numpy().astype(np.float32)


def front_end(spec: FeatureSpec, audio_norm: dict | None) -> dict:
    """The audio front end as data: what a deployed model needs to turn a waveform into its input
    (``log_mel`` with these settings, then ``normalise``)."""
    return {
        "sample_rate": SAMPLE_RATE,
        "num_mel_bins": spec.num_mel_bins,
        "audio_seconds": spec.audio_seconds,
        "num_frames": spec.num_frames,
        "fbank": {
            "frame_length_ms": FBANK["frame_length"],
            "frame_shift_ms": FBANK["frame_shift"],
            "window": FBANK["window_type"],
            "dither": FBANK["dither"],
            "htk_compat": FBANK["htk_compat"],
            "use_energy": FBANK["use_energy"],
            "snip_edges": FBANK["snip_edges"],
        },
        "normalisation": None
        if audio_norm is None
        else {"mean": float(audio_norm["mean"]), "std": float(audio_norm["std"])},
    }


def normalise(mel: np.ndarray, audio_norm: dict | None) -> np.ndarray:
    """``(mel - mean) / std`` with the training split's statistics where the dataset normalises its
    features (the embedded dataset), else the features as they are (real data: the backbone normalises)."""
    if audio_norm is None:
        return mel
    return (mel - audio_norm["mean"]) / audio_norm["std"]


def frame_transform(image_size: int):
    """uint8 HWC RGB frame -> normalised float CHW tensor of side ``image_size`` (a torchvision v2.Compose)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
