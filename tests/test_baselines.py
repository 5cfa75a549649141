"""The paper's baselines and the swappable inner aggregation rule, on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server
from flwr.server.strategy import FedAvgM
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, GROUPS, VIDEO_MODEL, group_sizes, unflatten
from mirror_app.core.training import proximal_term, train_audio
from strategies import STRATEGIES, Harmony, ModalityAwareFedAvg, UniFL


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def one_round(strategy, manager, server_round=1):
    _, results = fit_round(strategy, manager, server_round)
    updates = {}
    for proxy, res in results:
        names = res.metrics["groups"].split(",")
        updates[proxy.cid] = (
            proxy.client.modality,
            res.metrics["task"],
            unflatten(parameters_to_ndarrays(res.parameters), names, group_sizes(strategy.model, names)),
            res.num_examples,
        )
    strategy.aggregate_fit(server_round, results, [])
    return updates


def weighted(updates, group, modality=None):
    rows = [(u[group], n) for m, _, u, n in updates.values() if group in u and (modality is None or m == modality)]
    total = sum(n for _, n in rows)
    return sum(a[0].astype(np.float64) * n for a, n in rows) / total


def snapshot(strategy):
    return {k: [a.copy() for a in v] for k, v in strategy.state.items()}


def unchanged(before, strategy, key):
    return all(np.array_equal(a, b) for a, b in zip(before[key], strategy.state[key]))


@pytest.mark.parametrize("name", ["modality-mirror", "multifl", "unifl", "harmony", "fedcmi"])
def test_every_method_gets_the_same_round_budget(cache, tmp_path, name):
    strategy = tiny_strategy(
        STRATEGIES[name], cache, tmp_path, recorder=False, evaluator=False, num_server_rounds=3, distill_rounds=2
    )
    assert strategy.total_rounds == 5


def test_unifl_keeps_the_two_client_kinds_apart(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(UniFL, cache, tmp_path, clients_per_round=6, recorder=False, evaluator=False)
    before = snapshot(strategy)
    updates = one_round(strategy, manager)
    tasks = {(m, t) for m, t, _, _ in updates.values()}
    assert tasks == {("audio", "train-audio"), ("audiovisual", "train-av")}
    # the evaluated audio model is the audio-only clients' alone
    np.testing.assert_allclose(
        strategy.state["audio_encoder"][0], weighted(updates, "audio_encoder", "audio"), rtol=1e-5, atol=1e-6
    )
    # audiovisual clients train their own copy of the audio encoder
    np.testing.assert_allclose(
        strategy.state["av/audio_encoder"][0], weighted(updates, "audio_encoder", "audiovisual"), rtol=1e-5, atol=1e-6
    )
    assert unchanged(before, strategy, "video_encoder") and not unchanged(before, strategy, "av/video_encoder")
    assert strategy.av_model_state()["audio_encoder"] is strategy.state["av/audio_encoder"]


def test_harmony_stage_one_is_modality_wise_and_stage_two_fuses_on_a_copy(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(
        Harmony,
        cache,
        tmp_path,
        clients_per_round=6,
        num_server_rounds=1,
        distill_rounds=1,
        recorder=False,
        evaluator=False,
    )
    before = snapshot(strategy)
    updates = one_round(strategy, manager, 1)
    assert {(m, t) for m, t, _, _ in updates.values()} == {("audio", "train-audio"), ("audiovisual", "train-unimodal")}
    for m, _, u, _ in updates.values():
        assert set(u) == (set(AUDIO_MODEL) if m == "audio" else set(AUDIO_MODEL + VIDEO_MODEL))
    # stage 1: the audio model is averaged over every client, the video model over audiovisual ones
    np.testing.assert_allclose(
        strategy.state["audio_encoder"][0], weighted(updates, "audio_encoder"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(strategy.state["video_head"][0], weighted(updates, "video_head"), rtol=1e-5, atol=1e-6)
    assert unchanged(before, strategy, "fusion_head")

    stage1 = snapshot(strategy)
    updates = one_round(strategy, manager, 2)
    assert {(m, t) for m, t, _, _ in updates.values()} == {("audiovisual", "train-av")}
    # stage 2 trains the fusion model's own copy; the evaluated audio model stays the stage-1 one
    for g in AUDIO_MODEL + VIDEO_MODEL + ("fusion_head",):
        assert unchanged(stage1, strategy, g)
    for g in AV_MODEL:
        np.testing.assert_allclose(strategy.state["av/" + g][0], weighted(updates, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [{"aggregator": "scaffold"}, {"aggregator": "fedprox"}, {"server-lr": 0}, {"server-momentum": 1.0}, {"mu": -1}],
)
def test_aggregator_config_errors(bad):
    with pytest.raises(ConfigError):
        RunConfig.from_dict(bad)


def test_fedavgm_is_flowers_rule_applied_per_group(cache, tmp_path):
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, recorder=False, evaluator=False, aggregator="fedavgm", server_momentum=0.5
    )
    rng = np.random.default_rng(0)
    start = [a.copy() for a in strategy.state["audio_head"]]
    reference = FedAvgM(initial_parameters=ndarrays_to_parameters(start), server_momentum=0.5)
    for server_round in (1, 2):
        contributions = [([a + rng.normal(size=a.shape).astype(a.dtype) for a in start], n) for n in (3, 7)]
        ours = strategy.aggregate_group("audio_head", contributions, server_round)
        strategy.state["audio_head"] = ours
        ref, _ = reference.aggregate_fit(
            server_round,
            [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(c), n, {})) for c, n in contributions],
            [],
        )
        for a, b in zip(ours, parameters_to_ndarrays(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # momentum makes round 2 differ from a plain weighted mean of its updates
    plain = sum(c[0] * n for c, n in contributions) / 10
    assert not np.allclose(ours[0], plain)


def test_fedadam_and_fedavgm_run_end_to_end_in_process(cache, tmp_path):
    for aggregator in ("fedadam", "fedavgm"):
        manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
        strategy = tiny_strategy(
            ModalityAwareFedAvg, cache, tmp_path / aggregator, clients_per_round=4, aggregator=aggregator
        )
        Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
        assert set(strategy.aggregator.inner) >= {"audio_encoder", "audio_head", "video_encoder", "fusion_head"}
        assert all(np.isfinite(a).all() for k in GROUPS for a in strategy.state[k])


def test_proximal_term_pulls_towards_the_global_weights(cache):
    from mirror_app.core.models import build_model

    anchor = [torch.zeros(3)]
    assert float(proximal_term([torch.ones(3)], anchor, 2.0)) == pytest.approx(3.0)

    def drift(mu):
        model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0)
        start = [p.detach().clone() for p in model.audio_head.parameters()]
        train_audio(
            model,
            cache,
            cache.indices("train"),
            epochs=3,
            batch_size=8,
            lr=0.01,
            optimizer="sgd",
            device="cpu",
            seed=0,
            mu=mu,
        )
        return sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.audio_head.parameters(), start))

    assert drift(10.0) < 0.5 * drift(0.0)
