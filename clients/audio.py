"""Audio-only client: a device that lost its video. It only ever holds the audio model."""

from __future__ import annotations

from dataclasses import dataclass, field

from data.partition import AUDIO
from mirror_app.models import AUDIO_MODEL
from mirror_app.training import train_audio

from .base import GroupClient, TaskError, Workspace


def require(received: dict, needed: tuple[str, ...], task: str) -> None:
    missing = [g for g in needed if g not in received]
    if missing:
        raise TaskError(f"task {task!r} needs parameter groups {list(needed)}; missing {missing}")


def run_train_audio(client: GroupClient, ws: Workspace, received: dict, seed: int) -> tuple[list[str], float]:
    """Cross-entropy on audio: updates audio encoder + audio head."""
    require(received, AUDIO_MODEL, "train-audio")
    client.load_student(ws, received)
    loss = train_audio(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(AUDIO_MODEL), loss


@dataclass
class AudioClient(GroupClient):
    modality: str = AUDIO
    tasks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .align import run_align_audio
        from .fedcmi import run_fedcmi_audio

        self.tasks = {
            "train-audio": lambda ws, rec, seed: run_train_audio(self, ws, rec, seed),
            "fedcmi-audio": lambda ws, rec, seed: run_fedcmi_audio(self, ws, rec, seed),
            "align-audio": lambda ws, rec, seed: run_align_audio(self, ws, rec, seed),
        }
