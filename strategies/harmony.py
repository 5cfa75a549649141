"""Harmony baseline (Ouyang et al., MobiSys 2023), as compared in the ModalityMirror paper.

Stage 1, modality-wise FL (``num-server-rounds`` rounds): every client trains a unimodal
model for each modality it has. Audio-only clients train the audio model (audio encoder +
audio head); audiovisual clients train an audio model and a video model (video encoder +
video head) on their own data. The server averages each unimodal model over the clients
that have that modality.

Stage 2, federated fusion (``distill-rounds`` rounds): audiovisual clients train the
late-fusion model (both encoders + fusion head) starting from the stage-1 encoders. The
fusion model keeps its own copy of the encoders (state slot ``av/``), so the audio model
evaluated is the stage-1 audio model, as in the paper's comparison.
"""

from __future__ import annotations

from clients.tasks import TRAIN_AUDIO, TRAIN_AV, TRAIN_UNIMODAL
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, VIDEO_MODEL

from .base import AUDIO, AUDIOVISUAL, AV_SLOT, Instruction, Phase, PhasedStrategy


class ModalityWisePhase(Phase):
    name = "modality-wise-fl"

    def instruction(self, modality: str) -> Instruction | None:
        if modality == AUDIO:
            return Instruction("train-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)
        return Instruction("train-unimodal", send=AUDIO_MODEL + VIDEO_MODEL, train=AUDIO_MODEL + VIDEO_MODEL)


class FusionPhase(Phase):
    name = "fusion-fl"

    def instruction(self, modality: str) -> Instruction | None:
        if modality != AUDIOVISUAL:
            return None
        return Instruction("train-av", send=AV_MODEL, train=AV_MODEL, slot=AV_SLOT)

    def start(self, strategy: PhasedStrategy) -> None:
        strategy.copy_slot(AV_MODEL, AV_SLOT)  # the fusion model starts from the stage-1 encoders


class Harmony(PhasedStrategy):
    client_tasks = {"train-audio": TRAIN_AUDIO, "train-unimodal": TRAIN_UNIMODAL, "train-av": TRAIN_AV}
    label = "Harmony"
    audio_model_text = "the stage-1 audio model (modality-wise FL)."
    compared = True
    family = "baseline"

    def build_phases(self, cfg: RunConfig):
        phases = [(ModalityWisePhase(), cfg.num_server_rounds)]
        if cfg.distill_rounds > 0:
            phases.append((FusionPhase(), cfg.distill_rounds))
        return phases
