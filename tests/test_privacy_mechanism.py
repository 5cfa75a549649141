"""Privacy an auditor would sign: the draw is the mechanism the accountant accounts (checked against Opacus' RDP
accountant and the Gaussian's closed form, never against the events the code builds), Poisson rounds vary in size and
divide by the expected count, no group is released from a lone contributor behind SecAgg+, what the server sees in
each mode is docs/security.md's table, zero and empty updates and counters never break a release, the ledger keys
releases by identity and counts every drawn client, and the audit's lower bound stays below the accountant's epsilon
unless the noise is known (so it can fail)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from helpers import tiny_cache, tiny_federation, tiny_strategy

from clients import mods
from mirror_app.core import privacy, secure
from mirror_app.core.config import ConfigError, RunConfig
from strategies import ModalityAwareFedAvg, ModalityMirror, resolve_config
from strategies.aggregation import GroupAggregator
from strategies.census import draw_clients

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("mechanism") / "tiny")


# ------------------------------------------------------------------------------------- the accountant, independently
@pytest.mark.parametrize("sigma, q, rounds", [(1.0, 0.1, 80), (2.0, 10 / 70, 20), (0.7, 0.5, 7)])
def test_poisson_epsilon_equals_opacus_rdp_accountant(sigma, q, rounds):
    """The Poisson-subsampled Gaussian, composed: Opacus computes its RDP and converts it on its own."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    n = 1000
    k = round(q * n)
    curve = opacus_rdp.compute_rdp(q=k / n, noise_multiplier=sigma, steps=rounds, orders=privacy.ORDERS)
    expected, _ = opacus_rdp.get_privacy_spent(orders=privacy.ORDERS, rdp=curve, delta=1e-5)
    assert privacy.spent([(sigma, n, k)] * rounds, 1e-5, "poisson") == pytest.approx(float(expected), rel=1e-6)


def closed_form_gaussian_epsilon(sigma: float, releases: int, delta: float) -> float:
    """The unsampled Gaussian's RDP, releases x alpha / (2 sigma^2), turned into epsilon by the conversion of Balle et
    al. (2020) that both accountants use, minimised over the same orders: written out here, no library."""
    best = math.inf
    for a in privacy.ORDERS:
        rdp = releases * a / (2 * sigma**2)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


@pytest.mark.parametrize("sigma, releases", [(1.0, 1), (2.0, 19), (3.0, 100)])
def test_unsampled_releases_equal_the_gaussians_closed_form(sigma, releases):
    """Local DP's epsilon, and a fixed-size draw of every client (no sampling, replace-one), are the Gaussian's."""
    expected = closed_form_gaussian_epsilon(sigma, releases, 1e-5)
    assert privacy.gaussian_epsilon(sigma, releases, 1e-5) == pytest.approx(expected, rel=1e-9)
    assert privacy.spent([(sigma, 10, 10)] * releases, 1e-5, "fixed") == pytest.approx(expected, rel=1e-9)


def test_the_issues_schedule_the_fixed_draw_is_accounted_as_a_fixed_draw_and_poisson_as_poisson():
    """80 rounds of 10 of 100 (3 groups) and 20 of 10 of 70 (2 groups) at sigma 1. The old code drew a fixed 10,
    added noise sigma C / n and reported the Poisson figure (26.6); that noise is multiplier sigma / 2 against the
    replace-one sensitivity 2 C of a fixed draw, which costs about 750. Now each sampling has its own noise and its
    own accountant: Poisson sigma C (26.6 again, now true), fixed sigma x 2 C (about 42)."""

    def schedule(sigma: float) -> list:
        return [(sigma / math.sqrt(3), 100, 10)] * 80 + [(sigma / math.sqrt(2), 70, 10)] * 20

    assert privacy.spent(schedule(1.0), 1e-5, "poisson") == pytest.approx(26.6, abs=0.2)
    assert privacy.spent(schedule(0.5), 1e-5, "fixed") == pytest.approx(750, rel=0.1)  # the old run, truly
    assert privacy.spent(schedule(1.0), 1e-5, "fixed") == pytest.approx(42.4, abs=0.5)
    assert privacy.spent(schedule(2.0), 1e-5, "poisson") == pytest.approx(6.1, abs=0.1)


def test_poisson_draws_vary_as_binomial_and_fixed_draws_do_not():
    eligible = [f"n{i}" for i in range(100)]
    counts = np.array([len(draw_clients(0, r, eligible, 10, poisson=True)) for r in range(1, 3001)])
    # Binomial(100, 0.1): mean 10, variance 9 (standard errors over 3000 draws: 0.055 and about 0.24)
    assert counts.mean() == pytest.approx(10, abs=0.25) and counts.var() == pytest.approx(9, abs=1.0)
    assert counts.min() < 5 < 15 < counts.max()
    assert {len(draw_clients(0, r, eligible, 10)) for r in range(1, 200)} == {10}
    # a small pool at a low rate draws nobody in about (1 - 0.1) ** 10 = 35 % of rounds (standard error 1.5 %)
    few = np.array([len(draw_clients(0, r, eligible[:10], 1, poisson=True)) for r in range(1, 1001)])
    assert (few == 0).mean() == pytest.approx(0.9**10, abs=0.05)


# ---------------------------------------------------------------------------------------- central DP, as it is run
def central_strategy(cache, tmp_path, **extra):
    manager, proxies = tiny_federation(cache, 12, missing_rate=0.25)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=3,
        recorder=False,
        evaluator=False,
        dp="central",
        **{"dp-clipping-norm": 1.0, "dp-insecure-seeded-noise": True, **extra},
    )
    strategy.initialize_parameters(manager)
    return strategy, manager


def test_a_central_dp_run_draws_poisson_rounds_of_varying_size_and_divides_by_the_expected_count(cache, tmp_path):
    strategy, manager = central_strategy(cache, tmp_path)
    sizes = [len(strategy.configure_fit(r, None, manager)) for r in range(1, 40)]
    assert len(set(sizes)) > 2 and 0 < np.mean(sizes) < 6  # Binomial(12, 1/4): mean 3
    # the expected count of each group: q = 3 / 12 of the clients that train it (9 audiovisual, 3 audio-only)
    assert strategy._denominators == pytest.approx(
        {"audio_encoder": 3.0, "audio_head": 0.75, "video_encoder": 2.25, "fusion_head": 2.25}
    )
    summary = strategy.privacy_summary()
    assert summary["sampling"].startswith("poisson") and summary["neighbouring"] == "add-remove one client"
    assert summary["sensitivity"] == 1.0 and "expected count" in summary["denominator"]
    fixed, manager = central_strategy(cache, tmp_path, **{"dp-sampling": "fixed"})
    assert {len(fixed.configure_fit(r, None, manager)) for r in range(1, 20)} == {3}
    assert fixed.privacy_summary()["neighbouring"] == "replace one client's data"
    assert fixed.privacy_summary()["sensitivity"] == 2.0


def test_a_poisson_round_that_draws_nobody_still_releases_noise_and_is_counted(cache, tmp_path, monkeypatch):
    from strategies import census

    strategy, manager = central_strategy(cache, tmp_path, **{"dp-noise-multiplier": 1.0})
    before = {k: [a.copy() for a in v] for k, v in strategy.state.items()}
    monkeypatch.setattr(census, "draw_clients", lambda *args, **kwargs: [])
    assert strategy.configure_fit(1, None, manager) == []
    assert len(strategy.ledger.rounds) == 1 and strategy.ledger.epsilon() > 0
    assert strategy.fixed["audio_head"] and strategy.fixed["fusion_head"]  # the defaults' fixed ETF frames
    for key in ("audio_encoder", "audio_head", "video_encoder", "fusion_head"):
        pairs = [(i, a - b) for i, (a, b) in enumerate(zip(strategy.state[key], before[key]))]
        moved = [m for i, m in pairs if np.issubdtype(m.dtype, np.floating) and i not in strategy.fixed.get(key, ())]
        assert moved and all(np.abs(m).max() > 0 for m in moved), key  # noise, divided by the group's expected count
        assert all(not m.any() for i, m in pairs if i in strategy.fixed.get(key, ())), key  # a fixed frame: no noise


def test_a_zero_update_or_none_at_all_never_crashes_central_dp():
    cfg = RunConfig.from_dict({"dp": "central", "dp-clipping-norm": 1.0, "dp-insecure-seeded-noise": True})
    current = [np.zeros(5, np.float32), np.zeros(2, np.int64)]
    stale = [([np.zeros(5, np.float32), np.full(2, 4, np.int64)], 3)]  # the attack 'stale': exactly no change
    for contributions in (stale, []):
        out = GroupAggregator(cfg)("g", current, contributions, 1, 0.5)
        assert np.isfinite(out[0]).all() and np.abs(out[0]).max() > 0  # noise / 0.5, no division by the norm
        assert (out[1] == 0).all()  # the counter is never released: the server keeps its value
    assert privacy.clip_update([np.zeros(3)], 1.0)[0].tolist() == [0.0, 0.0, 0.0] and privacy.clip_update([], 1.0) == []


# ---------------------------------------------------------------------------------------------------- local DP
RECEIVED = [np.ones(4, np.float32), np.full((2, 3), 2.0, np.float32), np.arange(3, dtype=np.int64)]
CONFIG = {"task": "train-av", "groups": "audio_encoder,audio_head", "group-sizes": "2,1", "server-round": 3}


def train_message() -> Message:
    ins = FitIns(ndarrays_to_parameters(RECEIVED), dict(CONFIG))
    return Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=1, message_type=MessageType.TRAIN)


def context(run: dict, pid: int = 0) -> Context:
    return Context(
        run_id=1, node_id=1, node_config={"partition-id": pid, "num-partitions": 10}, state=RecordDict(), run_config=run
    )


def replying(arrays: list[np.ndarray], metrics: dict, examples: int = 12):
    def call_next(msg: Message, ctx: Context) -> Message:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, dict(metrics))
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return call_next


LOCAL = {"dp": "local", "dp-clipping-norm": 0.5, "dp-noise-multiplier": 1.0}


def test_local_dp_keeps_counters_back_and_an_empty_reply_empty():
    trained = [a + 1 if np.issubdtype(a.dtype, np.floating) else a + 7 for a in RECEIVED]
    metrics = {"groups": "audio_encoder,audio_head", "train-loss": 0.3, "modality": "audiovisual", "partition-id": 0}
    reply = compat.recorddict_to_fitres(
        mods.local_dp_mod(train_message(), context(LOCAL), replying(trained, metrics)).content, True
    )
    sent = parameters_to_ndarrays(reply.parameters)
    assert (sent[2] == RECEIVED[2]).all()  # the counter went back as received (it would tell how many batches)
    assert reply.num_examples == 1 and "train-loss" not in reply.metrics
    refusal = {"refused": "no video: cannot run task 'train-av'", "modality": "audio", "partition-id": 0}
    empty = mods.local_dp_mod(train_message(), context(LOCAL), replying([], refusal, 0))
    res = compat.recorddict_to_fitres(empty.content, True)
    assert parameters_to_ndarrays(res.parameters) == [] and "refused" not in res.metrics


# ------------------------------------------------------------------------------------ what the server sees, by mode
def documented() -> dict[str, tuple[set[str], set[str]]]:
    """docs/security.md's table: mode -> (reply metrics, census properties), the names in backquotes."""
    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split("## What the server sees, per mode", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("mode", "---"):
            continue
        names = [set(re.findall(r"`([a-z-]+)`", c.split("(and", 1)[0])) for c in cells[3:5]]
        out[cells[0]] = (names[0], names[1])
    for mode, (metrics, _) in list(out.items()):
        if not metrics:  # "as plain"
            out[mode] = out["plain"]
    return out


MODES = {
    "plain": {},
    "central DP": {"dp": "central", "dp-clipping-norm": 1.0},
    "local DP": LOCAL,
    "SecAgg+": {"secure-aggregation": True},
    "SecAgg+ with local DP": {"secure-aggregation": True, **LOCAL},
}


@pytest.mark.parametrize("mode", MODES)
def test_what_leaves_a_client_in_each_mode_is_the_documented_table(mode, cache, tmp_path):
    """A real client trains and answers the census under the mode's run config; what its reply carries after the
    mode's mods (local DP's, and the encoding SecAgg+ masks) is the table's row, exactly where the mode hides
    per-client values."""
    run = MODES[mode]
    table = documented()
    assert set(table) == set(MODES)
    flags = {k.replace("-", "_"): v for k, v in run.items()}
    _, proxies = tiny_federation(cache, 4, missing_rate=0.25, **flags)
    proxy = next(p for p in proxies.values() if p.client.modality == "audiovisual")
    props = proxy.client.get_properties({})
    cfg = RunConfig.from_dict(run)
    from mirror_app.core.groups import flatten, get_groups

    groups = ("audio_encoder", "audio_head", "video_encoder", "fusion_head")
    sent = flatten(dict(get_groups(proxy.client.workspace.model, groups)), groups)
    sizes = ",".join(str(len(dict(get_groups(proxy.client.workspace.model, (g,)))[g])) for g in groups)
    config = {"task": "train-av", "groups": ",".join(groups), "group-sizes": sizes, "server-round": 1}
    if cfg.secure_aggregation:
        layout = [(g, sum(a.size for a in dict(get_groups(proxy.client.workspace.model, (g,)))[g])) for g in groups]
        config |= {secure.LAYOUT: secure.layout_text(layout), secure.SLOT: ""}
    msg = Message(
        compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(sent), config), keep_input=True),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )

    def client(m: Message, ctx: Context) -> Message:
        ins = compat.recorddict_to_fitins(m.content, keep_input=True)
        res = proxy.client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(res[0]), res[1], res[2])
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=m)

    chain = client
    ctx = context(run, proxy.client.partition.partition_id)
    if cfg.dp == "local":
        chain = lambda m, c, inner=chain: mods.local_dp_mod(m, c, inner)  # noqa: E731
    if cfg.secure_aggregation:
        chain = mods._secure_encoded(chain)  # what secaggplus_mod masks and sends, metrics included
    reply = compat.recorddict_to_fitres(chain(msg, ctx).content, keep_input=True)
    metrics, properties = table[mode]
    if mode in ("plain", "central DP"):
        assert {"train-loss", "train-seconds", "modality"} <= set(reply.metrics) <= metrics | {"group-examples"}
        assert set(props) == properties and reply.num_examples > 1
    else:
        assert set(reply.metrics) == metrics and set(props) == properties
        assert reply.num_examples == 1


# ------------------------------------------------------------------------------------------------ SecAgg+ groups
def test_a_group_with_a_lone_contributor_is_neither_sent_nor_updated(cache, tmp_path):
    """12 clients, 3 of them audio-only, 4 drawn a round: in a round that draws one audio-only client, the audio
    head (which only audio-only clients train) has one contributor, so it is left out of the layout, its clients are
    told so, and the sum does not touch it; the audio encoder, which all four train, is updated."""
    manager, proxies = tiny_federation(cache, 12, missing_rate=0.25)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=4,
        recorder=False,
        evaluator=False,
        **{"secure-aggregation": True},
    )
    strategy.initialize_parameters(manager)
    modality = {p.cid: p.client.modality for p in proxies.values()}
    for server_round in range(1, 60):
        instructions = strategy.configure_fit(server_round, None, manager)
        if [modality[p.cid] for p, _ in instructions].count("audio") == 1:
            break
    else:
        pytest.fail("no round drew exactly one audio-only client")
    config = dict(instructions[0][1].config)
    layout = secure.parse_layout(str(config[secure.LAYOUT]))
    assert [k for k, _ in layout] == ["audio_encoder", "video_encoder", "fusion_head"]
    assert config[secure.SKIPPED] == "audio_head" and strategy._secure_skipped == 1
    before = {k: [a.copy() for a in v] for k, v in strategy.state.items()}
    total = np.zeros(secure.vector_size(layout))
    total[: layout[0][1]] = 0.8  # the summed weighted update of the audio encoder
    weights = layout[0][1] + layout[1][1] + layout[2][1]
    total[weights : weights + 3] = 4.0  # every weight in the sum
    same = [
        (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([total / 4]), 1, {"groups": ""}))
        for proxy, _ in instructions
    ]
    strategy.aggregate_fit(server_round, same, [])
    assert all(np.array_equal(a, b) for a, b in zip(strategy.state["audio_head"], before["audio_head"]))
    moved = [a - b for a, b in zip(strategy.state["audio_encoder"], before["audio_encoder"])]
    assert np.allclose(np.concatenate([m.ravel() for m in moved if m.dtype.kind == "f"]), 0.2)  # 0.8 / 4
    assert strategy.secure_summary()["skipped_rounds"]["audio_head"] >= 1


def test_a_sum_that_lost_clients_below_the_minimum_is_not_unmasked(cache, tmp_path):
    """A client lost after the layout was fixed may leave a group with fewer contributors than the minimum: the secure
    workflow does not unmask that round's sum (the server never learns it)."""
    from types import SimpleNamespace

    from mirror_app.server_app import MinimumWorkflow

    manager, proxies = tiny_federation(cache, 12, missing_rate=0.25)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=12, recorder=False, evaluator=False,
        **{"secure-aggregation": True},
    )  # fmt: skip
    instructions = strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    drawn = {p.cid for p, _ in instructions}
    audio = sorted(p.cid for p in proxies.values() if p.client.modality == "audio")
    assert len(audio) == 3 and strategy.secure_survivors_problem(drawn) == ""
    problem = strategy.secure_survivors_problem(drawn - {audio[0]})
    assert problem.startswith("audio_head would be summed from fewer than 3 clients after 11 of the drawn answered")
    context = SimpleNamespace(strategy=strategy)
    state = SimpleNamespace(active_node_ids=drawn - {audio[0]})
    assert MinimumWorkflow.unmask_stage(None, None, context, state) is False  # halted before any unmasking
    assert strategy.secure_summary()["halted_rounds"] == 2


def test_a_federation_in_which_some_group_never_reaches_the_minimum_is_refused_before_it_starts(tmp_path):
    from mirror_app.deploy.preflight import check_run

    cfg, cls = resolve_config({"secure-aggregation": True, "secure-min-clients": 3})
    assert cls.secure_problem(cfg, {"audio": 2, "audiovisual": 8}).startswith(
        "run config 'secure-min-clients' = 3 is invalid: in phase 'modality-aware-fl' only 2 client(s) train audio_head"
    )
    assert cls.secure_problem(cfg, {"audio": 3, "audiovisual": 7}) == ""
    with pytest.raises(ConfigError, match=r"'secure-min-clients' = 1 is invalid: an integer in \[2, clients"):
        RunConfig.from_dict({"secure-aggregation": True, "secure-min-clients": 1})
    with pytest.raises(ConfigError, match="only 2 client"):  # 10 clients at missing rate 0.2: 2 audio-only
        check_run(
            f"secure-aggregation=true missing-rate=0.2 output-dir='{tmp_path}'",
            dataset=False,
            num_clients=10,
        )


def test_secure_aggregation_with_local_dp_clips_almost_nothing_and_counts_what_it_clips():
    cfg = RunConfig.from_dict({"secure-aggregation": True, **LOCAL, "dp-noise-multiplier": 2.0})
    assert cfg.secure_clipping_range == pytest.approx(0.5 + 5.5 * 2.0 * 1.0)  # C + 5.5 sigma x 2 C
    rng = np.random.default_rng(0)
    layout = [("g", 200_000)]
    noised = {"g": privacy.local_release([rng.normal(size=200_000)], 0.5, 2.0 * 1.0, rng)}
    _, clipped = secure.encode(layout, "", noised, {"g": 10_000}, 10_000.0, cfg.secure_clipping_range)
    _, at_one = secure.encode(layout, "", noised, {"g": 10_000}, 10_000.0, 1.0)
    assert clipped / 200_000 < 1e-6 and at_one / 200_000 > 0.3  # the old range clipped a third of the values


# --------------------------------------------------------------------------------------------- the local ledger
def test_local_releases_are_keyed_by_identity_and_counted_for_every_drawn_client(cache, tmp_path):
    """A deployed node without a partition is known by its node id; a client that failed was still drawn, and may
    have sent a noised update the server never saw: it counts."""
    manager, proxies = tiny_federation(cache, 5, missing_rate=0.2, failing=(1,))
    strategy = tiny_strategy(
        ModalityMirror, cache, tmp_path, clients_per_round=5, recorder=False, evaluator=False, dp="local",
        **{"dp-clipping-norm": 1.0},
    )  # fmt: skip
    instructions = strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    results, failures = [], []
    for proxy, ins in instructions:
        try:
            results.append((proxy, proxy.fit(ins, None, 1)))
        except Exception as exc:  # noqa: BLE001 - the failing partition's client raises
            failures.append(exc)
    own = next(p.cid for p, _ in instructions if p.client.partition.partition_id == 0)
    strategy.census.properties[own]["partition-id"] = -1  # a node with its own data
    strategy.aggregate_fit(1, results, failures)
    assert len(failures) == 1
    keys = set(strategy.ledger.releases)
    assert keys == {f"node {own}", "partition 1", "partition 2", "partition 3", "partition 4"}  # 1: the failed one
    assert set(strategy.ledger.releases.values()) == {1}


# ------------------------------------------------------------------------------------------------------ the audit
@pytest.mark.parametrize(
    "mode, sigma", [("central", 0.5), ("central", 1.0), ("central", 3.0), ("local", 0.5), ("local", 2.0)]
)
def test_the_audit_stays_below_the_accountant_with_the_runs_noise(mode, sigma):
    from mirror_app.studies.audit import audit_setting

    row = audit_setting(mode, sigma, trials=1500, seeded=True, seed=1)  # the run's noise, repeatable digits
    assert 0 <= row["lower_bound"] <= row["accountant_epsilon"]


@pytest.mark.parametrize("mode, sigma", [("central", 3.0), ("local", 2.0)])
def test_the_audit_fails_a_release_whose_noise_is_known(mode, sigma):
    from mirror_app.studies.audit import audit_setting

    row = audit_setting(mode, sigma, trials=1500, known_noise=True, seed=1)
    assert row["lower_bound"] > row["accountant_epsilon"] + 1.5


def test_the_lower_bound_formula_on_worked_cases():
    from mirror_app.studies.audit import epsilon_lower_bound

    assert epsilon_lower_bound(500, 1000, 500, 1000, 1e-5, 0.95) == 0.0  # a coin flip separates nothing
    perfect = epsilon_lower_bound(0, 1000, 0, 1000, 1e-5, 0.95)
    assert perfect == pytest.approx(math.log((1 - 1e-5 - 0.003682) / 0.003682), abs=0.01)  # CP: 1 - 0.025^(1/1000)


# ------------------------------------------------------------------------------------------ a fixed classifier
@pytest.mark.parametrize("classifier", ["etf", "fixed-random"])
def test_central_dp_never_noises_a_fixed_classifier(classifier, cache, tmp_path, monkeypatch):
    """The ETF frame (FedETF) and a fixed random head (FedBABU) are never trained: a DP release keeps them exactly,
    while every trained array takes the noise."""
    from strategies import census

    strategy, manager = central_strategy(cache, tmp_path, **{"dp-noise-multiplier": 1.0, "classifier": classifier})
    assert strategy.fixed and set(strategy.fixed) >= {"audio_head", "fusion_head"}
    before = {k: [a.copy() for a in v] for k, v in strategy.state.items()}
    monkeypatch.setattr(census, "draw_clients", lambda *args, **kwargs: [])
    strategy.configure_fit(1, None, manager)
    for key, positions in strategy.fixed.items():
        if key not in before:
            continue
        for i, (a, b) in enumerate(zip(strategy.state[key], before[key])):
            if i in positions:
                assert np.array_equal(a, b), (key, i)
            elif np.issubdtype(a.dtype, np.floating):
                assert np.abs(a - b).max() > 0, (key, i)


def test_local_dp_sends_a_fixed_array_back_as_received():
    trained = [a + 1 if np.issubdtype(a.dtype, np.floating) else a for a in RECEIVED]
    metrics = {"groups": "audio_encoder,audio_head", "modality": "audiovisual", "partition-id": 0}
    msg = train_message()
    ins = compat.recorddict_to_fitins(msg.content, True)
    ins.config["fixed-arrays"] = "audio_head:0"  # the head's only array (position 2 of the flat reply) is fixed
    fixed_msg = Message(compat.fitins_to_recorddict(ins, True), dst_node_id=1, message_type=MessageType.TRAIN)
    reply = compat.recorddict_to_fitres(
        mods.local_dp_mod(fixed_msg, context(LOCAL), replying(trained, metrics)).content, True
    )
    sent = parameters_to_ndarrays(reply.parameters)
    assert np.array_equal(sent[2], RECEIVED[2])
    assert not np.array_equal(sent[0], RECEIVED[0])  # a trained array is released (clipped and noised)
