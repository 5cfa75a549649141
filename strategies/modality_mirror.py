"""ModalityMirror: modality-aware FL, then federated distillation, in one run."""

from __future__ import annotations

from clients.tasks import DISTILL, TRAIN_AUDIO, TRAIN_AV
from mirror_app.core.config import RunConfig

from .base import PhasedStrategy
from .distillation import DistillationPhase
from .multifl import ModalityAwarePhase


class ModalityMirror(PhasedStrategy):
    """Phase 1 for ``num-server-rounds`` rounds, then phase 2 for ``distill-rounds`` rounds."""

    client_tasks = {"train-audio": TRAIN_AUDIO, "train-av": TRAIN_AV, "distill": DISTILL}
    label = "ModalityMirror"
    audio_model_text = "the audio student distilled from the frozen audiovisual teacher in phase 2."
    compared = True

    def build_phases(self, cfg: RunConfig):
        phases = [(ModalityAwarePhase(), cfg.num_server_rounds)]
        if cfg.distill_rounds > 0:
            phases.append((DistillationPhase(), cfg.distill_rounds))
        return phases
