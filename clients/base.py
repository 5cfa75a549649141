"""Shared machinery of the two client kinds: the wire format of parameter groups.

The server tells a client, in the fit config, which task to run (``task``) and which
parameter groups the arrays it sent belong to (``groups``, comma-separated, in order).
Teacher copies of groups are sent as ``teacher/<group>``. The client answers with the
groups it trained (metric ``groups``), nothing else.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from flwr.client import NumPyClient

from data.partition import Partition
from mirror_app.models import (
    TEACHER_PREFIX,
    DualEncoder,
    flatten,
    get_groups,
    group_sizes,
    set_groups,
    unflatten,
)


class TaskError(ValueError):
    """The server asked for something this client cannot do."""


@dataclass
class Workspace:
    """What a client needs, built once per worker process and reused across calls."""

    cache: Any  # data.cache.FeatureCache
    model: DualEncoder
    teacher: DualEncoder
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock)  # one client trains the models at a time
    # (seed, audio-pretrained, video-pretrained) -> the run's initial model (models.initial_model), on the CPU
    make_base: Callable[[int, str, str], DualEncoder] | None = None
    extras: dict = field(default_factory=dict)  # models of other layouts a method builds once (alignment)


@dataclass
class LocalSettings:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    temperature: float
    distill_ce_weight: float
    seed: int
    mu: float = 0.0  # FedProx proximal weight
    lora_rank: int = 8  # modality alignment: LoRA rank of the adapters
    align_av_weight: float = 0.5  # modality alignment: weight of the audio-video contrastive term
    audio_pretrained: str = ""  # local checkpoint files the frozen base is built from
    video_pretrained: str = ""
    restricted_softmax: bool = False  # label cross-entropy over the classes of the client's partition only


def split_groups(parameters: list[np.ndarray], names: list[str], model: DualEncoder) -> dict[str, list]:
    """Parameters as received -> {group name: arrays}, checked against the model layout."""
    sizes = group_sizes(model, [n.removeprefix(TEACHER_PREFIX) for n in names])
    return unflatten(list(parameters), names, sizes)


@dataclass
class GroupClient(NumPyClient):
    """A NumPyClient that trains named parameter groups on one partition."""

    partition: Partition
    workspace: Workspace
    settings: LocalSettings
    modality: str = ""
    tasks: dict[str, Callable] = field(default_factory=dict)
    setup_seconds: float = 0.0  # time the ClientApp spent making this client (set by client_app)
    workspace_built: bool = False  # whether that included building the worker's dataset and models

    def get_properties(self, config: dict) -> dict:
        return {
            "modality": self.modality,
            "partition-id": int(self.partition.partition_id),
            "num-examples": int(len(self.partition.indices)),
            "num-classes": int(self.held_classes().size),
        }

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        task = str(config.get("task", ""))
        if task not in self.tasks:
            raise TaskError(f"{type(self).__name__} cannot run task {task!r}; it runs {sorted(self.tasks)}")
        names = [n for n in str(config.get("groups", "")).split(",") if n]
        ws = self.workspace
        start = time.perf_counter()
        seed = (self.settings.seed * 1_000_003 + int(config.get("server-round", 0)) * 1009
                + self.partition.partition_id) % 2**32
        with ws.lock:
            model = self.layout(ws, task, config)
            received = split_groups(parameters, names, model)
            torch.manual_seed(seed)
            trained, loss, *extra = self.tasks[task](ws, received, seed)  # extra: optional metrics dict
            out = get_groups(model, trained)
        metrics = {
            "groups": ",".join(trained),
            "task": task,
            "modality": self.modality,
            "partition-id": int(self.partition.partition_id),
            "train-loss": float(loss),
            "train-seconds": time.perf_counter() - start,
            "setup-seconds": float(self.setup_seconds),
            "workspace-built": int(self.workspace_built),
            **(extra[0] if extra else {}),
        }
        return flatten(out, trained), int(len(self.partition.indices)), metrics

    def layout(self, ws: Workspace, task: str, config: dict):
        """The model whose parameter groups ``task`` receives and returns."""
        from .align import ALIGN_TASKS, align_model

        return align_model(self, ws, config) if task in ALIGN_TASKS else ws.model

    # helpers for the task functions of subclasses
    def load_student(self, ws: Workspace, received: dict) -> None:
        set_groups(ws.model, {g: a for g, a in received.items() if not g.startswith(TEACHER_PREFIX)})

    def load_teacher(self, ws: Workspace, received: dict) -> None:
        teacher = {g.removeprefix(TEACHER_PREFIX): a for g, a in received.items() if g.startswith(TEACHER_PREFIX)}
        set_groups(ws.teacher, teacher)

    def held_classes(self) -> np.ndarray:
        """The classes of this client's partition (its restricted softmax, its reported class count)."""
        return np.unique(self.workspace.cache.labels[self.partition.indices])

    def train_kwargs(self, ws: Workspace, seed: int) -> dict:
        s = self.settings
        present = None
        if s.restricted_softmax:
            present = torch.zeros(ws.cache.num_classes, dtype=torch.bool, device=ws.device)
            present[self.held_classes()] = True
        return dict(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, optimizer=s.optimizer,
                    device=ws.device, seed=seed, mu=s.mu, present=present)

    def evaluate(self, parameters, config):  # evaluation is server-side on the held-out split
        raise TaskError("clients do not evaluate; the server evaluates on the held-out test split")

