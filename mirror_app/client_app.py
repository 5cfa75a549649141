"""ClientApp: which client a node runs follows from its partition (simulation) or node config.

Node config keys: ``partition-id`` and ``num-partitions`` (set by the simulation engine, or
by ``flower-supernode --node-config``; leave both out to train on all of the node's own
data), optional ``modality`` (``audio`` | ``audiovisual``, overriding the run's seeded
missing-rate assignment) and optional ``data-dir`` (where this node's feature caches are).
"""

from __future__ import annotations

import time
from functools import lru_cache

from flwr.client import Client, ClientApp
from flwr.common import Context

from clients import CLIENT_KINDS, LocalSettings, Workspace
from data import load_dataset
from data.partition import AUDIOVISUAL, MODALITIES, Partition, get_partition
from mirror_app.config import RunConfig
from mirror_app.models import build_model, initial_model
from mirror_app.server_app import resolve_device


@lru_cache(maxsize=4)
def _workspace(dataset: str, data_dir: str, audio_backbone: str, video_backbone: str, embed_dim: int,
               device: str, fold: int = 1) -> Workspace:
    """Dataset (memory-mapped) and models, built once per worker process and reused."""
    # torch's thread count follows OMP_NUM_THREADS, which Ray sets to the client's share
    # (client-resources-num-cpus, Flower's default 2); a SuperNode's ClientApp uses the device's cores
    cache = load_dataset(dataset, data_dir, fold)
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])

    def make():
        return build_model(cache.num_classes, *shapes, audio_backbone, video_backbone, embed_dim).to(dev)

    def make_base(seed: int, audio_pretrained: str = "", video_pretrained: str = ""):  # as the server's (CPU)
        return initial_model(cache.num_classes, *shapes, audio_backbone, video_backbone, embed_dim, seed,
                             audio_pretrained, video_pretrained)

    dev = resolve_device(device)
    return Workspace(cache=cache, model=make(), teacher=make(), device=dev, make_base=make_base)


@lru_cache(maxsize=16)
def _config(items: tuple) -> RunConfig:
    return RunConfig.from_dict(dict(items))


def make_client(context: Context):
    """The NumPyClient for this node: AudioClient or AudioVisualClient.

    Without ``partition-id``/``num-partitions`` the node trains on the whole train split of its
    own data (``data-dir`` in its node config). A node whose data has no video refuses the
    audiovisual role.
    """
    start, builds = time.perf_counter(), _workspace.cache_info().misses
    cfg = _config(tuple(sorted(context.run_config.items())))
    node = context.node_config
    if ("partition-id" in node) != ("num-partitions" in node):
        raise ValueError("node config needs both 'partition-id' and 'num-partitions' (a partition of a shared "
                         "dataset), or neither (the node's own data-dir): "
                         "flower-supernode --node-config \"partition-id=0 num-partitions=2\"")
    pid, num = (int(node["partition-id"]), int(node["num-partitions"])) if "partition-id" in node else (0, 1)
    data_dir = str(node.get("data-dir") or cfg.data_path)
    ws = _workspace(cfg.dataset, data_dir, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim, cfg.device,
                    cfg.fold)
    part = get_partition(str(ws.cache.path), pid, num, cfg.dirichlet_alpha, cfg.missing_rate, cfg.seed, cfg.fold,
                         cfg.dev_fraction, cfg.partitioner)
    modality = str(node.get("modality", part.modality))
    if modality not in MODALITIES:
        raise ValueError(f"node config 'modality' = {modality!r} is invalid: one of {list(MODALITIES)}")
    if modality == AUDIOVISUAL and not ws.cache.meta.get("has_video", True):
        raise ValueError(f"node config 'modality' = 'audiovisual' is invalid: this node's data ({ws.cache.path}) "
                         "has no video; start it with modality=audio")
    settings = LocalSettings(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.temperature,
                             cfg.distill_ce_weight, cfg.seed, cfg.mu, cfg.lora_rank, cfg.align_av_weight,
                             *cfg.pretrained_paths())
    client = CLIENT_KINDS[modality](
        partition=Partition(part.partition_id, part.indices, modality), workspace=ws, settings=settings
    )
    client.setup_seconds = time.perf_counter() - start
    client.workspace_built = _workspace.cache_info().misses > builds
    return client


def client_fn(context: Context) -> Client:
    return make_client(context).to_client()


app = ClientApp(client_fn=client_fn)
