"""Modality-aware federated averaging (ModalityMirror's phase 1, the paper's "MultiFL" row).

Audio-only clients train the audio model (audio encoder + audio head); audiovisual clients
train the late-fusion model (audio encoder + video encoder + fusion head). Each group is
averaged, weighted by example counts, over exactly the clients that trained it, so the
audio encoder is shared by all clients while the video encoder and fusion head only ever
see audiovisual clients. Audio-only clients never receive video or fusion weights.
"""

from __future__ import annotations

from clients.tasks import TRAIN_AUDIO, TRAIN_AV
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL

from .base import AUDIO, Instruction, Phase, PhasedStrategy


class ModalityAwarePhase(Phase):
    name = "modality-aware-fl"

    def instruction(self, modality: str) -> Instruction | None:
        if modality == AUDIO:
            return Instruction("train-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)
        return Instruction("train-av", send=AV_MODEL, train=AV_MODEL)


class ModalityAwareFedAvg(PhasedStrategy):
    """Paper Algorithm 1 for the whole round budget, ``num-server-rounds + distill-rounds``."""

    client_tasks = {"train-audio": TRAIN_AUDIO, "train-av": TRAIN_AV}
    label = "MultiFL"
    compared = True

    def build_phases(self, cfg: RunConfig):
        return [(ModalityAwarePhase(), cfg.num_server_rounds + cfg.distill_rounds)]
