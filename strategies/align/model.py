"""Modality alignment with federated broadcasting: the model, its parameter groups and its loss.

After Ma, Tang, Xu, Cheng, "Modality Alignment Meets Federated Broadcasting": the server
keeps a frozen text encoder and broadcasts one embedding per class name (the *anchors*,
:mod:`strategies.align.text`). Clients project their audio (and, where they have it, video)
embeddings into that text space and classify by scaled cosine similarity to the anchors,
trained contrastively. The encoders' base weights are frozen after initialisation; only
LoRA adapters (peft) on the encoders and the projections are trained and communicated.

Parameter groups of :class:`AlignModel` (selected by ``in_group``, since peft puts the
adapters inside the encoders):

* ``audio_base`` / ``video_base``: the frozen encoder weights. Never sent: every node builds
  them from the run's seed (plus ``audio-pretrained``/``video-pretrained``), and the server
  checks a fingerprint of them with every instruction (:func:`base_fingerprint`).
* ``audio_lora`` / ``video_lora``: the LoRA A/B matrices of every linear and convolution
  layer of the encoder.
* ``audio_proj`` / ``video_proj``: embedding -> text space, plus a learned logit scale.
* ``text_anchors``: the class anchors, sent by the server, never trained.

No Flower here, and nothing that loads the text encoder.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mirror_app.core.groups import get_groups
from mirror_app.core.heads import calibrated_ce
from mirror_app.core.models import DualEncoder
from mirror_app.core.training import run_epochs

AUDIO_BASE, AUDIO_LORA, AUDIO_PROJ = "audio_base", "audio_lora", "audio_proj"
VIDEO_BASE, VIDEO_LORA, VIDEO_PROJ = "video_base", "video_lora", "video_proj"
TEXT_ANCHORS = "text_anchors"
ALIGN_GROUPS = (AUDIO_BASE, AUDIO_LORA, AUDIO_PROJ, VIDEO_BASE, VIDEO_LORA, VIDEO_PROJ, TEXT_ANCHORS)
BASE_GROUPS = (AUDIO_BASE, VIDEO_BASE)
ALIGN_AUDIO_TRAIN = (AUDIO_LORA, AUDIO_PROJ)  # what an audio-only client trains and returns
ALIGN_AV_TRAIN = (AUDIO_LORA, AUDIO_PROJ, VIDEO_LORA, VIDEO_PROJ)
ALIGN_AUDIO_SEND = ALIGN_AUDIO_TRAIN + (TEXT_ANCHORS,)
ALIGN_AV_SEND = ALIGN_AV_TRAIN + (TEXT_ANCHORS,)
ADAPTER_MARK = "lora_"  # substring of every peft LoRA parameter name
MAX_LOGIT_SCALE = 100.0  # as in CLIP


class Projection(nn.Module):
    """Embedding -> unit vector in the text space, with a learned logit scale (CLIP's 1/0.07 start)."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, text_dim)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(z), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def lora_targets(encoder: nn.Module) -> list[str]:
    """Names of the layers that get an adapter: every linear and 1-D/2-D convolution."""
    return [name for name, m in encoder.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def add_lora(encoder: nn.Module, rank: int) -> nn.Module:
    """Inject peft LoRA adapters (alpha = 2 x rank) and freeze everything else in the encoder."""
    from peft import LoraConfig, inject_adapter_in_model  # imported here: peft pulls in transformers

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=lora_targets(encoder))
    encoder = inject_adapter_in_model(config, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_(ADAPTER_MARK in name)
    return encoder


class AlignModel(nn.Module):
    """Frozen encoders with LoRA adapters, projections into the text space, and the class anchors.

    Exposes ``audio_logits``/``video_logits``/``av_logits`` like :class:`DualEncoder`, so the
    same evaluation code serves it: logits are ``scale * cos(projection, anchor)``; the
    audiovisual prediction averages the two modalities' logits.
    """

    def __init__(
        self, audio_encoder: nn.Module, video_encoder: nn.Module, embed_dim: int, anchors: torch.Tensor, rank: int
    ):
        super().__init__()
        self.audio_encoder = add_lora(audio_encoder, rank)
        self.video_encoder = add_lora(video_encoder, rank)
        text_dim = anchors.shape[1]
        self.audio_proj = Projection(embed_dim, text_dim)
        self.video_proj = Projection(embed_dim, text_dim)
        self.register_buffer(TEXT_ANCHORS, F.normalize(anchors.float(), dim=-1))

    # ---- parameter groups
    @staticmethod
    def in_group(group: str, key: str) -> bool:
        modality, _, part = group.partition("_")
        if part in ("base", "lora"):
            return key.startswith(f"{modality}_encoder.") and ((ADAPTER_MARK in key) == (part == "lora"))
        if group == TEXT_ANCHORS:
            return key == TEXT_ANCHORS
        return key.startswith(group + ".")

    def train(self, mode: bool = True) -> AlignModel:
        """Training mode, except that batch-norm statistics of the frozen encoders never move."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    # ---- forward
    def audio_embed(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_proj(self.audio_encoder(audio))

    def video_embed(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_proj(self.video_encoder(video))

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_proj.scale() * self.audio_embed(audio) @ self.text_anchors.T

    def video_logits(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_proj.scale() * self.video_embed(video) @ self.text_anchors.T

    def av_logits(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.audio_logits(audio) + self.video_logits(video))


def build_align_model(
    dual: DualEncoder, anchors: np.ndarray | torch.Tensor, rank: int, seed: int | None = None
) -> AlignModel:
    """Wrap ``dual``'s encoders (their current weights become the frozen base).

    ``seed`` fixes the initial adapters and projections (the server's; a client's are
    overwritten by what the server sends).
    """
    anchors = torch.as_tensor(np.asarray(anchors), dtype=torch.float32)
    if anchors.dim() != 2:
        raise ValueError(f"class anchors must be (classes, text dim), got shape {tuple(anchors.shape)}")
    embed_dim = dual.audio_head.in_features
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed + 1)
        return AlignModel(dual.audio_encoder, dual.video_encoder, embed_dim, anchors, rank)


def base_fingerprint(base: dict[str, list[np.ndarray]]) -> str:
    """A short hash of the frozen base weights, to check that server and clients share them."""
    h = hashlib.sha256()
    for g in BASE_GROUPS:
        for a in base[g]:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: AlignModel) -> str:
    return base_fingerprint(get_groups(model, BASE_GROUPS))


def contrastive_pair_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of unit vectors whose rows are paired (CLIP's loss)."""
    logits = scale * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def align_loss(
    model: AlignModel,
    audio: torch.Tensor,
    video: torch.Tensor | None,
    labels: torch.Tensor,
    av_weight: float,
    calibration=None,
) -> torch.Tensor:
    """Contrastive alignment to the class anchors: cross-entropy over the scaled cosine
    similarity of each embedding to every anchor (the anchors of the other classes are the
    negatives), calibrated where the run calibrates the clients' label loss (core.heads). With video: the same for
    video, plus ``av_weight`` x the symmetric InfoNCE between the audio and video embeddings of the same clips."""
    za = model.audio_embed(audio)
    loss = calibrated_ce(model.audio_proj.scale() * za @ model.text_anchors.T, labels, calibration)
    if video is not None:
        zv = model.video_embed(video)
        loss = loss + calibrated_ce(model.video_proj.scale() * zv @ model.text_anchors.T, labels, calibration)
        if av_weight > 0 and len(labels) > 1:
            loss = loss + av_weight * contrastive_pair_loss(za, zv, model.audio_proj.scale())
    return loss


def train_align(model: AlignModel, cache, indices, *, with_video: bool, av_weight: float, **kw) -> float:
    """Local training of an alignment client: only the LoRA adapters and projections of the modalities
    the client has are trained; the encoders' base weights are frozen."""
    trainable = [model.audio_encoder, model.audio_proj]
    if with_video:
        trainable += [model.video_encoder, model.video_proj]
    return run_epochs(
        model,
        lambda b: align_loss(model, b.audio, b.video, b.labels, av_weight, b.calibration),
        trainable,
        cache,
        indices,
        with_video=with_video,
        **kw,
    )
