"""Phase 2's plug-ins: distillation objectives and teachers, one small function each, looked up by name.

The distillation task (:func:`mirror_app.core.training.distill`) asks the teacher named by run config
``distill-teacher`` for its logits on a batch and gives them, with the audio student's logits and the labels,
to the objective named by ``distill-objective``. No method knows which ones exist; a new one is a function
and a line in ``OBJECTIVES`` or ``TEACHERS``.

Objectives, ``(student logits, teacher logits, labels, settings) -> (loss, kept)``; ``kept`` is a boolean mask
of the samples the distillation term covered (every sample except for ``agreement``):

* ``kl``: ``T^2 x`` a divergence (``distill-divergence``: forward KL(p^M || p^A), Hinton's; reverse
  KL(p^A || p^M), the ModalityMirror paper's formula read literally; symmetric, their mean) between the
  softened teacher p^M and student p^A, plus ``distill-ce-weight`` x the label cross-entropy (0: the paper's
  KL alone).
* ``kd``: Hinton et al.'s knowledge distillation as every reference implementation mixes it:
  ``distill-alpha x T^2 x KL(p^M || p^A) + (1 - distill-alpha) x cross-entropy``.
* ``dkd``: decoupled KD (Zhao et al., CVPR 2022; mdistiller's form): the cross-entropy plus
  ``dkd-alpha x`` TCKD (the binary target / non-target split of the two distributions) ``+ dkd-beta x`` NCKD
  (the KL over the non-target classes, renormalised), each times T^2.
* ``ce``: the control, no teacher at all: the student's label cross-entropy alone, on the same clients, clips,
  rounds and optimiser as every objective, from the same student (the audio model phase 1 left). The teacher is
  neither sent nor read (``TEACHER_FREE``). What an objective adds to phase 2 beyond more training on labels is
  its difference from this.
* ``agreement`` (after C2KD, Huo et al., CVPR 2024): per sample, Kendall's tau between the teacher's and the
  student's rankings of the non-target classes; only samples with tau above ``agreement-tau`` are distilled,
  and only on the non-target classes (NCKD), always beside the cross-entropy:
  ``(1 - distill-alpha) x CE + distill-alpha x T^2 x mean over the batch of [tau > agreement-tau] x NCKD``.
  The student is the audio branch being trained (at the start of phase 2, the teacher's own audio branch).

Teachers, ``(frozen teacher model, batch) -> logits``:

* ``fused``: the audiovisual late-fusion model (the paper's);
* ``audio-branch``: the teacher's audio encoder and audio head, i.e. the audio model as phase 1 left it;
* ``best-per-sample``: per sample, whichever of the two gives the true class more probability (after
  MST-Distill's per-sample teacher selection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from .groups import AUDIO_ENCODER, AUDIO_HEAD, AV_MODEL
from .heads import calibrated_ce

# phase 2's divergence between the softened teacher (p^M) and student (p^A) in the ``kl`` objective
DIVERGENCES = ("forward", "reverse", "symmetric")


@dataclass(frozen=True)
class DistillSettings:
    """The run config's distillation knobs an objective reads."""

    temperature: float
    divergence: str = "forward"  # kl: distill-divergence
    ce_weight: float = 0.0  # kl: distill-ce-weight
    alpha: float = 0.5  # kd, agreement: distill-alpha, the distillation term's share beside the cross-entropy
    dkd_alpha: float = 1.0  # dkd: weight of the target-class term (TCKD)
    dkd_beta: float = 8.0  # dkd: weight of the non-target-class term (NCKD)
    tau: float = 0.0  # agreement: Kendall's tau a sample needs to be distilled
    calibration: Any = None  # the client's calibrated label loss (core.heads.Calibration), for the label terms


def label_ce(s: torch.Tensor, y: torch.Tensor, cfg: DistillSettings) -> torch.Tensor:
    """The label cross-entropy an objective mixes in, calibrated where the run calibrates the clients' label loss."""
    return calibrated_ce(s, y, cfg.calibration)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(exp(log_p) || exp(log_q)) per sample (summed over classes)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ce_weight: float = 0.0,
    divergence: str = "forward",
    calibration=None,
) -> torch.Tensor:
    """The ``kl`` objective's loss: T^2 x a divergence between the softened teacher p^M = softmax(teacher / T)
    and student p^A = softmax(student / T), mean over the batch, plus ``ce_weight`` x the student's
    cross-entropy. ``forward``: KL(p^M || p^A), mass-covering (the student spreads probability over every class
    the teacher gives mass to); ``reverse``: KL(p^A || p^M), mode-seeking (the student may commit to the classes
    it can tell apart from audio); ``symmetric``: their mean. The T^2 factor keeps the gradient scale
    independent of T. Every term is zero when student equals teacher."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence {divergence!r} is unknown; one of {list(DIVERGENCES)}")
    t = temperature
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    # F.kl_div(a, b, log_target=True) = KL(exp(b) || exp(a)), summed over classes, mean over the batch
    terms = []
    if divergence in ("forward", "symmetric"):
        terms.append(F.kl_div(log_s, log_t, reduction="batchmean", log_target=True))
    if divergence in ("reverse", "symmetric"):
        terms.append(F.kl_div(log_t, log_s, reduction="batchmean", log_target=True))
    loss = sum(terms) / len(terms) * (t * t)
    if ce_weight > 0:
        loss = loss + ce_weight * calibrated_ce(student_logits, labels, calibration)
    return cast(torch.Tensor, loss)


def _everyone(labels: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(labels, dtype=torch.bool)


def kl_objective(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: DistillSettings):
    loss = distillation_loss(s, t, y, cfg.temperature, cfg.ce_weight, cfg.divergence, cfg.calibration)
    return loss, _everyone(y)


def kd_objective(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: DistillSettings):
    kd = distillation_loss(s, t, y, cfg.temperature, 0.0, "forward")
    return cfg.alpha * kd + (1 - cfg.alpha) * label_ce(s, y, cfg), _everyone(y)


def non_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's logits without its label's column: (batch, classes - 1)."""
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], False)
    return logits[keep].view(len(logits), -1)


def nckd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL between the teacher's and the student's distributions over the non-target classes (each
    renormalised over them), per sample."""
    log_s = F.log_softmax(non_target(s, y) / temperature, dim=1)
    log_t = F.log_softmax(non_target(t, y) / temperature, dim=1)
    return _kl(log_t, log_s) * temperature**2


def tckd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL between the binary (target, non-target) splits of the teacher's and student's softened
    distributions, per sample."""

    def binary(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits / temperature, dim=1)
        target = log_p.gather(1, y[:, None])
        rest = torch.logsumexp(log_p.scatter(1, y[:, None], float("-inf")), dim=1, keepdim=True)
        return torch.cat([target, rest], dim=1)

    return _kl(binary(t), binary(s)) * temperature**2


def dkd_objective(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: DistillSettings):
    decoupled = cfg.dkd_alpha * tckd(s, t, y, cfg.temperature) + cfg.dkd_beta * nckd(s, t, y, cfg.temperature)
    return label_ce(s, y, cfg) + decoupled.mean(), _everyone(y)


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between the rows of ``a`` and ``b`` (batch, items): one coefficient per row, from the
    signs of every pair of items (the same coefficient as scipy's and torchmetrics' ``kendalltau``, which
    tests check; computed for a whole batch at once, as the training loop needs it per batch). A row whose
    items are all tied ranks nothing: 0."""
    sa = torch.sign(a[:, :, None] - a[:, None, :])
    sb = torch.sign(b[:, :, None] - b[:, None, :])
    pairs = torch.ones(a.shape[1], a.shape[1], dtype=torch.bool, device=a.device).triu(1)
    concordance = (sa * sb)[:, pairs].sum(dim=1)
    untied = sa[:, pairs].abs().sum(dim=1) * sb[:, pairs].abs().sum(dim=1)
    return torch.where(untied > 0, concordance / untied.clamp(min=1).sqrt(), torch.zeros_like(concordance))


def agreement_objective(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg: DistillSettings):
    with torch.no_grad():
        kept = kendall_tau(non_target(t, y), non_target(s.detach(), y)) > cfg.tau
    distilled = (nckd(s, t, y, cfg.temperature) * kept).mean()
    return (1 - cfg.alpha) * label_ce(s, y, cfg) + cfg.alpha * distilled, kept


def ce_objective(s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, cfg: DistillSettings):
    """The control: the label cross-entropy alone (``t`` is never read; the distillation term covers nothing)."""
    return label_ce(s, y, cfg), torch.zeros_like(y, dtype=torch.bool)


Objective = Callable[[torch.Tensor, Any, torch.Tensor, DistillSettings], tuple[torch.Tensor, torch.Tensor]]
OBJECTIVES: dict[str, Objective] = {
    "kl": kl_objective,
    "kd": kd_objective,
    "dkd": dkd_objective,
    "agreement": agreement_objective,
    "ce": ce_objective,
}
TEACHER_FREE = ("ce",)  # objectives that read no teacher: phase 2 sends none


@dataclass(frozen=True)
class Teacher:
    """A teacher: its logits on a batch, and the teacher's parameter groups it reads (what the server sends)."""

    logits: Callable[[Any, Any], torch.Tensor]  # (frozen teacher model, training.Batch) -> logits
    groups: tuple[str, ...]


def fused_logits(teacher, b) -> torch.Tensor:
    return teacher.av_logits(b.audio, b.video)


def audio_branch_logits(teacher, b) -> torch.Tensor:
    return teacher.audio_logits(b.audio)


def best_per_sample_logits(teacher, b) -> torch.Tensor:
    fused, audio = fused_logits(teacher, b), audio_branch_logits(teacher, b)
    rows = torch.arange(len(b.labels), device=fused.device)
    fused_wins = F.softmax(fused, dim=1)[rows, b.labels] >= F.softmax(audio, dim=1)[rows, b.labels]
    return torch.where(fused_wins[:, None], fused, audio)


TEACHERS: dict[str, Teacher] = {
    "fused": Teacher(fused_logits, AV_MODEL),
    "audio-branch": Teacher(audio_branch_logits, (AUDIO_ENCODER, AUDIO_HEAD)),
    "best-per-sample": Teacher(best_per_sample_logits, (*AV_MODEL, AUDIO_HEAD)),
}
