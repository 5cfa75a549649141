"""FedCMI's model: the dual encoder plus a Self-Projector and an Infiltration Projector per modality.

Groups ``audio_self``/``audio_inf`` and ``video_self``/``video_inf`` (embedding -> embedding) join the dual
encoder's groups. A modality's prediction is ``head(self(z) + inf(z))``; the projectors start as identity and
zero, so the initial model predicts exactly as the dual encoder it was made from.
"""

from __future__ import annotations

import torch
from torch import nn

from mirror_app.core.groups import AUDIO_MODEL, FUSION_HEAD, GROUPS, VIDEO_MODEL
from mirror_app.core.models import DualEncoder

AUDIO_SELF, AUDIO_INF, VIDEO_SELF, VIDEO_INF = "audio_self", "audio_inf", "video_self", "video_inf"
FEDCMI_GROUPS = GROUPS + (AUDIO_SELF, AUDIO_INF, VIDEO_SELF, VIDEO_INF)
FEDCMI_AUDIO_SEND = AUDIO_MODEL + (AUDIO_SELF, AUDIO_INF)  # the audio model an audio-only client receives
FEDCMI_AUDIO_TRAIN = AUDIO_MODEL + (AUDIO_SELF,)  # what it trains and returns
FEDCMI_AV = AUDIO_MODEL + (AUDIO_SELF, AUDIO_INF) + VIDEO_MODEL + (VIDEO_SELF, VIDEO_INF, FUSION_HEAD)


def _projector(dim: int, identity: bool) -> nn.Linear:
    """A dim x dim linear map initialised to identity or zero, without drawing random numbers."""
    with torch.random.fork_rng(devices=[]):
        layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim) if identity else torch.zeros(dim, dim))
        layer.bias.zero_()
    return layer


class FedCMIModel(DualEncoder):
    """The dual encoder's modules (shared, not copied) plus the four projectors."""

    def __init__(self, dual: DualEncoder):
        nn.Module.__init__(self)
        for name in GROUPS:
            setattr(self, name, getattr(dual, name))
        dim = dual.audio_head.in_features
        self.audio_self, self.audio_inf = _projector(dim, True), _projector(dim, False)
        self.video_self, self.video_inf = _projector(dim, True), _projector(dim, False)

    def audio_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.audio_self(z) + self.audio_inf(z)

    def video_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.video_self(z) + self.video_inf(z)
