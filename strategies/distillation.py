"""Federated distillation (ModalityMirror's phase 2, paper Algorithm 2).

Audiovisual clients receive the frozen teacher (the model as phase 1 left it: audio encoder, video encoder and
fusion head, and its audio head) and the audio student (audio encoder + audio head), train the student against
the teacher and return it; the server averages the students. What the student learns from is run config:
``distill-objective`` (``kl``, the paper's: ``T^2 x`` a divergence alone, ``distill-divergence`` forward KL by
default; ``kd``, ``dkd``, ``agreement``) and ``distill-teacher`` (``fused``, the paper's; ``audio-branch``;
``best-per-sample``), all in mirror_app/core/distillation.py. Each client is sent the teacher groups its teacher
reads. Audio-only clients sit the phase out, as in the paper, unless ``distill-audio-only-clients`` is on: then
they keep training the audio model on their labels and the student is averaged over both kinds.
"""

from __future__ import annotations

from clients.tasks import DISTILL as DISTILL_TASK
from clients.tasks import DISTILL_KEPT, TRAIN_AUDIO
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.distillation import TEACHER_FREE, TEACHERS
from mirror_app.core.groups import AUDIO_HEAD, AUDIO_MODEL, AV_MODEL, TEACHER_PREFIX

from .base import AUDIOVISUAL, Instruction, Phase, PhasedStrategy

TEACHER_GROUPS = (*AV_MODEL, AUDIO_HEAD)  # what the server freezes when phase 2 starts
TRAIN_AUDIO_INS = Instruction("train-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)


def distill_instruction(teacher: str, objective: str = "kl") -> Instruction:
    """The phase-2 instruction for audiovisual clients: the student and the teacher groups ``teacher`` reads (none
    for an objective that reads no teacher: the control)."""
    read = () if objective in TEACHER_FREE else TEACHERS[teacher].groups
    return Instruction("distill", send=(*AUDIO_MODEL, *(TEACHER_PREFIX + g for g in read)), train=AUDIO_MODEL)


DISTILL = distill_instruction("fused")


class DistillationPhase(Phase):
    name = "distillation"
    reply_means = {DISTILL_KEPT: "distill_kept_share"}  # metrics.csv: the share of samples distilled

    def __init__(self, teacher: str = "fused", audio_only_clients: bool = False, objective: str = "kl") -> None:
        self.teacher = teacher
        self.distill = distill_instruction(teacher, objective)
        self.audio = TRAIN_AUDIO_INS if audio_only_clients else None

    @classmethod
    def of(cls, cfg: RunConfig) -> DistillationPhase:
        return cls(cfg.distill_teacher, cfg.distill_audio_only_clients, cfg.distill_objective)

    def instruction(self, modality: str) -> Instruction | None:
        return self.distill if modality == AUDIOVISUAL else self.audio

    def start(self, strategy: PhasedStrategy) -> None:
        if strategy.teacher is None:  # freeze the model reached so far
            strategy.snapshot_teacher(TEACHER_GROUPS)
        lacking = [g for g in TEACHERS[self.teacher].groups if g not in strategy.teacher]
        if lacking:
            raise ConfigError(
                f"run config 'distill-teacher' = {self.teacher!r} is invalid here: the teacher given (init-checkpoint) "
                f"lacks its {lacking}; use 'fused' or a checkpoint saved with them"
            )


class FederatedDistillation(PhasedStrategy):
    """Phase 2 alone, for ``distill-rounds`` rounds, from the model in ``init-checkpoint``."""

    client_tasks = {"distill": DISTILL_TASK, "train-audio": TRAIN_AUDIO}
    label = "Federated distillation"

    def build_phases(self, cfg: RunConfig):
        if not cfg.init_checkpoint:
            raise ConfigError(
                "run config 'init-checkpoint' = '' is invalid for strategy 'distill': give the path "
                "of a phase-1 model.pt (or use strategy 'modality-mirror' to run both phases)"
            )
        if cfg.distill_rounds < 1:
            raise ConfigError(f"run config 'distill-rounds' = {cfg.distill_rounds} is invalid: an integer >= 1")
        return [(DistillationPhase.of(cfg), cfg.distill_rounds)]
