"""Plain PyTorch: mini-batches, the local training loop, the shared clients' losses (audio, audiovisual,
unimodal) and phase 2's distillation loop (its objectives and teachers are in :mod:`.distillation`). No Flower
here. A method's own losses live in its folder (strategies/<method>/)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from .distillation import OBJECTIVES, TEACHER_FREE, TEACHERS, DistillSettings
from .heads import Calibration, calibrated_ce
from .models import DualEncoder


@dataclass
class Batch:
    audio: torch.Tensor
    video: torch.Tensor | None
    labels: torch.Tensor
    # the client's calibrated label loss (run config loss-calibration, restricted-softmax; core.heads), None: plain
    calibration: Calibration | None = None
    has_video: torch.Tensor | None = None  # which clips have a frame (sample-missing-video); None: all of them

    def subset(self, keep: torch.Tensor) -> Batch:
        """The clips of ``keep`` (a boolean mask)."""
        video = None if self.video is None else self.video[keep]
        return Batch(self.audio[keep], video, self.labels[keep], self.calibration, None)


def label_ce(logits: torch.Tensor, b: Batch) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the batch's labels, on the client's calibrated logits where the run
    calibrates them (``b.calibration``: FedLC, FedRS, the balanced softmax, or the restricted softmax over the
    classes the client holds; :mod:`.heads`). Every shared client loss, and every method's, goes through here."""
    return calibrated_ce(logits, b.labels, b.calibration)


def batches(
    cache,
    indices: np.ndarray,
    batch_size: int,
    with_video: bool,
    device: torch.device,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """Mini-batches read straight from the memory-mapped cache (shuffled when ``rng`` is given). A cache that
    knows clips without video (data.cache.VideoMaskedCache) marks them in ``Batch.has_video``."""
    order = rng.permutation(indices) if rng is not None else indices
    masked = with_video and hasattr(cache, "has_video")
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start : start + batch_size])  # sorted reads are memmap-friendly
        audio = torch.from_numpy(np.ascontiguousarray(cache.audio[rows])).to(device)
        video = torch.from_numpy(cache.frames(rows)).to(device) if with_video else None
        labels = torch.from_numpy(cache.labels[rows]).to(device)
        has_video = torch.from_numpy(cache.has_video(rows)).to(device) if masked else None
        yield Batch(audio, video, labels, has_video=has_video)


def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def proximal_term(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2) * ||w - w_global||^2 over the trained parameters."""
    return cast(torch.Tensor, 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor)))


def run_epochs(
    model: nn.Module,
    loss_fn,
    trainable: list[nn.Module],
    cache,
    indices,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    with_video: bool,
    device,
    seed: int,
    mu: float = 0.0,
    calibration: Calibration | None = None,
) -> float:
    params = [p for m in trainable for p in m.parameters() if p.requires_grad]  # frozen base weights stay out
    anchor = [p.detach().clone() for p in params] if mu > 0 else []
    opt = make_optimizer(params, optimizer, lr)
    rng = np.random.default_rng(seed)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for b in batches(cache, indices, batch_size, with_video, device, rng):
            b.calibration = calibration
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
    return run_epochs(
        model,
        lambda b: label_ce(model.audio_logits(b.audio), b),
        [model.audio_encoder, model.audio_head],
        cache,
        indices,
        with_video=False,
        **kw,
    )


def train_av(model: DualEncoder, cache, indices, audio_head_weight: float = 0.0, **kw) -> float:
    """Audiovisual client: cross-entropy of the late-fusion model (both encoders + fusion head).

    With ``audio_head_weight`` > 0 (run config ``av-trains-audio-head``), the audio head's cross-entropy on
    the same clip's audio embedding is added with that weight, and the audio head is trained too.
    """
    trainable = [model.audio_encoder, model.video_encoder, model.fusion_head]
    if audio_head_weight <= 0:
        return run_epochs(
            model,
            lambda b: label_ce(model.av_logits(b.audio, b.video), b),
            trainable,
            cache,
            indices,
            with_video=True,
            **kw,
        )

    def loss_fn(b: Batch) -> torch.Tensor:
        assert b.video is not None
        za = model.audio_encoder(b.audio)
        audio = audio_head_weight * label_ce(model.audio_head(model.audio_features(za)), b)
        v = b.has_video
        if v is None:
            return label_ce(model.fuse(za, model.video_encoder(b.video)), b) + audio
        # clips without a frame train the audio branch only; the fusion loss is over the clips with one
        fused = label_ce(model.fuse(za[v], model.video_encoder(b.video[v])), b.subset(v)) if v.any() else 0.0 * audio
        return fused + audio

    return run_epochs(model, loss_fn, [*trainable, model.audio_head], cache, indices, with_video=True, **kw)


def _unimodal_loss(model: DualEncoder, b: Batch) -> torch.Tensor:
    audio = label_ce(model.audio_logits(b.audio), b)
    v = b.has_video
    assert b.video is not None
    if v is None:
        return audio + label_ce(model.video_logits(b.video), b)
    return audio + (label_ce(model.video_logits(b.video[v]), b.subset(v)) if v.any() else 0.0 * audio)


def train_unimodal(model: DualEncoder, cache, indices, **kw) -> float:
    """Harmony stage 1 on an audiovisual client: a unimodal audio model and a unimodal video model,
    each trained with its own cross-entropy (no fusion); the video loss over the clips that have a frame."""
    return run_epochs(
        model,
        lambda b: _unimodal_loss(model, b),
        [model.audio_encoder, model.audio_head, model.video_encoder, model.video_head],
        cache,
        indices,
        with_video=True,
        **kw,
    )


def distill(
    student: DualEncoder,
    teacher: DualEncoder,
    cache,
    indices,
    *,
    settings: DistillSettings,
    objective: str = "kl",
    teacher_kind: str = "fused",
    stats: dict | None = None,
    **kw,
) -> float:
    """Phase 2 on an audiovisual client: the audio student learns from the frozen teacher's logits
    (``TEACHERS[teacher_kind]``) under ``OBJECTIVES[objective]`` (:mod:`.distillation`). ``stats``, when
    given, receives ``kept`` and ``seen``: how many training samples the distillation term covered."""
    if objective not in OBJECTIVES:
        raise ValueError(f"distillation objective {objective!r} is unknown; one of {list(OBJECTIVES)}")
    if teacher_kind not in TEACHERS:
        raise ValueError(f"distillation teacher {teacher_kind!r} is unknown; one of {list(TEACHERS)}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if kw.get("calibration") is not None:  # the objectives' label terms are calibrated like every label loss
        import dataclasses

        settings = dataclasses.replace(settings, calibration=kw["calibration"])
    loss_of = OBJECTIVES[objective]
    teacher_of = None if objective in TEACHER_FREE else TEACHERS[teacher_kind].logits
    counts = stats if stats is not None else {}
    counts.update(kept=0, seen=0)

    def loss_fn(b: Batch) -> torch.Tensor:
        assert b.video is not None  # distillation reads video (with_video=True below)
        with torch.no_grad():
            target = teacher_of(teacher, b) if teacher_of is not None else None
        loss, kept = loss_of(student.audio_logits(b.audio), target, b.labels, settings)
        counts["kept"] += int(kept.sum())
        counts["seen"] += len(b.labels)
        return loss

    return run_epochs(
        student, loss_fn, [student.audio_encoder, student.audio_head], cache, indices, with_video=True, **kw
    )


def resolve_device(name: str) -> torch.device:
    """Run config ``device`` (cpu | cuda | auto) -> a torch device, with a clear error where CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run config 'device' = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)
