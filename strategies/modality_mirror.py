"""ModalityMirror: modality-aware FL, then federated distillation, in one run.

Its product is the distilled student, so its headline (``summary.json`` ``best_dev``) is chosen among the
rounds of phase 2 (``product_phases``); the best dev over all rounds stays beside it
(``best_dev_all_rounds``), and phase 1 is reported as the paper reads it, MultiFL within the same run
(``phase1_label``).
"""

from __future__ import annotations

from clients.tasks import DISTILL
from mirror_app.core.config import RunConfig

from .base import PhasedStrategy
from .distillation import DistillationPhase
from .multifl import PHASE_TASKS, ModalityAwarePhase


class ModalityMirror(PhasedStrategy):
    """Phase 1 for ``num-server-rounds`` rounds, then phase 2 for ``distill-rounds`` rounds."""

    client_tasks = {**PHASE_TASKS, "distill": DISTILL}
    label = "ModalityMirror"
    product_phases = (DistillationPhase.name,)
    phase1_label = "MultiFL (ModalityMirror's phase 1, same run)"
    audio_model_text = "the audio student distilled from the frozen audiovisual teacher in phase 2."
    compared = True
    family = "paper"

    def build_phases(self, cfg: RunConfig):
        phases = [(ModalityAwarePhase.of(cfg), cfg.num_server_rounds)]
        if cfg.distill_rounds > 0:
            phases.append((DistillationPhase.of(cfg), cfg.distill_rounds))
        return phases


class ModalityMirrorAgreement(ModalityMirror):
    """ModalityMirror whose phase 2 distils only where the teacher's and the student's rankings agree, beside the
    label cross-entropy (``distill-objective = 'agreement'``, after C2KD): this project's, not the paper's. On the
    embedded data neither it nor any other objective beats the phase-2 control (docs/results/distill.md)."""

    label = "ModalityMirror, agreement distillation"
    table_label = "ModalityMirror, agreement distillation (this project's)"
    beyond_paper = True
    family = "project"
    settings = {"distill-objective": "agreement"}
    phase1_label = ""  # its phase 1 is ModalityMirror's (the objective acts in phase 2 only): already a row


class ModalityMirrorControl(ModalityMirror):
    """The phase-2 control: ModalityMirror's phase 2 exactly (the same audiovisual clients, rounds, optimiser and
    student, the audio model phase 1 left) trained on labels alone, with no teacher (``distill-objective = 'ce'``).
    Every gain credited to a teacher is the objective's difference from this row, paired by seed and rate."""

    label = "Phase-2 control: labels alone, no teacher"
    table_label = "Control: ModalityMirror's phase 2 on labels alone, no teacher (this project's)"
    beyond_paper = True
    family = "project"
    settings = {"distill-objective": "ce"}
    phase1_label = ""
    audio_model_text = "the audio model trained on the audiovisual clients' labels alone in phase 2 (the control)."
