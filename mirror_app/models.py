"""Dual-encoder late-fusion model and its parameter groups.

The model has four submodules, and each one is a *parameter group*: the unit that clients
train, send and that strategies average. A group is the set of ``state_dict`` entries whose
key starts with ``"<group>."``; nothing else in the project hard-codes parameter indices.

* ``audio_encoder``: log-mel (frames x mels) -> embedding
* ``video_encoder``: frame (3 x H x W) -> embedding
* ``fusion_head``: concatenated embeddings -> class logits (the audiovisual model)
* ``audio_head``: audio embedding -> class logits (the audio-only model, the product)
* ``video_head``: video embedding -> class logits (unimodal video model, used by Harmony)
* ``audio_self``, ``audio_inf``, ``video_self``, ``video_inf``: FedCMI's Self-Projector and
  Infiltration Projector per modality (embedding -> embedding). A modality's prediction is
  ``head(self(z) + inf(z))``. They start as identity and zero, so for every other method
  (which never sends or trains them) ``head(self(z) + inf(z)) == head(z)`` exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from torch import nn

AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD, AUDIO_HEAD, VIDEO_HEAD = (
    "audio_encoder",
    "video_encoder",
    "fusion_head",
    "audio_head",
    "video_head",
)
AUDIO_SELF, AUDIO_INF, VIDEO_SELF, VIDEO_INF = "audio_self", "audio_inf", "video_self", "video_inf"
GROUPS = (AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD, AUDIO_HEAD, VIDEO_HEAD, AUDIO_SELF, AUDIO_INF, VIDEO_SELF,
          VIDEO_INF)
TEACHER_PREFIX = "teacher/"  # marks the frozen teacher's copy of a group on the wire
AUDIO_MODEL = (AUDIO_ENCODER, AUDIO_HEAD)  # what audio-only clients have
AV_MODEL = (AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD)  # the audiovisual model
VIDEO_MODEL = (VIDEO_ENCODER, VIDEO_HEAD)  # a unimodal video model (Harmony's stage 1)


# --------------------------------------------------------------------------- backbones
def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class SmallTDNN(nn.Module):
    """A CPU-sized 1-D CNN over time for log-mel input (mel bins as channels), as in TDNNs."""

    def __init__(self, mel_bins: int, embed_dim: int, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(mel_bins, width, 5, padding=2), nn.GroupNorm(4, width), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(inplace=True),
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
        self.proj = nn.Linear(self.backbone.num_features, embed_dim)

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
        self.backbone = VisionTransformer(img_size=(mels, frames), patch_size=patch, in_chans=1, num_classes=0,
                                          embed_dim=width, depth=depth, num_heads=heads, global_pool="token")
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


class PretrainedError(ValueError):
    """A pretrained-weights file is missing or does not fit the backbone."""


def load_pretrained(encoder: nn.Module, path: str, key: str) -> None:
    """Load a local checkpoint into an encoder; never downloads.

    A timm-based encoder (resnet18, ast*) loads it into ``encoder.backbone`` (the projection to
    the embedding stays as initialised); the small CPU encoders (tdnn-small, cnn-small) load
    the whole encoder, as ``python -m mirror_app.pretrain`` writes it. Accepts a plain state dict or one wrapped as {"state_dict": ...} / {"model": ...}, as
    saved by timm, torchvision or SSAST training (a "module." prefix is stripped). Classifier
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
        raise PretrainedError(f"run config '{key}' = {path!r} is invalid: not a PyTorch checkpoint "
                              f"({type(exc).__name__})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedError(f"run config '{key}' = {path!r} is invalid: expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "head.", "module.fc.",
                                                                                          "module.head."))}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {v[:3]}{' ...' if len(v) > 3 else ''}"
                           for name, v in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if v)
        raise PretrainedError(f"run config '{key}' = {path!r} does not fit the backbone ({detail})")
    backbone.load_state_dict(state)


# ------------------------------------------------------------------------------- model
def _projector(dim: int, identity: bool) -> nn.Linear:
    """A dim x dim linear map initialised to identity or zero, without drawing random numbers."""
    with torch.random.fork_rng(devices=[]):
        layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim) if identity else torch.zeros(dim, dim))
        layer.bias.zero_()
    return layer


class DualEncoder(nn.Module):
    def __init__(self, audio_encoder: nn.Module, video_encoder: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.video_encoder = video_encoder
        self.fusion_head = nn.Linear(2 * embed_dim, num_classes)
        self.audio_head = nn.Linear(embed_dim, num_classes)
        self.video_head = nn.Linear(embed_dim, num_classes)
        # FedCMI's projectors (see the module docstring); created last so that they do not
        # change the random initialisation of the groups above
        self.audio_self, self.audio_inf = _projector(embed_dim, True), _projector(embed_dim, False)
        self.video_self, self.video_inf = _projector(embed_dim, True), _projector(embed_dim, False)

    def audio_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.audio_self(z) + self.audio_inf(z)

    def video_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.video_self(z) + self.video_inf(z)

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_features(self.audio_encoder(audio)))

    def video_logits(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_head(self.video_features(self.video_encoder(video)))

    def av_logits(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.audio_encoder(audio), self.video_encoder(video)], dim=1)
        return self.fusion_head(z)


def build_model(
    num_classes: int,
    audio_shape: tuple[int, ...],
    video_shape: tuple[int, ...],
    audio_backbone: str = "tdnn-small",
    video_backbone: str = "cnn-small",
    embed_dim: int = 64,
    seed: int | None = None,
) -> DualEncoder:
    """Make the dual encoder by backbone names; ``seed`` fixes the initial weights.

    ``audio_shape``/``video_shape`` are one sample's feature shapes, e.g. (98, 40) and (3, 32, 32).
    """
    if len(audio_shape) != 2:
        raise ValueError(f"audio_shape must be (frames, mel_bins), got {audio_shape}")
    for key, name in (("audio-backbone", audio_backbone), ("video-backbone", video_backbone)):
        if name not in BACKBONES:
            raise ValueError(f"{key} {name!r} is unknown; available: {sorted(BACKBONES)}")
    if video_backbone in AUDIO_ONLY_BACKBONES:
        raise ValueError(f"video-backbone {video_backbone!r} takes spectrograms only; "
                         f"one of {sorted(set(BACKBONES) - set(AUDIO_ONLY_BACKBONES))}")
    if seed is not None:
        torch.manual_seed(seed)
    return DualEncoder(
        BACKBONES[audio_backbone](tuple(audio_shape), embed_dim),
        BACKBONES[video_backbone](tuple(video_shape), embed_dim),
        embed_dim,
        num_classes,
    )


def initial_model(num_classes: int, audio_shape: tuple[int, ...], video_shape: tuple[int, ...],
                  audio_backbone: str, video_backbone: str, embed_dim: int, seed: int,
                  audio_pretrained: str = "", video_pretrained: str = "") -> DualEncoder:
    """The run's initial model: seeded weights plus the local pretrained files, if any.

    The server starts from it, and every node rebuilds the same weights from it where they
    must never travel (the frozen base of modality alignment).
    """
    model = build_model(num_classes, audio_shape, video_shape, audio_backbone, video_backbone, embed_dim, seed=seed)
    if audio_pretrained:
        load_pretrained(model.audio_encoder, audio_pretrained, "audio-pretrained")
    if video_pretrained:
        load_pretrained(model.video_encoder, video_pretrained, "video-pretrained")
    return model


# ---------------------------------------------------------------------- parameter groups
Arrays = list[np.ndarray]


def group_keys(model: nn.Module, group: str) -> list[str]:
    """State-dict keys of ``group``: those starting with ``"<group>."``, or, for a model that
    defines ``in_group(group, key)`` (adapters living inside an encoder), those it selects."""
    selector = getattr(model, "in_group", None)
    if selector is not None:
        keys = [k for k in model.state_dict() if selector(group, k)]
    else:
        keys = [k for k in model.state_dict() if k.startswith(group + ".")]
    if not keys:
        raise KeyError(f"model has no parameter group {group!r}")
    return keys


def get_groups(model: nn.Module, groups: tuple[str, ...] | list[str]) -> "OrderedDict[str, Arrays]":
    """The named groups as numpy arrays, in state_dict order (copies, safe to keep)."""
    state = model.state_dict()
    return OrderedDict(
        (g, [state[k].detach().cpu().numpy().copy() for k in group_keys(model, g)]) for g in groups
    )


def set_groups(model: nn.Module, values: dict[str, Arrays]) -> None:
    """Load the given groups into ``model``; shapes must match exactly."""
    state = model.state_dict()
    update = {}
    for g, arrays in values.items():
        keys = group_keys(model, g)
        if len(keys) != len(arrays):
            raise ValueError(f"group {g!r} has {len(keys)} tensors, got {len(arrays)}")
        for k, a in zip(keys, arrays):
            if tuple(state[k].shape) != tuple(a.shape):
                raise ValueError(f"{k}: expected shape {tuple(state[k].shape)}, got {tuple(a.shape)}")
            update[k] = torch.as_tensor(a, dtype=state[k].dtype)
    model.load_state_dict(update, strict=False)


def group_sizes(model: nn.Module, groups: tuple[str, ...] | list[str]) -> list[int]:
    """Number of arrays in each group (to split a flat list of arrays back into groups)."""
    return [len(group_keys(model, g)) for g in groups]


def flatten(values: dict[str, Arrays], groups: tuple[str, ...] | list[str]) -> Arrays:
    return [a for g in groups for a in values[g]]


def unflatten(arrays: Arrays, groups: list[str], sizes: list[int]) -> "OrderedDict[str, Arrays]":
    if len(arrays) != sum(sizes):
        raise ValueError(f"expected {sum(sizes)} arrays for groups {groups}, got {len(arrays)}")
    out, pos = OrderedDict(), 0
    for g, n in zip(groups, sizes):
        out[g] = list(arrays[pos : pos + n])
        pos += n
    return out


def nbytes(arrays: Arrays) -> int:
    return int(sum(a.nbytes for a in arrays))
