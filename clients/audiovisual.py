"""Audiovisual client: trains the late-fusion model in phase 1 and distils in phase 2."""

from __future__ import annotations

from dataclasses import dataclass, field

from data.partition import AUDIOVISUAL
from mirror_app.models import AUDIO_MODEL, AV_MODEL, VIDEO_MODEL
from mirror_app.training import distill, train_av, train_unimodal

from .align import run_align_audio, run_align_av
from .audio import require, run_train_audio
from .base import TEACHER_PREFIX, GroupClient, Workspace
from .fedcmi import run_fedcmi_av


def run_train_av(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Cross-entropy of the fused model: updates audio encoder, video encoder, fusion head."""
    require(received, AV_MODEL, "train-av")
    client.load_student(ws, received)
    loss = train_av(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AV_MODEL), loss


def run_train_unimodal(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Harmony stage 1: a unimodal audio model and a unimodal video model on the same data."""
    require(received, AUDIO_MODEL + VIDEO_MODEL, "train-unimodal")
    client.load_student(ws, received)
    loss = train_unimodal(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AUDIO_MODEL + VIDEO_MODEL), loss


def run_distill(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Phase 2: the audio student (audio encoder + head) learns from the frozen AV teacher."""
    require(received, AUDIO_MODEL + tuple(TEACHER_PREFIX + g for g in AV_MODEL), "distill")
    client.load_student(ws, received)
    client.load_teacher(ws, received)
    s = client.settings
    loss = distill(ws.model, ws.teacher, ws.cache, client.partition.indices, temperature=s.temperature,
                   ce_weight=s.distill_ce_weight, **client.train_kwargs(ws, seed))
    return list(AUDIO_MODEL), loss


@dataclass
class AudioVisualClient(GroupClient):
    modality: str = AUDIOVISUAL
    tasks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = {
            "train-av": lambda ws, rec, seed: run_train_av(self, ws, rec, seed),
            "train-audio": lambda ws, rec, seed: run_train_audio(self, ws, rec, seed),
            "train-unimodal": lambda ws, rec, seed: run_train_unimodal(self, ws, rec, seed),
            "distill": lambda ws, rec, seed: run_distill(self, ws, rec, seed),
            "fedcmi-av": lambda ws, rec, seed: run_fedcmi_av(self, ws, rec, seed),
            "align-av": lambda ws, rec, seed: run_align_av(self, ws, rec, seed),
            "align-audio": lambda ws, rec, seed: run_align_audio(self, ws, rec, seed),
        }
