"""Group-wise aggregation: who receives and returns which parameter groups, and how they are averaged."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server
from flwr.server.strategy import FedAvg
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, GROUPS, flatten, group_sizes, unflatten
from strategies import ModalityAwareFedAvg, ModalityMirror


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def test_equals_flower_fedavg_when_every_client_is_audiovisual(cache, tmp_path):
    manager, _ = tiny_federation(cache, 5, missing_rate=0.0)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, missing_rate=0.0, clients_per_round=5, recorder=False, evaluator=False
    )
    before = {g: [a.copy() for a in v] for g, v in strategy.state.items()}
    _, results = fit_round(strategy, manager)
    assert len(results) == 5 and len({r.num_examples for _, r in results}) > 1  # unequal weights
    ours, _ = strategy.aggregate_fit(1, results, [])

    # Flower's FedAvg over full models: the untouched audio head is the same everywhere.
    full_results = []
    for proxy, res in results:
        names = res.metrics["groups"].split(",")
        groups = unflatten(parameters_to_ndarrays(res.parameters), names, group_sizes(strategy.model, names))
        full = {g: groups.get(g, before[g]) for g in GROUPS}
        full_results.append(
            (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(flatten(full, GROUPS)), res.num_examples, {}))
        )
    reference, _ = FedAvg().aggregate_fit(1, full_results, [])
    for a, b in zip(parameters_to_ndarrays(ours), parameters_to_ndarrays(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # and the model did move
    assert any(not np.allclose(a, b) for a, b in zip(flatten(before, GROUPS), parameters_to_ndarrays(ours)))


def test_audio_only_clients_never_see_or_touch_video_and_fusion(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path, clients_per_round=6, recorder=False, evaluator=False)
    instructions, results = fit_round(strategy, manager)
    kinds = {proxy.cid: proxy.client.modality for proxy, _ in instructions}
    assert sorted(kinds.values()).count("audio") == 3
    sizes = {g: len(strategy.state[g]) for g in GROUPS}
    for proxy, ins in instructions:
        sent = ins.config["groups"].split(",")
        if kinds[proxy.cid] == "audio":
            assert sent == list(AUDIO_MODEL)
            assert len(parameters_to_ndarrays(ins.parameters)) == sizes["audio_encoder"] + sizes["audio_head"]
        else:  # the audiovisual model only (av-trains-audio-head = false, the default: the paper's reading)
            assert sent == list(AV_MODEL)
    for proxy, res in results:
        expected = AUDIO_MODEL if kinds[proxy.cid] == "audio" else AV_MODEL
        assert res.metrics["groups"].split(",") == list(expected)

    # Aggregate only the audio-only clients' updates: video encoder and fusion head must not move.
    before = {g: [a.copy() for a in v] for g, v in strategy.state.items()}
    audio_results = [(p, r) for p, r in results if kinds[p.cid] == "audio"]
    strategy.aggregate_fit(1, audio_results, [])
    for g in ("video_encoder", "fusion_head"):
        assert all(np.array_equal(a, b) for a, b in zip(before[g], strategy.state[g]))
    for g in AUDIO_MODEL:
        assert any(not np.array_equal(a, b) for a, b in zip(before[g], strategy.state[g]))


def test_each_group_is_averaged_over_exactly_its_clients(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path, clients_per_round=6, recorder=False, evaluator=False)
    _, results = fit_round(strategy, manager)
    updates = []
    for _, res in results:
        names = res.metrics["groups"].split(",")
        updates.append(
            (
                unflatten(parameters_to_ndarrays(res.parameters), names, group_sizes(strategy.model, names)),
                res.num_examples,
            )
        )
    strategy.aggregate_fit(1, results, [])
    for g in GROUPS:
        contributors = [(u[g], n) for u, n in updates if g in u]
        if not contributors:
            continue
        total = sum(n for _, n in contributors)
        expected = sum(u[0].astype(np.float64) * n for u, n in contributors) / total
        np.testing.assert_allclose(strategy.state[g][0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("corrupt", ["nan", "extra-group", "shape"])
def test_bad_updates_are_rejected_and_counted(cache, tmp_path, corrupt):
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path, clients_per_round=4, recorder=False, evaluator=False)
    _, results = fit_round(strategy, manager)
    proxy, res = next((p, r) for p, r in results if p.client.modality == "audio")
    arrays = parameters_to_ndarrays(res.parameters)
    metrics = dict(res.metrics)
    if corrupt == "nan":
        arrays[0] = np.full_like(arrays[0], np.nan)
    elif corrupt == "extra-group":  # an audio-only client claiming to have trained the video encoder
        arrays = arrays + [a.copy() for a in strategy.state["video_encoder"]]
        metrics["groups"] = metrics["groups"] + ",video_encoder"
    else:
        arrays[0] = np.zeros((3, 3), dtype=np.float32)
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), res.num_examples, metrics)
    results = [(p, bad if p is proxy else r) for p, r in results]
    _, stats = strategy.aggregate_fit(1, results, [])
    assert stats["failures"] == 1
    assert stats["clients"] == len(results) - 1
    for g in GROUPS:
        assert all(np.isfinite(a).all() for a in strategy.state[g])
    if corrupt == "extra-group":
        # the only video updates averaged are the audiovisual clients': compare with them alone
        av = [(r, p) for p, r in results if p.client.modality == "audiovisual"]
        total = sum(r.num_examples for r, _ in av)
        firsts = [parameters_to_ndarrays(r.parameters)[0 + len(strategy.state["audio_encoder"])] for r, _ in av]
        expected = sum(f.astype(np.float64) * r.num_examples for f, (r, _) in zip(firsts, av)) / total
        np.testing.assert_allclose(strategy.state["video_encoder"][0], expected, rtol=1e-5, atol=1e-6)


def test_client_crash_does_not_end_the_run_and_is_counted(cache, tmp_path):
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5, failing=(0,))
    strategy = tiny_strategy(
        ModalityMirror, cache, tmp_path, clients_per_round=4, num_server_rounds=2, distill_rounds=0
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    import pandas as pd

    metrics = pd.read_csv(strategy.recorder.dir / "metrics.csv")
    clients = pd.read_csv(strategy.recorder.dir / "clients.csv")
    assert list(metrics["round"]) == [0, 1, 2]
    assert (metrics.loc[metrics["round"] > 0, "failures"] == 1).all()
    assert (metrics.loc[metrics["round"] > 0, "clients"] == 3).all()
    assert (clients["status"] == "failed").sum() == 2
    assert (strategy.recorder.dir / "summary.json").is_file()


def test_clients_csv_names_the_client_whose_update_krum_kept(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=6, evaluator=False, aggregator="krum", num_malicious=1
    )
    _, results = fit_round(strategy, manager)
    strategy.aggregate_fit(1, results, [])
    rows = strategy.recorder.clients
    assert len(rows) == 6
    # the audio encoder has 6 contributors (Krum needs 2 f + 3 = 5): one client's update is the new encoder
    kept = [row for row in rows if "audio_encoder" in row["kept_groups"].split(";")]
    assert len(kept) == 1
    res = next(r for p, r in results if p.cid == kept[0]["node_id"])
    names = res.metrics["groups"].split(",")
    theirs = unflatten(parameters_to_ndarrays(res.parameters), names, group_sizes(strategy.model, names))
    for a, b in zip(strategy.state["audio_encoder"], theirs["audio_encoder"]):
        np.testing.assert_array_equal(a, b)
    # the video encoder has 3 (the audiovisual clients): aggregated by the median, so nobody's update was kept
    av = [row for row in rows if row["modality"] == "audiovisual"]
    assert len(av) == 3 and all("video_encoder" in row["fallback_groups"].split(";") for row in av)
    assert not any("video_encoder" in row["kept_groups"] for row in rows)
