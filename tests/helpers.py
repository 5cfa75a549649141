"""Small fixtures the tests share: a tiny feature cache and in-process client proxies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.common import Code, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from data.cache import TEST, TRAIN, FeatureCache, ensure_cache

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mirror_app", "strategies", "clients", "data")  # the project's packages (pyproject's [tool.setuptools])


def copy_packages(dest: Path) -> Path:
    """A copy of the project's packages (without bytecode) under ``dest``: the code alone, as a device holds it."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


TINY_CLASSES = 4
TINY = 192  # ast-tiny's width (SSAST tiny224): 12 blocks of 3 heads
SMALL = 384


def tiny_cache(path: Path, n: int = 160, frames: int = 20, mels: int = 8, size: int = 8, seed: int = 0) -> FeatureCache:
    """A learnable toy cache: the class shifts the mean of both modalities."""

    def build(tmp: Path) -> dict:
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % TINY_CLASSES
        audio = (rng.normal(size=(n, frames, mels)) + labels[:, None, None] * 0.5).astype(np.float32)
        video = (rng.normal(size=(n, 3, size, size)) + labels[:, None, None, None]).astype(np.float32)
        split = np.where(np.arange(n) % 5 == 0, TEST, TRAIN).astype(np.uint8)
        np.save(tmp / "audio.npy", audio)
        np.save(tmp / "video.npy", video)
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        np.save(tmp / "split.npy", split)
        return {"dataset": "tiny", "classes": [f"class {i}" for i in range(TINY_CLASSES)], "num_samples": n}

    return ensure_cache(path, {"dataset": "tiny", "n": n, "seed": seed}, build)


class LocalProxy(ClientProxy):
    """Calls a NumPyClient in-process, like Flower would through a SuperNode."""

    def __init__(self, cid: str, client):
        super().__init__(cid)
        self.client = client
        self.fit_calls: list[dict] = []

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), self.client.get_properties(ins.config))

    def fit(self, ins, timeout, group_id):
        arrays = parameters_to_ndarrays(ins.parameters)
        self.fit_calls.append({"config": dict(ins.config), "arrays": arrays})
        out, n, metrics = self.client.fit(arrays, dict(ins.config))
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), n, metrics)

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def all_client_tasks() -> dict:
    """Every client task the registered methods declare (in-process clients serve any method)."""
    from strategies import STRATEGIES

    return {name: task for cls in STRATEGIES.values() for name, task in cls.client_tasks.items()}


def run_data_dir(cache: FeatureCache) -> str:
    """The data-dir of an in-process run over ``cache``: the cache's own folder, never the user's default data-dir
    (whose ``pretrained/`` files ``audio-pretrained='auto'`` would otherwise pick up)."""
    return str(Path(cache.path).parent)


def tiny_federation(
    cache: FeatureCache,
    num_partitions: int,
    missing_rate: float,
    alpha: float = 1.0,
    seed: int = 0,
    failing: tuple[int, ...] = (),
    node_ids: list[str] | None = None,
    **config,
):
    """In-process clients over ``cache`` registered in a SimpleClientManager.

    Partitions listed in ``failing`` get a client whose training raises. ``node_ids`` names the
    nodes (by default ``node<partition>``), e.g. at random like Flower does per run. ``config``: run config
    keys of the clients' settings (snake_case, e.g. ``distill_divergence="reverse"``).
    """
    import torch
    from flwr.server import SimpleClientManager

    from clients import CLIENT_KINDS, Task, Workspace
    from data.partition import get_partition
    from mirror_app.core.config import RunConfig
    from mirror_app.core.models import build_model, initial_model

    settings = RunConfig.from_dict(
        {"local-epochs": 1, "batch-size": 8, "lr": 1e-3, "seed": seed, "missing-rate": missing_rate}
        | {"data-dir": run_data_dir(cache)}
        | {k.replace("_", "-"): v for k, v in config.items()}
    )

    def make():
        shapes = (cache.audio.shape[1:], cache.video.shape[1:])
        return build_model(cache.num_classes, *shapes, seed=seed, heads=settings.head_kinds)

    def make_base(base_seed: int, audio_pretrained: str = "", video_pretrained: str = ""):
        return initial_model(
            cache.num_classes,
            cache.audio.shape[1:],
            cache.video.shape[1:],
            "tdnn-small",
            "cnn-small",
            64,
            base_seed,
            audio_pretrained,
            video_pretrained,
            heads=settings.head_kinds,
        )

    ws = Workspace(cache, make(), make(), torch.device("cpu"), make_base=make_base)
    tasks = all_client_tasks()
    manager = SimpleClientManager()
    proxies = {}
    for pid in range(num_partitions):
        part = get_partition(str(cache.path), pid, num_partitions, alpha, missing_rate, seed)
        client = CLIENT_KINDS[part.modality](partition=part, workspace=ws, settings=settings, tasks=tasks)
        client.apply_missingness(num_partitions)
        if pid in failing:

            def boom(*args, **kwargs):
                raise RuntimeError("simulated client crash")

            client.tasks = {name: Task(boom, needs=(), video=t.video) for name, t in tasks.items()}
        proxy = LocalProxy(node_ids[pid] if node_ids else f"node{pid}", client)
        manager.register(proxy)
        proxies[pid] = proxy
    return manager, proxies


def tiny_strategy(cls, cache: FeatureCache, tmp: Path, recorder: bool = True, evaluator: bool = True, **overrides):
    """A strategy of class ``cls`` over ``cache`` with a small run config."""
    import torch

    from mirror_app.core.config import RunConfig
    from mirror_app.core.evaluation import Evaluator
    from mirror_app.core.models import build_model
    from mirror_app.results import RunRecorder

    raw = {
        "num-server-rounds": 2,
        "distill-rounds": 1,
        "clients-per-round": 3,
        "missing-rate": 0.5,
        "eval-every": 1,
        "output-dir": str(tmp / "out"),
        "dirichlet-alpha": 1.0,
        "data-dir": run_data_dir(cache),
    }
    raw.update(overrides)
    cfg = RunConfig.from_dict(raw)

    def make(seed=None):
        return build_model(
            cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=seed, heads=cfg.head_kinds
        )

    rec = RunRecorder(tmp / "out" / "run", cfg.to_dict(), cache.classes) if recorder else None
    ev = Evaluator(cls.server_model(make(), cfg, cache.classes), cache, torch.device("cpu")) if evaluator else None
    return cls(cfg=cfg, model=cls.server_model(make(cfg.seed), cfg, cache.classes), evaluator=ev, recorder=rec)


def fit_round(strategy, manager, server_round: int = 1):
    """configure_fit, then every chosen client's fit, in-process: (instructions, results)."""
    instructions = strategy.configure_fit(server_round, strategy.initialize_parameters(manager), manager)
    results = [(proxy, proxy.fit(ins, None, server_round)) for proxy, ins in instructions]
    return instructions, results


# ------------------------------------------------------------- published checkpoint layouts
def deit_blocks(prefix: str, width: int, g: torch.Generator, depth: int = 12) -> dict[str, torch.Tensor]:
    """DeiT's transformer blocks and final norm under ``prefix``, as timm 0.4.5 names them (SSAST's ``v``)."""
    out = {}
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        shapes = {
            "norm1.weight": (width,),
            "norm1.bias": (width,),
            "attn.qkv.weight": (3 * width, width),
            "attn.qkv.bias": (3 * width,),
            "attn.proj.weight": (width, width),
            "attn.proj.bias": (width,),
            "norm2.weight": (width,),
            "norm2.bias": (width,),
            "mlp.fc1.weight": (4 * width, width),
            "mlp.fc1.bias": (4 * width,),
            "mlp.fc2.weight": (width, 4 * width),
            "mlp.fc2.bias": (width,),
        }
        out |= {b + k: 0.05 * torch.randn(s, generator=g) for k, s in shapes.items()}
    out[prefix + "norm.weight"] = 1 + 0.05 * torch.randn(width, generator=g)
    out[prefix + "norm.bias"] = 0.05 * torch.randn(width, generator=g)
    return out


def ssast_checkpoint(width=TINY, patch=(16, 16), tokens=2, fdim=128, tdim=1024, seed=0) -> dict[str, torch.Tensor]:
    """A checkpoint in the layout SSAST releases: DataParallel around the pretraining model."""
    g = torch.Generator().manual_seed(seed)
    grid = (fdim // patch[0], tdim // patch[1])
    v = "module.v."
    state = {
        v + "cls_token": torch.randn(1, 1, width, generator=g),
        v + "pos_embed": torch.randn(1, tokens + grid[0] * grid[1], width, generator=g),
        v + "patch_embed.proj.weight": 0.05 * torch.randn(width, 1, *patch, generator=g),
        v + "patch_embed.proj.bias": 0.05 * torch.randn(width, generator=g),
        v + "head.weight": torch.randn(1000, width, generator=g),  # timm DeiT's ImageNet heads, unused
        v + "head.bias": torch.randn(1000, generator=g),
        "module.cpredlayer.0.weight": torch.randn(width, width, generator=g),  # the pretext heads
        "module.cpredlayer.0.bias": torch.randn(width, generator=g),
        "module.cpredlayer.2.weight": torch.randn(256, width, generator=g),
        "module.cpredlayer.2.bias": torch.randn(256, generator=g),
        "module.gpredlayer.0.weight": torch.randn(width, width, generator=g),
        "module.gpredlayer.0.bias": torch.randn(width, generator=g),
        "module.gpredlayer.2.weight": torch.randn(256, width, generator=g),
        "module.gpredlayer.2.bias": torch.randn(256, generator=g),
        "module.mask_embed": torch.randn(1, 1, width, generator=g),
        "module.p_input_fdim": torch.tensor(fdim),
        "module.p_input_tdim": torch.tensor(tdim),
    }
    if tokens == 2:
        state[v + "dist_token"] = torch.randn(1, 1, width, generator=g)
        state[v + "head_dist.weight"] = torch.randn(1000, width, generator=g)
        state[v + "head_dist.bias"] = torch.randn(1000, generator=g)
    return state | deit_blocks(v, width, g)


def run_tool(args: list[str], env: dict | None = None, timeout: float = 600):
    """`make run`'s tool (python -m mirror_app.run) as a subprocess from the project root."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "mirror_app.run", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
