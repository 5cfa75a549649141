"""Clients that lie and clients that must not be seen: robust aggregation per group against hand-computed results,
attacks as a client mod that changes exactly the attacked clients' replies, local DP, and the privacy accountant."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat

from clients import mods
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.privacy import PrivacyLedger, spent
from strategies.aggregation import GroupAggregator, capped_weights


def aggregator(**config) -> GroupAggregator:
    return GroupAggregator(RunConfig.from_dict({k.replace("_", "-"): v for k, v in config.items()}))


def contributions(values: list[float], counts: list[int] | None = None) -> list:
    """One group of two arrays (a vector and a matrix) per client, every element equal to the client's value."""
    counts = counts or [10] * len(values)
    return [([np.full(3, v, np.float32), np.full((2, 2), 2 * v, np.float32)], n) for v, n in zip(values, counts)]


CURRENT = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]


def test_fedmedian_and_fedtrimmedavg_match_their_hand_computed_values():
    values = [1.0, 2.0, 4.0, 8.0, 100.0]
    median = aggregator(aggregator="fedmedian")("g", CURRENT, contributions(values), 1)
    np.testing.assert_allclose(median[0], np.full(3, 4.0))
    np.testing.assert_allclose(median[1], np.full((2, 2), 8.0))
    trimmed = aggregator(aggregator="fedtrimmedavg", trim_beta=0.2)("g", CURRENT, contributions(values), 1)
    np.testing.assert_allclose(trimmed[0], np.full(3, (2 + 4 + 8) / 3))  # the lowest and highest cut per coordinate


def krum_scores(points: list[float], f: int) -> list[float]:
    """Krum's score written out: the sum of squared distances to the n - f - 2 nearest other updates (each update
    here is 3 + 4 elements equal to v and 2 v: squared distance 3 d^2 + 4 (2 d)^2 = 19 d^2)."""
    n = len(points)
    scores = []
    for i, p in enumerate(points):
        d = sorted(19 * (p - q) ** 2 for j, q in enumerate(points) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return scores


def test_krum_and_multi_krum_pick_the_updates_hand_computed_scores_pick():
    values = [1.0, 1.5, 2.0, 2.2, 50.0]  # one far-away update
    scores = krum_scores(values, f=1)
    best = values[int(np.argmin(scores))]
    agg = aggregator(aggregator="krum", num_malicious=1, clients_per_round=5)
    krum = agg("g", CURRENT, contributions(values), 1)
    np.testing.assert_allclose(krum[0], np.full(3, best))
    assert agg.kept == {"g": [int(np.argmin(scores))]}  # whose update it kept, for clients.csv kept_groups
    keep = np.argsort(scores)[:2]  # multi-Krum: the example-weighted mean of the 2 best
    counts = [10, 20, 30, 40, 50]
    expected = sum(values[i] * counts[i] for i in keep) / sum(counts[i] for i in keep)
    multi_agg = aggregator(aggregator="krum", num_malicious=1, krum_keep=2, clients_per_round=5)
    multi = multi_agg("g", CURRENT, contributions(values, counts), 1)
    np.testing.assert_allclose(multi[0], np.full(3, expected), rtol=1e-6)
    assert multi_agg.kept == {"g": sorted(keep.tolist())}
    median = aggregator(aggregator="fedmedian")
    median("g", CURRENT, contributions(values), 1)
    assert median.kept == {}  # a rule that keeps no particular update records none


@pytest.mark.parametrize("keep", [0, 3])
def test_krum_is_flowers_aggregate_krum_to_the_bit(keep):
    from flwr.server.strategy.aggregate import aggregate_krum

    from strategies.aggregation import krum

    rng = np.random.default_rng(keep)
    updates = [
        ([rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=7)], int(rng.integers(1, 50))) for _ in range(9)
    ]
    arrays, kept = krum(updates, 2, keep)
    for a, b in zip(arrays, aggregate_krum(updates, 2, keep)):
        np.testing.assert_array_equal(a, b)
    assert len(kept) == max(keep, 1) and kept == sorted(kept)


def test_bulyan_keeps_the_far_update_out():
    values = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 90.0]  # n = 7 = 4 f + 3 with f = 1
    out = aggregator(aggregator="bulyan", num_malicious=1, clients_per_round=7)("g", CURRENT, contributions(values), 1)
    # theta = n - 2f = 5 updates chosen by repeated Krum (the five closest together), beta = theta - 2f = 3 of them
    # closest to their median averaged: 1.2, 1.4, 1.6 of the chosen 1.0 ... 1.8
    np.testing.assert_allclose(out[0], np.full(3, 1.4), rtol=1e-6)


def test_a_group_with_too_few_contributors_falls_back_to_the_median_and_says_so(caplog):
    agg = aggregator(aggregator="krum", num_malicious=1, clients_per_round=10)
    out = agg("audio_head", CURRENT, contributions([1.0, 2.0, 30.0]), 4)  # Krum needs more than 2 f + 2 = 4
    np.testing.assert_allclose(out[0], np.full(3, 2.0))
    assert agg.fallbacks == {"audio_head"}
    assert agg.kept == {}  # the median kept no particular update
    assert any("group audio_head has 3 updates, krum needs at least 5" in r.getMessage() for r in caplog.records)


def test_a_lying_example_count_does_not_buy_the_average():
    counts = [1000, 10, 10, 10, 10]  # the first client reports 100x the others
    w = capped_weights(counts, 0.25)
    assert max(w) / sum(w) == pytest.approx(0.25) and w[1:] == [10.0] * 4
    capped = aggregator(max_client_weight=0.25)("g", CURRENT, contributions([100.0, 0, 0, 0, 0], counts), 1)
    np.testing.assert_allclose(capped[0], np.full(3, 25.0), rtol=1e-6)  # 100 x its 25 % share
    plain = aggregator()("g", CURRENT, contributions([100.0, 0, 0, 0, 0], counts), 1)
    assert plain[0][0] == pytest.approx(100 * 1000 / 1040, rel=1e-5)


def test_max_update_norm_pulls_a_large_update_back_to_a_multiple_of_the_median():
    values = [1.0, 1.0, 1.0, 1.0, 20.0]
    out = aggregator(max_update_norm=2.0)("g", CURRENT, contributions(values), 1)
    # the median update norm is that of value 1; the outlier is scaled to twice it, i.e. value 2
    np.testing.assert_allclose(out[0], np.full(3, (4 * 1.0 + 2.0) / 5), rtol=1e-6)


def test_central_dp_clips_and_averages_uniformly():
    big = [([np.full(1000, v, np.float32)], n) for v, n in ((10.0, 1), (-10.0, 100))]
    current = [np.zeros(1000, np.float32)]
    for sampling, denominator in (("fixed", None), ("poisson", 2.0)):
        silent = aggregator(dp="central", dp_clipping_norm=1.0, dp_noise_multiplier=1e-9, dp_sampling=sampling)
        np.testing.assert_allclose(silent("g", current, big, 3, denominator)[0], 0.0, atol=1e-6)  # equal weight
    # the noise: tests/test_privacy.py


def test_the_ledger_records_each_rounds_mechanism():
    ledger = PrivacyLedger("central", 2.0, 1e-5)
    for _ in range(5):
        eps = ledger.record(groups=4, clients_per_round=10, eligible=100)
    assert ledger.rounds == [(1.0, 100, 10)] * 5  # four groups per update: sigma / sqrt(4); 10 of 100
    assert eps == pytest.approx(spent([(1.0, 100, 10)] * 5, 1e-5))
    # local DP: no amplification by sampling (tests/test_privacy.py); the accountant itself: test_privacy.py too
    assert PrivacyLedger("local", 2.0, 1e-5).record(4, 10, 100, released=["partition 3"]) == pytest.approx(
        spent([(2.0, 1, 1)], 1e-5)
    )


# ------------------------------------------------------------------------------------------------ attacks
RECEIVED = [np.ones(4, np.float32), np.full((2, 3), 2.0, np.float32), np.arange(3, dtype=np.int64)]
CONFIG = {"task": "train-av", "groups": "audio_encoder,audio_head", "group-sizes": "2,1", "server-round": 3}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Who is sending: Flower sets it in the ServerApp process; Messages made in a test need one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def train_message(config: dict | None = None) -> Message:
    ins = FitIns(ndarrays_to_parameters(RECEIVED), dict(config or CONFIG))
    return Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=1, message_type=MessageType.TRAIN)


def honest(seen: list):
    """A client that trains: +1 on every float array it got, reports 12 examples and what config it saw."""

    def call_next(msg: Message, context: Context) -> Message:
        ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        seen.append(dict(ins.config))
        arrays = parameters_to_ndarrays(ins.parameters)
        out = [a + 1 if np.issubdtype(a.dtype, np.floating) else a for a in arrays]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), 12, {"groups": "audio_encoder,audio_head"})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return call_next


def context(pid: int, run: dict | None = None, node: dict | None = None) -> Context:
    node_config = {"partition-id": pid, "num-partitions": 10, **(node or {})}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run or {})


def reply_of(msg: Message) -> FitRes:
    return compat.recorddict_to_fitres(msg.content, keep_input=True)


@pytest.fixture
def simulation(monkeypatch):
    monkeypatch.setattr(mods, "simulated", lambda: True)


def attackers(fraction: float = 0.2) -> list[int]:
    from data.partition import attacked_partitions

    return attacked_partitions(10, fraction, 0).tolist()


@pytest.mark.parametrize(
    "attack, expected",
    [
        ("sign-flip", lambda r: r - 1),
        ("scale", lambda r: r + 10),
        ("stale", lambda r: r),
    ],
)
def test_an_attack_changes_exactly_the_attacked_clients_replies(simulation, attack, expected):
    run = {"attack": attack, "attack-fraction": 0.2}
    bad = set(attackers())
    assert len(bad) == 2
    for pid in range(10):
        seen: list = []
        res = reply_of(mods.attack_mod(train_message(), context(pid, run), honest(seen)))
        got = parameters_to_ndarrays(res.parameters)
        if pid in bad:
            for a, r in zip(got[:2], RECEIVED[:2]):
                np.testing.assert_allclose(a, expected(r))
        else:
            for a, r in zip(got[:2], RECEIVED[:2]):
                np.testing.assert_allclose(a, r + 1)  # honest
        np.testing.assert_array_equal(got[2], RECEIVED[2])  # an integer array is never touched
        assert res.num_examples == 12


def test_gaussian_replaces_the_update_with_seeded_noise(simulation):
    run = {"attack": "gaussian", "attack-fraction": 0.2, "attack-std": 3.0}
    pid = attackers()[0]
    a = parameters_to_ndarrays(reply_of(mods.attack_mod(train_message(), context(pid, run), honest([]))).parameters)
    b = parameters_to_ndarrays(reply_of(mods.attack_mod(train_message(), context(pid, run), honest([]))).parameters)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], RECEIVED[0] + 1)


def test_inflate_count_lies_in_replies_and_properties(simulation):
    run = {"attack": "inflate-count", "attack-fraction": 0.2}
    pid = attackers()[0]
    res = reply_of(mods.attack_mod(train_message(), context(pid, run), honest([])))
    assert res.num_examples == 1200
    ask = Message(
        compat.getpropertiesins_to_recorddict(GetPropertiesIns({})),
        dst_node_id=1,
        message_type=MessageTypeLegacy.GET_PROPERTIES,
    )

    def answer(msg, ctx):
        res = GetPropertiesRes(Status(Code.OK, ""), {"num-examples": 12, "modality": "audio"})
        return Message(compat.getpropertiesres_to_recorddict(res), reply_to=msg)

    props = compat.recorddict_to_getpropertiesres(mods.attack_mod(ask, context(pid, run), answer).content).properties
    assert props["num-examples"] == 1200 and props["modality"] == "audio"
    honest_pid = next(p for p in range(10) if p not in attackers())
    props = compat.recorddict_to_getpropertiesres(mods.attack_mod(ask, context(honest_pid, run), answer).content)
    assert props.properties["num-examples"] == 12


def test_label_flip_trains_on_permuted_labels_and_the_server_cannot_ask_for_it(simulation):
    run = {"attack": "label-flip", "attack-fraction": 0.2}
    bad = attackers()[0]
    seen: list = []
    mods.attack_mod(train_message(), context(bad, run), honest(seen))
    assert "label-permutation" in seen[0]
    good = next(p for p in range(10) if p not in attackers())
    seen = []
    mods.attack_mod(train_message({**CONFIG, "label-permutation": 5}), context(good, run), honest(seen))
    assert "label-permutation" not in seen[0]  # stripped: only the node's own attack mod sets it


def test_label_permutation_relabels_what_the_client_trains_on(tmp_path):
    from helpers import tiny_cache

    from data.cache import RelabelledCache

    cache = tiny_cache(tmp_path / "tiny")
    view = RelabelledCache(cache, 3)
    assert sorted(view.permutation.tolist()) == list(range(cache.num_classes))
    np.testing.assert_array_equal(view.labels, view.permutation[cache.labels])
    assert view.audio is cache.audio and view.num_classes == cache.num_classes


def test_a_deployed_node_attacks_only_from_its_own_node_config():
    run = {"attack": "sign-flip", "attack-fraction": 0.5}  # not a simulation: the server's config is ignored
    for pid in range(10):
        res = reply_of(mods.attack_mod(train_message(), context(pid, run), honest([])))
        np.testing.assert_allclose(parameters_to_ndarrays(res.parameters)[0], RECEIVED[0] + 1)
    res = reply_of(
        mods.attack_mod(train_message(), context(0, {}, {"attack": "scale", "attack-scale": 3.0}), honest([]))
    )
    np.testing.assert_allclose(parameters_to_ndarrays(res.parameters)[0], RECEIVED[0] + 3)
    with pytest.raises(ValueError, match="node config 'attack' = 'nope' is invalid"):
        mods.attack_mod(train_message(), context(0, {}, {"attack": "nope"}), honest([]))


def test_local_dp_clips_the_returned_groups_update_and_adds_noise():
    run = {"dp": "local", "dp-clipping-norm": 0.5, "dp-noise-multiplier": 1e-9}
    res = reply_of(mods.local_dp_mod(train_message(), context(0, run), honest([])))
    got = parameters_to_ndarrays(res.parameters)
    update = np.concatenate([(a - r).ravel() for a, r in zip(got[:2], RECEIVED[:2])])
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-5)  # the +1 update (norm sqrt(10)) clipped to C
    np.testing.assert_allclose(update / np.linalg.norm(update), np.ones(10) / np.sqrt(10), rtol=1e-5)
    np.testing.assert_array_equal(got[2], RECEIVED[2])
    loud = {"dp": "local", "dp-clipping-norm": 0.5, "dp-noise-multiplier": 4.0}
    noisy = parameters_to_ndarrays(
        reply_of(mods.local_dp_mod(train_message(), context(0, loud), honest([]))).parameters
    )
    assert not np.allclose(noisy[0], got[0])
    off = parameters_to_ndarrays(reply_of(mods.local_dp_mod(train_message(), context(0, {}), honest([]))).parameters)
    np.testing.assert_allclose(off[0], RECEIVED[0] + 1)  # dp off: untouched


@pytest.mark.parametrize(
    "raw, key, allowed",
    [
        ({"attack": "sign-flip", "attack-fraction": 1.2}, "attack-fraction", "[0, 1)"),
        ({"aggregator": "krum", "num-malicious": 4, "clients-per-round": 10}, "num-malicious", "at most 3"),
        ({"aggregator": "bulyan", "num-malicious": 2, "clients-per-round": 10}, "num-malicious", "at most 1"),
        ({"dp": "central"}, "dp-clipping-norm", "with dp 'central'"),
        ({"dp": "central", "dp-clipping-norm": 1.0, "aggregator": "krum"}, "aggregator", "with dp 'central'"),
        ({"attack": "mimic"}, "attack", "one of"),
        ({"max-client-weight": 0.0}, "max-client-weight", "(0, 1]"),
    ],
)
def test_bad_robustness_and_privacy_values_are_one_line(raw, key, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw)
    assert "\n" not in str(err.value) and f"'{key}'" in str(err.value) and allowed in str(err.value)


# ----------------------------------------------------------------------------------------- through flwr run
@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    from mirror_app.deploy.launch import SuperLink

    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop(), "processes left running"


def finished_run(superlink, out, config: str, nodes: int):
    import json
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    res = superlink.flwr_run(root, "--federation-config", f"num-supernodes={nodes}", "--run-config", config)
    runs = list(out.glob("*-run*"))
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), (res.stdout + res.stderr)[-4000:]
    summary = json.loads((runs[0] / "summary.json").read_text())
    return summary, pd.read_csv(runs[0] / "metrics.csv"), pd.read_csv(runs[0] / "clients.csv")


@pytest.mark.timeout(600)
def test_two_attackers_of_eight_against_fedmedian_through_flwr_run(superlink, data_dir, tmp_path):
    from data.partition import attacked_partitions

    out = tmp_path / "results"
    config = (
        f"data-dir='{data_dir}' output-dir='{out}' num-server-rounds=1 distill-rounds=1 clients-per-round=8 "
        "eval-every=1 partitioner='iid' attack='sign-flip' attack-fraction=0.25 aggregator='fedmedian'"
    )
    summary, metrics, clients = finished_run(superlink, out, config, 8)
    expected = attacked_partitions(8, 0.25, 0).tolist()
    assert summary["attack"]["partitions"] == expected and len(expected) == 2
    assert summary["attack"]["honoured_by"] == "simulation"
    flagged = sorted(set(clients.loc[clients["attacker"], "partition_id"]))
    assert flagged == expected and (clients["status"] == "ok").all()
    assert (metrics["failures"] == 0).all()


@pytest.mark.timeout(600)
def test_central_dp_records_epsilon_every_round_and_in_the_summary(superlink, data_dir, tmp_path):
    out = tmp_path / "results"
    config = (
        f"data-dir='{data_dir}' output-dir='{out}' num-server-rounds=1 distill-rounds=1 clients-per-round=4 "
        "eval-every=1 partitioner='iid' dp='central' dp-clipping-norm=1.0 dp-noise-multiplier=1.5"
    )
    summary, metrics, _ = finished_run(superlink, out, config, 8)
    eps = metrics.loc[metrics["round"] > 0, "epsilon"].tolist()
    assert len(eps) == 2 and eps[0] < eps[1] and eps[0] > 0
    assert summary["privacy"]["epsilon"] == pytest.approx(eps[-1]) and summary["privacy"]["delta"] == 1e-5
    # phase 1: train-av updates span 3 groups (audio and video encoders, fusion head; audio-only clients' 2),
    # q = 4 / 8; distillation: the student's 2 groups, q = 4 / (8 - 2)
    plan = [(1.5 / np.sqrt(3), 8, 4), (1.5 / np.sqrt(2), 6, 4)]
    assert eps[0] == pytest.approx(spent(plan[:1], 1e-5), rel=1e-9)
    assert eps[-1] == pytest.approx(spent(plan, 1e-5), rel=1e-9)
