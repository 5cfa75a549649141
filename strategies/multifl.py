"""Modality-aware federated averaging (ModalityMirror's phase 1, the paper's "MultiFL" row).

Audio-only clients train the audio model (audio encoder + audio head); audiovisual clients
train the late-fusion model (audio encoder + video encoder + fusion head). Each group is
averaged, weighted by example counts, over exactly the clients that trained it, so the
audio encoder is shared by all clients while the video encoder and fusion head only ever
see audiovisual clients. Audio-only clients never receive video or fusion weights.

The paper does not say in words which heads audiovisual clients train, but its Table 1 does: its MultiFL
audio top-1 rises with the missing rate (more audio-only clients, more training of the audio head) and stays
below Harmony at every rate. This project measures the rise, and MultiFL below Harmony at 0.1 and 0.3 and level
with it at 0.5, when only audio-only clients train the audio head (the default, ``av-trains-audio-head = false``);
when audiovisual clients train it too, MultiFL is flat and above Harmony at every rate. With
``av-trains-audio-head`` audiovisual clients add the audio head's label loss on their audio branch (weight
``av-audio-head-weight``), so the audio head is averaged over every client that trained it in the round: a
stronger baseline than the paper compared against, registered as ``multifl-av-head`` (a Table 1 row of this
project's, not the paper's).
"""

from __future__ import annotations

from clients.tasks import AV_AUDIO_HEAD, TRAIN_AUDIO, TRAIN_AV, TRAIN_AV_AUDIO_HEAD
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL

from .base import AUDIO, Instruction, Phase, PhasedStrategy

TRAIN_AUDIO_INS = Instruction("train-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)
TRAIN_AV_INS = Instruction("train-av", send=AV_MODEL, train=AV_MODEL)
TRAIN_AV_AUDIO_HEAD_INS = Instruction("train-av-audio-head", send=AV_AUDIO_HEAD, train=AV_AUDIO_HEAD)
# the client tasks of this phase, for the strategies that run it
PHASE_TASKS = {"train-audio": TRAIN_AUDIO, "train-av": TRAIN_AV, "train-av-audio-head": TRAIN_AV_AUDIO_HEAD}


class ModalityAwarePhase(Phase):
    name = "modality-aware-fl"

    def __init__(self, av_trains_audio_head: bool = False) -> None:
        self.av = TRAIN_AV_AUDIO_HEAD_INS if av_trains_audio_head else TRAIN_AV_INS

    @classmethod
    def of(cls, cfg: RunConfig) -> ModalityAwarePhase:
        return cls(cfg.av_trains_audio_head)

    def instruction(self, modality: str) -> Instruction | None:
        return TRAIN_AUDIO_INS if modality == AUDIO else self.av


class ModalityAwareFedAvg(PhasedStrategy):
    """Paper Algorithm 1 for the whole round budget, ``num-server-rounds + distill-rounds``."""

    family = "baseline"
    client_tasks = PHASE_TASKS
    label = "MultiFL"
    table_label = "MultiFL (same total budget)"
    compared = True

    def build_phases(self, cfg: RunConfig):
        return [(ModalityAwarePhase.of(cfg), cfg.num_server_rounds + cfg.distill_rounds)]


class MultiFLAudioHead(ModalityAwareFedAvg):
    """MultiFL with audiovisual clients also training the audio head: a stronger baseline than the paper's."""

    label = "MultiFL, AV clients train the audio head"
    table_label = "MultiFL, audiovisual clients also train the audio head (stronger than the paper's baseline)"
    beyond_paper = True
    family = "project"
    settings = {"av-trains-audio-head": True}


class MultiFLAudioHeadProx(MultiFLAudioHead):
    """MultiFL with audiovisual clients training the audio head, plus FedCMI's proximal term (mu 0.01): the control
    that separates FedCMI's idea (cross-modal infiltration) from two parts of its recipe, every client training the
    audio classifier and a proximal term."""

    label = "MultiFL, AV clients train the audio head, FedCMI's proximal term"
    table_label = "Control: MultiFL, every client trains the audio head, with FedCMI's proximal term (this project's)"
    settings = {"av-trains-audio-head": True, "mu": 0.01}
