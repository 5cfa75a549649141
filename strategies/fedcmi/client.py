"""FedCMI's client tasks.

``fedcmi-av`` (audiovisual clients): measure, with the received global model, each modality's confidence
on the true class per class on the local training data; the modality with the higher mean confidence is
dominant, the other is weak (measured every round, not assumed); class temperatures follow from the
per-class confidences (:func:`.losses.class_temperatures`); then train with cross-entropy on both
modalities, infiltration of the weak modality's infiltration branch from the global dominant modality,
and the proximal term ``mu``.

``fedcmi-audio`` (audio-only clients): audio encoder, audio self branch and the shared audio classifier,
with cross-entropy and the proximal term.

Both run on the worker's :class:`.model.FedCMIModel` (built once per workspace around its dual encoder).
"""

from __future__ import annotations

import numpy as np

from clients.base import GroupClient, Task, Workspace

from .losses import class_temperatures, fedcmi_audio, fedcmi_av, true_class_confidence
from .model import FEDCMI_AUDIO_SEND, FEDCMI_AUDIO_TRAIN, FEDCMI_AV, FedCMIModel


def fedcmi_models(client: GroupClient, ws: Workspace, config: dict | None = None) -> FedCMIModel:
    """This workspace's FedCMI model (and, in ``ws.extras``, the frozen global copy), built once."""
    if "fedcmi" not in ws.extras:
        ws.extras["fedcmi"] = (FedCMIModel(ws.model).to(ws.device), FedCMIModel(ws.teacher).to(ws.device))
    return ws.extras["fedcmi"][0]


def run_fedcmi_audio(client: GroupClient, ws: Workspace, received: dict, seed: int):
    model = fedcmi_models(client, ws)
    client.load(model, received)
    loss = fedcmi_audio(model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(FEDCMI_AUDIO_TRAIN), loss


def run_fedcmi_av(client: GroupClient, ws: Workspace, received: dict, seed: int):
    model = fedcmi_models(client, ws)
    global_model = ws.extras["fedcmi"][1]
    client.load(model, received)
    global_model.load_state_dict(model.state_dict())  # the frozen global model of this round
    idx = client.partition.indices
    p_audio, p_video, count = true_class_confidence(global_model, ws.cache, idx, device=ws.device)
    n = max(count.sum(), 1)
    conf_audio, conf_video = float((p_audio * count).sum() / n), float((p_video * count).sum() / n)
    weak = "audio" if conf_audio <= conf_video else "video"
    p_weak, p_dom = (p_audio, p_video) if weak == "audio" else (p_video, p_audio)
    temps = class_temperatures(p_weak, p_dom, client.settings.temperature)
    loss = fedcmi_av(model, global_model, ws.cache, idx, weak=weak, temperatures=temps, **client.train_kwargs(ws, seed))
    present = count > 0
    extra = {
        "weak-modality": weak,
        "confidence-audio": conf_audio,
        "confidence-video": conf_video,
        "mean-class-temperature": float(np.mean(temps[present])) if present.any() else 0.0,
    }
    return list(FEDCMI_AV), loss, extra


FEDCMI_TASKS = {
    "fedcmi-audio": Task(run_fedcmi_audio, needs=FEDCMI_AUDIO_SEND, layout=fedcmi_models),
    "fedcmi-av": Task(run_fedcmi_av, needs=FEDCMI_AV, video=True, layout=fedcmi_models),
}
