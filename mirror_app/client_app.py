"""ClientApp: which client a node runs follows from its partition (simulation) or node config.

Node config keys: ``partition-id`` and ``num-partitions`` (set by the simulation engine, or
by ``flower-supernode --node-config``; leave both out to train on all of the node's own
data), optional ``modality`` (``audio`` | ``audiovisual``, overriding the run's seeded
missing-rate assignment), optional ``modality-file`` (a file holding ``audio`` or ``audiovisual``, read at every
message: a device whose camera comes and goes says so in its next reply), optional ``data-dir`` (where this node's
feature caches are; it must exist), optional ``make-embedded`` (true: generate the embedded dataset under data-dir
where it is missing, as a demonstration node does; without it a deployed node refuses to start on missing data),
optional ``attack`` (clients/mods.py) and optional ``num-threads`` (torch threads for this
node's training: give each of N SuperNodes sharing a machine its share of the cores, as Ray does for simulated
clients; `make deploy-local` sets it).

In a simulation, run config ``missing-schedule`` changes a partition's modality over the rounds, and
``sample-missing-video`` takes the frame of a seeded share of an audiovisual client's clips.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.client import Client
from flwr.clientapp import ClientApp

from clients import CLIENT_KINDS, Workspace
from clients.mods import attack_mod, local_dp_mod, secure_aggregation_mod
from data import load_dataset
from data.partition import AUDIOVISUAL, MODALITIES, Partition, get_partition
from mirror_app.core.config import RunConfig
from mirror_app.core.models import build_model, initial_model
from mirror_app.core.training import resolve_device
from strategies import PhasedStrategy, resolve_config

MAX_WORKSPACES = 2  # workspaces (dataset view + models) one worker process keeps, all of one run
_workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
_workspaces_lock = threading.Lock()


def _build_workspace(
    dataset: str,
    data_dir: str,
    audio_backbone: str,
    video_backbone: str,
    embed_dim: int,
    device: str,
    fold: int,
    clips_per_class: int,
    generate: bool = True,
    heads: tuple[tuple[str, str], ...] = (),
) -> Workspace:
    # torch's thread count follows OMP_NUM_THREADS, which Ray sets to the client's share
    # (client-resources-num-cpus, Flower's default 2); a SuperNode's ClientApp uses the device's cores
    cache = load_dataset(dataset, data_dir, fold, clips_per_class=clips_per_class, generate=generate)
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])

    def make():
        return build_model(cache.num_classes, *shapes, audio_backbone, video_backbone, embed_dim, heads=dict(heads)).to(
            dev
        )

    def make_base(seed: int, audio_pretrained: str = "", video_pretrained: str = ""):  # as the server's (CPU)
        return initial_model(
            cache.num_classes,
            *shapes,
            audio_backbone,
            video_backbone,
            embed_dim,
            seed,
            audio_pretrained,
            video_pretrained,
            heads=dict(heads),
        )

    dev = resolve_device(device)
    return Workspace(cache=cache, model=make(), teacher=make(), device=dev, make_base=make_base)


def _workspace(
    run_id: int,
    strategy: str,
    dataset: str,
    data_dir: str,
    audio_backbone: str,
    video_backbone: str,
    embed_dim: int,
    device: str,
    fold: int = 1,
    clips_per_class: int = 250,
    generate: bool = True,
    heads: tuple[tuple[str, str], ...] = (),
) -> tuple[Workspace, bool]:
    """This run's dataset (memory-mapped) and models, built once per worker process and reused: (workspace,
    whether this call built it).

    Keyed by run and strategy: a client loads only the groups the server sends, so whatever else a
    workspace's models hold (e.g. FedCMI's projectors, which other methods never send) must never reach
    another run. Workspaces of other runs are dropped when a new run's is built.
    """
    key = (
        int(run_id),
        strategy,
        dataset,
        data_dir,
        audio_backbone,
        video_backbone,
        int(embed_dim),
        device,
        int(fold),
        int(clips_per_class),
        heads,
    )
    with _workspaces_lock:
        ws = _workspaces.get(key)
        if ws is not None:
            _workspaces.move_to_end(key)
            return ws, False
        for old in [k for k in _workspaces if k[0] != key[0]]:
            del _workspaces[old]
        ws = _workspaces[key] = _build_workspace(
            dataset, data_dir, audio_backbone, video_backbone, embed_dim, device, fold, clips_per_class, generate, heads
        )
        while len(_workspaces) > MAX_WORKSPACES:
            _workspaces.popitem(last=False)
        return ws, True


def clear_workspaces() -> None:
    """Forget every workspace of this process (as a fresh worker would start)."""
    with _workspaces_lock:
        _workspaces.clear()


PARTITION_STATE = "mirror-app.partition"  # context.state keys of a node's partition (meta, indices)


def _node_partition(context: Context, cfg: RunConfig, cache_path: str, partition_id: int, num: int) -> Partition:
    """Partition ``partition_id`` of ``num`` of the run (``data.partition.get_partition``), kept in the node's own
    state (``context.state``) after the first message. A deployed SuperNode starts a fresh ClientApp process for
    every message, and computing a Dirichlet partition there (flwr-datasets, ``datasets``) costs more than a second
    each time; the state travels with the node's context, so later messages read the indices back instead."""
    args = cfg.partition_args(cache_path, partition_id, num)
    key = json.dumps([str(a) for a in args])
    meta = context.state.get(PARTITION_STATE + ".meta")
    if meta is not None and meta.get("key") == key:
        indices = context.state[PARTITION_STATE + ".indices"]["indices"].numpy()
        return Partition(partition_id, indices, str(meta["modality"]))
    part = get_partition(*args)
    context.state[PARTITION_STATE + ".meta"] = ConfigRecord({"key": key, "modality": part.modality})
    context.state[PARTITION_STATE + ".indices"] = ArrayRecord({"indices": Array(np.asarray(part.indices))})
    return part


@lru_cache(maxsize=16)
def _config(items: tuple) -> tuple[RunConfig, type[PhasedStrategy]]:
    return resolve_config(dict(items))


def make_client(context: Context):
    """The NumPyClient for this node: AudioClient or AudioVisualClient, with the client tasks the run's
    strategy declares.

    Without ``partition-id``/``num-partitions`` the node trains on the whole train split of its
    own data (``data-dir`` in its node config). A node whose data has no video refuses the
    audiovisual role.
    """
    created_at, start = time.time(), time.perf_counter()
    cfg, strategy_cls = _config(tuple(sorted(context.run_config.items())))
    node = context.node_config
    if ("partition-id" in node) != ("num-partitions" in node):
        raise ValueError(
            "node config needs both 'partition-id' and 'num-partitions' (a partition of a shared "
            "dataset), or neither (the node's own data-dir): "
            'flower-supernode --node-config "partition-id=0 num-partitions=2"'
        )
    pid, num = (int(node["partition-id"]), int(node["num-partitions"])) if "partition-id" in node else (0, 1)
    if "num-threads" in node:
        threads = int(node["num-threads"])
        if threads < 1:
            raise ValueError(f"node config 'num-threads' = {threads} is invalid: an integer >= 1")
        torch.set_num_threads(threads)
    data_dir = str(node.get("data-dir") or cfg.data_path)
    from clients.mods import simulated

    generate = simulated() or str(node.get("make-embedded", "false")).lower() == "true"
    if generate and cfg.dataset == "embedded":  # a demonstration node makes its folder and the data in it
        Path(data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    if "data-dir" in node and not Path(data_dir).expanduser().is_dir():
        raise ValueError(
            f"node config 'data-dir' = {data_dir!r} does not exist: give the folder that holds this node's prepared "
            "data (make prepare ... DATA_DIR=<folder>)"
        )
    ws, built = _workspace(
        context.run_id,
        cfg.strategy,
        cfg.dataset,
        data_dir,
        cfg.audio_backbone,
        cfg.video_backbone,
        cfg.embed_dim,
        cfg.device,
        cfg.fold,
        cfg.embedded_clips_per_class,
        generate,
        tuple(sorted(cfg.head_kinds.items())),
    )
    part = _node_partition(context, cfg, str(ws.cache.path), pid, num)
    modality = str(node.get("modality", part.modality))
    if "modality-file" in node:  # a real device whose camera comes and goes: the file says what it has now
        modality = Path(str(node["modality-file"])).expanduser().read_text().strip()
    if modality not in MODALITIES:
        raise ValueError(f"node config 'modality' = {modality!r} is invalid: one of {list(MODALITIES)}")
    if modality == AUDIOVISUAL and not ws.cache.meta.get("has_video", True):
        raise ValueError(
            f"node config 'modality' = 'audiovisual' is invalid: this node's data ({ws.cache.path}) "
            "has no video; start it with modality=audio"
        )
    own = "partition-id" not in node  # a node on its own data: no partition id (the server knows it by its node id)
    client = CLIENT_KINDS[modality](
        partition=Partition(-1 if own else part.partition_id, part.indices, modality),
        workspace=ws,
        settings=cfg,
        tasks=strategy_cls.client_tasks,
    )
    client.apply_missingness(num, scheduled="modality" not in node and "modality-file" not in node)
    client.setup_seconds = time.perf_counter() - start
    client.workspace_built = built
    client.created_at = created_at
    return client


def client_fn(context: Context) -> Client:
    return make_client(context).to_client()


# mods around every method's client (clients/mods.py), outermost first: secure aggregation (what leaves the device
# is the masked encoding of whatever the inner ones made), simulated attackers and local differential privacy; each
# passes messages through unless the run or node asks for it
app = ClientApp(client_fn=client_fn, mods=[secure_aggregation_mod, attack_mod, local_dp_mod])
