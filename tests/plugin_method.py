"""A method defined outside the package, as a user would write one (README, "Adding a method").

Every client, audio-only or audiovisual, trains the audio model with label-smoothed cross-entropy: a
client task no registered method has. Run it with ``strategy = "tests.plugin_method.SmoothedAudioFL"``.
"""

from __future__ import annotations

import torch.nn.functional as F

from clients.base import GroupClient, Task, Workspace
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL
from mirror_app.core.training import run_epochs
from strategies.base import Instruction, Phase, PhasedStrategy

SMOOTHING = 0.1


def run_smooth_audio(client: GroupClient, ws: Workspace, received: dict, seed: int):
    """Label-smoothed cross-entropy of the audio model (audio encoder + audio head)."""
    model = ws.model
    client.load(model, received)
    loss = run_epochs(
        model,
        lambda b: F.cross_entropy(model.audio_logits(b.audio), b.labels, label_smoothing=SMOOTHING),
        [model.audio_encoder, model.audio_head],
        ws.cache,
        client.partition.indices,
        with_video=False,
        **client.train_kwargs(ws, seed),
    )
    return list(AUDIO_MODEL), loss, {"label-smoothing": SMOOTHING}


class SmoothedAudioPhase(Phase):
    name = "smoothed-audio-fl"

    def instruction(self, modality: str) -> Instruction | None:
        return Instruction("smooth-audio", send=AUDIO_MODEL, train=AUDIO_MODEL)  # every client, audio only


class SmoothedAudioFL(PhasedStrategy):
    client_tasks = {"smooth-audio": Task(run_smooth_audio, needs=AUDIO_MODEL)}
    label = "Smoothed audio FL"

    def build_phases(self, cfg: RunConfig):
        return [(SmoothedAudioPhase(), cfg.num_server_rounds)]


class ForgetfulFL(SmoothedAudioFL):
    """Names a task it does not declare: refused when the strategy is made, before any client starts."""

    client_tasks = {}
