"""The client tasks the paper's methods share: ``train-audio``, ``train-av``, ``train-av-audio-head``,
``train-unimodal`` and ``distill``. A strategy lists the ones it uses in its ``client_tasks``; a method with
tasks of its own keeps them in its folder (strategies/fedcmi/client.py, strategies/align/client.py)."""

from __future__ import annotations

from mirror_app.core.distillation import TEACHER_FREE, TEACHERS
from mirror_app.core.groups import (
    AUDIO_HEAD,
    AUDIO_MODEL,
    AV_MODEL,
    FUSION_HEAD,
    TEACHER_PREFIX,
    VIDEO_ENCODER,
    VIDEO_HEAD,
    VIDEO_MODEL,
)
from mirror_app.core.training import distill, train_audio, train_av, train_unimodal

from .base import MASK, GroupClient, Task, TaskError, Workspace


def run_train_audio(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Cross-entropy on audio: updates audio encoder + audio head."""
    client.load(ws.model, received)
    loss = train_audio(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AUDIO_MODEL), loss


def run_train_av(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Cross-entropy of the fused model: updates audio encoder, video encoder, fusion head."""
    client.load(ws.model, received)
    loss = train_av(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AV_MODEL), loss


def run_train_av_audio_head(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """The fused model's cross-entropy plus ``av-audio-head-weight`` x the audio head's on the audio branch
    (run config ``av-trains-audio-head``): updates audio encoder, video encoder, fusion head and audio head."""
    client.load(ws.model, received)
    kw = client.train_kwargs(ws, seed)
    loss = train_av(
        ws.model, ws.cache, client.partition.indices, audio_head_weight=client.settings.av_audio_head_weight, **kw
    )
    return list(AV_AUDIO_HEAD), loss


def run_train_unimodal(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Harmony stage 1: a unimodal audio model and a unimodal video model on the same data."""
    client.load(ws.model, received)
    loss = train_unimodal(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AUDIO_MODEL + VIDEO_MODEL), loss


DISTILL_KEPT = "distill-kept"  # reply metric: the share of the client's training samples the distillation covered


def run_distill(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float, dict]:
    """Phase 2: the audio student (audio encoder + head) learns from the frozen teacher (run config
    ``distill-objective``, ``distill-teacher``); it reports the share of its samples the distillation covered."""
    s = client.settings
    read = () if s.distill_objective in TEACHER_FREE else TEACHERS[s.distill_teacher].groups
    missing = [g for g in read if TEACHER_PREFIX + g not in received]
    if missing:  # the workspace's teacher would keep stale weights for these
        raise TaskError(f"distill-teacher {s.distill_teacher!r} reads the teacher's {missing}, which were not sent")
    client.load(ws.model, received)
    client.load_teacher(ws.teacher, received)
    stats: dict = {}
    loss = distill(
        ws.model,
        ws.teacher,
        ws.cache,
        client.partition.indices,
        settings=s.distill_settings,
        objective=s.distill_objective,
        teacher_kind=s.distill_teacher,
        stats=stats,
        **client.train_kwargs(ws, seed),
    )
    return list(AUDIO_MODEL), loss, {DISTILL_KEPT: stats["kept"] / max(stats["seen"], 1)}


TRAIN_AUDIO = Task(run_train_audio, needs=AUDIO_MODEL)
TRAIN_AV = Task(run_train_av, needs=AV_MODEL, video=True)  # clips without video: skipped (nothing to fuse)
AV_AUDIO_HEAD = (*AV_MODEL, AUDIO_HEAD)  # what train-av-audio-head trains
TRAIN_AV_AUDIO_HEAD = Task(
    run_train_av_audio_head,
    needs=AV_AUDIO_HEAD,
    video=True,
    without_video=MASK,
    frame_groups=(VIDEO_ENCODER, FUSION_HEAD),
)
TRAIN_UNIMODAL = Task(
    run_train_unimodal,
    needs=AUDIO_MODEL + VIDEO_MODEL,
    video=True,
    without_video=MASK,
    frame_groups=(VIDEO_ENCODER, VIDEO_HEAD),
)
# clips without video: skipped (the audiovisual teacher needs the frame); the teacher groups sent are those
# run config distill-teacher reads (DistillationPhase), checked by the task
DISTILL = Task(run_distill, needs=AUDIO_MODEL, video=True)
