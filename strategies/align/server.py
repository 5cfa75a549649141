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


class ModalityAlign(PhasedStrategy):
    model_groups = ALIGN_GROUPS
    audio_groups = (AUDIO_BASE,) + ALIGN_AUDIO_SEND  # base encoder + adapters, projection, class anchors
    client_tasks = ALIGN_TASKS
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
        from .text import TEXT_ENCODER, class_anchors  # the text encoder lives on the server only

        anchors = class_anchors(classes)
        log(INFO, "text anchors: %d classes x %d dims from %s", *anchors.shape, TEXT_ENCODER)
        return build_align_model(model, anchors, cfg.lora_rank, seed=cfg.seed)

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
