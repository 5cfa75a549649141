"""FedCMI (Fan, Xu, Wang, Zhu, Guo: "Balanced Multi-modal Federated Learning via Cross-Modal
Infiltration", 2024) as a strategy of this app.

Each modality has an encoder, a Self-Projector and an Infiltration Projector feeding one
classifier they share (model groups ``audio_self``/``audio_inf`` + ``audio_head`` and the
video counterparts). Every round, audiovisual clients measure which modality the global
model finds easier on their data, and infiltrate the weak modality's infiltration branch
with the global dominant modality's predictions under class-wise temperatures, plus a
proximal term (run config ``mu``) towards the global weights; audio-only clients train the
audio encoder, the audio self branch and the shared audio classifier (client.py).
Each parameter group is averaged over exactly the clients that trained it. One phase runs
for the whole round budget, ``num-server-rounds + distill-rounds``, like every method.

The audio model evaluated is encoder -> self + infiltration -> classifier, through the same
evaluator as every other method. FedCMI has no fusion head of its own; the audiovisual score
comes from a fusion head trained on detached embeddings (a probe).
"""

from __future__ import annotations

from collections import Counter
from logging import INFO

from flwr.common import log

from mirror_app.core.config import RunConfig

from ..base import AUDIO, Instruction, Phase, PhasedStrategy
from .client import FEDCMI_TASKS
from .model import FEDCMI_AUDIO_SEND, FEDCMI_AUDIO_TRAIN, FEDCMI_AV, FEDCMI_GROUPS, FedCMIModel


class CrossModalInfiltrationPhase(Phase):
    name = "fedcmi"

    def instruction(self, modality: str) -> Instruction | None:
        if modality == AUDIO:
            return Instruction("fedcmi-audio", send=FEDCMI_AUDIO_SEND, train=FEDCMI_AUDIO_TRAIN)
        return Instruction("fedcmi-av", send=FEDCMI_AV, train=FEDCMI_AV)


class FedCMI(PhasedStrategy):
    model_groups = FEDCMI_GROUPS
    audio_groups = FEDCMI_AUDIO_SEND  # encoder -> self + infiltration -> classifier
    client_tasks = FEDCMI_TASKS
    label = "FedCMI"
    audio_model_text = "audio encoder -> self + infiltration projectors -> shared audio classifier."
    compared = True

    @classmethod
    def server_model(cls, model, cfg: RunConfig, classes: list[str]):
        return FedCMIModel(model)

    def build_phases(self, cfg: RunConfig):
        return [(CrossModalInfiltrationPhase(), cfg.num_server_rounds + cfg.distill_rounds)]

    def aggregate_fit(self, server_round, results, failures):
        weak = Counter(str(res.metrics.get("weak-modality")) for _, res in results if "weak-modality" in res.metrics)
        if weak:
            log(INFO, "round %s: FedCMI weak modality measured by clients: %s", server_round, dict(weak))
        return super().aggregate_fit(server_round, results, failures)
