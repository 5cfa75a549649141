"""Encoders by name: ``BACKBONES[name](input_shape, embed_dim)``.

``input_shape`` is one sample's shape without batch: (frames, mel_bins) for audio, (3, H, W) for video.
Pretrained weights for them (files, published layouts, library names) are :mod:`.pretrained`'s.
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
    """AST/SSAST-style audio transformer: a DeiT (timm's ``VisionTransformerDistilled``) over the log-mel "image".

    Input (B, frames, mel_bins) of raw kaldi fbank is normalised as SSAST does, ``(x - mean) / (2 * std)``
    with its AudioSet statistics, transposed to (B, 1, mels, frames) as in AST, and cut into non-overlapping
    patches by a single-channel patch embedding: 16 x 16 (AST, SSAST's patch models) or 128 x 2 (SSAST's
    frame models, which need 128 mel bins). Like every released AST and SSAST model it has two prefix
    tokens, a class and a distillation token; the clip's representation is the mean of their outputs (what
    SSAST fine-tuning uses for two-token models), projected to ``embed_dim``. Its state dict has the names
    of timm's DeiT, which SSAST checkpoints hold under ``module.v.`` (``mirror_app.core.pretrained`` maps
    the published layouts onto it).
    """

    MEAN, STD = -4.2677393, 4.5689974  # SSAST / AST AudioSet fbank statistics
    SIZES = {"ast": (768, 12, 12), "ast-small": (384, 12, 6), "ast-tiny": (192, 12, 3)}  # width, depth, heads
    PATCHES = {"patch": (16, 16), "frame": (128, 2)}  # (frequency, time) extent of one patch
    TOKENS = 2

    def __init__(self, shape: tuple[int, ...], embed_dim: int, size: str = "ast", patch: str = "patch"):
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled

        frames, mels = shape
        fshape, tshape = self.PATCHES[patch]
        if mels < fshape or frames < tshape:
            raise ValueError(
                f"audio transformer with {fshape} x {tshape} patches needs at least {fshape} mel bins and "
                f"{tshape} frames, got {shape} (frames, mel bins)"
            )
        self.size, self.patch = size, (fshape, tshape)
        self.grid = (mels // fshape, frames // tshape)  # (frequency, time) patches
        width, depth, heads = self.SIZES[size]
        self.backbone = VisionTransformerDistilled(
            img_size=(self.grid[0] * fshape, self.grid[1] * tshape),
            patch_size=(fshape, tshape),
            in_chans=1,
            num_classes=0,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
        )
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.MEAN) / (2 * self.STD)
        x = x.transpose(1, 2).unsqueeze(1)  # (B, frames, mels) -> (B, 1, mels, frames)
        f, t = self.grid[0] * self.patch[0], self.grid[1] * self.patch[1]
        return torch.relu(self.proj(self.backbone(x[:, :, :f, :t])))  # a remainder shorter than a patch is left out


def _channels(shape: tuple[int, ...]) -> int:
    """Image-like channels of an input: 1 for a (frames, mels) spectrogram, C for (C, H, W)."""
    return 1 if len(shape) == 2 else shape[0]


def _ast(size: str, patch: str) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda shape, dim: AudioTransformer(shape, dim, size, patch)


# name -> builder(input_shape, embed_dim); input_shape is one sample's shape without batch:
# (frames, mel_bins) for audio, (3, H, W) for video. The audio transformers: ast (ViT-Base width), ast-small,
# ast-tiny with 16 x 16 patches, and each with SSAST's 128 x 2 frame patches (suffix -frame).
BACKBONES: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "tdnn-small": lambda shape, dim: SmallTDNN(shape[-1], dim),
    "cnn-small": lambda shape, dim: SmallCNN(_channels(shape), dim),
    "resnet18": lambda shape, dim: TimmEncoder("resnet18", _channels(shape), dim),
    **{
        size + ("" if patch == "patch" else f"-{patch}"): _ast(size, patch)
        for size in AudioTransformer.SIZES
        for patch in AudioTransformer.PATCHES
    },
}
AST_BACKBONES = tuple(name for name in BACKBONES if name.startswith("ast"))
AUDIO_ONLY_BACKBONES = ("tdnn-small", *AST_BACKBONES)  # need (frames, mels) input
# a positional embedding per patch: these take a fixed number of frames (an export has no dynamic time axis)
FIXED_TIME_BACKBONES = AST_BACKBONES
