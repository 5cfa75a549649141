"""Privacy that holds: DP noise and client draws nobody can recompute from the run config (unless a simulation
study asks for it, and then says so), local DP accounted against the server, the small fixes of the privacy review
(central DP and median-relative clipping, the group count of the ledger, multi-Krum's keep, frame-weighted groups)
and secure aggregation's encoding, in-process; SecAgg+ itself through `flwr run` in test_secure_aggregation.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy
from test_robust import RECEIVED, context, honest, reply_of, train_message

from clients import mods
from mirror_app.core import secure
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.privacy import ORDERS, PrivacyLedger, gaussian_epsilon, spent
from strategies import ModalityAwareFedAvg, ModalityMirror, resolve_config
from strategies.aggregation import GroupAggregator, krum


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Who is sending: Flower sets it in the ServerApp process; Messages made in a test need one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def aggregator(**config) -> GroupAggregator:
    return GroupAggregator(RunConfig.from_dict({k.replace("_", "-"): v for k, v in config.items()}))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("privacy") / "tiny")


BIG = [([np.full(1000, v, np.float32)], n) for v, n in ((10.0, 1), (-10.0, 100))]
ZERO = [np.zeros(1000, np.float32)]


# ------------------------------------------------------------------------------------------- noise nobody recomputes
def test_central_dp_is_flowers_clipped_uniform_mean_and_its_noise_comes_from_the_os_unless_insecure():
    """Fixed-size draws: Flower's wrapper's clipped uniform mean, with noise sigma x 2 C / n (replace-one);
    Poisson draws: the clipped sum over the expected count, noise sigma x C / that count (add-remove). Two runs with
    one config draw different noise of the same standard deviation; with dp-insecure-seeded-noise they repeat."""
    updates = [([np.linspace(-3, 5, 1000).astype(np.float32)], 7), ([np.full(1000, 0.01, np.float32)], 50)]
    quiet = aggregator(
        dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=1e-9, dp_insecure_seeded_noise=True, dp_sampling="fixed"
    )
    ours = quiet("g", ZERO, updates, 3)[0]
    flower = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1e-9, 1.0, 2)
    flower.current_round_params = ZERO
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), 1, {})) for a, _ in updates]
    reference = parameters_to_ndarrays(flower.aggregate_fit(3, results, [])[0])[0]
    np.testing.assert_allclose(ours, reference, atol=1e-7)
    poisson = aggregator(dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=1e-9, dp_insecure_seeded_noise=True)
    np.testing.assert_allclose(poisson("g", ZERO, updates, 3, 4.0)[0], reference * 2 / 4, atol=1e-7)  # sum / 4

    secure_noise = aggregator(dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=2.0, dp_sampling="fixed")
    a, b = secure_noise("g", ZERO, BIG, 3)[0], secure_noise("g", ZERO, BIG, 3)[0]
    assert not np.allclose(a, b)  # the operating system's entropy: no two draws alike
    assert a.std() == pytest.approx(2.0 * 2 * 1.0 / 2, rel=0.1) and b.std() == pytest.approx(2.0, rel=0.1)  # 2 C / n
    by_expected = aggregator(dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=2.0)("g", ZERO, BIG, 3, 8.0)[0]
    assert by_expected.std() == pytest.approx(2.0 * 1.0 / 8.0, rel=0.1)  # sigma C / the expected count
    np.random.seed(0)
    c = secure_noise("g", ZERO, BIG, 3)[0]
    np.random.seed(0)
    assert not np.allclose(c, secure_noise("g", ZERO, BIG, 3)[0])  # NumPy's global state plays no part
    seeded = aggregator(dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=2.0, dp_insecure_seeded_noise=True)
    np.testing.assert_array_equal(seeded("g", ZERO, BIG, 3)[0], seeded("g", ZERO, BIG, 3)[0])
    assert not np.allclose(seeded("g", ZERO, BIG, 3)[0], seeded("g", ZERO, BIG, 4)[0])  # per round
    assert not np.allclose(seeded("g", ZERO, BIG, 3)[0], seeded("h", ZERO, BIG, 3)[0])  # per group


@pytest.mark.parametrize("neighbouring, factor", [("replace", 2.0), ("add-remove", 1.0)])
def test_local_dp_noise_follows_the_neighbouring_relation_and_the_os_entropy(neighbouring, factor):
    """std = sigma x sensitivity (2 C to hide a replaced client's data, C an added or removed one); two replies to
    the same message differ unless dp-insecure-seeded-noise (which only a simulation accepts)."""
    run = {"dp": "local", "dp-clipping-norm": 0.5, "dp-noise-multiplier": 3.0, "dp-neighbouring": neighbouring}

    def noise(run_config: dict) -> np.ndarray:
        got = parameters_to_ndarrays(
            reply_of(mods.local_dp_mod(train_message(), context(0, run_config), honest([]))).parameters
        )
        clipped = 0.5 / np.sqrt(10)  # the +1 update of 10 values, clipped to norm C
        return np.concatenate([(a - r - clipped).ravel() for a, r in zip(got[:2], RECEIVED[:2])])

    draws = np.concatenate([noise(run) for _ in range(400)])
    assert draws.std() == pytest.approx(3.0 * factor * 0.5, rel=0.05)
    assert not np.allclose(noise(run), noise(run))
    insecure = run | {"dp-insecure-seeded-noise": True}
    with pytest.raises(ValueError, match="'dp-insecure-seeded-noise' = True is invalid on a deployed node"):
        noise(insecure)  # not a simulation: refused


def test_local_dp_repeats_with_the_insecure_flag_in_a_simulation(monkeypatch):
    monkeypatch.setattr(mods, "simulated", lambda: True)
    run = {"dp": "local", "dp-clipping-norm": 0.5, "dp-noise-multiplier": 3.0, "dp-insecure-seeded-noise": True}
    first, second = (
        parameters_to_ndarrays(reply_of(mods.local_dp_mod(train_message(), context(0, run), honest([]))).parameters)
        for _ in range(2)
    )
    np.testing.assert_array_equal(first[0], second[0])


def test_a_dp_run_draws_its_clients_from_the_os_entropy_unless_insecure(cache, tmp_path):
    """Amplification by sampling assumes nobody knows who was drawn: the seed must not decide it."""

    def draws(**dp) -> list[list[str]]:
        manager, _ = tiny_federation(cache, 12, missing_rate=0.25)
        strategy = tiny_strategy(
            ModalityAwareFedAvg, cache, tmp_path, clients_per_round=3, recorder=False, evaluator=False, **dp
        )
        strategy.initialize_parameters(manager)
        rounds = []
        for r in range(1, 7):
            rounds.append(sorted(proxy.cid for proxy, _ in strategy.configure_fit(r, None, manager)))
        return rounds

    assert draws() == draws()  # without DP: a seed gives the same clients
    central = {"dp": "central", "dp-clipping-norm": 1.0}
    assert draws(**central) != draws(**central)
    insecure = central | {"dp-insecure-seeded-noise": True}
    assert draws(**insecure) == draws(**insecure)  # Poisson draws from the seed: repeatable, and not secret
    fixed = insecure | {"dp-sampling": "fixed"}
    assert draws(**fixed) == draws(**fixed) == draws()  # fixed-size draws from the seed: the non-DP run's clients


def test_insecure_noise_is_refused_by_a_deployment_before_it_starts(tmp_path, data_dir):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror_app.deploy.local",
            "--nodes",
            "2",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(data_dir),
            "--run-config",
            "dp='local' dp-clipping-norm=1.0 dp-insecure-seeded-noise=true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'dp-insecure-seeded-noise' = True is invalid in a deployment" in lines[0], res.stderr


# ------------------------------------------------------------------------------------------- local DP's accounting
def test_local_epsilon_is_the_gaussian_composed_over_the_worst_clients_releases_with_no_sampling():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    ledger = PrivacyLedger("local", 1.0, 1e-5)
    for released in (["p0", "p1", "p2"], ["p0", "p3"], ["p0", "p1"], ["p4"]):
        eps = ledger.record(groups=3, clients_per_round=3, eligible=100, released=released)
    direct = rdp.RdpAccountant(ORDERS)
    direct.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(1.0), 3))  # client 0 released 3 times
    assert eps == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12) == pytest.approx(gaussian_epsilon(1.0, 3, 1e-5))
    assert ledger.median_client() == pytest.approx(gaussian_epsilon(1.0, 1, 1e-5))  # releases 3, 2, 1, 1, 1
    # at the same sigma, with amplification, a central ledger of the same rounds spends less
    central = PrivacyLedger("central", 1.0, 1e-5)
    for _ in range(4):
        central.record(groups=1, clients_per_round=3, eligible=100)
    assert eps >= central.epsilon()
    # the case: a busiest client of 19 releases out of 100 rounds at sigma 1 and 2
    assert gaussian_epsilon(1.0, 19, 1e-5) == pytest.approx(29, abs=1.5)
    assert gaussian_epsilon(2.0, 19, 1e-5) == pytest.approx(12, abs=1.0)
    restored = PrivacyLedger("local", 1.0, 1e-5)
    restored.restore(json.loads(json.dumps(ledger.state())))
    assert restored.epsilon() == ledger.epsilon() and restored.local_rounds == 4


def test_a_local_dp_run_records_each_clients_releases_and_the_summary_says_worst_and_median(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityMirror, cache, tmp_path, clients_per_round=4, dp="local", **{"dp-clipping-norm": 5.0}
    )
    from flwr.server import Server

    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    import pandas as pd

    clients = pd.read_csv(strategy.recorder.dir / "clients.csv")
    released = clients.groupby("client").size()  # every client drawn: each may have sent a noised update
    privacy = json.loads((strategy.recorder.dir / "summary.json").read_text())["privacy"]
    assert privacy["releases_worst_client"] == released.max()
    assert privacy["epsilon_worst_client"] == pytest.approx(gaussian_epsilon(1.0, int(released.max()), 1e-5))
    assert privacy["epsilon"] == privacy["epsilon_worst_client"] >= privacy["epsilon_median_client"] > 0
    assert privacy["neighbouring"] == "replace" and privacy["sensitivity"] == 10.0
    assert privacy["noise"] == "drawn from the operating system's entropy"


def test_the_pre_run_budget_of_local_dp_is_the_client_that_could_release_every_round():
    cfg, cls = resolve_config({"dp": "local", "dp-clipping-norm": 1.0, "num-server-rounds": 8, "distill-rounds": 2})
    plan = cls.privacy_plan(cfg, 100)
    assert plan == [(1.0, 1, 1)] * 10  # an audiovisual client trains in both phases: 10 unsampled releases
    assert spent(plan, 1e-5) == pytest.approx(gaussian_epsilon(1.0, 10, 1e-5), rel=1e-9)


# ------------------------------------------------------------------------------------------- the review's small fixes
def test_central_dp_with_a_median_relative_clip_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"dp": "central", "dp-clipping-norm": 1.0, "max-update-norm": 2.0})
    assert str(err.value).startswith("run config 'max-update-norm' = 2.0 is invalid: 0 with dp 'central'")
    RunConfig.from_dict({"dp": "local", "dp-clipping-norm": 1.0, "max-update-norm": 2.0})  # local DP clips first


def test_the_ledger_counts_the_groups_of_every_client_the_round_could_have_drawn(cache, tmp_path):
    """A round that happens to draw only audio-only clients (2 groups each) still accounts for the audiovisual
    clients' 3 groups: sigma / sqrt(3), as the pre-run plan does."""
    manager, proxies = tiny_federation(cache, 8, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=2,
        recorder=False,
        evaluator=False,
        dp="central",
        **{"dp-clipping-norm": 1.0, "dp-insecure-seeded-noise": True},
    )
    for server_round in range(1, 30):
        instructions, results = fit_round(strategy, manager, server_round)
        if all(proxy.client.modality == "audio" for proxy, _ in instructions):
            strategy.aggregate_fit(server_round, results, [])
            break
    else:
        pytest.fail("no round drew only audio-only clients")
    assert strategy.ledger.rounds[-1][0] == pytest.approx(1.0 / np.sqrt(3))


def test_multi_krum_keeps_at_most_the_updates_a_group_has_and_says_so(caplog):
    updates = [([np.full(3, v, np.float32)], 10) for v in (0.0, 0.1, 0.2, 5.0)]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        merged, kept = krum(updates, num_malicious=0, keep=6)
    assert kept == [0, 1, 2, 3]  # all four, not keep - n = 2
    np.testing.assert_allclose(merged[0], np.full(3, 5.3 / 4), rtol=1e-6)
    assert "krum-keep 6 but only 4 updates in the group: all 4 kept" in caplog.text


def test_a_frame_using_task_weights_its_video_groups_by_the_clips_with_a_frame(cache, tmp_path):
    """Under sample-missing-video, train-av-audio-head learns the video encoder and fusion head from the clips that
    have a frame: it reports their number for those groups, and the server weights them by it; a client with no
    frame at all returns neither group."""
    from clients.base import group_examples

    manager, proxies = tiny_federation(cache, 4, missing_rate=0.0, sample_missing_video=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=4,
        recorder=False,
        evaluator=False,
        **{"av-trains-audio-head": True, "sample-missing-video": 0.5},
    )
    blind = next(iter(proxies.values())).client
    blind.missing_video = np.asarray(blind.partition.indices)  # this one lost every frame
    instructions, results = fit_round(strategy, manager)
    before = {g: [a.copy() for a in strategy.state[g]] for g in ("video_encoder", "fusion_head")}
    weights = {}
    for proxy, res in results:
        client = proxy.client
        reported = group_examples(res.metrics)
        names = res.metrics["groups"].split(",")
        frames = len(np.setdiff1d(client.partition.indices, client.missing_video))
        if client is blind:
            assert reported == {"video_encoder": 0, "fusion_head": 0}
            assert names == ["audio_encoder", "audio_head"]
        else:
            assert reported == {"video_encoder": frames, "fusion_head": frames} and 0 < frames < res.num_examples
            arrays = parameters_to_ndarrays(res.parameters)
            sizes = [len(strategy.state[g]) for g in names]
            at = sum(sizes[: names.index("fusion_head")])
            weights[proxy.cid] = (arrays[at], frames)
    strategy.aggregate_fit(1, results, [])
    total = sum(n for _, n in weights.values())
    expected = sum(a.astype(np.float64) * n for a, n in weights.values()) / total
    np.testing.assert_allclose(strategy.state["fusion_head"][0], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(strategy.state["fusion_head"][0], before["fusion_head"][0])


# ------------------------------------------------------------------------------------------- secure aggregation
def test_secure_encoding_sums_to_the_weighted_mean_of_each_group_over_its_clients():
    rng = np.random.default_rng(0)
    current = {
        "a": [np.zeros((2, 3), np.float32)],
        "b": [np.ones(4, np.float32), np.zeros(2, np.int64)],
        "av/a": [np.zeros((2, 3), np.float32)],
    }
    layout = [(k, sum(x.size for x in v)) for k, v in current.items()]
    clients = [  # (slot, {group: update arrays}, {group: examples})
        ("", {"a": [rng.normal(size=(2, 3))], "b": [rng.normal(size=4), np.full(2, 3, np.int64)]}, {"a": 30, "b": 30}),
        ("", {"a": [rng.normal(size=(2, 3))]}, {"a": 10}),
        ("av/", {"a": [rng.normal(size=(2, 3))]}, {"a": 20}),
    ]
    vectors = [secure.encode(layout, slot, upd, w, 30.0, 8.0)[0] for slot, upd, w in clients]
    assert all(v.size == secure.vector_size(layout) for v in vectors)
    new, weights = secure.decode(np.sum(vectors, axis=0), layout, current)
    expected_a = (30 * clients[0][1]["a"][0] + 10 * clients[1][1]["a"][0]) / 40
    np.testing.assert_allclose(new["a"][0], expected_a, rtol=1e-6)
    np.testing.assert_allclose(new["b"][0], 1 + clients[0][1]["b"][0], rtol=1e-6)
    # a counter (its update says how many batches the client trained) is never released: the vector holds zeros
    assert vectors[0][layout[0][1] + 4 : layout[0][1] + 6].tolist() == [0.0, 0.0]
    assert new["b"][1].dtype == np.int64 and (new["b"][1] == 0).all()
    np.testing.assert_allclose(new["av/a"][0], clients[2][1]["a"][0], rtol=1e-6)
    assert weights == pytest.approx({"a": 40 / 30, "b": 1.0, "av/a": 20 / 30})
    big, clipped = secure.encode(layout, "", {"a": [np.full((2, 3), 4.0)]}, {"a": 30}, 30.0, 1.0)
    assert clipped == 6  # every value of group a beyond +-1
    small, none = secure.encode(layout, "", {"a": [np.full((2, 3), 0.5)]}, {"a": 45}, 30.0, 1.0)  # capped at 30
    assert none == 0 and small[layout[0][1] + layout[1][1] + layout[2][1]] == 1.0
    # the clipped counts travel inside the vector: the sum tells the server the round's total, not a client's
    assert secure.clipped_total(big + small, layout, 1.0) == pytest.approx(6)
    assert secure.quantization_range(10) == 2**28 and 10 * secure.quantization_range(10) < secure.MODULUS


def test_a_secure_sum_keeps_a_scalar_parameter_an_array():
    """An ETF head's temperature is a 0-d parameter: its decoded mean is a 0-d array of its dtype, which a
    checkpoint can save (a NumPy scalar crashed the run at its first checkpoint)."""
    current = {"head": [np.array(10.0, np.float32), np.zeros(3, np.float32)]}
    layout = [("head", 4)]
    updates = [{"head": [np.array(d), np.full(3, d)]} for d in (0.5, 1.5)]
    vectors = [secure.encode(layout, "", u, {"head": 10}, 10.0, 8.0)[0] for u in updates]
    new, _ = secure.decode(np.sum(vectors, axis=0), layout, current)
    temperature = new["head"][0]
    assert isinstance(temperature, np.ndarray) and temperature.shape == () and temperature.dtype == np.float32
    assert float(temperature) == pytest.approx(11.0, rel=1e-5)
    np.testing.assert_allclose(new["head"][1], np.full(3, 1.0), rtol=1e-5)


def test_the_strategy_takes_one_sum_per_round_and_refuses_individual_updates(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=4,
        recorder=False,
        evaluator=False,
        **{"secure-aggregation": True, "secure-min-clients": 2},
    )
    instructions = strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    config = dict(instructions[0][1].config)
    layout = secure.parse_layout(str(config[secure.LAYOUT]))
    assert [k for k, _ in layout] == ["audio_encoder", "audio_head", "video_encoder", "fusion_head"]
    before = {k: [a.copy() for a in strategy.state[k]] for k, _ in layout}
    total = np.zeros(secure.vector_size(layout))
    total[-5] = 2.0  # summed weights of audio_encoder: two client-scales (then the other 3 weights, the clipped share)
    total[: layout[0][1]] = 0.5  # summed weighted update of audio_encoder
    reply = {"groups": "audio_encoder"}
    same = [
        (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([total / 4]), 1, reply)) for proxy, _ in instructions
    ]
    strategy.aggregate_fit(1, same, [])
    for a, b in zip(strategy.state["audio_encoder"], before["audio_encoder"]):
        np.testing.assert_allclose(a, b + 0.25, rtol=1e-6)  # 0.5 / 2
    for k in ("audio_head", "video_encoder", "fusion_head"):  # no weight: unchanged
        assert all(np.array_equal(a, b) for a, b in zip(strategy.state[k], before[k]))
    different = [
        (p, FitRes(r.status, ndarrays_to_parameters([total / (i + 1)]), 1, r.metrics)) for i, (p, r) in enumerate(same)
    ]
    with pytest.raises(RuntimeError, match="the replies carry different vectors, not one sum"):
        strategy.aggregate_fit(2, different, [])


@pytest.mark.parametrize(
    "raw, key, allowed",
    [
        ({"aggregator": "krum"}, "aggregator", "one of ['fedavg', 'fedprox'] with secure-aggregation"),
        ({"dp": "central", "dp-clipping-norm": 1.0}, "dp", "'off' or 'local' with secure-aggregation"),
        ({"max-update-norm": 2.0}, "max-update-norm", "0 with secure-aggregation"),
        ({"max-client-weight": 0.5}, "max-client-weight", "1 with secure-aggregation"),
        ({"clients-per-round": 1}, "clients-per-round", "an integer in [2, 4095] with secure-aggregation"),
    ],
)
def test_what_needs_one_clients_update_is_refused_with_secure_aggregation_in_one_line(raw, key, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"secure-aggregation": True, **raw})
    assert "\n" not in str(err.value) and f"'{key}'" in str(err.value) and allowed in str(err.value)
    RunConfig.from_dict({"secure-aggregation": True, "dp": "local", "dp-clipping-norm": 1.0})  # local DP combines


def test_two_dp_runs_with_one_config_spend_the_same_epsilon_with_different_noise_and_repeat_when_insecure(
    cache, tmp_path
):
    from flwr.server import Server

    def run(name: str, **extra):
        manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
        strategy = tiny_strategy(
            ModalityMirror,
            cache,
            tmp_path / name,
            clients_per_round=3,
            dp="central",
            **{"dp-clipping-norm": 0.5, "dp-noise-multiplier": 1.0, **extra},
        )
        Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
        return strategy

    a, b = run("a"), run("b")
    assert a.ledger.epsilon() == b.ledger.epsilon() > 0
    assert not np.allclose(a.state["fusion_head"][0], b.state["fusion_head"][0])  # other noise (and other draws)
    c, d = (run(n, **{"dp-insecure-seeded-noise": True}) for n in ("c", "d"))
    assert c.ledger.epsilon() == a.ledger.epsilon()
    for g in c.state:
        for x, y in zip(c.state[g], d.state[g]):
            np.testing.assert_array_equal(x, y)  # digit for digit
    summary = json.loads((c.recorder.dir / "summary.json").read_text())
    assert summary["privacy"]["noise"].startswith("reproducible from the run seed: no privacy")


def test_the_model_card_says_what_the_privacy_and_the_server_saw():
    from mirror_app.model.export import privacy_line, secure_line

    insecure = {"dp": "central", "epsilon": 6.1, "noise": "reproducible from the run seed: no privacy (...)"}
    assert "no privacy: the noise is reproducible" in privacy_line(insecure)
    local = {
        "dp": "local",
        "epsilon": 12.0,
        "epsilon_worst_client": 12.0,
        "epsilon_median_client": 5.5,
        "delta": 1e-5,
        "releases_worst_client": 19,
        "noise_multiplier": 2.0,
        "clipping_norm": 0.2,
        "neighbouring": "replace",
        "sensitivity": 0.4,
        "accountant": "dp-accounting RDP",
        "noise": "drawn from the operating system's entropy",
    }
    line = privacy_line(local)
    assert "(12.00, 1e-05) for the client that released most often (19 updates), 5.50 for the median" in line
    assert "sensitivity 0.4" in line and "against the server" in line
    assert "saw only sums" in secure_line(
        {"protocol": "SecAgg+ (...): the server saw only sums", "clipping_range": 1.0, "quantization_levels": 2**28}
    )
    assert "each client's update" in secure_line(None)


def test_the_privacy_report_without_its_clean_run_says_which_record_is_missing(tmp_path):
    """--report-only runs nothing: without the clean run the clipping norm is unknown, and it says so in one line."""
    import subprocess
    import sys

    records = tmp_path / "records"
    records.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "mirror_app.studies.ablations", "privacy", "--seeds", "0", "--records", str(records)]
        + ["--report-only", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no finished run of modality-mirror-mr0.3-s0-nodp" in lines[0], res.stderr
    assert not (tmp_path / "out" / "runs" / "modality-mirror-mr0.3-s0-nodp").exists()
