"""Encoders by name: ``BACKBONES[name](input_shape, embed_dim)``, and local pretrained weights for them.

``input_shape`` is one sample's shape without batch: (frames, mel_bins) for audio, (3, H, W) for video.
Weights never come from a hub: ``load_pretrained`` reads a local file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class SmallTDNN(nn.Module):
    """A CPU-sized 1-D CNN over time for log-mel input (mel bins as channels), as in TDNNs."""

    def __init__(self, mel_bins: int, embed_dim: int, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(mel_bins, width, 5, padding=2),
            nn.GroupNorm(4, width),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.transpose(1, 2))  # (B, frames, mels) -> (B, mels, frames)
        return torch.relu(self.proj(x.mean(dim=2)))


class SmallCNN(nn.Module):
    """A CPU-sized 2-D CNN; a spectrogram enters as one channel, a frame as three."""

    def __init__(self, in_channels: int, embed_dim: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers.append(_conv_block(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (B, frames, mels) -> (B, 1, frames, mels)
            x = x.unsqueeze(1)
        x = self.features(x)
        return torch.relu(self.proj(x.mean(dim=(2, 3))))


class TimmEncoder(nn.Module):
    """A timm backbone (no classifier) followed by a projection to ``embed_dim``."""

    def __init__(self, name: str, in_channels: int, embed_dim: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        features = self.backbone.num_features
        assert isinstance(features, int)
        self.proj = nn.Linear(features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return torch.relu(self.proj(self.backbone(x)))


class AudioTransformer(nn.Module):
    """AST/SSAST-style audio transformer: a timm VisionTransformer over the log-mel "image".

    Input (B, frames, mel_bins) of raw kaldi fbank is normalised as SSAST does,
    ``(x - mean) / (2 * std)`` with its AudioSet statistics, transposed to (B, 1, mels, frames)
    as in AST, cut into 16 x 16 patches by a single-channel patch embedding, and the class
    token's output is projected to ``embed_dim``.
    """

    MEAN, STD = -4.2677393, 4.5689974  # SSAST / AST AudioSet fbank statistics
    SIZES = {"ast": (768, 12, 12), "ast-small": (384, 12, 6), "ast-tiny": (192, 12, 3)}

    def __init__(self, shape: tuple[int, ...], embed_dim: int, size: str = "ast", patch: int = 16):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        frames, mels = shape
        if frames < patch or mels < patch:
            raise ValueError(f"audio transformer needs at least {patch} frames and {patch} mel bins, got {shape}")
        width, depth, heads = self.SIZES[size]
        self.backbone = VisionTransformer(
            img_size=(mels, frames),
            patch_size=patch,
            in_chans=1,
            num_classes=0,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            global_pool="token",
        )
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.MEAN) / (2 * self.STD)
        x = x.transpose(1, 2).unsqueeze(1)  # (B, frames, mels) -> (B, 1, mels, frames)
        return torch.relu(self.proj(self.backbone(x)))


def _channels(shape: tuple[int, ...]) -> int:
    """Image-like channels of an input: 1 for a (frames, mels) spectrogram, C for (C, H, W)."""
    return 1 if len(shape) == 2 else shape[0]


# name -> builder(input_shape, embed_dim); input_shape is one sample's shape without batch:
# (frames, mel_bins) for audio, (3, H, W) for video.
BACKBONES: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "tdnn-small": lambda shape, dim: SmallTDNN(shape[-1], dim),
    "cnn-small": lambda shape, dim: SmallCNN(_channels(shape), dim),
    "resnet18": lambda shape, dim: TimmEncoder("resnet18", _channels(shape), dim),
    "ast": lambda shape, dim: AudioTransformer(shape, dim, "ast"),
    "ast-small": lambda shape, dim: AudioTransformer(shape, dim, "ast-small"),
    "ast-tiny": lambda shape, dim: AudioTransformer(shape, dim, "ast-tiny"),
}
AUDIO_ONLY_BACKBONES = ("tdnn-small", "ast", "ast-small", "ast-tiny")  # need (frames, mels) input
# a positional embedding per patch: these take a fixed number of frames (an export has no dynamic time axis)
FIXED_TIME_BACKBONES = tuple(AudioTransformer.SIZES)


class PretrainedError(ValueError):
    """A pretrained-weights file is missing or does not fit the backbone."""


def load_pretrained(encoder: nn.Module, path: str, key: str) -> None:
    """Load a local checkpoint into an encoder; never downloads.

    A timm-based encoder (resnet18, ast*) loads it into ``encoder.backbone`` (the projection to
    the embedding stays as initialised); the small CPU encoders (tdnn-small, cnn-small) load
    the whole encoder, as ``python -m mirror_app.tools.pretrain`` writes it. Accepts a plain state
    dict or one wrapped as {"state_dict": ...} / {"model": ...}, as saved by timm, torchvision or
    SSAST training (a "module." prefix is stripped). Classifier
    weights (``fc.``, ``head.``) are ignored; anything else that is missing, unexpected or of
    another shape is an error naming the first few keys.
    """
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedError(f"run config '{key}' = {path!r} is invalid: no such file")
    backbone = getattr(encoder, "backbone", encoder)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise PretrainedError(
            f"run config '{key}' = {path!r} is invalid: not a PyTorch checkpoint ({type(exc).__name__})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedError(f"run config '{key}' = {path!r} is invalid: expected a state dict")
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.startswith(("fc.", "head.", "module.fc.", "module.head."))
    }
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {v[:3]}{' ...' if len(v) > 3 else ''}"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if v
        )
        raise PretrainedError(f"run config '{key}' = {path!r} does not fit the backbone ({detail})")
    backbone.load_state_dict(state)
