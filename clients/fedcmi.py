"""FedCMI's client tasks (Fan et al., "Balanced Multi-modal Federated Learning via Cross-Modal Infiltration").

``fedcmi-av`` (audiovisual clients): measure, with the received global model, each
modality's confidence on the true class per class on the local training data; the modality
with the higher mean confidence is dominant, the other is weak (measured every round, not
assumed); class temperatures follow from the per-class confidences
(:func:`mirror_app.training.class_temperatures`); then train with cross-entropy on both
modalities, infiltration of the weak modality's infiltration branch from the global
dominant modality, and the proximal term ``mu``.

``fedcmi-audio`` (audio-only clients): audio encoder, audio self branch and the shared
audio classifier, with cross-entropy and the proximal term.
"""

from __future__ import annotations

import numpy as np

from mirror_app.models import AUDIO_INF, AUDIO_MODEL, AUDIO_SELF, FUSION_HEAD, VIDEO_INF, VIDEO_MODEL, VIDEO_SELF
from mirror_app.training import class_temperatures, fedcmi_audio, fedcmi_av, true_class_confidence

from .audio import require
from .base import GroupClient, Workspace

FEDCMI_AUDIO_SEND = AUDIO_MODEL + (AUDIO_SELF, AUDIO_INF)
FEDCMI_AUDIO_TRAIN = AUDIO_MODEL + (AUDIO_SELF,)
FEDCMI_AV = AUDIO_MODEL + (AUDIO_SELF, AUDIO_INF) + VIDEO_MODEL + (VIDEO_SELF, VIDEO_INF, FUSION_HEAD)


def run_fedcmi_audio(client: GroupClient, ws: Workspace, received: dict, seed: int):
    require(received, FEDCMI_AUDIO_SEND, "fedcmi-audio")
    client.load_student(ws, received)
    loss = fedcmi_audio(ws.model, ws.cache, client.partition.indices, **client.train_kwargs(ws, seed))
    return list(FEDCMI_AUDIO_TRAIN), loss


def run_fedcmi_av(client: GroupClient, ws: Workspace, received: dict, seed: int):
    require(received, FEDCMI_AV, "fedcmi-av")
    client.load_student(ws, received)
    ws.teacher.load_state_dict(ws.model.state_dict())  # the frozen global model of this round
    idx = client.partition.indices
    p_audio, p_video, count = true_class_confidence(ws.teacher, ws.cache, idx, device=ws.device)
    n = max(count.sum(), 1)
    conf_audio, conf_video = float((p_audio * count).sum() / n), float((p_video * count).sum() / n)
    weak = "audio" if conf_audio <= conf_video else "video"
    p_weak, p_dom = (p_audio, p_video) if weak == "audio" else (p_video, p_audio)
    temps = class_temperatures(p_weak, p_dom, client.settings.temperature)
    loss = fedcmi_av(ws.model, ws.teacher, ws.cache, idx, weak=weak, temperatures=temps,
                     **client.train_kwargs(ws, seed))
    present = count > 0
    extra = {"weak-modality": weak, "confidence-audio": conf_audio, "confidence-video": conf_video,
             "mean-class-temperature": float(np.mean(temps[present])) if present.any() else 0.0}
    return list(FEDCMI_AV), loss, extra
