"""Plain PyTorch: local training loops, the distillation loss, evaluation. No Flower here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from .models import DualEncoder


@dataclass
class Batch:
    audio: torch.Tensor
    video: torch.Tensor | None
    labels: torch.Tensor


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
                mu: float = 0.0) -> float:
    params = [p for m in trainable for p in m.parameters()]
    anchor = [p.detach().clone() for p in params] if mu > 0 else []
    opt = make_optimizer(params, optimizer, lr)
    rng = np.random.default_rng(seed)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for b in batches(cache, indices, batch_size, with_video, device, rng):
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
        model, lambda b: F.cross_entropy(model.audio_logits(b.audio), b.labels),
        [model.audio_encoder, model.audio_head], cache, indices, with_video=False, **kw,
    )


def train_av(model: DualEncoder, cache, indices, **kw) -> float:
    """Audiovisual client: cross-entropy of the late-fusion model (both encoders + fusion head)."""
    return _run_epochs(
        model, lambda b: F.cross_entropy(model.av_logits(b.audio, b.video), b.labels),
        [model.audio_encoder, model.video_encoder, model.fusion_head], cache, indices, with_video=True, **kw,
    )


def train_unimodal(model: DualEncoder, cache, indices, **kw) -> float:
    """Harmony stage 1 on an audiovisual client: a unimodal audio model and a unimodal video model,
    each trained with its own cross-entropy (no fusion)."""
    return _run_epochs(
        model,
        lambda b: F.cross_entropy(model.audio_logits(b.audio), b.labels)
        + F.cross_entropy(model.video_logits(b.video), b.labels),
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


@torch.no_grad()
def predict(model: DualEncoder, cache, indices, batch_size: int, device, with_video: bool) -> torch.Tensor:
    model.eval()
    out = []
    for b in batches(cache, indices, batch_size, with_video, device):
        out.append((model.av_logits(b.audio, b.video) if with_video else model.audio_logits(b.audio)).cpu())
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top-1, top-5, macro-F1 and per-class F1 of logits against integer labels."""
    top5 = min(5, num_classes)
    return {
        "top1": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=1)),
        "top5": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=top5)),
        "macro_f1": float(multiclass_f1_score(logits, labels, num_classes, average="macro")),
        "per_class_f1": multiclass_f1_score(logits, labels, num_classes, average=None).tolist(),
    }


def evaluate(model: DualEncoder, cache, indices, batch_size: int = 256, device="cpu",
             parts: tuple[str, ...] = ("audio", "av")) -> dict:
    """The audio-only model (the product) and/or the audiovisual model on the given rows."""
    indices = np.sort(indices)
    labels = torch.from_numpy(cache.labels[indices])
    out: dict = {}
    for part in parts:
        m = classification_metrics(predict(model, cache, indices, batch_size, device, part == "av"), labels,
                                   cache.num_classes)
        out.update({f"{part}_top1": m["top1"], f"{part}_top5": m["top5"]})
        if part == "audio":
            out.update(audio_macro_f1=m["macro_f1"], audio_per_class_f1=m["per_class_f1"])
    return out
