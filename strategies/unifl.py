"""UniFL baseline: each modality group learns on its own.

Audio-only clients train an audio model (audio encoder + audio head) among themselves;
audiovisual clients train the audiovisual model among themselves, with an audio encoder of
their own (state slot ``av/``). Nothing is shared between the two kinds. The audio model
evaluated is the audio-only clients' model. It runs for the whole round budget,
``num-server-rounds + distill-rounds``.
"""

from __future__ import annotations

from clients.tasks import TRAIN_AUDIO, TRAIN_AV
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL

from .base import AUDIO, AV_SLOT, Instruction, Phase, PhasedStrategy


class UnimodalGroupsPhase(Phase):
    name = "unimodal-groups-fl"

    def instruction(self, modality: str) -> Instruction | None:
        if modality == AUDIO:
            return Instruction("train-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)
        return Instruction("train-av", send=AV_MODEL, train=AV_MODEL, slot=AV_SLOT)


class UniFL(PhasedStrategy):
    client_tasks = {"train-audio": TRAIN_AUDIO, "train-av": TRAIN_AV}
    label = "UniFL"
    audio_model_text = "the audio-only clients' audio model (audio encoder + audio head)."
    compared = True
    family = "baseline"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.copy_slot(AV_MODEL, AV_SLOT)

    def build_phases(self, cfg: RunConfig):
        return [(UnimodalGroupsPhase(), cfg.num_server_rounds + cfg.distill_rounds)]
