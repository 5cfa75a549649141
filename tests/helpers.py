"""Small fixtures the tests share: a tiny feature cache and in-process client proxies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.common import Code, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from data.cache import TEST, TRAIN, FeatureCache, ensure_cache

TINY_CLASSES = 4


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
