"""Harmony's stage-1 audio model does not depend on the missing rate.

Every client trains the audio model in stage 1: audio-only clients with ``train-audio`` (audio CE,
Adam over the audio encoder + audio head), audiovisual ones with ``train-unimodal`` (audio CE + video
CE, one Adam over both unimodal models). The gradient of the audio parameters is the same in both
(the video CE does not touch them, and autograd passes the sum's gradient 1 to each term unchanged),
Adam's update is per parameter, the local seed and shuffling depend on the round and the partition
only, the partitions do not depend on the missing rate, and the server draws the clients from the
seed and sums their updates in partition order. So the audio model is measured to be **bit-identical**
(np.array_equal, no tolerance) across missing rates on the CPU; a difference is a bug, not float noise.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.groups import AUDIO_MODEL, get_groups
from mirror_app.core.models import build_model
from mirror_app.core.training import train_audio, train_unimodal
from strategies import Harmony

PARTITIONS = 6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def harmony_audio_model(
    cache, tmp_path, missing_rate: float, clients_per_round: int, rounds: int = 2, mu: float = 0.0, **cfg
):
    manager, proxies = tiny_federation(cache, PARTITIONS, missing_rate=missing_rate)
    for proxy in proxies.values():  # the clients' FedProx weight (a node reads it from the run config)
        proxy.client.settings = dataclasses.replace(proxy.client.settings, mu=mu)
    strategy = tiny_strategy(
        Harmony,
        cache,
        tmp_path / f"mr{missing_rate}",
        recorder=False,
        evaluator=False,
        clients_per_round=clients_per_round,
        num_server_rounds=rounds,
        distill_rounds=0,
        missing_rate=missing_rate,
        mu=mu,
        **cfg,
    )
    for server_round in range(1, rounds + 1):
        _, results = fit_round(strategy, manager, server_round)
        assert all(res.status.code.value == 0 for _, res in results)
        strategy.aggregate_fit(server_round, results, [])
    modalities = {p.client.partition.partition_id: p.client.modality for p in proxies.values()}
    return {g: strategy.state[g] for g in AUDIO_MODEL}, modalities, strategy


def identical(a: dict, b: dict) -> bool:
    return all(np.array_equal(x, y) for g in AUDIO_MODEL for x, y in zip(a[g], b[g]))


@pytest.mark.parametrize("clients_per_round", [PARTITIONS, 4])
def test_harmony_audio_model_is_bit_identical_across_missing_rates(cache, tmp_path, clients_per_round):
    reference, modalities, strategy = harmony_audio_model(cache, tmp_path, 0.0, clients_per_round)
    assert set(modalities.values()) == {"audiovisual"}
    initial = get_groups(strategy.model, AUDIO_MODEL)
    assert not identical(reference, initial)  # stage 1 did train the audio model
    for rate in (0.5, 0.8):
        audio, mods, _ = harmony_audio_model(cache, tmp_path, rate, clients_per_round)
        assert "audio" in mods.values() and "audiovisual" in mods.values()
        assert identical(audio, reference), f"missing rate {rate} changed Harmony's audio model"


def test_harmony_audio_model_is_identical_with_a_proximal_term(cache, tmp_path):
    """FedProx's term sums over all trained parameters (audio and video on audiovisual clients), but its
    gradient is per parameter too."""
    plain, _, _ = harmony_audio_model(cache, tmp_path, 0.0, PARTITIONS)
    a, _, _ = harmony_audio_model(cache, tmp_path, 0.0, PARTITIONS, mu=1.0, aggregator="fedprox")
    b, _, _ = harmony_audio_model(cache, tmp_path, 0.5, PARTITIONS, mu=1.0, aggregator="fedprox")
    assert not identical(a, plain)  # the proximal term is in effect
    assert identical(a, b)


def test_train_unimodal_trains_the_audio_model_exactly_as_train_audio(cache):
    """The client-level reason: one local round of each task from the same weights and seed."""
    model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0)
    audio_only, both = model, copy.deepcopy(model)
    rows = cache.indices("train")[:48]
    kw = dict(epochs=2, batch_size=8, lr=1e-3, optimizer="adam", device="cpu", seed=7)
    train_audio(audio_only, cache, rows, **kw)
    train_unimodal(both, cache, rows, **kw)
    assert identical(get_groups(audio_only, AUDIO_MODEL), get_groups(both, AUDIO_MODEL))
