"""The two client kinds the app runs, as Flower ``NumPyClient``s: ``AudioClient`` (a device that lost its
video) and ``AudioVisualClient``. Neither knows a method: each round the server names a task in the fit
config, and the client runs it from the task table the run's strategy declares (``client_tasks``).

Wire format: the fit config names the task (``task``) and the parameter groups the arrays belong to
(``groups``, comma-separated, in order, and how many arrays each has, ``group-sizes``); teacher copies are
sent as ``teacher/<group>``. The client answers with the groups it trained (metric ``groups``), nothing else.
A fit config may carry ``label-permutation`` (a seed): the client then trains on labels permuted by it. Only
the attack mod (clients/mods.py) sets it, on a simulated label-flip attacker; it removes any the server sends.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn

from data.cache import RelabelledCache, VideoMaskedCache
from data.partition import AUDIO, AUDIOVISUAL, Partition, audio_only_at, missing_video_rows, parse_schedule
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import TEACHER_PREFIX, flatten, get_groups, group_sizes, set_groups, unflatten
from mirror_app.core.heads import Calibration
from mirror_app.core.models import DualEncoder
from mirror_app.core.privacy import hides_client_values


def ray_node_id() -> str:
    """The Ray node this client runs on in a simulation ('' on a SuperNode: Ray is never imported there)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


GROUP_SIZES = "group-sizes"  # fit config: arrays per sent group, comma-separated, in the order of "groups"
# reply metric: "group:examples,..." for the returned groups that learnt from fewer clips than the reply's
# num_examples (a frame-using task under sample-missing-video: the clips with a frame), 0 for a sent group the
# client could not train and did not return
GROUP_EXAMPLES = "group-examples"
# fit config: per trained group, the positions of the arrays nothing trains ('group:i,j;...'; DP keeps them)
FIXED_ARRAYS = "fixed-arrays"
LABEL_PERMUTATION = "label-permutation"  # fit config: train on labels permuted by this seed (a label-flip attacker)


SKIP, MASK = "skip", "mask"  # Task.without_video


def group_examples(metrics: dict) -> dict[str, int]:
    """A reply's ``group-examples``: the groups weighted by fewer clips than its num_examples (0: not returned)."""
    pairs = (item.rpartition(":") for item in str(metrics.get(GROUP_EXAMPLES, "")).split(",") if item)
    return {g: int(n) for g, _, n in pairs}


def received_groups(parameters: list[np.ndarray], config: dict) -> dict[str, list[np.ndarray]]:
    """The arrays of a fit instruction by group name, split by its ``groups`` and ``group-sizes``."""
    names = [n for n in str(config.get("groups", "")).split(",") if n]
    sizes = [int(n) for n in str(config.get(GROUP_SIZES, "")).split(",") if n]
    if len(sizes) != len(names):
        raise TaskError(f"fit config has groups {names} but group-sizes {sizes}")
    return dict(unflatten(list(parameters), names, sizes))


class TaskError(ValueError):
    """The server asked for something this client cannot do."""


@dataclass
class Workspace:
    """What a client needs, built once per worker process and reused across calls (of one run)."""

    cache: Any  # data.cache.FeatureCache
    model: DualEncoder
    teacher: DualEncoder
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock)  # one client trains the models at a time
    # (seed, audio-pretrained, video-pretrained) -> the run's initial model (models.initial_model), on the CPU
    make_base: Callable[[int, str, str], DualEncoder] | None = None
    extras: dict = field(default_factory=dict)  # models of other layouts a method builds once (FedCMI, alignment)


# (client, workspace, received groups, seed) -> (trained group names, mean loss[, extra metrics])
TaskFn = Callable[["GroupClient", Workspace, dict, int], tuple]


@dataclass(frozen=True)
class Task:
    """One client task, as a strategy declares it in ``client_tasks``.

    ``needs``: the groups it must receive (checked before it runs); ``video``: whether it needs the video
    modality (an audio-only client refuses it); ``layout``: the model whose groups it receives and returns,
    ``(client, workspace, fit config) -> module`` (the workspace's dual encoder when None);
    ``without_video``: what it does with an audiovisual client's clips that have no frame (run config
    ``sample-missing-video``): ``skip`` (the base trains it on the clips with video only) or ``mask`` (it
    trains on every clip and its losses use the frame only where ``Batch.has_video`` says there is one).
    ``frame_groups``: for a ``mask`` task, the groups that learn from frames only: they are weighted by the
    clips with a frame (``group-examples``), and a client with no frame at all does not return them.
    """

    run: TaskFn
    needs: tuple[str, ...]
    video: bool = False
    layout: Callable[[GroupClient, Workspace, dict], nn.Module] | None = None
    without_video: str = "skip"
    frame_groups: tuple[str, ...] = ()


def split_groups(parameters: list[np.ndarray], names: list[str], model: nn.Module) -> dict[str, list]:
    """Parameters as received -> {group name: arrays}, checked against the model layout."""
    sizes = group_sizes(model, [n.removeprefix(TEACHER_PREFIX) for n in names])
    return unflatten(list(parameters), names, sizes)


@dataclass
class GroupClient(NumPyClient):
    """A NumPyClient that trains named parameter groups on one partition, with the tasks of the run's method."""

    partition: Partition
    workspace: Workspace
    settings: RunConfig
    tasks: dict[str, Task] = field(default_factory=dict)  # the strategy's client_tasks
    setup_seconds: float = 0.0  # time the ClientApp spent making this client (set by client_app)
    workspace_built: bool = False  # whether that included building the worker's dataset and models
    created_at: float = 0.0  # wall-clock time (time.time()) the ClientApp started making this client
    # rows of the partition whose clip has no video (run config sample-missing-video); None: every clip has it
    missing_video: np.ndarray | None = None
    # the device's modality at a round (run config missing-schedule); None: its modality all run long
    schedule: Callable[[int], str] | None = None
    modality = ""

    @property
    def has_video(self) -> bool:
        return self.modality == AUDIOVISUAL

    def modality_at(self, server_round: int) -> str:
        """What the device has at ``server_round``: its kind's modality, unless a schedule took its camera."""
        return self.schedule(server_round) if self.schedule is not None else self.modality

    def get_properties(self, config: dict) -> dict:
        """What the census learns of this client: its modality and partition, and, where the run's mode lets the
        server see per-client values (plain runs, central DP), its clip and class counts."""
        props = {
            "modality": self.modality_at(int(config.get("server-round", 0))),
            "partition-id": int(self.partition.partition_id),
        }
        if hides_client_values(self.settings.dp, self.settings.secure_aggregation):
            return props
        return props | {"num-examples": int(len(self.partition.indices)), "num-classes": int(self.held_classes().size)}

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        name = str(config.get("task", ""))
        task = self.tasks.get(name)
        server_round = int(config.get("server-round", 0))
        modality = self.modality_at(server_round)
        if task is None:
            runnable = sorted(n for n, t in self.tasks.items() if modality == AUDIOVISUAL or not t.video)
            raise TaskError(f"{type(self).__name__} cannot run task {name!r}; it runs {runnable}")
        if task.video and modality != AUDIOVISUAL:  # no camera (now): say so in the reply, train nothing
            return [], 0, self.refusal(name, modality, f"{type(self).__name__} has no video at round {server_round}")
        names = [n for n in str(config.get("groups", "")).split(",") if n]
        missing = [g for g in task.needs if g not in names]
        if missing:
            raise TaskError(f"task {name!r} needs parameter groups {list(task.needs)}; missing {missing}")
        ws, client = self.workspace, self
        if LABEL_PERMUTATION in config:  # a simulated label-flip attacker (clients/mods.py) trains on wrong labels
            ws = dataclasses.replace(ws, cache=RelabelledCache(ws.cache, int(config[LABEL_PERMUTATION])))
        frames: int | None = None  # clips with a frame, where a mask task trains on clips without one too
        if task.video and self.missing_video is not None and self.missing_video.size:
            ws = dataclasses.replace(ws, cache=VideoMaskedCache(ws.cache, self.missing_video))
            kept = np.setdiff1d(self.partition.indices, self.missing_video)
            if task.without_video == SKIP:  # the base trains the task on the clips with video only
                client = dataclasses.replace(self, partition=dataclasses.replace(self.partition, indices=kept))
            else:
                frames = int(kept.size)
            if not len(client.partition.indices):
                return [], 0, self.refusal(name, modality, "none of its clips has video")
        started_at = self.created_at or time.time()
        start = time.perf_counter()
        seed = (self.settings.seed * 1_000_003 + server_round * 1009 + self.partition.partition_id) % 2**32
        with ws.lock:
            model = task.layout(client, ws, config) if task.layout else ws.model
            received = split_groups(parameters, names, model)
            torch.manual_seed(seed)
            trained, loss, *extra = task.run(client, ws, received, seed)  # extra: optional metrics dict
            weights = {}
            if frames is not None and task.frame_groups:  # groups that saw only the clips with a frame
                weights = {g: frames for g in task.frame_groups if g in trained}
                if frames == 0:  # untrained: not returned at all, rather than averaged in unchanged
                    trained = [g for g in trained if g not in weights]
            out = get_groups(model, trained)
        metrics = {
            "groups": ",".join(trained),
            "task": name,
            "modality": modality,
            "partition-id": int(self.partition.partition_id),
            "train-loss": float(loss),
            "train-seconds": time.perf_counter() - start,
            "setup-seconds": float(self.setup_seconds),
            "workspace-built": int(self.workspace_built),
            "ray-node": ray_node_id(),
            # wall-clock span of this call in the client's process (set-up included), for the round timeline
            "started-at": started_at,
            "finished-at": time.time(),
            **(extra[0] if extra else {}),
        }
        if weights:
            metrics[GROUP_EXAMPLES] = ",".join(f"{g}:{n}" for g, n in weights.items())
        return flatten(out, trained), int(len(client.partition.indices)), metrics

    def apply_missingness(self, num_partitions: int, scheduled: bool = True) -> None:
        """Run config ``sample-missing-video`` (a seeded share of this audiovisual client's clips without a
        frame) and, where ``scheduled`` (a simulated partition, not a node whose config fixes its modality),
        ``missing-schedule`` (the rounds at which it loses or regains its camera)."""
        cfg, pid = self.settings, self.partition.partition_id
        if not self.has_video:
            return
        if cfg.sample_missing_video > 0:
            rows = missing_video_rows(self.partition.indices, cfg.sample_missing_video, cfg.seed, max(pid, 0))
            self.missing_video = rows  # a node on its own data (no partition id, -1) is seeded as partition 0
        if cfg.missing_schedule and scheduled:
            schedule = parse_schedule(cfg.missing_schedule)

            def modality_at(server_round: int) -> str:
                lost = audio_only_at(num_partitions, cfg.missing_rate, cfg.seed, schedule, server_round)
                return AUDIO if pid in set(lost.tolist()) else AUDIOVISUAL

            self.schedule = modality_at

    def refusal(self, task: str, modality: str, reason: str) -> dict:
        """The metrics of a reply that trains nothing: why, and what the device has now (the census reads it)."""
        return {
            "refused": f"{reason}: cannot run task {task!r}",
            "task": task,
            "modality": modality,
            "partition-id": int(self.partition.partition_id),
        }

    def evaluate(self, parameters, config):  # evaluation is server-side on the held-out split
        raise TaskError("clients do not evaluate; the server evaluates on the held-out test split")

    # helpers for tasks
    @staticmethod
    def load(model: nn.Module, received: dict) -> None:
        """Load the received groups (not the teacher's) into ``model``."""
        set_groups(model, {g: a for g, a in received.items() if not g.startswith(TEACHER_PREFIX)})

    @staticmethod
    def load_teacher(teacher: nn.Module, received: dict) -> None:
        """Load the received teacher groups (``teacher/<group>``) into ``teacher``."""
        set_groups(
            teacher, {g.removeprefix(TEACHER_PREFIX): a for g, a in received.items() if g.startswith(TEACHER_PREFIX)}
        )

    def held_classes(self, cache=None) -> np.ndarray:
        """The classes of this client's partition in ``cache`` (the workspace's by default): its restricted
        softmax, its reported class count."""
        return np.unique((cache or self.workspace.cache).labels[self.partition.indices])

    def train_kwargs(self, ws: Workspace, seed: int) -> dict:
        """Keyword arguments of the local loop (mirror_app.core.training.run_epochs) from the run config."""
        s = self.settings
        return dict(
            epochs=s.local_epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            optimizer=s.optimizer,
            device=ws.device,
            seed=seed,
            mu=s.mu,
            calibration=self.calibration(ws),
        )

    def calibration(self, ws: Workspace) -> Calibration | None:
        """This client's calibrated label loss (run config ``loss-calibration``, ``restricted-softmax``; core.heads),
        from its own count of each class; None for the plain cross-entropy."""
        s = self.settings
        kind = "restricted" if s.restricted_softmax else s.loss_calibration
        if kind == "none":
            return None
        labels = ws.cache.labels[self.partition.indices]
        counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=ws.cache.num_classes)
        return Calibration(kind, counts.float().to(ws.device), tau=s.fedlc_tau, alpha=s.fedrs_alpha)


class AudioClient(GroupClient):
    """A device that lost its video: it runs only the tasks that need no video."""

    modality = AUDIO


class AudioVisualClient(GroupClient):
    """A device with audio and video: it runs every task of the run's method."""

    modality = AUDIOVISUAL


CLIENT_KINDS: dict[str, type[GroupClient]] = {AUDIO: AudioClient, AUDIOVISUAL: AudioVisualClient}
