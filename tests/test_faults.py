"""Faults, bad updates and reproducibility, in-process (the kill -9 resume through `flwr run` is in test_e2e)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server
from helpers import LocalProxy, fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.results import RESUME_FILE, ResumeError, load_resume_state
from strategies import ModalityAwareFedAvg, ModalityMirror


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("faults") / "tiny")


def random_ids(n: int, seed: int) -> list[str]:
    return [str(x) for x in np.random.default_rng(seed).integers(1, 2**62, size=n)]


def run(strategy, manager, rounds: int | None = None, timeout: float | None = None):
    Server(client_manager=manager, strategy=strategy).fit(rounds or strategy.total_rounds, timeout)
    return strategy


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


def test_same_seed_same_weights_whatever_the_node_ids(cache, tmp_path):
    """Flower draws node IDs at random per run; clients are chosen and summed by partition id."""
    states, chosen = [], []
    for trial in range(2):
        manager, _ = tiny_federation(cache, 6, missing_rate=0.5, node_ids=random_ids(6, trial))
        strategy = tiny_strategy(ModalityMirror, cache, tmp_path / str(trial), clients_per_round=3, evaluator=False)
        run(strategy, manager)
        states.append(strategy.state)
        chosen.append(
            pd.read_csv(strategy.recorder.dir / "clients.csv")[["round", "partition_id"]]
            .sort_values(["round", "partition_id"])
            .values.tolist()
        )
    assert chosen[0] == chosen[1]
    assert same_state(*states)


@pytest.mark.parametrize("done", [2, 3])  # at the end of phase 1, and inside phase 2
def test_resume_reaches_the_same_final_state(cache, tmp_path, done):
    cfg = dict(clients_per_round=3, num_server_rounds=2, distill_rounds=2)
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    whole = run(tiny_strategy(ModalityMirror, cache, tmp_path / "whole", **cfg), manager)

    first = tiny_strategy(ModalityMirror, cache, tmp_path / "cut", **cfg)
    run(first, manager, rounds=done)  # as if killed right after round `done`
    assert not (first.recorder.dir / "summary.json").exists()
    saved = load_resume_state(first.recorder.dir, first.cfg.to_dict())
    assert saved["round"] == done

    from mirror_app.results import RunRecorder

    again = tiny_strategy(ModalityMirror, cache, tmp_path / "again", recorder=False, **cfg)
    again.recorder = RunRecorder.reopen(first.recorder.dir, saved, cache.classes)
    again.restore(saved["round"], saved["strategy"], saved["seconds"])
    manager2, _ = tiny_federation(cache, 6, missing_rate=0.5, node_ids=random_ids(6, 7))
    run(again, manager2, rounds=again.total_rounds - done)
    assert same_state(again.state, whole.state)
    assert same_state(again.teacher, whole.teacher)
    resumed = pd.read_csv(first.recorder.dir / "metrics.csv")
    straight = pd.read_csv(whole.recorder.dir / "metrics.csv")
    assert list(resumed["round"]) == list(range(5))
    cols = ["audio_top1", "audio_top5", "av_top1", "clients", "failures", "bytes_to_clients"]
    pd.testing.assert_frame_equal(resumed[cols], straight[cols])
    assert (first.recorder.dir / "summary.json").is_file() and not (first.recorder.dir / RESUME_FILE).exists()


def test_resume_refuses_finished_runs_other_settings_and_broken_files(cache, tmp_path):
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=2, num_server_rounds=3, distill_rounds=0
    )
    run(strategy, manager, rounds=1)
    run_dir, cfg = strategy.recorder.dir, strategy.cfg.to_dict()
    with pytest.raises(ResumeError, match=r"other settings \(lr: 0.0005 -> 0.1\)"):
        load_resume_state(run_dir, cfg | {"lr": 0.1})
    assert load_resume_state(run_dir, cfg | {"resume": str(run_dir), "device": "auto"})["round"] == 1
    (run_dir / f".{RESUME_FILE}.half").write_bytes(b"\x80garbage")  # a write killed midway is never read
    assert load_resume_state(run_dir, cfg)["round"] == 1
    (run_dir / RESUME_FILE).write_bytes(b"\x80garbage")
    with pytest.raises(ResumeError, match="unreadable"):
        load_resume_state(run_dir, cfg)
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(ResumeError, match="finished"):
        load_resume_state(run_dir, cfg)
    with pytest.raises(ResumeError, match="no resume.pt"):
        load_resume_state(tmp_path, cfg)


@pytest.mark.parametrize("corrupt", ["inf", "zero-examples", "negative-examples", "more-than-partition", "absurd"])
def test_bad_updates_are_rejected_counted_and_never_averaged(cache, tmp_path, corrupt):
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(  # the audio head trained by audio-only clients alone, so its average is theirs
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=4,
        recorder=False,
        evaluator=False,
        **{"av-trains-audio-head": False},
    )
    _, results = fit_round(strategy, manager)
    proxy, res = next((p, r) for p, r in results if p.client.modality == "audio")
    arrays, n = parameters_to_ndarrays(res.parameters), res.num_examples
    if corrupt == "inf":
        arrays[0] = arrays[0].copy()
        arrays[0].flat[0] = np.inf
    else:
        n = {"zero-examples": 0, "negative-examples": -5, "more-than-partition": n + 1, "absurd": 10**12}[corrupt]
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, dict(res.metrics))
    results = [(p, bad if p is proxy else r) for p, r in results]
    others = [r for p, r in results if p is not proxy and p.client.modality == "audio"]
    _, stats = strategy.aggregate_fit(1, results, [])
    assert stats["failures"] == 1 and stats["clients"] == len(results) - 1
    # the audio head is averaged over the other audio-only clients alone
    head = len(strategy.state["audio_encoder"])
    total = sum(r.num_examples for r in others)
    expected = (
        sum(parameters_to_ndarrays(r.parameters)[head].astype(np.float64) * r.num_examples for r in others) / total
    )
    np.testing.assert_allclose(strategy.state["audio_head"][0], expected, rtol=1e-5, atol=1e-6)


class SlowProxy(LocalProxy):
    """A client that answers after ``delay`` seconds; like Flower's GridClientProxy, the server
    stops waiting after the round timeout and gets no reply."""

    def __init__(self, cid, client, delay: float):
        super().__init__(cid, client)
        self.delay = delay

    def fit(self, ins, timeout, group_id):
        done = threading.Event()
        threading.Timer(self.delay, done.set).start()
        if not done.wait(timeout):
            raise ValueError("Expected one Message but got: 0")  # what GridClientProxy raises on a timeout
        return super().fit(ins, timeout, group_id)


class VanishingDataProxy(LocalProxy):
    """A client whose data folder disappears after round ``alive``: it opens its cache per call,
    like a ClientApp process on a SuperNode does."""

    def __init__(self, cid, client, alive: int):
        super().__init__(cid, client)
        self.alive, self.calls = alive, 0

    def fit(self, ins, timeout, group_id):
        from data.cache import FeatureCache

        self.calls += 1
        path = self.client.workspace.cache.path if self.calls <= self.alive else "/nonexistent/data"
        FeatureCache(path)  # raises once the data is gone
        return super().fit(ins, timeout, group_id)


@pytest.mark.parametrize("fault", ["timeout", "data-gone"])
def test_slow_and_dataless_clients_fail_the_round_goes_on_and_metrics_record_it(cache, tmp_path, fault):
    manager, proxies = tiny_federation(cache, 4, missing_rate=0.5)
    victim = proxies[0]
    manager.unregister(victim)
    bad = (
        SlowProxy(victim.cid, victim.client, delay=5.0)
        if fault == "timeout"
        else VanishingDataProxy(victim.cid, victim.client, alive=1)
    )
    manager.register(bad)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=4, num_server_rounds=2, distill_rounds=0
    )
    start = time.monotonic()
    run(strategy, manager, timeout=1.0 if fault == "timeout" else None)
    metrics = pd.read_csv(strategy.recorder.dir / "metrics.csv")
    clients = pd.read_csv(strategy.recorder.dir / "clients.csv")
    expected = [1, 1] if fault == "timeout" else [0, 1]
    assert metrics.loc[metrics["round"] > 0, "failures"].tolist() == expected
    assert metrics.loc[metrics["round"] > 0, "clients"].tolist() == [4 - f for f in expected]
    failed = clients[clients["status"] == "failed"]
    assert set(failed["partition_id"]) == {0} and len(failed) == sum(expected)
    assert (strategy.recorder.dir / "summary.json").is_file()
    if fault == "timeout":
        assert time.monotonic() - start < 30  # the server did not wait for the slow client


def test_nothing_to_resume_before_round_1(cache, tmp_path):
    """A run killed right after its initial evaluation has no resume state (it starts over)."""
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=2, num_server_rounds=3, distill_rounds=0
    )
    strategy.evaluate(0, strategy.initialize_parameters(manager))
    assert (strategy.recorder.dir / "metrics.csv").is_file()
    assert not (strategy.recorder.dir / RESUME_FILE).exists()
    with pytest.raises(ResumeError, match="no resume.pt"):
        load_resume_state(strategy.recorder.dir, strategy.cfg.to_dict())
