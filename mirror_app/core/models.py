"""The dual-encoder late-fusion model every method starts from.

Its five submodules are its parameter groups (:mod:`mirror_app.core.groups`): ``audio_encoder``,
``video_encoder``, ``fusion_head`` (the audiovisual model), ``audio_head`` (the audio-only model, the
product) and ``video_head`` (a unimodal video model, Harmony's stage 1). Encoders come from
:mod:`mirror_app.core.backbones` by name. A method that needs more parts builds its own model from this
one (``PhasedStrategy.server_model``, e.g. FedCMI's projectors, modality alignment's adapters).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .backbones import AUDIO_ONLY_BACKBONES, BACKBONES
from .heads import make_head
from .pretrained import load_pretrained


class DualEncoder(nn.Module):
    """``heads``: the classifier of the audio head and of the fusion head by name (``core.heads``: linear,
    fixed-random, etf; run config ``classifier``, ``classifier-heads``); linear where not named."""

    def __init__(
        self,
        audio_encoder: nn.Module,
        video_encoder: nn.Module,
        embed_dim: int,
        num_classes: int,
        heads: Mapping[str, str] | None = None,
    ):
        super().__init__()
        heads = dict(heads or {})
        self.audio_encoder = audio_encoder
        self.video_encoder = video_encoder
        self.fusion_head = make_head(heads.get("fusion", "linear"), 2 * embed_dim, num_classes)
        self.audio_head = make_head(heads.get("audio", "linear"), embed_dim, num_classes)
        self.video_head = nn.Linear(embed_dim, num_classes)

    def audio_features(self, z: torch.Tensor) -> torch.Tensor:
        """What the audio head sees of an audio embedding (the embedding itself; a method may override)."""
        return z

    def video_features(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_features(self.audio_encoder(audio)))

    def video_logits(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_head(self.video_features(self.video_encoder(video)))

    def fuse(self, za: torch.Tensor, zv: torch.Tensor) -> torch.Tensor:
        """The late-fusion head on an audio and a video embedding."""
        return self.fusion_head(torch.cat([za, zv], dim=1))

    def av_logits(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.audio_encoder(audio), self.video_encoder(video))


def build_model(
    num_classes: int,
    audio_shape: tuple[int, ...],
    video_shape: tuple[int, ...],
    audio_backbone: str = "tdnn-small",
    video_backbone: str = "cnn-small",
    embed_dim: int = 64,
    seed: int | None = None,
    heads: Mapping[str, str] | None = None,
) -> DualEncoder:
    """Make the dual encoder by backbone names; ``seed`` fixes the initial weights; ``heads``: the audio and
    fusion heads' classifier kinds (RunConfig.head_kinds; linear where not named).

    ``audio_shape``/``video_shape`` are one sample's feature shapes, e.g. (98, 40) and (3, 32, 32).
    """
    if len(audio_shape) != 2:
        raise ValueError(f"audio_shape must be (frames, mel_bins), got {audio_shape}")
    for key, name in (("audio-backbone", audio_backbone), ("video-backbone", video_backbone)):
        if name not in BACKBONES:
            raise ValueError(f"{key} {name!r} is unknown; available: {sorted(BACKBONES)}")
    if video_backbone in AUDIO_ONLY_BACKBONES:
        raise ValueError(
            f"video-backbone {video_backbone!r} takes spectrograms only; "
            f"one of {sorted(set(BACKBONES) - set(AUDIO_ONLY_BACKBONES))}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    return DualEncoder(
        BACKBONES[audio_backbone](tuple(audio_shape), embed_dim),
        BACKBONES[video_backbone](tuple(video_shape), embed_dim),
        embed_dim,
        num_classes,
        heads,
    )


def initial_model(
    num_classes: int,
    audio_shape: tuple[int, ...],
    video_shape: tuple[int, ...],
    audio_backbone: str,
    video_backbone: str,
    embed_dim: int,
    seed: int,
    audio_pretrained: str = "",
    video_pretrained: str = "",
    heads: Mapping[str, str] | None = None,
) -> DualEncoder:
    """The run's initial model: seeded weights plus the pretrained files, if any (paths, as
    ``RunConfig.pretrained_files`` resolves the run config's sources).

    The server starts from it, and every node rebuilds the same weights from it where they
    must never travel (the frozen base of modality alignment).
    """
    model = build_model(
        num_classes, audio_shape, video_shape, audio_backbone, video_backbone, embed_dim, seed=seed, heads=heads
    )
    if audio_pretrained:
        load_pretrained(model.audio_encoder, audio_pretrained, "audio-pretrained")
    if video_pretrained:
        load_pretrained(model.video_encoder, video_pretrained, "video-pretrained")
    return model
