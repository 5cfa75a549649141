"""FedCMI's losses and local loops (plain PyTorch, no Flower): the per-class confidence that decides the
weak modality, class-wise temperatures, class-wise distillation, and the audiovisual and audio-only
clients' training."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mirror_app.core.training import Batch, batches, label_ce, run_epochs

from .model import FedCMIModel


@torch.no_grad()
def true_class_confidence(
    model: FedCMIModel, cache, indices, batch_size: int = 256, device="cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: mean softmax probability of the true class for the audio and the video branch.

    Returns (p_audio[C], p_video[C], count[C]) over ``indices``; classes without rows get 0.
    This is how FedCMI's client measures which modality dominates, instead of assuming it.
    """
    model.eval()
    c = cache.num_classes
    sums = np.zeros((2, c))
    count = np.zeros(c)
    for b in batches(cache, np.sort(indices), batch_size, True, device):
        for k, logits in enumerate((model.audio_logits(b.audio), model.video_logits(b.video))):
            p = torch.softmax(logits, dim=1).gather(1, b.labels[:, None]).squeeze(1).cpu().numpy()
            np.add.at(sums[k], b.labels.cpu().numpy(), p)
        np.add.at(count, b.labels.cpu().numpy(), 1)
    means = sums / np.maximum(count, 1)
    return means[0], means[1], count


def class_temperatures(
    p_weak: np.ndarray,
    p_dominant: np.ndarray,
    temperature: float,
    low: float = 0.5,
    high: float = 2.0,
    eps: float = 1e-3,
) -> np.ndarray:
    """FedCMI's class-wise temperature adaptation, as implemented here:

        T_c = T * clip((p_weak(c) + eps) / (p_dominant(c) + eps), low, high)

    where p_m(c) is the global model's mean confidence on the true class c for modality m,
    measured on the client's training data. FedCMI (Fan et al., "Balanced Multi-modal
    Federated Learning via Cross-Modal Infiltration", 2024) adapts the distillation
    temperature per class so that infiltration is not biased towards classes that are
    already easy; its exact expression is not reproduced here, this is our reading of that
    principle: where the weak modality lags far behind the dominant one (ratio << 1) the
    temperature drops and the dominant modality's sharper targets pull harder; where the
    weak modality is already as confident (ratio >= 1, an easy class) the temperature rises,
    the targets soften and the class gets less of the distillation signal. ``low``/``high``
    bound the factor to [T/2, 2T].
    """
    ratio = (np.asarray(p_weak, float) + eps) / (np.asarray(p_dominant, float) + eps)
    return temperature * np.clip(ratio, low, high)


def classwise_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures: torch.Tensor
) -> torch.Tensor:
    """Mean over samples of T_i^2 * KL(teacher_T_i || student_T_i), T_i the temperature of sample i's class."""
    t = temperatures[:, None]
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="none",
        log_target=True,
    ).sum(dim=1)
    return (kl * temperatures**2).mean()


def fedcmi_av(
    model: FedCMIModel, global_model: FedCMIModel, cache, indices, *, weak: str, temperatures: np.ndarray, **kw
) -> float:
    """FedCMI on an audiovisual client.

    Loss = CE(audio prediction) + CE(video prediction) + infiltration + fusion probe, where a
    modality's prediction is head(self(z) + inf(z)); infiltration distils the weak modality's
    infiltration branch alone, head_w(inf_w(z_w)), towards the frozen global model's
    dominant-modality prediction with class-wise temperatures; the fusion head is trained on
    detached embeddings only (a probe that gives the run an audiovisual score without
    changing what FedCMI learns). The proximal term (``mu``) is added by the epoch loop.
    """
    global_model.eval()
    for p in global_model.parameters():
        p.requires_grad_(False)
    temps = torch.as_tensor(temperatures, dtype=torch.float32, device=kw["device"])

    def loss_fn(b: Batch) -> torch.Tensor:
        za, zv = model.audio_encoder(b.audio), model.video_encoder(b.video)
        loss = label_ce(model.audio_head(model.audio_features(za)), b) + label_ce(
            model.video_head(model.video_features(zv)), b
        )
        with torch.no_grad():
            target = global_model.video_logits(b.video) if weak == "audio" else global_model.audio_logits(b.audio)
        branch = model.audio_head(model.audio_inf(za)) if weak == "audio" else model.video_head(model.video_inf(zv))
        loss = loss + classwise_distillation_loss(branch, target, temps[b.labels])
        return loss + label_ce(model.fusion_head(torch.cat([za.detach(), zv.detach()], dim=1)), b)

    trainable = [
        model.audio_encoder,
        model.audio_self,
        model.audio_inf,
        model.audio_head,
        model.video_encoder,
        model.video_self,
        model.video_inf,
        model.video_head,
        model.fusion_head,
    ]
    return run_epochs(model, loss_fn, trainable, cache, indices, with_video=True, **kw)


def fedcmi_audio(model: FedCMIModel, cache, indices, **kw) -> float:
    """FedCMI on an audio-only client: the audio encoder, self branch and shared classifier learn
    from labels; the infiltration branch is used as received and not trained."""

    def loss_fn(b: Batch) -> torch.Tensor:
        za = model.audio_encoder(b.audio)
        return label_ce(model.audio_head(model.audio_self(za) + model.audio_inf(za).detach()), b)

    return run_epochs(
        model,
        loss_fn,
        [model.audio_encoder, model.audio_self, model.audio_head],
        cache,
        indices,
        with_video=False,
        **kw,
    )
