"""Plain PyTorch: local training loops, the distillation loss, evaluation. No Flower here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import DualEncoder


@dataclass
class Batch:
    audio: torch.Tensor
    video: torch.Tensor | None
    labels: torch.Tensor
    present: torch.Tensor | None = None  # classes the client holds (restricted softmax), None: all classes


def label_ce(logits: torch.Tensor, b: Batch) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the batch's labels.

    With ``b.present`` set (run config ``restricted-softmax``), the softmax runs over the classes
    the client holds only: absent classes' logits are left out, so a client with 3 of 20 classes
    does not push the other 17 down. Under strong label skew (Dirichlet alpha 0.1) and partial
    participation this keeps the averaged heads from drifting towards the few classes of the
    clients drawn in a round (restricted softmax, as in FedRS, Li and Zhan 2021, with alpha 0).
    """
    if b.present is not None:
        logits = logits.masked_fill(~b.present, float("-inf"))
    return F.cross_entropy(logits, b.labels)


def batches(
    cache,
    indices: np.ndarray,
    batch_size: int,
    with_video: bool,
    device: torch.device,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """Mini-batches read straight from the memory-mapped cache (shuffled when ``rng`` is given)."""
    order = rng.permutation(indices) if rng is not None else indices
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start : start + batch_size])  # sorted reads are memmap-friendly
        audio = torch.from_numpy(np.ascontiguousarray(cache.audio[rows])).to(device)
        video = torch.from_numpy(cache.frames(rows)).to(device) if with_video else None
        labels = torch.from_numpy(cache.labels[rows]).to(device)
        yield Batch(audio, video, labels)


def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2) * ||w - w_global||^2 over the trained parameters."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


def _run_epochs(model: nn.Module, loss_fn, trainable: list[nn.Module], cache, indices, *, epochs: int,
                batch_size: int, lr: float, optimizer: str, with_video: bool, device, seed: int,
                mu: float = 0.0, present: torch.Tensor | None = None) -> float:
    params = [p for m in trainable for p in m.parameters() if p.requires_grad]  # frozen base weights stay out
    anchor = [p.detach().clone() for p in params] if mu > 0 else []
    opt = make_optimizer(params, optimizer, lr)
    rng = np.random.default_rng(seed)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for b in batches(cache, indices, batch_size, with_video, device, rng):
            b.present = present
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(b)
            if mu > 0:
                loss = loss + proximal_term(params, anchor, mu)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b.labels)
            count += len(b.labels)
    return total / max(count, 1)


def train_audio(model: DualEncoder, cache, indices, **kw) -> float:
    """Audio-only client: cross-entropy of the audio model (audio encoder + audio head)."""
    return _run_epochs(
        model, lambda b: label_ce(model.audio_logits(b.audio), b),
        [model.audio_encoder, model.audio_head], cache, indices, with_video=False, **kw,
    )


def train_av(model: DualEncoder, cache, indices, **kw) -> float:
    """Audiovisual client: cross-entropy of the late-fusion model (both encoders + fusion head)."""
    return _run_epochs(
        model, lambda b: label_ce(model.av_logits(b.audio, b.video), b),
        [model.audio_encoder, model.video_encoder, model.fusion_head], cache, indices, with_video=True, **kw,
    )


def train_unimodal(model: DualEncoder, cache, indices, **kw) -> float:
    """Harmony stage 1 on an audiovisual client: a unimodal audio model and a unimodal video model,
    each trained with its own cross-entropy (no fusion)."""
    return _run_epochs(
        model,
        lambda b: label_ce(model.audio_logits(b.audio), b) + label_ce(model.video_logits(b.video), b),
        [model.audio_encoder, model.audio_head, model.video_encoder, model.video_head],
        cache, indices, with_video=True, **kw,
    )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2 (Hinton et al.), plus ``ce_weight`` x cross-entropy.

    Both distributions are softened by the temperature T; the T^2 factor keeps the
    gradient scale independent of T.
    """
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if ce_weight > 0:
        kl = kl + ce_weight * F.cross_entropy(student_logits, labels)
    return kl


def distill(student: DualEncoder, teacher: DualEncoder, cache, indices, *, temperature: float,
            ce_weight: float = 0.0, **kw) -> float:
    """Phase 2 on an audiovisual client: the audio student learns the frozen AV teacher's outputs."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(b: Batch) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.av_logits(b.audio, b.video)
        return distillation_loss(student.audio_logits(b.audio), target, b.labels, temperature, ce_weight)

    return _run_epochs(student, loss_fn, [student.audio_encoder, student.audio_head], cache, indices,
                       with_video=True, **kw)


# ------------------------------------------------------------------------------ FedCMI
@torch.no_grad()
def true_class_confidence(model: DualEncoder, cache, indices, batch_size: int = 256, device="cpu"
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


def class_temperatures(p_weak: np.ndarray, p_dominant: np.ndarray, temperature: float,
                       low: float = 0.5, high: float = 2.0, eps: float = 1e-3) -> np.ndarray:
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


def classwise_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                temperatures: torch.Tensor) -> torch.Tensor:
    """Mean over samples of T_i^2 * KL(teacher_T_i || student_T_i), T_i the temperature of sample i's class."""
    t = temperatures[:, None]
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="none", log_target=True).sum(dim=1)
    return (kl * temperatures**2).mean()


def fedcmi_av(model: DualEncoder, global_model: DualEncoder, cache, indices, *, weak: str,
              temperatures: np.ndarray, **kw) -> float:
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
        loss = label_ce(model.audio_head(model.audio_features(za)), b) + \
            label_ce(model.video_head(model.video_features(zv)), b)
        with torch.no_grad():
            target = global_model.video_logits(b.video) if weak == "audio" else global_model.audio_logits(b.audio)
        branch = model.audio_head(model.audio_inf(za)) if weak == "audio" else model.video_head(model.video_inf(zv))
        loss = loss + classwise_distillation_loss(branch, target, temps[b.labels])
        return loss + label_ce(model.fusion_head(torch.cat([za.detach(), zv.detach()], dim=1)), b)

    trainable = [model.audio_encoder, model.audio_self, model.audio_inf, model.audio_head, model.video_encoder,
                 model.video_self, model.video_inf, model.video_head, model.fusion_head]
    return _run_epochs(model, loss_fn, trainable, cache, indices, with_video=True, **kw)


def fedcmi_audio(model: DualEncoder, cache, indices, **kw) -> float:
    """FedCMI on an audio-only client: the audio encoder, self branch and shared classifier learn
    from labels; the infiltration branch is used as received and not trained."""
    def loss_fn(b: Batch) -> torch.Tensor:
        za = model.audio_encoder(b.audio)
        return label_ce(model.audio_head(model.audio_self(za) + model.audio_inf(za).detach()), b)

    return _run_epochs(model, loss_fn, [model.audio_encoder, model.audio_self, model.audio_head], cache, indices,
                       with_video=False, **kw)


@torch.no_grad()
def predict(model: DualEncoder, cache, indices, batch_size: int, device, with_video: bool) -> torch.Tensor:
    model.eval()
    out = []
    for b in batches(cache, indices, batch_size, with_video, device):
        out.append((model.av_logits(b.audio, b.video) if with_video else model.audio_logits(b.audio)).cpu())
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top-1, top-5, macro-F1 and per-class F1 of logits against integer labels, and the share of the
    predictions taken by the most frequent predicted class (``majority_share``, of class ``majority_class``):
    near 1, the model predicts one class for everything (collapsed)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    top5 = min(5, num_classes)
    counts = torch.bincount(logits.argmax(dim=1), minlength=num_classes) if len(logits) else torch.zeros(1)
    return {
        "top1": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=1)),
        "top5": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=top5)),
        "macro_f1": float(multiclass_f1_score(logits, labels, num_classes, average="macro")),
        "per_class_f1": multiclass_f1_score(logits, labels, num_classes, average=None).tolist(),
        "majority_share": float(counts.max()) / max(len(logits), 1),
        "majority_class": int(counts.argmax()),
    }


def evaluate(model: DualEncoder, cache, indices, batch_size: int = 256, device="cpu",
             parts: tuple[str, ...] = ("audio", "av")) -> dict:
    """The audio-only model (the product) and/or the audiovisual model on the given rows: for each part
    ``<part>_top1``, ``<part>_top5``, ``<part>_majority_share`` and ``<part>_majority_class``; for the
    audio model also the macro-F1 and the per-class F1."""
    indices = np.sort(indices)
    labels = torch.from_numpy(cache.labels[indices])
    out: dict = {}
    for part in parts:
        m = classification_metrics(predict(model, cache, indices, batch_size, device, part == "av"), labels,
                                   cache.num_classes)
        out.update({f"{part}_top1": m["top1"], f"{part}_top5": m["top5"],
                    f"{part}_majority_share": m["majority_share"], f"{part}_majority_class": m["majority_class"]})
        if part == "audio":
            out.update(audio_macro_f1=m["macro_f1"], audio_per_class_f1=m["per_class_f1"])
    return out


def train_align(model, cache, indices, *, with_video: bool, av_weight: float, **kw) -> float:
    """Modality alignment (mirror_app.align): only the LoRA adapters and projections of the
    modalities the client has are trained; the encoders' base weights are frozen."""
    from .align import align_loss

    trainable = [model.audio_encoder, model.audio_proj]
    if with_video:
        trainable += [model.video_encoder, model.video_proj]
    return _run_epochs(model, lambda b: align_loss(model, b.audio, b.video, b.labels, av_weight), trainable, cache,
                       indices, with_video=with_video, **kw)
