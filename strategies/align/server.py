"""Modality alignment with federated broadcasting (after Ma, Tang, Xu, Cheng) as a strategy.

The server holds a frozen text encoder (all-MiniLM-L6-v2, :mod:`.text`) and
broadcasts one embedding per readable class name with every instruction. Clients classify
by scaled cosine similarity between their projected embeddings and these anchors, trained
contrastively (:func:`.model.align_loss`). The encoders' base weights are frozen
after initialisation and never travel: every node builds them from the run's seed (and the
same pretrained files), and each instruction carries a fingerprint of the server's copy that
the client checks. Only LoRA adapters and projections are trained, sent and averaged, each
group over exactly the clients that trained it: audio-only clients align audio only,
audiovisual clients align both modalities and, contrastively, audio with video.

One phase runs for the whole round budget, ``num-server-rounds + distill-rounds``.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.common import log

from mirror_app.core.config import RunConfig

from ..base import AUDIO, Instruction, Phase, PhasedStrategy
from .client import ALIGN_TASKS
from .model import (
    ALIGN_AUDIO_SEND,
    ALIGN_AUDIO_TRAIN,
    ALIGN_AV_SEND,
    ALIGN_AV_TRAIN,
    ALIGN_GROUPS,
    AUDIO_BASE,
    AUDIO_PROJ,
    TEXT_ANCHORS,
    base_fingerprint,
    build_align_model,
)


class AlignPhase(Phase):
    name = "align"

    def instruction(self, modality: str) -> Instruction | None:
        if modality == AUDIO:
            return Instruction("align-audio", send=ALIGN_AUDIO_SEND, train=ALIGN_AUDIO_TRAIN)
        return Instruction("align-av", send=ALIGN_AV_SEND, train=ALIGN_AV_TRAIN)


def class_anchors_of(kind: str, classes: list[str], seed: int) -> np.ndarray:
    """The fixed class anchors (classes x 384) by run config ``align-anchors``: ``text``, the sentence encoder's
    embeddings of the readable class names; ``random``, seeded unit vectors; ``etf``, a simplex ETF (pairwise
    cosine -1 / (K - 1)). The last two separate "a fixed classifier" from "what the text encoder knows"."""
    import torch

    from mirror_app.core.heads import simplex_etf

    from .text import TEXT_DIM

    if kind == "text":
        from .text import TEXT_ENCODER, class_anchors  # the text encoder lives on the server only

        anchors = class_anchors(classes)
        log(INFO, "text anchors: %d classes x %d dims from %s", *anchors.shape, TEXT_ENCODER)
        return anchors
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        raw = torch.randn(len(classes), TEXT_DIM, generator=generator)
        anchors = torch.nn.functional.normalize(raw, dim=1).numpy()
    else:
        anchors = simplex_etf(len(classes), TEXT_DIM, generator).T.numpy()
    log(INFO, "%s anchors: %d classes x %d dims (no text encoder)", kind, *anchors.shape)
    return np.ascontiguousarray(anchors, dtype=np.float32)


class ModalityAlign(PhasedStrategy):
    model_groups = ALIGN_GROUPS
    audio_groups = (AUDIO_BASE,) + ALIGN_AUDIO_SEND  # base encoder + adapters, projection, class anchors
    client_tasks = ALIGN_TASKS
    audio_classifier = AUDIO_PROJ  # the projection onto the fixed anchors
    label = "ModalityAlign (text anchors + LoRA)"
    compared = True

    audio_model_text = (
        "the LoRA-adapted audio encoder, its projection into the text space and the class anchors (scaled "
        "cosine similarity)."
    )

    @classmethod
    def model_from_state(cls, model, cfg: RunConfig, classes: list[str], state: dict):
        """The anchors are in the checkpoint: no text encoder needed."""
        return build_align_model(model, np.asarray(state[TEXT_ANCHORS][0]), cfg.lora_rank, seed=cfg.seed)

    @classmethod
    def server_model(cls, model, cfg: RunConfig, classes: list[str]):
        anchors = class_anchors_of(cfg.align_anchors, classes, cfg.seed)
        return build_align_model(model, anchors, cfg.lora_rank, seed=cfg.seed)

    @classmethod
    def outside_information(cls, cfg: RunConfig) -> str:
        """What the method knows beyond the clients' clips: with text anchors, the class names, through a frozen
        sentence encoder of about 22 M parameters."""
        if cfg.align_anchors == "text":
            from .text import TEXT_ENCODER

            return f"the class names, embedded by a frozen sentence encoder ({TEXT_ENCODER}, about 22 M parameters)"
        return ""

    def __init__(self, cfg: RunConfig, model, *args, **kwargs) -> None:
        super().__init__(cfg, model, *args, **kwargs)
        self.fingerprint = base_fingerprint(self.state)
        self.text_dim = int(self.state[TEXT_ANCHORS][0].shape[1])

    def build_phases(self, cfg: RunConfig):
        return [(AlignPhase(), cfg.num_server_rounds + cfg.distill_rounds)]

    def fit_config_extra(self) -> dict:
        return {"text-dim": self.text_dim, "base-fingerprint": self.fingerprint}

    def av_model_state(self) -> dict:
        return {g: self.state[g] for g in ALIGN_GROUPS}


class ModalityAlignRandom(ModalityAlign):
    """ModalityAlign with seeded random unit anchors in place of the text anchors (same frozen base, same LoRA):
    the control that separates a fixed classifier from what the text encoder knows."""

    label = "ModalityAlign, random anchors (control)"
    table_label = "Control: ModalityAlign with random anchors, no text encoder (this project's)"
    beyond_paper = True
    family = "project"
    compared = True
    settings = {"align-anchors": "random"}


class ModalityAlignETF(ModalityAlign):
    """ModalityAlign with a simplex ETF as anchors (maximally separated, no text): the second such control."""

    label = "ModalityAlign, simplex-ETF anchors (control)"
    table_label = "Control: ModalityAlign with simplex-ETF anchors, no text encoder (this project's)"
    beyond_paper = True
    family = "project"
    compared = True
    settings = {"align-anchors": "etf"}
