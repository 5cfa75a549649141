"""ModalityMirror: modality-aware FL, then federated distillation, in one run."""

from __future__ import annotations

from mirror_app.config import RunConfig

from .base import PhasedStrategy
from .distillation import DistillationPhase
from .modality_aware import ModalityAwarePhase


class ModalityMirror(PhasedStrategy):
    """Phase 1 for ``num-server-rounds`` rounds, then phase 2 for ``distill-rounds`` rounds."""

    def build_phases(self, cfg: RunConfig):
        phases = [(ModalityAwarePhase(), cfg.num_server_rounds)]
        if cfg.distill_rounds > 0:
            phases.append((DistillationPhase(), cfg.distill_rounds))
        return phases
