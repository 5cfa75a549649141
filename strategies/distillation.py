"""Federated distillation (ModalityMirror's phase 2, paper Algorithm 2).

Only audiovisual clients take part. Each receives the frozen audiovisual teacher (audio
encoder, video encoder and fusion head as they were when the phase started) and the audio
student (audio encoder + audio head), trains the student with
``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` (plus an optional label
cross-entropy, weight ``distill-ce-weight``, 0 by default as in the paper) and returns the
student, which the server averages.
"""

from __future__ import annotations

from clients.tasks import DISTILL as DISTILL_TASK
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.groups import AUDIO_MODEL

from .base import AUDIOVISUAL, Instruction, Phase, PhasedStrategy

DISTILL = Instruction("distill", send=DISTILL_TASK.needs, train=AUDIO_MODEL)


class DistillationPhase(Phase):
    name = "distillation"

    def instruction(self, modality: str) -> Instruction | None:
        return DISTILL if modality == AUDIOVISUAL else None

    def start(self, strategy: PhasedStrategy) -> None:
        if strategy.teacher is None:  # freeze the audiovisual model reached so far
            strategy.snapshot_teacher()


class FederatedDistillation(PhasedStrategy):
    """Phase 2 alone, for ``distill-rounds`` rounds, from the model in ``init-checkpoint``."""

    client_tasks = {"distill": DISTILL_TASK}
    label = "Federated distillation"

    def build_phases(self, cfg: RunConfig):
        if not cfg.init_checkpoint:
            raise ConfigError(
                "run config 'init-checkpoint' = '' is invalid for strategy 'distill': give the path "
                "of a phase-1 model.pt (or use strategy 'modality-mirror' to run both phases)"
            )
        if cfg.distill_rounds < 1:
            raise ConfigError(f"run config 'distill-rounds' = {cfg.distill_rounds} is invalid: an integer >= 1")
        return [(DistillationPhase(), cfg.distill_rounds)]
